import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdir, stat, writeFile } from "node:fs/promises";
import type { ClientHttp2Session, ClientHttp2Stream } from "node:http2";
import { connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import pg from "pg";
import { afterEach, describe, expect, inject, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { AccessService, IdentitySource } from "../../gen/keyward/v1/access_pb.js";
import { connectClient } from "../helpers/clients.js";
import { createScratch } from "../helpers/database.js";
import { devCredentials, startTestKeyward, type ClientCredentials, type TestKeyward } from "../helpers/keyward.js";
import { REPO_ROOT } from "../helpers/keyward-process.js";
import type {} from "../setup/global-database.js";

/** The session manager interface the transports accept (not exported by name). */
type SessionManager = NonNullable<Parameters<typeof createGrpcTransport>[0]["sessionManager"]>;

const GET_CALLER_IDENTITY = "/keyward.v1.AccessService/GetCallerIdentity";

type LogEntry = Record<string, unknown> & { msg?: string; level?: string };

/** Keyward's CLI running as a child process, its output collected. */
interface KeywardProcess {
  readonly child: ChildProcess;
  /** stdout lines parsed as JSON (pino); other lines are kept as `{ raw }`. */
  readonly logs: LogEntry[];
  stdout(): string;
  stderr(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first log entry (already written or to come) that matches; rejects if the process exits first. */
  waitForLog(match: (entry: LogEntry) => boolean, timeoutMs?: number): Promise<LogEntry>;
}

const processes = new Set<KeywardProcess>();
const scratch = createScratch("keyward-e2e-");

/** `node --import tsx src/cli.ts <args>` from the repository root, with exactly `env` (plus PATH). */
function runKeyward(args: string[], env: Record<string, string>): KeywardProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: LogEntry[] = [];
  let out = "";
  let err = "";
  let pending = "";
  const listeners = new Set<() => void>();
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop()!;
    for (const line of lines.filter(Boolean)) {
      try {
        logs.push(JSON.parse(line) as LogEntry);
      } catch {
        logs.push({ raw: line });
      }
    }
    listeners.forEach((notify) => notify());
  });
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    err += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      listeners.forEach((notify) => notify());
      resolve({ code, signal });
    }),
  );
  const running: KeywardProcess = {
    child,
    logs,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForLog(match, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`no matching log line within ${timeoutMs} ms\nstdout:\n${out}\nstderr:\n${err}`));
        }, timeoutMs);
        function check() {
          const found = logs.find(match);
          if (found || child.exitCode !== null || child.signalCode !== null) {
            clearTimeout(timer);
            listeners.delete(check);
            if (found) {
              resolve(found);
            } else {
              reject(new Error(`keyward exited (${child.exitCode ?? child.signalCode}) first\nstdout:\n${out}\nstderr:\n${err}`));
            }
          }
        }
        listeners.add(check);
        check();
      });
    },
  };
  processes.add(running);
  void exited.then(() => processes.delete(running));
  return running;
}

/** `keyward serve` on a free port, on the test PostgreSQL in a fresh schema; resolves once it listens. */
async function serve(env: Record<string, string> = {}): Promise<{ keyward: KeywardProcess; dataDir: string; port: number; url: string }> {
  const dataDir = await scratch.tempDir();
  const keyward = runKeyward(["serve"], {
    KEYWARD_DATA_DIR: dataDir,
    DATABASE_URL: inject("databaseUrl"),
    KEYWARD_DB_SCHEMA: scratch.freshSchema(),
    KEYWARD_LISTEN: "127.0.0.1:0",
    ...env,
  });
  const listening = await keyward.waitForLog((entry) => entry.msg === "keyward listening");
  const port = Number(/:(\d+)$/.exec(String(listening.address))?.[1]);
  expect(port).toBeGreaterThan(0);
  return { keyward, dataDir, port, url: `https://127.0.0.1:${port}` };
}

/** Resolves with the error code of a plain TCP connect ("connected" if it succeeds). */
function tcpProbe(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/**
 * A session manager whose unary GetCallerIdentity streams send their HEADERS
 * at once but hold the request body until `release()`: the server has
 * opened those streams and waits for the message, so the calls are
 * genuinely in flight for as long as the test wants.
 */
function holdingSessionManager(url: string, credentials: ClientCredentials) {
  const inner = new Http2SessionManager(url, {}, { ca: credentials.ca, cert: credentials.cert, key: credentials.key });
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const held: ClientHttp2Stream[] = [];
  let holding = false;
  const manager: SessionManager = {
    authority: inner.authority,
    async request(method, path, headers, options) {
      const stream = await inner.request(method, path, headers, options);
      if (holding && path.endsWith("/GetCallerIdentity")) {
        held.push(stream);
        const write = stream.write.bind(stream) as (...args: unknown[]) => boolean;
        const end = stream.end.bind(stream) as (...args: unknown[]) => ClientHttp2Stream;
        (stream as unknown as { write: (...args: unknown[]) => boolean }).write = (...args) => {
          void released.then(() => write(...args));
          return true;
        };
        (stream as unknown as { end: (...args: unknown[]) => ClientHttp2Stream }).end = (...args) => {
          void released.then(() => end(...args));
          return stream;
        };
      }
      return stream;
    },
    notifyResponseByteRead: (stream) => inner.notifyResponseByteRead(stream),
  };
  return {
    manager,
    held,
    hold: () => (holding = true),
    release,
    abort: () => inner.abort(),
  };
}

afterEach(async () => {
  for (const running of [...processes]) {
    running.child.kill("SIGKILL");
    await running.exited;
  }
  await scratch.cleanup();
});

describe("keyward serve as a process", () => {
  it.each(["SIGTERM", "SIGINT"] as const)(
    "drains calls in flight on %s, ends Watch streams, refuses new connections, logs stopped and exits 0",
    async (signal) => {
      const CALLS = 200;
      const { keyward, dataDir, port, url } = await serve();
      const credentials = await devCredentials(dataDir, "service");
      const holder = holdingSessionManager(url, credentials);
      const transport = createGrpcTransport({ baseUrl: url, sessionManager: holder.manager });
      const access = createClient(AccessService, transport);
      const health = createClient(Health, transport);
      try {
        // Warm up: the connection is open and the server answers.
        expect((await access.getCallerIdentity({})).identity).toBe("spiffe://keyward.local/service");

        // A Watch stream, open before the signal.
        const statuses: ServingStatus[] = [];
        let firstStatus!: () => void;
        const gotFirst = new Promise<void>((resolve) => (firstStatus = resolve));
        const watched = (async () => {
          for await (const res of health.watch({ service: "" })) {
            statuses.push(res.status);
            firstStatus();
          }
        })();
        watched.catch(() => firstStatus());
        await gotFirst;
        expect(statuses).toEqual([ServingStatus.SERVING]);

        // 200 unary calls whose bodies are held: in flight until released.
        holder.hold();
        const calls = Array.from({ length: CALLS }, () => access.getCallerIdentity({}));
        calls.forEach((call) => call.catch(() => {}));
        await expect.poll(() => holder.held.length, { timeout: 5_000 }).toBe(CALLS);
        await Promise.all(holder.held.map((s) => (s.id === undefined ? new Promise((r) => s.once("ready", r)) : undefined)));
        const session = holder.held[0]!.session as ClientHttp2Session;
        expect(holder.held.every((s) => s.session === session)).toBe(true);
        // Let the HEADERS frames go out, then a PING round trip: the server has
        // read every HEADERS frame written before it.
        await new Promise((resolve) => setTimeout(resolve, 50));
        await new Promise<void>((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
        const lastStreamId = Math.max(...holder.held.map((s) => s.id!));
        const goaway = new Promise<{ code: number; lastStreamId: number }>((resolve) =>
          session.once("goaway", (code: number, last: number) => resolve({ code, lastStreamId: last })),
        );
        expect(keyward.logs.filter((e) => e.msg === "call" && e.method === GET_CALLER_IDENTITY)).toHaveLength(1);

        const signalled = performance.now();
        expect(keyward.child.kill(signal)).toBe(true);

        await keyward.waitForLog((e) => e.msg === "shutting down: draining calls in flight" && e.signal === signal, 5_000);
        // The server announces the end of the connection, covering every stream it
        // accepted, and is still running: the held calls are not done yet.
        const away = await Promise.race([goaway, keyward.exited]);
        if (!("lastStreamId" in away)) {
          throw new Error(
            `keyward exited (code ${away.code}, signal ${away.signal}) with ${CALLS} calls in flight instead of draining them; ` +
              `last log lines:\n${keyward.stdout().trimEnd().split("\n").slice(-3).join("\n")}`,
          );
        }
        expect(away.code).toBe(0);
        expect(away.lastStreamId).toBeGreaterThanOrEqual(lastStreamId);
        // The Watch stream ends (after NOT_SERVING) without an error, although calls are still held.
        await expect(watched).resolves.toBeUndefined();
        expect(statuses[0]).toBe(ServingStatus.SERVING);
        expect(statuses.slice(1).every((s) => s === ServingStatus.NOT_SERVING)).toBe(true);

        // Still draining: the process waits for the held calls, but takes no new connection.
        expect(keyward.child.exitCode).toBeNull();
        expect(await tcpProbe(port)).toBe("ECONNREFUSED");
        const newcomer = connectClient(AccessService, url, credentials);
        await expect(newcomer.getCallerIdentity({})).rejects.toMatchObject({ code: Code.Unavailable });

        // Release the bodies: every call sent before the signal completes OK.
        holder.release();
        const results = await Promise.allSettled(calls);
        const failures = results.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason));
        expect(failures).toEqual([]);
        for (const result of results) {
          expect((result as PromiseFulfilledResult<{ identity: string }>).value.identity).toBe("spiffe://keyward.local/service");
        }

        const exit = await keyward.exited;
        const elapsed = performance.now() - signalled;
        expect(exit).toEqual({ code: 0, signal: null });
        expect(elapsed).toBeLessThan(10_000);

        // The server saw the calls through: logged OK after the drain began, then "stopped" last.
        const shuttingDown = keyward.logs.findIndex((e) => e.msg === "shutting down: draining calls in flight");
        const drained = keyward.logs.slice(shuttingDown).filter((e) => e.msg === "call" && e.method === GET_CALLER_IDENTITY && e.code === "ok");
        expect(drained).toHaveLength(CALLS);
        expect(keyward.logs.filter((e) => e.msg === "call failed" && e.method === GET_CALLER_IDENTITY)).toEqual([]);
        expect(keyward.logs.at(-1)).toMatchObject({ level: "info", msg: "stopped" });
      } finally {
        holder.release();
        holder.abort();
      }
    },
  );

  it("exits 0 at once on SIGTERM when idle", async () => {
    const { keyward, port } = await serve();
    const signalled = performance.now();
    keyward.child.kill("SIGTERM");
    expect(await keyward.exited).toEqual({ code: 0, signal: null });
    expect(performance.now() - signalled).toBeLessThan(3_000);
    expect(keyward.logs.map((e) => e.msg).slice(-2)).toEqual(["shutting down: draining calls in flight", "stopped"]);
    expect(await tcpProbe(port)).toBe("ECONNREFUSED");
  });
});

describe("keyward serve refuses a bad configuration", () => {
  it("KEYWARD_LISTEN=nonsense: exit 2, the message names the variable, nothing is created", async () => {
    const dataDir = await scratch.tempDir();
    const keyward = runKeyward(["serve"], { KEYWARD_DATA_DIR: dataDir, KEYWARD_LISTEN: "nonsense" });
    expect(await keyward.exited).toEqual({ code: 2, signal: null });
    expect(keyward.stderr()).toMatch(/^keyward: KEYWARD_LISTEN must be host:port/);
    expect(keyward.stdout()).toBe("");
    expect(await readdir(dataDir)).toEqual([]);
  });

  it("KEYWARD_ROOT_KEY not base64: exit 2, the message names the variable and never echoes the value", async () => {
    const dataDir = await scratch.tempDir();
    const secret = `kw_live-${randomBytes(16).toString("hex")}`;
    expect(secret).toHaveLength(40);
    const keyward = runKeyward(["serve"], { KEYWARD_DATA_DIR: dataDir, KEYWARD_ROOT_KEY: secret });
    expect(await keyward.exited).toEqual({ code: 2, signal: null });
    expect(keyward.stderr()).toMatch(/KEYWARD_ROOT_KEY must be the base64 encoding of 32 bytes/);
    const output = keyward.stdout() + keyward.stderr();
    expect(output).not.toContain(secret);
    expect(output).not.toContain(secret.slice(8, 24));
    expect(await readdir(dataDir)).toEqual([]);
  });

  it("a policy file with an unknown role on line 6: non-zero exit, the fatal line names the file and line 6", async () => {
    const dir = await scratch.tempDir();
    const policyFile = join(dir, "policy.yaml");
    await writeFile(
      policyFile,
      [
        "apiVersion: keyward/v1",
        "kind: Policy",
        "rules:",
        "  - name: payments",
        '    identities: ["spiffe://keyward.local/service"]',
        "    roles: [SUPERUSER]",
        '    resources: ["keys/**"]',
        "",
      ].join("\n"),
    );
    const keyward = runKeyward(["serve"], {
      KEYWARD_DATA_DIR: join(dir, "data"),
      DATABASE_URL: inject("databaseUrl"),
      KEYWARD_DB_SCHEMA: scratch.freshSchema(),
      KEYWARD_LISTEN: "127.0.0.1:0",
      KEYWARD_POLICY_FILE: policyFile,
    });
    const exit = await keyward.exited;
    expect(exit.signal).toBeNull();
    expect(exit.code).not.toBe(0);
    const fatal = keyward.logs.find((e) => e.level === "fatal");
    expect(fatal).toMatchObject({ msg: "keyward failed to start" });
    expect(fatal!.error).toContain(policyFile);
    expect(fatal!.error).toMatch(/line 6: .*unknown role "SUPERUSER"/);
    expect(keyward.logs.some((e) => e.msg === "keyward listening")).toBe(false);
  });
});

describe("keyward dev-pki issue", () => {
  let keyward: TestKeyward | undefined;
  afterEach(async () => {
    await keyward?.close();
    keyward = undefined;
  });

  it("--cn-only issues a certificate whose identity is the subject CN, with no roles", async () => {
    keyward = await startTestKeyward();
    const cli = runKeyward(["dev-pki", "issue", "build-bot", "--cn-only"], { KEYWARD_DATA_DIR: keyward.dataDir });
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    expect(cli.stdout()).toContain(join(keyward.pki.dir, "build-bot.crt"));
    expect(cli.stdout()).toContain("identity: build-bot (subject CN)");
    expect((await stat(join(keyward.pki.dir, "build-bot.key"))).mode & 0o777).toBe(0o600);

    const me = await connectClient(AccessService, keyward.url, await keyward.credentials("build-bot")).getCallerIdentity({});
    expect(me.identity).toBe("build-bot");
    expect(me.identitySource).toBe(IdentitySource.COMMON_NAME);
    expect(me.roles).toEqual([]);
    expect(me.grants).toEqual([]);
    expect(me.certificate?.subject).toMatch(/^CN=build-bot\b/);
  });

  it("fails with a hint when there is no dev CA yet", async () => {
    const dataDir = await scratch.tempDir();
    const cli = runKeyward(["dev-pki", "issue", "build-bot", "--cn-only"], { KEYWARD_DATA_DIR: dataDir });
    expect(await cli.exited).toEqual({ code: 1, signal: null });
    expect(cli.stderr()).toContain(`no dev CA in ${join(dataDir, "pki")}`);
  });
});

describe("keyward migrate", () => {
  it("creates the tables in a fresh schema, then reports it up to date", async () => {
    const databaseUrl = inject("databaseUrl");
    const schema = scratch.freshSchema();
    const env = { KEYWARD_DATA_DIR: await scratch.tempDir(), DATABASE_URL: databaseUrl, KEYWARD_DB_SCHEMA: schema };

    const first = runKeyward(["migrate"], env);
    expect(await first.exited).toEqual({ code: 0, signal: null });
    const applied = first.logs.find((e) => e.msg === "migrations applied");
    expect(applied?.migrations).toEqual(expect.arrayContaining([expect.stringMatching(/_create-deployment$/)]));

    const client = new pg.Client({ connectionString: databaseUrl });
    client.on("error", () => {});
    await client.connect();
    try {
      const { rows } = await client.query<{ table: string | null }>("SELECT to_regclass($1)::text AS table", [`${schema}.deployment`]);
      expect(rows[0]?.table).toBe(`${schema}.deployment`);
    } finally {
      await client.end();
    }

    const second = runKeyward(["migrate"], env);
    expect(await second.exited).toEqual({ code: 0, signal: null });
    expect(second.logs.find((e) => e.msg === "database is up to date")).toMatchObject({ migrations: [] });
    expect(second.logs.some((e) => e.msg === "migrations applied")).toBe(false);
  });
});
