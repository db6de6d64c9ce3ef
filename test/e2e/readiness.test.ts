import { execFileSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import http2 from "node:http2";
import { connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LIVENESS_PATH, METRICS_PATH, READINESS_PATH } from "../../src/server/metrics.js";
import { eventually } from "../helpers/expect.js";
import { devCredentials, type ClientCredentials } from "../helpers/keyward.js";
import { cleanupAfterAll, serveKeyward, type ServerProcess, logLines, type LogLine } from "../helpers/keyward-process.js";
import { startPrivatePostgres, type PrivatePostgres } from "../helpers/private-postgres.js";

/**
 * The probes on the metrics port (README "Operating", "Running in
 * production"): `GET /readyz` answers 503 `starting` while the database is
 * unreachable at start — although the gRPC port already accepts connections —
 * 200 `ready` once every route is served, and 503 `draining` from SIGTERM
 * while calls in flight finish; `GET /livez` answers 200 throughout. With
 * KEYWARD_WORKERS=2 the supervisor answers 200 only while both workers are
 * ready: a database outage later does not change it, but a replacement
 * worker still waiting for its database does.
 */

const WAITING = "listening before the database is reachable";

const cleanups = cleanupAfterAll();


/** A private PostgreSQL, stopped, and a data folder: the server starts before its database. */
async function setUp(): Promise<{ db: PrivatePostgres; dataDir: string }> {
  const db = await startPrivatePostgres();
  cleanups.push(() => db.destroy());
  await db.stop();
  const dataDir = await mkdtemp(join(tmpdir(), "keyward-readiness-"));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  return { db, dataDir };
}

/** `GET path` on the metrics endpoint: status and body. */
async function probe(address: string, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://${address}${path}`);
  return { status: res.status, body: await res.text() };
}

const STARTING = { status: 503, body: "starting\n" };
const READY = { status: 200, body: "ready\n" };
const DRAINING = { status: 503, body: "draining\n" };
const LIVE = { status: 200, body: "ok\n" };
const same = (a: { status: number; body: string }, b: { status: number; body: string }) => a.status === b.status && a.body === b.body;

/** Whether a TCP connection to `port` is accepted: all a TCP probe of the gRPC port would learn. */
function tcpAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * A GetCallerIdentity call whose request body is held back, so that it stays
 * in flight until `finish()` sends it; resolves once the server has read the
 * call's HEADERS frame (a PING sent after it came back).
 */
async function holdCall(url: string, credentials: ClientCredentials) {
  const session = http2.connect(url, { ca: credentials.ca, cert: credentials.cert, key: credentials.key });
  session.on("error", () => {});
  cleanups.push(() => session.destroy());
  const stream = session.request({
    ":method": "POST",
    ":path": "/keyward.v1.AccessService/GetCallerIdentity",
    "content-type": "application/grpc",
    te: "trailers",
  });
  const status = new Promise<string | undefined>((resolve, reject) => {
    stream.once("response", (headers) => headers["grpc-status"] !== undefined && resolve(String(headers["grpc-status"])));
    stream.once("trailers", (trailers) => resolve(String(trailers["grpc-status"])));
    stream.once("close", () => resolve(undefined));
    stream.once("error", reject);
  });
  stream.resume();
  await new Promise((resolve) => stream.once("ready", resolve));
  await new Promise((resolve) => setTimeout(resolve, 50));
  await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
  return {
    /** Sends the (empty) request message and resolves with the call's grpc-status. */
    async finish(): Promise<string | undefined> {
      stream.end(Buffer.alloc(5));
      try {
        return await status;
      } finally {
        session.close();
      }
    },
  };
}

describe.concurrent("GET /readyz and /livez", () => {
  it("one process: starting while the database is unreachable, ready once served, draining from SIGTERM", async () => {
    const { db, dataDir } = await setUp();
    const server = await serveKeyward(
      {
        KEYWARD_DATA_DIR: dataDir,
        DATABASE_URL: db.connectionString,
        KEYWARD_METRICS_LISTEN: "127.0.0.1:0",
        KEYWARD_SHUTDOWN_GRACE_MS: "30000",
      },
      { until: WAITING },
    );
    const metrics = logLines(server).find((l) => "metricsAddress" in l)!.metricsAddress as string;
    expect(metrics).toMatch(/^127\.0\.0\.1:\d+$/);

    // What a TCP probe of the gRPC port would take for ready; /readyz does not.
    expect(await tcpAccepts(Number(new URL(server.url).port))).toBe(true);
    expect(await probe(metrics, READINESS_PATH)).toEqual(STARTING);
    expect(await probe(metrics, LIVENESS_PATH)).toEqual(LIVE);
    expect((await probe(metrics, METRICS_PATH)).status).toBe(200);
    // Probes are plain GETs: anything else is not served.
    expect((await fetch(`http://${metrics}${READINESS_PATH}`, { method: "POST" })).status).toBe(404);
    expect((await probe(metrics, READINESS_PATH)).body).toBe("starting\n");

    await db.start();
    await eventually(() => probe(metrics, READINESS_PATH), (r) => same(r, READY), 20_000, "/readyz after PostgreSQL started");
    // Ready is set once the full routes are in place, after the line saying so.
    await eventually(async () => logLines(server).some((l) => l.msg === "keyward listening"), Boolean, 2_000, "the listening line");

    const held = await holdCall(server.url, await devCredentials(dataDir, "service"));
    server.child.kill("SIGTERM");
    await eventually(() => probe(metrics, READINESS_PATH), (r) => same(r, DRAINING), 5_000, "/readyz after SIGTERM", 20);
    // Still draining: the held call keeps the process up, alive and not ready.
    expect(server.child.exitCode).toBeNull();
    expect(await probe(metrics, LIVENESS_PATH)).toEqual(LIVE);
    expect(await probe(metrics, READINESS_PATH)).toEqual(DRAINING);

    expect(await held.finish()).toBe("0");
    expect(await server.exited).toEqual({ code: 0, signal: null });
    // No probe left a trace: no line names them but the one announcing the
    // endpoint, and no call line but the held one.
    expect(server.lines().filter((l) => /readyz|livez/.test(l)).map((l) => (JSON.parse(l) as LogLine).msg)).toEqual([
      "metrics and probes served at GET /metrics, /readyz, /livez (plain HTTP)",
    ]);
    expect(logLines(server).filter((l) => l.msg === "call").map((l) => l.method)).toEqual(["/keyward.v1.AccessService/GetCallerIdentity"]);
  }, 60_000);

  it("KEYWARD_WORKERS=2: the supervisor is ready only while every live worker is", async () => {
    const { db, dataDir } = await setUp();
    const server = await serveKeyward(
      {
        KEYWARD_DATA_DIR: dataDir,
        DATABASE_URL: db.connectionString,
        KEYWARD_WORKERS: "2",
        KEYWARD_DB_POOL_MAX: "2",
        KEYWARD_METRICS_LISTEN: "127.0.0.1:0",
        KEYWARD_SHUTDOWN_GRACE_MS: "30000",
      },
      { until: "keyward workers listening" },
    );
    const lines = () => logLines(server);
    const metrics = lines().find((l) => l.msg === "keyward workers listening")!.metricsAddress as string;
    const listeningWorkers = () => lines().filter((l) => l.msg === "keyward listening").map((l) => l.worker);

    // Both workers listen, neither has reached its database.
    expect(await probe(metrics, READINESS_PATH)).toEqual(STARTING);
    expect(await probe(metrics, LIVENESS_PATH)).toEqual(LIVE);

    await db.start();
    await eventually(() => probe(metrics, READINESS_PATH), (r) => same(r, READY), 20_000, "/readyz after PostgreSQL started");
    // Each worker logs "keyward listening" before it tells the supervisor.
    await eventually(async () => listeningWorkers().length, (n) => n === 2, 2_000, "both workers serving");

    // A later outage leaves it ready: every replica shares the database.
    await db.stop();
    await eventually(
      async () => lines().filter((l) => l.msg === "database unreachable; reporting NOT_SERVING").length,
      (n) => n === 2,
      10_000,
      "both workers noticing the outage",
    );
    expect(await probe(metrics, READINESS_PATH)).toEqual(READY);

    // A worker dies; its replacement waits for the database, and holds the
    // supervisor at "starting" although the other worker is ready.
    const workers = execFileSync("pgrep", ["-P", String(server.child.pid), "-f", "src/cli.ts"], { encoding: "utf8" }).trim().split("\n").map(Number);
    expect(workers).toHaveLength(2);
    process.kill(workers[0]!, "SIGKILL");
    await eventually(
      async () => lines().some((l) => l.msg.startsWith(WAITING) && l.worker === 3),
      Boolean,
      20_000,
      "the replacement worker waiting for its database",
    );
    expect(await probe(metrics, READINESS_PATH)).toEqual(STARTING);
    expect(await probe(metrics, LIVENESS_PATH)).toEqual(LIVE);

    await db.start();
    await eventually(() => probe(metrics, READINESS_PATH), (r) => same(r, READY), 20_000, "/readyz once the replacement is served");
    await eventually(async () => listeningWorkers().includes(3), Boolean, 2_000, "the replacement serving");

    const held = await holdCall(server.url, await devCredentials(dataDir, "service"));
    server.child.kill("SIGTERM");
    await eventually(() => probe(metrics, READINESS_PATH), (r) => same(r, DRAINING), 5_000, "/readyz after SIGTERM", 20);
    expect(await held.finish()).toBe("0");
    expect(await server.exited).toEqual({ code: 0, signal: null });
  }, 60_000);
});
