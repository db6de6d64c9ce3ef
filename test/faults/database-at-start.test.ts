import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { expectFailure, eventually } from "../helpers/expect.js";
import { devCredentials } from "../helpers/keyward.js";
import { cleanupAfterAll, serveKeyward, type ServerProcess, logLines } from "../helpers/keyward-process.js";
import { startPrivatePostgres, type PrivatePostgres } from "../helpers/private-postgres.js";

/**
 * `keyward serve` started while its database is unreachable: it listens at
 * once, says so in one clear log line per attempt (never the password),
 * retries with exponential backoff, answers health NOT_SERVING and every
 * other call UNAVAILABLE, and serves — without a restart — once PostgreSQL
 * starts. SIGTERM while it waits exits 0 at once; a database that answers
 * but refuses (wrong password) is not waited for.
 */

const WAITING = "listening before the database is reachable";
const STARTING = "keyward is starting: the database is not reachable yet";

const cleanups = cleanupAfterAll();

const retries = (server: ServerProcess) => logLines(server).filter((l) => l.msg.startsWith("database unreachable; retrying in"));

async function setUp(): Promise<{ db: PrivatePostgres; dataDir: string; password: string }> {
  const db = await startPrivatePostgres();
  cleanups.push(() => db.destroy());
  await db.stop();
  const dataDir = await mkdtemp(join(tmpdir(), "keyward-faults-start-"));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  return { db, dataDir, password: decodeURIComponent(new URL(db.connectionString).password) };
}

describe.concurrent("keyward serve before its database", () => {
  it("waits with backoff, answers health NOT_SERVING and calls UNAVAILABLE, then serves once PostgreSQL starts", async () => {
    const { db, dataDir, password } = await setUp();
    const server = await serveKeyward({ KEYWARD_DATA_DIR: dataDir, DATABASE_URL: db.connectionString }, { until: WAITING });
    const transport = createGrpcTransport({ baseUrl: server.url, nodeOptions: await devCredentials(dataDir, "service") });
    const health = createClient(Health, transport);
    const access = createClient(AccessService, transport);
    const crypto = createClient(CryptoService, transport);

    const statuses: ServingStatus[] = [];
    const watching = (async () => {
      for await (const res of health.watch({ service: "" })) statuses.push(res.status);
    })().catch(() => {});

    expect((await health.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    await expectFailure(access.getCallerIdentity({}), Code.Unavailable, STARTING);
    await expectFailure(crypto.encrypt({ name: "keys/k", plaintext: Buffer.from("x") }), Code.Unavailable, STARTING);
    // Gated as always: a caller without the role is refused as such, not told about the database.
    await expectFailure(
      createClient(KeysService, transport).createKey({ keyId: "k", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } }),
      Code.PermissionDenied,
      "spiffe://keyward.local/service may not call keyward.v1.KeysService/CreateKey: it requires the ADMIN role",
    );

    // Three attempts: 0.5 s, 1 s, 2 s apart.
    await eventually(async () => retries(server).length, (n) => n >= 3, 15_000, "three retries logged");
    const [first, second, third] = retries(server);
    expect(first).toMatchObject({ level: "warn", attempt: 1, retryInMs: 500, msg: "database unreachable; retrying in 500 ms" });
    expect(first!.database).toBe(`127.0.0.1:${db.port}/keyward`);
    expect(String(first!.error)).toMatch(/ECONNREFUSED/);
    expect(second).toMatchObject({ attempt: 2, retryInMs: 1000 });
    expect(third).toMatchObject({ attempt: 3, retryInMs: 2000 });
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);

    const startedAt = performance.now();
    await db.start();
    await eventually(
      async () => (await health.check({ service: "" })).status,
      (status) => status === ServingStatus.SERVING,
      15_000,
      "health SERVING after PostgreSQL started",
      50,
    );
    const servingAfterMs = Math.round(performance.now() - startedAt);
    expect((await access.getCallerIdentity({})).identity).toBe("spiffe://keyward.local/service");
    const admin = createClient(KeysService, createGrpcTransport({ baseUrl: server.url, nodeOptions: await devCredentials(dataDir, "admin") }));
    await admin.createKey({ keyId: "k", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
    const { ciphertext } = await crypto.encrypt({ name: "keys/k", plaintext: Buffer.from("x") });
    expect(Buffer.from((await crypto.decrypt({ name: "keys/k", ciphertext })).plaintext).toString()).toBe("x");
    expect(server.child.exitCode).toBeNull();
    expect(statuses).toEqual([ServingStatus.NOT_SERVING, ServingStatus.SERVING]);
    expect(logLines(server).filter((l) => l.msg === "keyward listening")).toHaveLength(1);
    // The password is in DATABASE_URL only: never in the output.
    expect(server.output()).not.toContain(password);
    const attempts = retries(server).length;
    console.log(`[faults] start before the database: ${attempts} attempts, SERVING ${servingAfterMs} ms after PostgreSQL started`);
    // Backoff: the next attempt comes at most 4 s (the 4th delay) after the start, plus start-up work.
    expect(servingAfterMs).toBeLessThan(10_000);

    server.child.kill("SIGTERM");
    expect(await server.exited).toEqual({ code: 0, signal: null });
    await watching;
  }, 60_000);

  it("exits 0 at once on SIGTERM while waiting", async () => {
    const { db, dataDir } = await setUp();
    const server = await serveKeyward({ KEYWARD_DATA_DIR: dataDir, DATABASE_URL: db.connectionString }, { until: WAITING });
    await eventually(async () => retries(server).length, (n) => n >= 2, 15_000, "two retries logged");
    const signalled = performance.now();
    server.child.kill("SIGTERM");
    expect(await server.exited).toEqual({ code: 0, signal: null });
    const exitMs = Math.round(performance.now() - signalled);
    expect(exitMs).toBeLessThan(3_000);
    expect(logLines(server).at(-1)).toMatchObject({ level: "info", msg: "stopped before the database was reachable", signal: "SIGTERM" });
    console.log(`[faults] SIGTERM while waiting for the database: exit 0 after ${exitMs} ms`);
  }, 60_000);

  it("does not wait for a database that answers but refuses: a wrong password fails start-up at once", async () => {
    const { db, dataDir } = await setUp();
    await db.start();
    const url = new URL(db.connectionString);
    url.password = "not-the-password";
    const started = performance.now();
    const failure = await serveKeyward({ KEYWARD_DATA_DIR: dataDir, DATABASE_URL: url.toString() }).then(
      () => new Error("keyward started with a wrong database password"),
      (err: Error) => err,
    );
    // The rejection carries the process's output: one fatal line, no retry, no password.
    expect(failure.message).toMatch(/exited \(1\) before listening/);
    expect(failure.message).toMatch(/"level":"fatal".*password authentication failed/);
    expect(failure.message).not.toMatch(/retrying|before the database is reachable/);
    expect(failure.message).not.toContain("not-the-password");
    expect(performance.now() - started).toBeLessThan(20_000);
  }, 60_000);
});
