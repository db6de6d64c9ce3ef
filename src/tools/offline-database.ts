import { stat } from "node:fs/promises";
import { join } from "node:path";
import type pg from "pg";
import type { Config } from "../config.js";
import { runningPostmaster, startEmbeddedPostgres } from "../storage/pg/embedded.js";
import { createPool } from "../storage/pg/pool.js";

/** A mistake in how an offline command was called or configured: exit 2, the message on stderr. */
export class UsageError extends Error {}

/**
 * Runs `fn` with a one-connection pool on the configured database, for the
 * commands that work while the server is stopped: `DATABASE_URL`, or the
 * embedded cluster in the data folder, started here and stopped after.
 *
 * @throws UsageError when there is no embedded cluster, or it is running
 *   (most likely for a server: starting it here would shut it down).
 */
export async function withOfflineDatabase<T>(
  config: Config,
  applicationName: string,
  fn: (pool: pg.Pool, connectionString: string) => Promise<T>,
): Promise<T> {
  let embedded: Awaited<ReturnType<typeof startEmbeddedPostgres>> | undefined;
  if (config.databaseUrl === undefined) {
    const dataDir = join(config.dataDir, "postgres");
    await assertEmbeddedIdle(dataDir);
    embedded = await startEmbeddedPostgres({ dataDir, log: () => {} });
  }
  const connectionString = config.databaseUrl ?? embedded!.connectionString;
  const pool = createPool({ connectionString, schema: config.databaseSchema, max: 1, applicationName, connectTimeoutMs: 10_000 });
  try {
    return await fn(pool, connectionString);
  } finally {
    await pool.end().catch(() => {});
    await embedded?.stop();
  }
}

async function assertEmbeddedIdle(dataDir: string): Promise<void> {
  const exists = await stat(join(dataDir, "PG_VERSION")).then(
    () => true,
    () => false,
  );
  if (!exists) {
    throw new UsageError(`no database: DATABASE_URL is not set and there is no embedded PostgreSQL in ${dataDir} (KEYWARD_DATA_DIR)`);
  }
  const pid = await runningPostmaster(dataDir);
  if (pid !== undefined) {
    throw new UsageError(
      `the embedded PostgreSQL in ${dataDir} is running (pid ${pid}), most likely for a Keyward server; ` +
        "starting it here would shut it down: stop the server first, or set DATABASE_URL to reach that database",
    );
  }
}
