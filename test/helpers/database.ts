import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
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

/** A schema name no other test uses: `t_` + 16 hex digits. */
export function uniqueSchemaName(): string {
  return `t_${randomBytes(8).toString("hex")}`;
}

/** Creates a fresh schema, applies all migrations to it and opens a pool bound to it. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const connectionString = inject("databaseUrl");
  const schema = uniqueSchemaName();
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

/** Temporary folders and schema names handed out to one test file, deleted together by `cleanup`. */
export interface Scratch {
  /** A new empty folder under the system temp folder, named `<prefix>` + random characters. */
  tempDir(): Promise<string>;
  /** A schema name no other test uses, dropped (if it was created) by `cleanup`. */
  freshSchema(): string;
  /** Drops every schema, then deletes every folder handed out since the last cleanup. */
  cleanup(): Promise<void>;
}

/** A Scratch whose folders are named `<prefix>` + random characters; call `cleanup` in afterAll or afterEach. */
export function createScratch(prefix: string): Scratch {
  const dirs: string[] = [];
  const schemas: string[] = [];
  return {
    async tempDir() {
      const dir = await mkdtemp(join(tmpdir(), prefix));
      dirs.push(dir);
      return dir;
    },
    freshSchema() {
      const schema = uniqueSchemaName();
      schemas.push(schema);
      return schema;
    },
    async cleanup() {
      const databaseUrl = inject("databaseUrl");
      for (const schema of schemas.splice(0)) {
        await dropSchema(databaseUrl, schema);
      }
      for (const dir of dirs.splice(0)) {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}
