import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { startEmbeddedPostgres, type EmbeddedPostgresHandle } from "../../src/storage/pg/embedded.js";

/**
 * An embedded PostgreSQL of one test's own, in a temporary folder on a free
 * port: the test may stop, restart and kill it without touching the run's
 * shared database.
 */
export interface PrivatePostgres {
  /** Contains the password: never print it. */
  readonly connectionString: string;
  readonly port: number;
  readonly dataDir: string;
  /** Whether the postmaster is running (as far as this handle knows). */
  readonly running: boolean;
  /** Fast shutdown; connections are cut. */
  stop(): Promise<void>;
  /** Starts it again on the same port, with the same data. */
  start(): Promise<void>;
  /** A query on a connection of its own (connect and answer within 10 s). */
  query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  /** Stops it and deletes its folder; idempotent. */
  destroy(): Promise<void>;
}

/**
 * Initialises and starts a cluster in a fresh temporary folder named
 * `<folderPrefix>XXXXXX`; the folder is removed again if it does not start.
 */
export async function startPrivatePostgres(folderPrefix = "keyward-faults-pg-"): Promise<PrivatePostgres> {
  const root = await mkdtemp(join(tmpdir(), folderPrefix));
  // Running as root, the cluster belongs to the postgres user, which must enter the folder.
  await chmod(root, 0o755);
  const dataDir = join(root, "data");
  let handle: EmbeddedPostgresHandle | undefined;
  try {
    handle = await startEmbeddedPostgres({ dataDir, log: () => {} });
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  const connectionString = handle.connectionString;
  const port = Number(new URL(connectionString).port);
  let destroying: Promise<void> | undefined;
  return {
    connectionString,
    port,
    dataDir,
    get running() {
      return handle !== undefined;
    },
    async stop() {
      const stopping = handle;
      handle = undefined;
      await stopping?.stop();
    },
    async start() {
      handle ??= await startEmbeddedPostgres({ dataDir, port, log: () => {} });
    },
    async query<R extends pg.QueryResultRow>(text: string, values?: unknown[]) {
      const client = new pg.Client({ connectionString, connectionTimeoutMillis: 10_000, query_timeout: 10_000 });
      client.on("error", () => {});
      await client.connect();
      try {
        return await client.query<R>(text, values);
      } finally {
        await client.end().catch(() => {});
      }
    },
    destroy() {
      return (destroying ??= (async () => {
        await handle?.stop();
        handle = undefined;
        await rm(root, { recursive: true, force: true });
      })());
    },
  };
}
