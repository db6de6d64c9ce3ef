import { createServer, type AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isDatabaseUnavailable } from "../../../src/storage/pg/errors.js";
import { createPool } from "../../../src/storage/pg/pool.js";
import { withTransaction } from "../../../src/storage/pg/transaction.js";
import { waitForDatabase } from "../../../src/storage/pg/wait.js";
import { createTestDatabase, type TestDatabase } from "../../helpers/database.js";
import { startTcpProxy, type TcpProxy } from "../../helpers/tcp-proxy.js";

/** The error a promise rejects with; fails the test if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error("expected a rejection");
}

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function withPort(connectionString: string, port: number): string {
  const url = new URL(connectionString);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return url.toString();
}

describe("isDatabaseUnavailable on real failures", () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  beforeAll(async () => {
    db = await createTestDatabase();
    proxy = await startTcpProxy(Number(new URL(db.connectionString).port || 5432));
  });
  afterAll(async () => {
    await proxy?.close();
    await db?.drop();
  });

  it("is true for a refused connection", async () => {
    const pool = createPool({ connectionString: withPort(db.connectionString, await closedPort()), max: 1 });
    try {
      const err = await rejection(pool.query("SELECT 1"));
      expect((err as Error).message).toMatch(/ECONNREFUSED/);
      expect(isDatabaseUnavailable(err)).toBe(true);
    } finally {
      await pool.end();
    }
  });

  it("is true for connect and query timeouts when the network is cut (connections held open, nothing forwarded)", async () => {
    const pool = createPool({
      connectionString: withPort(db.connectionString, proxy.port),
      schema: db.schema,
      max: 1,
      connectTimeoutMs: 300,
      queryTimeoutMs: 300,
    });
    try {
      await pool.query("SELECT 1");
      proxy.freeze();
      // The pooled connection is there but silent: the query times out.
      const queryTimeout = await rejection(pool.query("SELECT 1"));
      expect((queryTimeout as Error).message).toBe("Query read timeout");
      expect(isDatabaseUnavailable(queryTimeout)).toBe(true);
      // A new connection's handshake never completes: the connect times out.
      const connectTimeout = await rejection(pool.query("SELECT 1"));
      expect((connectTimeout as Error).message).toMatch(/timeout/);
      expect(isDatabaseUnavailable(connectTimeout)).toBe(true);
    } finally {
      proxy.thaw();
      await pool.end();
    }
  });

  it("ends a transaction whose connection stops answering after one query timeout (no ROLLBACK waited for) and drops that connection", async () => {
    const pool = createPool({
      connectionString: withPort(db.connectionString, proxy.port),
      schema: db.schema,
      max: 1,
      connectTimeoutMs: 2_000,
      queryTimeoutMs: 400,
    });
    try {
      await pool.query("SELECT 1");
      let started = 0;
      const err = await rejection(
        withTransaction(pool, async (client) => {
          proxy.freeze();
          started = performance.now();
          await client.query("SELECT 1");
        }),
      );
      const elapsed = performance.now() - started;
      expect((err as Error).message).toBe("Query read timeout");
      // One timeout (400 ms), not two (a ROLLBACK sent down the same silent connection).
      expect(elapsed).toBeLessThan(750);
      expect(pool.totalCount).toBe(0);
      proxy.thaw();
      expect((await pool.query<{ one: number }>("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    } finally {
      proxy.thaw();
      await pool.end();
    }
  });

  // Wrong credentials: see test/faults/database-at-start.test.ts (the shared test database may trust local connections).
  it("is false for what the database itself refuses: bad SQL, an error in a query", async () => {
    const syntax = await rejection(db.pool.query("SELEC 1"));
    expect((syntax as { code?: string }).code).toBe("42601");
    expect(isDatabaseUnavailable(syntax)).toBe(false);

    const divide = await rejection(db.pool.query("SELECT 1 / 0"));
    expect(isDatabaseUnavailable(divide)).toBe(false);

  });

  it("looks through causes and AggregateErrors, and is false for anything that is not an Error", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 10.0.0.1:5432"), { code: "ECONNREFUSED" });
    expect(isDatabaseUnavailable(new Error("wrapped", { cause: refused }))).toBe(true);
    expect(isDatabaseUnavailable(new AggregateError([new Error("x"), refused]))).toBe(true);
    expect(isDatabaseUnavailable(Object.assign(new Error("the database system is starting up"), { code: "57P03" }))).toBe(true);
    expect(isDatabaseUnavailable(Object.assign(new Error("too many clients already"), { code: "53300" }))).toBe(true);
    expect(isDatabaseUnavailable(Object.assign(new Error("password authentication failed"), { code: "28P01" }))).toBe(false);
    expect(isDatabaseUnavailable("ECONNREFUSED")).toBe(false);
    expect(isDatabaseUnavailable(undefined)).toBe(false);
  });
});

describe("waitForDatabase", () => {
  const unreachable = () => Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" });
  const url = "postgres://keyward:p%40ss-w0rd@db.internal:6543/keyward";

  it("retries while the database is unreachable, doubling the delay up to the cap, and returns the attempt's result", async () => {
    const retries: Array<{ attempt: number; retryInMs: number; database: string }> = [];
    let waiting = 0;
    let attempts = 0;
    const result = await waitForDatabase(
      async () => {
        attempts++;
        if (attempts < 5) throw unreachable();
        return "migrated";
      },
      {
        connectionString: url,
        initialDelayMs: 5,
        maxDelayMs: 20,
        onWaiting: () => void waiting++,
        onRetry: ({ attempt, retryInMs, database }) => retries.push({ attempt, retryInMs, database }),
      },
    );
    expect(result).toBe("migrated");
    expect(waiting).toBe(1);
    expect(retries).toEqual([
      { attempt: 1, retryInMs: 5, database: "db.internal:6543/keyward" },
      { attempt: 2, retryInMs: 10, database: "db.internal:6543/keyward" },
      { attempt: 3, retryInMs: 20, database: "db.internal:6543/keyward" },
      { attempt: 4, retryInMs: 20, database: "db.internal:6543/keyward" },
    ]);
  });

  it("throws any other failure at once, without waiting", async () => {
    let waiting = 0;
    const refused = Object.assign(new Error('password authentication failed for user "keyward"'), { code: "28P01" });
    const err = await rejection(
      waitForDatabase(() => Promise.reject(refused), { connectionString: url, onWaiting: () => void waiting++, onRetry: () => {} }),
    );
    expect(err).toBe(refused);
    expect(waiting).toBe(0);
  });

  it("never reports the password, raw or decoded, even if an error message held it", async () => {
    const errors: string[] = [];
    const controller = new AbortController();
    await rejection(
      waitForDatabase(
        () => Promise.reject(Object.assign(new Error("could not reach p@ss-w0rd and p%40ss-w0rd"), { code: "ETIMEDOUT" })),
        {
          connectionString: url,
          initialDelayMs: 1,
          signal: controller.signal,
          onRetry: ({ error }) => {
            errors.push(error);
            controller.abort();
          },
        },
      ),
    );
    expect(errors).toEqual(["could not reach [redacted] and [redacted]"]);
  });

  it("ends at once when aborted, during an attempt or between two, with the signal's reason", async () => {
    const between = new AbortController();
    const started = performance.now();
    const pending = waitForDatabase(() => Promise.reject(unreachable()), {
      connectionString: url,
      initialDelayMs: 60_000,
      signal: between.signal,
      onRetry: () => setTimeout(() => between.abort(), 10),
    });
    expect((await rejection(pending)) as Error).toMatchObject({ name: "AbortError" });
    expect(performance.now() - started).toBeLessThan(1_000);

    const during = new AbortController();
    const hanging = waitForDatabase(() => new Promise(() => {}), { connectionString: url, signal: during.signal, onRetry: () => {} });
    setTimeout(() => during.abort(), 10);
    expect((await rejection(hanging)) as Error).toMatchObject({ name: "AbortError" });
  });
});
