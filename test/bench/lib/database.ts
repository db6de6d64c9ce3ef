/** The bench's PostgreSQL: the one given, else an embedded one of its own. */
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { startEmbeddedPostgres } from "../../../src/storage/pg/embedded.js";

export interface BenchDatabase {
  /** May hold a password: never print it. */
  readonly url: string;
  /** Where it points, without credentials. */
  readonly description: string;
  release(): Promise<void>;
}

/**
 * `KEYWARD_BENCH_DATABASE_URL`, else `DATABASE_URL`, else an embedded
 * PostgreSQL started in a fresh temporary folder on a free port, which
 * `release` stops and deletes. Not the shared test database on 5432: the
 * bench should not load other people's test runs, nor be measured against them.
 */
export async function openBenchDatabase(): Promise<BenchDatabase> {
  const given = process.env.KEYWARD_BENCH_DATABASE_URL || process.env.DATABASE_URL;
  if (given) {
    return { url: given, description: `given: ${where(given)}`, release: async () => {} };
  }
  const root = await mkdtemp(join(tmpdir(), "keyward-bench-pg-"));
  // mkdtemp makes the folder 0700; as root the cluster belongs to the postgres user, which must enter it.
  await chmod(root, 0o755);
  try {
    const server = await startEmbeddedPostgres({ dataDir: join(root, "data"), log: () => {} });
    return {
      url: server.connectionString,
      description: `embedded: ${where(server.connectionString)}, in ${root}`,
      release: async () => {
        await server.stop();
        await rm(root, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

function where(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.host}${parsed.pathname}`;
  } catch {
    return "(unparsable URL)";
  }
}

/** Runs `query` on a connection of its own, then closes it. */
export async function withClient<T>(url: string, query: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  client.on("error", () => {});
  await client.connect();
  try {
    return await query(client);
  } finally {
    await client.end().catch(() => {});
  }
}
