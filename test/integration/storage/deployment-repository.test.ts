import { randomBytes } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createPgDeploymentRepository, RootKeyMismatchError } from "../../../src/storage/pg/deployment-repository.js";
import { createPool } from "../../../src/storage/pg/pool.js";
import { withTransaction } from "../../../src/storage/pg/transaction.js";
import { createTestDatabase, type TestDatabase } from "../../helpers/database.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let db: TestDatabase;

beforeEach(async () => {
  db = await createTestDatabase();
});

afterEach(async () => {
  await db.drop();
});

async function storedRows(): Promise<{ deployment_id: string; created_at: Date; root_key_check: Buffer }[]> {
  const result = await db.pool.query("SELECT deployment_id, created_at, root_key_check FROM deployment");
  return result.rows;
}

describe("createPgDeploymentRepository", () => {
  it("creates the deployment on the first ensure and stores the check value", async () => {
    const repository = createPgDeploymentRepository(db.pool);
    const check = randomBytes(32);

    const deployment = await repository.ensure(check);

    expect(deployment.created).toBe(true);
    expect(deployment.deploymentId).toMatch(UUID);
    expect(deployment.createdAt).toBeInstanceOf(Date);
    expect(Math.abs(deployment.createdAt.getTime() - Date.now())).toBeLessThan(60_000);
    const rows = await storedRows();
    expect(rows).toHaveLength(1);
    expect(rows[0]?.deployment_id).toBe(deployment.deploymentId);
    expect(rows[0]?.root_key_check.equals(check)).toBe(true);
  });

  it("returns the same deployment when ensured again with the same check value", async () => {
    const repository = createPgDeploymentRepository(db.pool);
    const check = randomBytes(32);
    const first = await repository.ensure(check);

    // A copy, so equality cannot come from object identity.
    const second = await repository.ensure(Buffer.from(check));

    expect(second).toEqual({ deploymentId: first.deploymentId, createdAt: first.createdAt, created: false });
    expect(await storedRows()).toHaveLength(1);
  });

  it("refuses a different check value and changes nothing", async () => {
    const repository = createPgDeploymentRepository(db.pool);
    const check = randomBytes(32);
    const first = await repository.ensure(check);
    const before = await storedRows();

    const other = Buffer.from(check);
    other[31] = (other[31] ?? 0) ^ 1;
    await expect(repository.ensure(other)).rejects.toThrow(RootKeyMismatchError);
    await expect(repository.ensure(other)).rejects.toThrow(/root key does not match this database/);
    // Different length: must not throw a RangeError from timingSafeEqual.
    await expect(repository.ensure(check.subarray(0, 16))).rejects.toThrow(RootKeyMismatchError);

    expect(await storedRows()).toEqual(before);
    expect((await repository.ensure(check)).deploymentId).toBe(first.deploymentId);
  });

  it("never puts either check value in the mismatch message", async () => {
    const repository = createPgDeploymentRepository(db.pool);
    const check = randomBytes(32);
    await repository.ensure(check);
    const other = randomBytes(32);

    const error = await repository.ensure(other).then(
      () => undefined,
      (reason: unknown) => reason,
    );

    expect(error).toBeInstanceOf(RootKeyMismatchError);
    const message = (error as Error).message;
    for (const value of [check, other]) {
      expect(message).not.toContain(value.toString("hex"));
      expect(message).not.toContain(value.toString("base64"));
    }
  });

  it("agrees on one deployment when replicas ensure concurrently", async () => {
    const pools = [0, 1, 2, 3].map(() => createPool({ connectionString: db.connectionString, schema: db.schema, max: 1 }));
    try {
      const check = randomBytes(32);
      const results = await Promise.all(pools.map((pool) => createPgDeploymentRepository(pool).ensure(check)));

      expect(new Set(results.map((result) => result.deploymentId)).size).toBe(1);
      expect(results.filter((result) => result.created)).toHaveLength(1);
      expect(await storedRows()).toHaveLength(1);
    } finally {
      await Promise.all(pools.map((pool) => pool.end()));
    }
  });

  it("pings the database", async () => {
    await expect(createPgDeploymentRepository(db.pool).ping()).resolves.toBeUndefined();
    const unreachable = createPool({ connectionString: "postgres://nobody@127.0.0.1:1/none" });
    try {
      await expect(createPgDeploymentRepository(unreachable).ping()).rejects.toThrow();
    } finally {
      await unreachable.end();
    }
  });
});

// The repository relies on these two; they have no test file of their own yet.
describe("createPool", () => {
  it("binds every connection to the schema as its only search_path entry", async () => {
    const clients = await Promise.all([db.pool.connect(), db.pool.connect()]);
    try {
      for (const client of clients) {
        const result = await client.query<{ search_path: string }>("SHOW search_path");
        expect(result.rows[0]?.search_path).toBe(`"${db.schema}"`);
      }
    } finally {
      for (const client of clients) client.release();
    }
  });

  it("quotes schema names that need it", async () => {
    const schema = `Odd "name" \\ with spaces, ${randomBytes(4).toString("hex")}`;
    const admin = createPool({ connectionString: db.connectionString });
    const pool = createPool({ connectionString: db.connectionString, schema });
    try {
      await admin.query(`CREATE SCHEMA ${escapeIdentifier(schema)}`);
      await admin.query(`CREATE TABLE ${escapeIdentifier(schema)}.marker (v text)`);
      await admin.query(`INSERT INTO ${escapeIdentifier(schema)}.marker VALUES ('here')`);
      const result = await pool.query<{ v: string; s: string }>("SELECT v, current_schema() AS s FROM marker");
      expect(result.rows).toEqual([{ v: "here", s: schema }]);
    } finally {
      await pool.end();
      await admin.query(`DROP SCHEMA IF EXISTS ${escapeIdentifier(schema)} CASCADE`);
      await admin.end();
    }
  });

  it("survives the server dropping an idle connection", async () => {
    const errors: Error[] = [];
    const pool = createPool({ connectionString: db.connectionString, schema: db.schema, onError: (e) => errors.push(e) });
    try {
      const pid = (await pool.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]?.pid;
      await db.pool.query("SELECT pg_terminate_backend($1)", [pid]);
      await expect.poll(() => errors.length, { timeout: 5_000 }).toBeGreaterThan(0);
      // The broken client was discarded; the next query gets a fresh one.
      const again = await pool.query<{ one: number }>("SELECT 1 AS one");
      expect(again.rows[0]?.one).toBe(1);
    } finally {
      await pool.end();
    }
  });
});

describe("withTransaction", () => {
  it("commits what fn wrote and returns its result", async () => {
    await db.pool.query("CREATE TABLE tx_probe (v int)");
    const result = await withTransaction(db.pool, async (client) => {
      await client.query("INSERT INTO tx_probe VALUES (1)");
      return "done";
    });
    expect(result).toBe("done");
    expect((await db.pool.query("SELECT v FROM tx_probe")).rows).toEqual([{ v: 1 }]);
  });

  it("rolls back when fn throws and rethrows fn's error", async () => {
    await db.pool.query("CREATE TABLE tx_probe (v int)");
    const failure = new Error("fn failed");
    await expect(
      withTransaction(db.pool, async (client) => {
        await client.query("INSERT INTO tx_probe VALUES (1)");
        throw failure;
      }),
    ).rejects.toBe(failure);
    expect((await db.pool.query("SELECT v FROM tx_probe")).rows).toEqual([]);
  });

  it("keeps fn's error when the rollback fails too, and discards that connection", async () => {
    const pool = createPool({ connectionString: db.connectionString, schema: db.schema, max: 1 });
    try {
      const failure = new Error("fn failed");
      let pid: number | undefined;
      await expect(
        withTransaction(pool, async (client) => {
          pid = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]?.pid;
          // Kill our own connection: the ROLLBACK that follows cannot succeed.
          await db.pool.query("SELECT pg_terminate_backend($1)", [pid]);
          await expect.poll(() => client.query("SELECT 1").then(() => false, () => true)).toBe(true);
          throw failure;
        }),
      ).rejects.toBe(failure);
      const next = await pool.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      expect(next.rows[0]?.pid).not.toBe(pid);
    } finally {
      await pool.end();
    }
  });
});

function escapeIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
