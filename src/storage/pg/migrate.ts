import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { runner } from "node-pg-migrate";
import pg from "pg";

/** Options for {@link migrate}. */
export interface MigrateOptions {
  /** A `postgres://` URL; the role needs CREATE on the database (for the schema) and in the schema. */
  connectionString: string;
  /**
   * Schema that receives the tables and the `pgmigrations` bookkeeping table;
   * created when missing. Must match `[A-Za-z_][A-Za-z0-9_]*` (at most 63
   * characters), because node-pg-migrate splices it into SQL unescaped.
   * Default: `"public"`.
   */
  schema?: string;
  /** Progress messages (which migrations run). Default: discarded. */
  log?: (msg: string) => void;
  /**
   * How long to wait for the connection. Default: no bound. Queries are
   * never bounded: waiting for another replica's migrations is normal.
   */
  connectTimeoutMs?: number;
}

/** The repository's `migrations/` folder, independent of the process's working directory. */
export const MIGRATIONS_DIR = fileURLToPath(new URL("../../../migrations", import.meta.url));

const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/**
 * Brings `schema` up to date with the migrations in `migrations/`.
 *
 * Guarantees:
 * - Safe to call from many replicas at once: callers for the same schema queue
 *   on a blocking `pg_advisory_lock` and each then sees the others' work, so
 *   every migration runs exactly once and every caller returns normally.
 *   (node-pg-migrate's own lock is a `pg_try_advisory_lock` that fails the
 *   loser instead; it is switched off.)
 * - All pending migrations apply in one transaction: on failure none is kept.
 * - Migrations already applied must be a prefix of the files on disk
 *   (node-pg-migrate's `checkOrder`), so a migration added out of order fails
 *   loudly instead of being skipped.
 *
 * The lock key is derived from the schema name: migrations of different
 * schemas in one database (one per test file, say) run in parallel. That is
 * sound because a migration only touches its own schema.
 *
 * @returns the names (file names without extension) of the migrations
 *   applied by this call, in order; `[]` when the schema was already current.
 * @throws TypeError for a schema name outside the allowed pattern; otherwise
 *   whatever the connection or a migration throws (the transaction is rolled back).
 */
export async function migrate(options: MigrateOptions): Promise<string[]> {
  const schema = options.schema ?? "public";
  if (!SCHEMA_NAME.test(schema)) {
    throw new TypeError(`invalid schema name for migrations: must match ${SCHEMA_NAME.source}`);
  }
  const log = options.log ?? (() => {});
  const client = new pg.Client({
    connectionString: options.connectionString,
    application_name: "keyward-migrate",
    ...(options.connectTimeoutMs !== undefined ? { connectionTimeoutMillis: options.connectTimeoutMs } : {}),
  });
  // An "error" event without a listener would crash the process; the failure
  // also surfaces as the rejection of whatever query was running.
  client.on("error", () => {});
  await client.connect();
  try {
    const lockKey = migrationLockKey(schema);
    // Session-level lock: released by the unlock below, or by the server when
    // this connection dies, so a crashed replica never leaves it held.
    await client.query("SELECT pg_advisory_lock($1::bigint)", [lockKey]);
    try {
      // Under the lock: concurrent CREATE SCHEMA IF NOT EXISTS can still fail
      // with a unique violation on pg_namespace.
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${client.escapeIdentifier(schema)}`);
      const applied = await runner({
        dbClient: client,
        dir: MIGRATIONS_DIR,
        direction: "up",
        migrationsTable: "pgmigrations",
        schema,
        migrationsSchema: schema,
        noLock: true,
        // node-pg-migrate documents `true` as the default but only honours it
        // when set explicitly.
        singleTransaction: true,
        checkOrder: true,
        log,
      });
      return applied.map((migration) => migration.name);
    } finally {
      await client.query("SELECT pg_advisory_unlock($1::bigint)", [lockKey]).catch(() => {});
    }
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Advisory lock key for migrating `schema`: the first 8 bytes of
 * SHA-256("keyward:migrate:" + schema) as a signed 64-bit integer (decimal
 * string). The prefix keeps it apart from keys other code might derive from
 * the same name, and from node-pg-migrate's fixed key.
 */
export function migrationLockKey(schema: string): string {
  const digest = createHash("sha256").update(`keyward:migrate:${schema}`).digest();
  return digest.readBigInt64BE(0).toString();
}
