/**
 * Crypto RPC benchmark (`npm run bench:crypto [-- --seconds N]`); not a test.
 *
 * Measures what CryptoService adds on top of the transport. A real `keyward
 * serve` runs in a process of its own, as in production, so that the load
 * generator does not share its event loop; it has the dev PKI in a temporary
 * data folder, a fresh database schema and the default log level (info: the
 * access log line of every call is part of what is measured). As the admin
 * identity the bench creates an AES_256_GCM key and an ECDSA_P256_SHA256 key;
 * then, as the service identity, @grpc/grpc-js clients (several channels,
 * each its own HTTP/2 connection) keep `--concurrency` calls in flight for
 * `--seconds` per case, each after a 1 s warm-up of its own:
 *
 *   baseline   grpc.health.v1.Health/Check (the transport, authentication,
 *              access log and audit; no key, no crypto)
 *   Encrypt    1 KiB plaintext
 *   Decrypt    1 KiB plaintext's ciphertext
 *   Sign       ECDSA P-256, 32-byte message
 *   baseline   again, last
 *
 * Every call, Health/Check included, is audited and answers only once its
 * event is durable (group commit), so the ratio to the baseline isolates the
 * key lookup, the cryptography, validation and the larger messages. The
 * baseline runs first and last and the ratio divides by the mean of the two,
 * which cancels a steady drift of a shared machine's speed over the run (not
 * a burst of other work during one case: the per-case "whole machine" CPU
 * shows those). Before the first case every case runs in turn for 5 s, so
 * that the first baseline does not meet a colder server than the last.
 *
 * Besides calls/s the table shows the server's CPU time per call (Linux:
 * /proc), which moves less than calls/s when other processes take cores.
 *
 * Database: KEYWARD_TEST_DATABASE_URL, DATABASE_URL, else
 * postgres://postgres@127.0.0.1:5432/test (or KEYWARD_TEST_PROBE_URL) if it
 * answers, else an embedded PostgreSQL in a temporary folder.
 *
 * Options: --seconds N (per case, default 5), --concurrency N (calls in
 * flight, default 64), --channels N (client connections per service, default
 * 4), --server-cpu-prof DIR (run the server under `node --cpu-prof`: the
 * profile is written to DIR when the server stops, with
 * crypto-bench-phases-<pid>.json giving each measured case's window on the
 * profile's clock and its call count, to split the samples by case).
 *
 * The server process, the schema and the temporary folders are removed at the
 * end, on failure and on Ctrl-C too.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { status as Status, type ServiceError } from "@grpc/grpc-js";
import pg from "pg";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { chooseDatabase, describeDatabase } from "../helpers/choose-database.js";
import { grpcJsClient } from "../helpers/clients.js";
import type { ClientCredentials } from "../helpers/keyward.js";

const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));
const WARM_UP_SECONDS = 1;
const SERVER_WARM_UP_SECONDS = 5;
/** A phase that has not finished this long after its end has a hung call: give up rather than wait forever. */
const STALL_MS = 30_000;
const LISTEN_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "5" },
    concurrency: { type: "string", default: "64" },
    channels: { type: "string", default: "4" },
    "server-cpu-prof": { type: "string" },
  },
});
const SECONDS = Number(args.seconds);
const CONCURRENCY = Number(args.concurrency);
const CHANNELS = Number(args.channels);
if (!(SECONDS > 0) || !Number.isInteger(CONCURRENCY) || CONCURRENCY < 1 || !Number.isInteger(CHANNELS) || CHANNELS < 1) {
  process.stderr.write("usage: crypto-bench [--seconds N] [--concurrency N] [--channels N] [--server-cpu-prof DIR]\n");
  process.exit(2);
}
const CPU_PROF_DIR = args["server-cpu-prof"] ? resolve(args["server-cpu-prof"]) : undefined;

// Ctrl-C ends the phase under way and lets `finally` stop and remove what was
// started; a second one gives up on tidying.
let interrupted = false;
let server: ChildProcess | undefined;
process.on("SIGINT", () => {
  if (interrupted) {
    server?.kill("SIGKILL");
    process.stderr.write("second interrupt: exiting; the schema and temporary folders may be left behind\n");
    process.exit(130);
  }
  interrupted = true;
  process.stderr.write("interrupted: stopping\n");
});

// ---------------------------------------------------------------------------
// The server process

interface ServerProcess {
  readonly child: ChildProcess;
  readonly port: number;
  /** Set once the process has exited. */
  exit(): { code: number | null; signal: NodeJS.Signals | null } | undefined;
  stop(): Promise<void>;
}

/**
 * `keyward serve` as a child process, its log (stdout and stderr) written to
 * `logFile`, not piped: at info level the access log is a line per call, and
 * reading it here would spend the load generator's CPU on the same cores.
 * Resolves once the log says "keyward listening", with the port it chose.
 */
async function serve(env: Record<string, string>, logFile: string): Promise<ServerProcess> {
  const nodeFlags = CPU_PROF_DIR ? ["--cpu-prof", `--cpu-prof-dir=${CPU_PROF_DIR}`] : [];
  const fd = openSync(logFile, "a");
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [...nodeFlags, "--import", "tsx", "src/cli.ts", "serve"], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
      stdio: ["ignore", fd, fd],
    });
  } finally {
    closeSync(fd);
  }
  server = child;
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitPromise = new Promise<void>((done) =>
    child.once("exit", (code, signal) => {
      exited = { code, signal };
      done();
    }),
  );

  const stop = async () => {
    if (exited) return;
    // SIGTERM drains and exits normally, which is also when --cpu-prof writes its profile.
    child.kill("SIGTERM");
    const timer = sleep(STOP_TIMEOUT_MS).then(() => "timeout" as const);
    if ((await Promise.race([exitPromise, timer])) === "timeout") {
      process.stderr.write(`server did not stop within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM; killing it\n`);
      child.kill("SIGKILL");
      await exitPromise;
    }
  };

  const deadline = performance.now() + LISTEN_TIMEOUT_MS;
  for (;;) {
    const log = await readFile(logFile, "utf8");
    const line = log.split("\n").find((l) => l.includes('"msg":"keyward listening"'));
    const match = line ? /"address":"127\.0\.0\.1:(\d+)"/.exec(line) : null;
    if (match) {
      return { child, port: Number(match[1]), exit: () => exited, stop };
    }
    if (exited || interrupted || performance.now() > deadline) {
      await stop();
      const why = exited ? `exited (${exited.code ?? exited.signal})` : interrupted ? "interrupted" : "timed out";
      throw new Error(`keyward ${why} before listening; its log:\n${tail(log, 40)}`);
    }
    await sleep(50);
  }
}

const tail = (text: string, lines: number) => text.trimEnd().split("\n").slice(-lines).join("\n");

/** User + system CPU seconds of a process, from /proc (Linux); undefined elsewhere. */
function processCpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

/** Busy CPU seconds of the whole machine (all cores, every process), from /proc/stat; undefined off Linux. */
function machineBusySeconds(): number | undefined {
  try {
    const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal …: all but idle and iowait is busy.
    const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
    return (total - cpu[3]! - cpu[4]!) / 100;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Load

interface PhaseResult {
  readonly calls: number;
  readonly errors: number;
  readonly errorCodes: ReadonlyMap<string, number>;
  readonly firstError: string | undefined;
  readonly seconds: number;
  readonly latenciesMs: Float64Array;
  /** CPU used during the phase, as a share of one core (1 = one core busy). */
  readonly serverCores: number | undefined;
  readonly clientCores: number;
  /** The whole machine's: what neither the server nor the bench used went to PostgreSQL or to other work. */
  readonly machineCores: number | undefined;
}

/** Keeps `concurrency` calls of `op` in flight for `seconds`; worker `w` calls on channel `w % channels`. */
async function runPhase(seconds: number, op: (channel: number) => Promise<unknown>): Promise<PhaseResult> {
  const latencies: number[] = [];
  const errorCodes = new Map<string, number>();
  let errors = 0;
  let firstError: string | undefined;
  const serverCpu0 = processCpuSeconds(server?.pid);
  const clientCpu0 = process.cpuUsage();
  const machine0 = machineBusySeconds();
  const started = performance.now();
  const end = started + seconds * 1000;
  const workers = Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, w) => {
      const channel = w % CHANNELS;
      while (performance.now() < end && !interrupted) {
        const t0 = performance.now();
        try {
          await op(channel);
          latencies.push(performance.now() - t0);
        } catch (err) {
          errors++;
          const code = (err as Partial<ServiceError>).code;
          const name = code === undefined ? "exception" : (Status[code] ?? String(code));
          errorCodes.set(name, (errorCodes.get(name) ?? 0) + 1);
          firstError ??= (err as Error).message;
        }
      }
    }),
  );
  let stallTimer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    stallTimer = setTimeout(
      () => reject(new Error(`calls still in flight ${STALL_MS / 1000} s after the phase ended`)),
      seconds * 1000 + STALL_MS,
    );
  });
  try {
    await Promise.race([workers, stalled]);
  } finally {
    clearTimeout(stallTimer);
  }
  const elapsed = (performance.now() - started) / 1000;
  const serverCpu1 = processCpuSeconds(server?.pid);
  const clientCpu = process.cpuUsage(clientCpu0);
  const machine1 = machineBusySeconds();
  return {
    calls: latencies.length,
    errors,
    errorCodes,
    firstError,
    seconds: elapsed,
    latenciesMs: Float64Array.from(latencies).sort(),
    serverCores: serverCpu0 !== undefined && serverCpu1 !== undefined ? (serverCpu1 - serverCpu0) / elapsed : undefined,
    clientCores: (clientCpu.user + clientCpu.system) / 1e6 / elapsed,
    machineCores: machine0 !== undefined && machine1 !== undefined ? (machine1 - machine0) / elapsed : undefined,
  };
}

const percentile = (sorted: Float64Array, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

const rateOf = (r: PhaseResult) => r.calls / r.seconds;

// ---------------------------------------------------------------------------

async function credentialsOf(dataDir: string, name: string): Promise<ClientCredentials> {
  const pki = join(dataDir, "pki");
  const [ca, cert, key] = await Promise.all(["ca.crt", `${name}.crt`, `${name}.key`].map((file) => readFile(join(pki, file))));
  return { ca: ca!, cert: cert!, key: key! };
}

async function main(): Promise<number> {
  const database = await chooseDatabase(process.env.KEYWARD_TEST_DATABASE_URL || process.env.DATABASE_URL);
  const schema = `bench_${randomBytes(6).toString("hex")}`;
  const root = await mkdtemp(join(tmpdir(), "keyward-crypto-bench-"));
  const dataDir = join(root, "data");
  const logFile = join(root, "server.log");
  let running: ServerProcess | undefined;
  const closers: Array<() => void> = [];
  try {
    process.stdout.write(
      `database: ${describeDatabase(database)}, schema ${schema}\n` +
        `node ${process.version}, ${cpus().length} CPUs; ${CONCURRENCY} calls in flight over ${CHANNELS} channels, ` +
        `${WARM_UP_SECONDS} s warm-up + ${SECONDS} s per case\n`,
    );
    if (CPU_PROF_DIR) await mkdir(CPU_PROF_DIR, { recursive: true });
    running = await serve(
      {
        KEYWARD_LISTEN: "127.0.0.1:0",
        KEYWARD_DATA_DIR: dataDir,
        DATABASE_URL: database.url,
        KEYWARD_DB_SCHEMA: schema,
        // The port is only in the "keyward listening" line, an info line;
        // info is also the default, so the per-call access log is part of
        // what is measured, as in a default deployment.
        KEYWARD_LOG_LEVEL: "info",
        KEYWARD_SHUTDOWN_GRACE_MS: "2000",
      },
      logFile,
    );
    const address = `127.0.0.1:${running.port}`;
    process.stdout.write(
      `server: pid ${running.child.pid}, ${address}${CPU_PROF_DIR ? `, CPU profile to ${CPU_PROF_DIR}` : ""}\n`,
    );

    const [adminCredentials, serviceCredentials] = await Promise.all([
      credentialsOf(dataDir, "admin"),
      credentialsOf(dataDir, "service"),
    ]);
    const keysClient = grpcJsClient(KeysService, address, adminCredentials);
    closers.push(keysClient.close);
    const aesKey = `bench-aes-${randomBytes(3).toString("hex")}`;
    const ecKey = `bench-ec-${randomBytes(3).toString("hex")}`;
    await keysClient.stubs.createKey({
      keyId: aesKey,
      key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM },
    });
    await keysClient.stubs.createKey({
      keyId: ecKey,
      key: { purpose: KeyPurpose.SIGN_VERIFY, algorithm: KeyAlgorithm.ECDSA_P256_SHA256 },
    });

    const secretsAdmin = grpcJsClient(SecretsService, address, adminCredentials);
    closers.push(secretsAdmin.close);
    const secretName = `secrets/bench/prod/value-${randomBytes(3).toString("hex")}`;
    await secretsAdmin.stubs.createSecret({ parent: "secrets/bench/prod", secretId: secretName.split("/").at(-1)! });

    // One grpc-js client per channel and service: each has its own
    // subchannel pool, hence its own connection, so calls spread over
    // CHANNELS connections instead of queueing on one.
    const channels = <S extends Parameters<typeof grpcJsClient>[0]>(service: S) =>
      Array.from({ length: CHANNELS }, () => {
        const client = grpcJsClient(service, address, serviceCredentials);
        closers.push(client.close);
        return client.stubs;
      });
    const health = channels(Health);
    const crypto = channels(CryptoService);
    const secrets = channels(SecretsService);

    const plaintext = randomBytes(1024);
    const message = randomBytes(32);
    const { ciphertext } = await crypto[0]!.encrypt({ name: `keys/${aesKey}`, plaintext });
    await secrets[0]!.addSecretVersion({ parent: secretName, payload: { data: randomBytes(1024) } });

    const cases: Array<{ name: string; op: (channel: number) => Promise<unknown> }> = [
      { name: "baseline: Health/Check (first)", op: (c) => health[c]!.check({}) },
      { name: "Encrypt 1 KiB (AES-256-GCM)", op: (c) => crypto[c]!.encrypt({ name: `keys/${aesKey}`, plaintext }) },
      { name: "Decrypt 1 KiB (AES-256-GCM)", op: (c) => crypto[c]!.decrypt({ name: `keys/${aesKey}`, ciphertext }) },
      { name: "Sign P-256, 32-byte message", op: (c) => crypto[c]!.sign({ name: `keys/${ecKey}`, input: { case: "message", value: message } }) },
      { name: "AccessSecretVersion 1 KiB (latest)", op: (c) => secrets[c]!.accessSecretVersion({ name: `${secretName}/versions/latest` }) },
      { name: "baseline: Health/Check (last)", op: (c) => health[c]!.check({}) },
    ];

    const results: Array<{ name: string; result: PhaseResult }> = [];
    // With a profile, each measured phase's window on the monotonic clock
    // (the one V8's profile timestamps use, in µs), so that the profile's
    // samples can be split by case.
    const windows: Array<{ name: string; startUs: number; endUs: number; calls: number }> = [];
    const nowUs = () => Number(process.hrtime.bigint() / 1000n);
    // A fresh server is slower for its first seconds (functions not yet
    // optimized, the heap still growing): without this the first baseline
    // would be measured on a colder server than the last one.
    process.stdout.write(`warming the server up: every case in turn, ${SERVER_WARM_UP_SECONDS} s\n`);
    let turn = 0;
    await runPhase(SERVER_WARM_UP_SECONDS, (c) => cases[turn++ % cases.length]!.op(c));
    for (const { name, op } of cases) {
      if (interrupted) break;
      await runPhase(WARM_UP_SECONDS, op);
      const startUs = nowUs();
      const result = await runPhase(SECONDS, op);
      if (interrupted) break;
      windows.push({ name, startUs, endUs: nowUs(), calls: result.calls + result.errors });
      results.push({ name, result });
      const exit = running.exit();
      if (exit) {
        throw new Error(`keyward exited (${exit.code ?? exit.signal}) during "${name}"; its log:\n${tail(await readFile(logFile, "utf8"), 40)}`);
      }
      process.stdout.write(
        `  ${name}: ${Math.round(rateOf(result))} calls/s, ${result.errors} errors; ` +
          `server ${result.serverCores === undefined ? "?" : result.serverCores.toFixed(2)} cores, ` +
          `bench ${result.clientCores.toFixed(2)}, whole machine ${result.machineCores?.toFixed(2) ?? "?"} of ${cpus().length}\n`,
      );
      if (result.firstError !== undefined) {
        process.stdout.write(
          `    errors by code: ${[...result.errorCodes].map(([code, n]) => `${code} ${n}`).join(", ")}; first: ${result.firstError}\n`,
        );
      }
    }
    if (interrupted) {
      process.stderr.write("interrupted: no results\n");
      return 130;
    }
    if (CPU_PROF_DIR) {
      const file = join(CPU_PROF_DIR, `crypto-bench-phases-${running.child.pid}.json`);
      await writeFile(file, `${JSON.stringify({ serverPid: running.child.pid, phases: windows }, null, 2)}\n`);
      process.stdout.write(`phase windows (monotonic µs, as in the profile) written to ${file}\n`);
    }

    const baselines = results.filter((r) => r.name.startsWith("baseline")).map((r) => rateOf(r.result));
    const baseline = baselines.reduce((a, b) => a + b, 0) / baselines.length;
    // Server CPU per call moves less than calls/s when other work shares the
    // machine: a stolen core lowers the rate far more than it raises what each
    // call costs.
    const cpuPerCallUs = (r: PhaseResult) => (r.serverCores === undefined || r.calls === 0 ? NaN : (r.serverCores * r.seconds * 1e6) / r.calls);
    const baselineCpu = results.filter((r) => r.name.startsWith("baseline")).map((r) => cpuPerCallUs(r.result));
    const baselineCpuPerCall = baselineCpu.reduce((a, b) => a + b, 0) / baselineCpu.length;
    const ms = (v: number) => v.toFixed(2);
    process.stdout.write(
      `\n| case | calls/s | p50 ms | p95 ms | p99 ms | errors | ratio to baseline | server CPU µs/call | CPU ratio |\n` +
        `|---|---:|---:|---:|---:|---:|---:|---:|---:|\n` +
        results
          .map(
            ({ name, result: r }) =>
              `| ${name} | ${Math.round(rateOf(r))} | ${ms(percentile(r.latenciesMs, 50))} | ${ms(percentile(r.latenciesMs, 95))} | ` +
              `${ms(percentile(r.latenciesMs, 99))} | ${r.errors} | ${(rateOf(r) / baseline).toFixed(2)} | ` +
              `${Math.round(cpuPerCallUs(r))} | ${(baselineCpuPerCall / cpuPerCallUs(r)).toFixed(2)} |`,
          )
          .join("\n") +
        "\n\n" +
        "ratio: calls/s over the mean of the two baselines' calls/s. CPU ratio: the baselines' mean server CPU per call\n" +
        "over the case's (1.00 = the case costs the server no more than Health/Check; NaN off Linux).\n",
    );
    const drift = Math.abs(baselines[0]! - baselines[1]!) / baseline;
    process.stdout.write(
      `baseline: mean ${Math.round(baseline)} calls/s of ${baselines.map(Math.round).join(" and ")} ` +
        `(${(drift * 100).toFixed(1)}% apart${drift > 0.1 ? ": the machine's speed drifted, read the ratios with care" : ""})\n`,
    );

    // Every call is audited: the schema should hold at least one event per call that answered.
    const answered = results.reduce((n, r) => n + r.result.calls, 0);
    const db = new pg.Client({ connectionString: database.url });
    db.on("error", () => {});
    await db.connect();
    try {
      const { rows } = await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${db.escapeIdentifier(schema)}.audit_events`);
      process.stdout.write(`audit events written: ${rows[0]!.n} (measured calls answered: ${answered}, warm-ups and setup not counted)\n`);
    } finally {
      await db.end().catch(() => {});
    }
    return 0;
  } finally {
    for (const close of closers) {
      try {
        close();
      } catch {
        // Closing a client cannot fail in a way that matters here.
      }
    }
    if (running) {
      await running.stop().catch((err: Error) => process.stderr.write(`could not stop the server: ${err.message}\n`));
    } else if (server && server.exitCode === null && server.signalCode === null) {
      // Started but failed before it could be handed over: nothing to drain.
      server.kill("SIGKILL");
    }
    if (CPU_PROF_DIR && running) {
      process.stdout.write(`server CPU profile written to ${CPU_PROF_DIR}\n`);
    }
    const admin = new pg.Client({ connectionString: database.url });
    admin.on("error", () => {});
    await admin
      .connect()
      .then(() => admin.query(`DROP SCHEMA IF EXISTS ${admin.escapeIdentifier(schema)} CASCADE`))
      .catch((err: Error) => process.stderr.write(`could not drop schema ${schema}: ${err.message}\n`));
    await admin.end().catch(() => {});
    await rm(root, { recursive: true, force: true });
    await database.release();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`crypto bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
