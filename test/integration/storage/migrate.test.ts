import { readdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { migrate, migrationLockKey } from "../../../src/storage/pg/migrate.js";
import { createScratch } from "../../helpers/database.js";

const databaseUrl = inject("databaseUrl");
const MIGRATIONS_DIR = fileURLToPath(new URL("../../../migrations", import.meta.url));

let migrationNames: string[];
let admin: pg.Client;
const scratch = createScratch("keyward-migrate-");

async function appliedNames(schema: string): Promise<string[]> {
  const result = await admin.query<{ name: string }>(
    `SELECT name FROM ${admin.escapeIdentifier(schema)}.pgmigrations ORDER BY id`,
  );
  return result.rows.map((row) => row.name);
}

async function waitingMigrators(schema: string): Promise<number> {
  const result = await admin.query<{ waiting: string }>(
    `SELECT count(*) AS waiting FROM pg_locks
     WHERE locktype = 'advisory' AND NOT granted
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid::bigint = ($1::bigint >> 32) & 4294967295
       AND objid::bigint = $1::bigint & 4294967295`,
    [migrationLockKey(schema)],
  );
  return Number(result.rows[0]?.waiting ?? 0);
}

beforeAll(async () => {
  migrationNames = (await readdir(MIGRATIONS_DIR))
    .filter((file) => /^\d+_.+\.ts$/.test(file))
    .map((file) => file.replace(/\.ts$/, ""))
    .sort();
  admin = new pg.Client({ connectionString: databaseUrl });
  await admin.connect();
});

afterAll(async () => {
  await scratch.cleanup();
  await admin.end();
});

describe("migrate", () => {
  it("applies every migration to a schema that does not exist yet", async () => {
    const schema = scratch.freshSchema();

    const applied = await migrate({ connectionString: databaseUrl, schema });

    expect(migrationNames).toContain("20261124064200000_create-deployment");
    expect(applied).toEqual(migrationNames);
    expect(await appliedNames(schema)).toEqual(migrationNames);
    const tables = await admin.query<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
      [schema],
    );
    expect(tables.rows.map((row) => row.table_name)).toEqual(expect.arrayContaining(["deployment", "pgmigrations"]));
    // Nothing leaked into public.
    const leaked = await admin.query(
      "SELECT 1 FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'deployment'",
    );
    expect(leaked.rowCount).toBe(0);
  });

  it("creates the deployment table as a singleton with documented check column", async () => {
    const schema = scratch.freshSchema();
    await migrate({ connectionString: databaseUrl, schema });
    const table = `${admin.escapeIdentifier(schema)}.deployment`;

    await expect(
      admin.query(`INSERT INTO ${table} (id, deployment_id, root_key_check) VALUES (false, gen_random_uuid(), '\\x00')`),
    ).rejects.toThrow(/deployment_singleton/);
    await admin.query(`INSERT INTO ${table} (deployment_id, root_key_check) VALUES (gen_random_uuid(), '\\x00')`);
    await expect(
      admin.query(`INSERT INTO ${table} (deployment_id, root_key_check) VALUES (gen_random_uuid(), '\\x01')`),
    ).rejects.toThrow(/deployment_pkey/);
    const comment = await admin.query<{ comment: string | null }>(
      `SELECT col_description('${schema}.deployment'::regclass, attnum) AS comment
       FROM pg_attribute WHERE attrelid = '${schema}.deployment'::regclass AND attname = 'root_key_check'`,
    );
    expect(comment.rows[0]?.comment).toMatch(/root key/i);
  });

  it("returns [] and changes nothing when the schema is up to date", async () => {
    const schema = scratch.freshSchema();
    await migrate({ connectionString: databaseUrl, schema });
    const before = await admin.query(`SELECT id, name, run_on FROM ${admin.escapeIdentifier(schema)}.pgmigrations`);

    const messages: string[] = [];
    const applied = await migrate({ connectionString: databaseUrl, schema, log: (msg) => messages.push(msg) });

    expect(applied).toEqual([]);
    const after = await admin.query(`SELECT id, name, run_on FROM ${admin.escapeIdentifier(schema)}.pgmigrations`);
    expect(after.rows).toEqual(before.rows);
    expect(messages.join("\n")).toMatch(/no migrations to run/i);
  });

  it("serializes concurrent callers on one schema: all succeed, each migration runs once", async () => {
    const schema = scratch.freshSchema();
    const key = migrationLockKey(schema);
    // Hold the migration lock so that every caller is provably queued on it at
    // the same time, rather than finishing one after another by luck.
    const holder = new pg.Client({ connectionString: databaseUrl });
    await holder.connect();
    try {
      await holder.query("SELECT pg_advisory_lock($1::bigint)", [key]);
      const runs = Promise.allSettled([1, 2, 3].map(() => migrate({ connectionString: databaseUrl, schema })));
      await expect.poll(() => waitingMigrators(schema), { timeout: 10_000, interval: 50 }).toBe(3);
      await holder.query("SELECT pg_advisory_unlock($1::bigint)", [key]);

      const results = await runs;
      for (const result of results) expect(result.status).toBe("fulfilled");
      const applied = results.map((result) => (result.status === "fulfilled" ? result.value : []));
      expect(applied.filter((names) => names.length > 0)).toEqual([migrationNames]);
      expect(applied.filter((names) => names.length === 0)).toHaveLength(2);
      const count = await admin.query<{ n: string }>(
        `SELECT count(*) AS n FROM ${admin.escapeIdentifier(schema)}.pgmigrations`,
      );
      expect(Number(count.rows[0]?.n)).toBe(migrationNames.length);
    } finally {
      await holder.end();
    }
  });

  it("does not make other schemas wait for a schema's migration lock", async () => {
    const locked = scratch.freshSchema();
    const other = scratch.freshSchema();
    expect(migrationLockKey(locked)).not.toBe(migrationLockKey(other));
    const holder = new pg.Client({ connectionString: databaseUrl });
    await holder.connect();
    try {
      await holder.query("SELECT pg_advisory_lock($1::bigint)", [migrationLockKey(locked)]);
      await expect(migrate({ connectionString: databaseUrl, schema: other })).resolves.toEqual(migrationNames);
    } finally {
      await holder.end();
    }
  });

  it("rejects schema names it cannot pass safely to node-pg-migrate", async () => {
    for (const schema of ['bad"name', "a b", "x;drop", "", "1abc", "a".repeat(64)]) {
      await expect(migrate({ connectionString: databaseUrl, schema })).rejects.toThrow(TypeError);
    }
  });
});
