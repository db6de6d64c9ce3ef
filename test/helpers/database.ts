import { randomBytes } from "node:crypto";
import pg from "pg";
import { inject } from "vitest";
import { migrate } from "../../src/storage/pg/migrate.js";
import { createPool } from "../../src/storage/pg/pool.js";
import type {} from "../setup/global-database.js";

/** A migrated schema of its own in the run's PostgreSQL. */
export interface TestDatabase {
  /** The base URL (no schema in it): use `schema` when connecting yourself. */
  connectionString: string;
  /** `t_` + 16 hex digits, unique per call. */
  schema: string;
  /** Pool whose connections use `schema` as search_path. */
  pool: pg.Pool;
  /** Ends the pool and drops the schema with everything in it; idempotent. */
  drop(): Promise<void>;
}

/** Creates a fresh schema, applies all migrations to it and opens a pool bound to it. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const connectionString = inject("databaseUrl");
  const schema = `t_${randomBytes(8).toString("hex")}`;
  await migrate({ connectionString, schema });
  const pool = createPool({ connectionString, schema, max: 4, applicationName: "keyward-test" });
  let dropping: Promise<void> | undefined;
  const drop = async (): Promise<void> => {
    await pool.end();
    await dropSchema(connectionString, schema);
  };
  return { connectionString, schema, pool, drop: () => (dropping ??= drop()) };
}

/** Drops `schema` (cascade) if it exists, on a connection of its own. */
export async function dropSchema(connectionString: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString });
  client.on("error", () => {});
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${client.escapeIdentifier(schema)} CASCADE`);
  } finally {
    await client.end();
  }
}
