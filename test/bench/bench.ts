/**
 * Keyward's benchmark (`npm run bench [-- options]`; `--help` lists them); not a test.
 *
 * What it measures is what the service adds on top of its transport. A real
 * `keyward serve` runs in a process of its own (port 0, the dev PKI in a
 * temporary data folder, a fresh database schema, the default log level, so
 * the access log line of every call is part of what is measured), driven by
 * load processes of their own with @grpc/grpc-js, each client its own HTTP/2
 * connection. Each case runs at each concurrency for `--seconds` after a
 * warm-up, and is compared with grpc.health.v1.Health/Check on the same server
 * at the same concurrency, measured just before and just after it: every call,
 * Health/Check included, is authenticated, access-logged and audited (answered
 * only once its event is durable), so the ratio isolates the key lookup, the
 * cryptography, validation, the database work of secrets and the larger
 * messages. The baseline's repeated measurements show how much the machine's
 * speed drifted over the run.
 *
 * Output: markdown tables on stdout (progress on stderr), and results.json,
 * results.md and chart.svg in the results folder. The exit code is 1 when any
 * call failed or answered wrongly, a phase had no answered call, the server
 * died, or fewer audit events were written than calls answered; speed never
 * fails a run.
 *
 * Database: KEYWARD_BENCH_DATABASE_URL, else DATABASE_URL, else an embedded
 * PostgreSQL in a temporary folder. The server processes, the load processes,
 * the schema and the temporary folders are removed at the end, on failure and
 * on Ctrl-C too.
 */
import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { defaultOutDir, parseBenchArgs, USAGE, type BenchOptions } from "./lib/args.js";
import { BASELINE, caseById } from "./lib/cases.js";
import { renderChart } from "./lib/chart.js";
import { openBenchDatabase, withClient, type BenchDatabase } from "./lib/database.js";
import { createFixtures } from "./lib/fixtures.js";
import { runPeerComparison, peerMissing } from "./lib/peer.js";
import { PEER_NAMES, peerTable, type Peer, type PeerPhase } from "./lib/peer-report.js";
import { planPhases, splitSlots, type Phase } from "./lib/plan.js";
import { monotonicMs, type Credentials, type Fixtures, type FromLoad, type ToLoad } from "./lib/protocol.js";
import {
  analysePhases,
  baselineTable,
  chartSpec,
  formatCount,
  formatMs,
  resultsTable,
  targetsTable,
  totalErrors,
  workersTable,
  type MeasuredPhase,
  type WorkersRun,
} from "./lib/report.js";
import {
  cpuSeconds,
  machineBusySeconds,
  processTree,
  REPO_ROOT,
  residentMegabytes,
  startServer,
  type ServerProcess,
} from "./lib/server.js";
import { evaluateTargets, mergeLatencies, percentile, type TargetOutcome } from "./lib/stats.js";

/** Time for a "run" message to reach every load process before its warm-up is due to start. */
const DISPATCH_MS = 20;
/** A phase whose results have not arrived this long after its window: a load process is stuck. */
const PHASE_OVERRUN_MS = 60_000;

const log = (line: string) => process.stderr.write(`${line}\n`);

let interrupted = false;
process.on("SIGINT", () => {
  if (interrupted) {
    log("second interrupt: exiting; the schema and temporary folders may be left behind");
    process.exit(130);
  }
  interrupted = true;
  log("interrupted: stopping after this phase");
});

// ---------------------------------------------------------------------------
// Load processes

interface LoadProcess {
  readonly pid: number;
  /** Resolves once the process listens for messages (a message sent earlier could be lost). */
  readonly started: Promise<void>;
  request(message: ToLoad): Promise<FromLoad>;
  close(): Promise<void>;
}

function startLoadProcess(): LoadProcess {
  const child: ChildProcess = fork(join(REPO_ROOT, "test/bench/lib/load-process.ts"), [], {
    cwd: REPO_ROOT,
    // grpc-js names the server by its IP address (SNI); Node warns about it on every connection.
    execArgv: ["--disable-warning=DEP0123", "--import", "tsx"],
    serialization: "advanced",
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  let pending: { resolve: (m: FromLoad) => void; reject: (e: Error) => void } | undefined;
  let exited: string | undefined;
  let onStarted: { resolve: () => void; reject: (e: Error) => void } | undefined;
  const started = new Promise<void>((resolveStarted, reject) => (onStarted = { resolve: resolveStarted, reject }));
  child.on("message", (message: FromLoad) => {
    if (message.type === "started") return onStarted!.resolve();
    const waiting = pending;
    pending = undefined;
    waiting?.resolve(message);
  });
  child.once("exit", (code, signal) => {
    exited = `load process ${child.pid} exited (${code ?? signal})`;
    onStarted!.reject(new Error(exited));
    pending?.reject(new Error(exited));
    pending = undefined;
  });
  // Observed here so that a process that dies before anyone awaits it is no unhandled rejection.
  started.catch(() => {});
  return {
    pid: child.pid!,
    started,
    request: (message) =>
      new Promise((resolveRequest, reject) => {
        if (exited) return reject(new Error(exited));
        pending = { resolve: resolveRequest, reject };
        child.send(message);
      }),
    close: async () => {
      if (exited) return;
      const gone = new Promise((done) => child.once("exit", done));
      child.send({ type: "close" } satisfies ToLoad);
      if ((await Promise.race([gone, sleep(5_000).then(() => "timeout")])) === "timeout") child.kill("SIGKILL");
    },
  };
}

// ---------------------------------------------------------------------------
// One phase

interface CpuSample {
  readonly at: number;
  readonly server: number | undefined;
  readonly load: number | undefined;
  readonly machine: number | undefined;
  readonly rss: number | undefined;
}

/**
 * Runs `caseIds` (in turn, per slot) at `concurrency` over the load
 * processes: warm-up, then the measured window every process shares.
 */
async function runPhase(
  loads: readonly LoadProcess[],
  serverPids: readonly number[],
  phase: number,
  caseIds: readonly string[],
  concurrency: number,
  warmUpSeconds: number,
  seconds: number,
): Promise<MeasuredPhase & { startAtMs: number; endAtMs: number; answered: number }> {
  const slots = splitSlots(concurrency, loads.length);
  const startAtMs = monotonicMs() + DISPATCH_MS + warmUpSeconds * 1000;
  const endAtMs = startAtMs + seconds * 1000;
  const loadPids = loads.map((l) => l.pid);
  const sample = (): CpuSample => ({
    at: monotonicMs(),
    server: cpuSeconds(serverPids),
    load: cpuSeconds(loadPids),
    machine: machineBusySeconds(),
    rss: residentMegabytes(serverPids),
  });
  const at = (time: number) => sleep(Math.max(0, time - monotonicMs())).then(sample);
  const samples = Promise.all([at(startAtMs), at(endAtMs)]);
  const running = Promise.all(
    loads.flatMap((load, i) => {
      const firstSlot = slots.slice(0, i).reduce((a, b) => a + b, 0);
      return slots[i]! > 0 ? [load.request({ type: "run", phase, caseIds, slots: slots[i]!, firstSlot, startAtMs, endAtMs })] : [];
    }),
  );
  let overrun: NodeJS.Timeout | undefined;
  const results = await Promise.race([
    running,
    new Promise<never>((_, reject) => {
      overrun = setTimeout(() => reject(new Error("a load process did not report its phase")), endAtMs - monotonicMs() + PHASE_OVERRUN_MS);
    }),
  ]).finally(() => clearTimeout(overrun));
  const [first, last] = await samples;
  const elapsed = (last.at - first.at) / 1000;
  const cores = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? undefined : (b - a) / elapsed);
  const errorCodes: Record<string, number> = {};
  let firstError: string | undefined;
  for (const r of results) {
    if (r.type === "failed") throw new Error(`a load process failed: ${r.message}`);
    if (r.type !== "result") throw new Error(`unexpected message from a load process: ${r.type}`);
    for (const [code, n] of Object.entries(r.errorCodes)) errorCodes[code] = (errorCodes[code] ?? 0) + n;
    firstError ??= r.firstError;
  }
  const own = results as Extract<FromLoad, { type: "result" }>[];
  return {
    caseId: caseIds[0]!,
    concurrency,
    sample: {
      calls: own.reduce((n, r) => n + r.calls, 0),
      errors: own.reduce((n, r) => n + r.errors, 0),
      seconds,
      latenciesMs: mergeLatencies(own.map((r) => r.latenciesMs)),
    },
    serverCpuSeconds: first.server === undefined || last.server === undefined ? undefined : last.server - first.server,
    cores: { server: cores(first.server, last.server), load: cores(first.load, last.load), machine: cores(first.machine, last.machine) },
    serverRssMb: last.rss,
    errorCodes,
    firstError,
    startAtMs,
    endAtMs,
    answered: own.reduce((n, r) => n + r.answered, 0),
  };
}

// ---------------------------------------------------------------------------
// One server configuration

interface RunOutcome {
  readonly run: WorkersRun;
  readonly targets: TargetOutcome[];
  readonly auditEvents: number | undefined;
  readonly serverLogErrors: { count: number; examples: string[] };
  readonly failures: string[];
}

async function credentialsOf(dataDir: string, name: string): Promise<Credentials> {
  const pki = join(dataDir, "pki");
  const [ca, cert, key] = await Promise.all(["ca.crt", `${name}.crt`, `${name}.key`].map((file) => readFile(join(pki, file))));
  return { ca: ca!, cert: cert!, key: key! };
}

/** How many of `pids` are node processes (the server and its workers, not tsx's esbuild), from /proc. */
function nodeProcesses(pids: readonly number[]): number {
  return pids.filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "node";
    } catch {
      return false;
    }
  }).length;
}

async function runWithWorkers(
  options: BenchOptions,
  workers: number | undefined,
  database: BenchDatabase,
  root: string,
  cpuProfDir: string | undefined,
): Promise<RunOutcome> {
  const label = workers === undefined ? "server defaults" : `KEYWARD_WORKERS=${workers}`;
  const schema = `bench_${randomBytes(6).toString("hex")}`;
  const dataDir = join(root, `data-${workers ?? "default"}`);
  const failures: string[] = [];
  const serverLogErrors = { count: 0, examples: [] as string[] };
  const note = (found: { count: number; examples: string[] }) => {
    serverLogErrors.count += found.count;
    serverLogErrors.examples.push(...found.examples.slice(0, 3 - serverLogErrors.examples.length));
  };
  let server: ServerProcess | undefined;
  const loads: LoadProcess[] = [];
  try {
    log(`\n== ${label}: starting the server (schema ${schema})`);
    const starting = performance.now();
    // Started now, so that their start-up overlaps the server's.
    for (let i = 0; i < options.loadProcesses; i++) loads.push(startLoadProcess());
    server = await startServer({
      env: serverEnv(dataDir, database, schema, workers),
      logFile: join(root, `server-${workers ?? "default"}.log`),
      workers: workers ?? 1,
      cpuProfDir,
    });
    const serverPids = processTree(server.pid);
    const serverProcesses = nodeProcesses(serverPids);
    const address = `127.0.0.1:${server.port}`;
    log(`server: pid ${server.pid}, ${address}, ${serverProcesses} node process(es), listening after ${((performance.now() - starting) / 1000).toFixed(1)} s`);

    const [admin, service] = await Promise.all([credentialsOf(dataDir, "admin"), credentialsOf(dataDir, "service")]);
    const fixtures: Fixtures = await createFixtures(address, admin, service, options.concurrency.at(-1)!);
    const idleRssMb = residentMegabytes(serverPids);
    await Promise.all(
      loads.map(async (load) => {
        await load.started;
        const reply = await load.request({ type: "connect", address, credentials: service, connections: options.connections, fixtures });
        if (reply.type !== "ready") throw new Error(`load process ${load.pid} did not connect: ${reply.type === "failed" ? reply.message : reply.type}`);
      }),
    );
    log(`fixtures made, ${loads.length} load processes connected after ${((performance.now() - starting) / 1000).toFixed(1)} s`);

    const caseIds = options.cases.map((c) => c.id);
    const plan: Phase[] = planPhases(caseIds, options.concurrency, options.baselineEvery);
    const maxConcurrency = options.concurrency.at(-1)!;
    // A fresh server is slower for its first seconds (code not yet optimised,
    // the heap growing): without this the first baseline would meet a colder
    // server than the last one.
    log(`warming the server up: every case in turn at ${maxConcurrency} in flight for ${options.serverWarmUpSeconds} s`);
    const warm = await runPhase(loads, serverPids, -1, [BASELINE.id, ...caseIds], maxConcurrency, 0, options.serverWarmUpSeconds);
    if (warm.sample.errors > 0) failures.push(`${label}: server warm-up: ${warm.sample.errors} errors; first: ${warm.firstError}`);
    note(await server.drainLog());

    // Every answer, warm-ups included: each must have its audit event.
    let answered = warm.answered;
    const measured: MeasuredPhase[] = [];
    const windows: Array<{ caseId: string; concurrency: number; startUs: number; endUs: number; calls: number }> = [];
    for (const [index, phase] of plan.entries()) {
      if (interrupted) break;
      const result = await runPhase(loads, serverPids, index, [phase.caseId], phase.concurrency, options.warmUpSeconds, options.seconds);
      measured.push(result);
      answered += result.answered;
      windows.push({
        caseId: phase.caseId,
        concurrency: phase.concurrency,
        startUs: Math.round(result.startAtMs * 1000),
        endUs: Math.round(result.endAtMs * 1000),
        calls: result.sample.calls + result.sample.errors,
      });
      const bench = caseById(phase.caseId)!;
      const rate = result.sample.calls / result.sample.seconds;
      const core = (v: number | undefined) => (v === undefined ? "?" : v.toFixed(2));
      log(
        `  [${index + 1}/${plan.length}] ${bench.label} at ${phase.concurrency}: ${formatCount(rate)} calls/s` +
          `${bench.itemsPerCall > 1 ? ` (${formatCount(rate * bench.itemsPerCall)} items/s)` : ""}, ` +
          `p99 ${formatMs(percentile(result.sample.latenciesMs, 99))} ms, ${result.sample.errors} errors; ` +
          `cores: server ${core(result.cores.server)}, load ${core(result.cores.load)}, machine ${core(result.cores.machine)} of ${cpus().length}`,
      );
      if (result.sample.errors > 0) {
        const codes = Object.entries(result.errorCodes).map(([code, n]) => `${code} ${n}`).join(", ");
        failures.push(`${label}: ${bench.label} at ${phase.concurrency}: ${result.sample.errors} errors (${codes}); first: ${result.firstError}`);
        log(`    errors: ${codes}; first: ${result.firstError}`);
      }
      if (result.answered === 0) {
        failures.push(`${label}: ${bench.label} at ${phase.concurrency}: no call was answered`);
      }
      const exit = server.exit();
      if (exit) {
        throw new Error(`the server exited (${exit.code ?? exit.signal}) during ${bench.label} at ${phase.concurrency}; its log:\n${await server.logTail()}`);
      }
      note(await server.drainLog());
    }
    if (interrupted) throw new Error("interrupted");

    if (cpuProfDir) {
      const file = join(cpuProfDir, `bench-phases-${server.pid}.json`);
      await writeFile(file, `${JSON.stringify({ serverPid: server.pid, clock: "monotonic µs, as in the profiles", phases: windows }, null, 2)}\n`);
      log(`phase windows written to ${file}`);
    }

    const { phases, baselines } = analysePhases(measured);
    const run: WorkersRun = { workers, serverProcesses, idleRssMb, phases, baselines };

    // Every call answers only once its audit event is durable: the schema
    // holds at least one event per answer (setup adds more).
    const auditEvents = await withClient(database.url, async (db) => {
      const { rows } = await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${db.escapeIdentifier(schema)}.audit_events`);
      return Number(rows[0]!.n);
    }).catch((err: Error) => {
      failures.push(`${label}: could not count audit events: ${err.message}`);
      return undefined;
    });
    if (auditEvents !== undefined && auditEvents < answered) {
      failures.push(`${label}: ${auditEvents} audit events for ${answered} calls answered`);
    }
    if (serverLogErrors.count > 0) {
      log(`server logged ${serverLogErrors.count} error lines; first: ${serverLogErrors.examples[0]}`);
    }
    return { run, targets: evaluateTargets(phases), auditEvents, serverLogErrors, failures };
  } finally {
    await Promise.all(loads.map((l) => l.close()));
    if (server) {
      await server.stop().catch((err: Error) => log(`could not stop the server: ${err.message}`));
    }
    await dropSchema(database, schema);
  }
}

/** The environment of a bench server: port 0, its own data folder and schema. */
function serverEnv(dataDir: string, database: BenchDatabase, schema: string, workers: number | undefined): Record<string, string> {
  return {
    KEYWARD_LISTEN: "127.0.0.1:0",
    KEYWARD_DATA_DIR: dataDir,
    DATABASE_URL: database.url,
    KEYWARD_DB_SCHEMA: schema,
    // The default level: the per-call access line is part of what is measured.
    KEYWARD_LOG_LEVEL: "info",
    KEYWARD_SHUTDOWN_GRACE_MS: "2000",
    ...(workers !== undefined && { KEYWARD_WORKERS: String(workers) }),
  };
}

async function dropSchema(database: BenchDatabase, schema: string): Promise<void> {
  await withClient(database.url, (db) => db.query(`DROP SCHEMA IF EXISTS ${db.escapeIdentifier(schema)} CASCADE`)).catch((err: Error) =>
    log(`could not drop schema ${schema}: ${err.message}`),
  );
}

/**
 * The peer comparison: a server of Keyward's defaults (one worker unless
 * KEYWARD_WORKERS is set), its fixtures, then peer.ts's run.
 */
async function runPeer(options: BenchOptions, peer: Peer, database: BenchDatabase, root: string): Promise<PeerPhase[]> {
  const schema = `bench_${randomBytes(6).toString("hex")}`;
  const dataDir = join(root, "data-peer");
  let server: ServerProcess | undefined;
  try {
    log(`\n== peer comparison with ${PEER_NAMES[peer]}: starting Keyward (schema ${schema})`);
    server = await startServer({ env: serverEnv(dataDir, database, schema, undefined), logFile: join(root, "server-peer.log"), workers: 1, cpuProfDir: undefined });
    const address = `127.0.0.1:${server.port}`;
    const [admin, service] = await Promise.all([credentialsOf(dataDir, "admin"), credentialsOf(dataDir, "service")]);
    const fixtures = await createFixtures(address, admin, service, 1);
    const phases = await runPeerComparison({
      peer,
      address,
      serverPids: processTree(server.pid),
      dataDir,
      fixtures,
      workDir: join(root, "peer"),
      concurrency: options.concurrency,
      seconds: options.seconds,
      warmUpSeconds: options.warmUpSeconds,
      log,
    });
    const exit = server.exit();
    if (exit) throw new Error(`the server exited (${exit.code ?? exit.signal}) during the peer comparison; its log:\n${await server.logTail()}`);
    return phases;
  } finally {
    if (server) await server.stop().catch((err: Error) => log(`could not stop the server: ${err.message}`));
    await dropSchema(database, schema);
  }
}

// ---------------------------------------------------------------------------

function estimateSeconds(options: BenchOptions): number {
  const phases = planPhases(
    options.cases.map((c) => c.id),
    options.concurrency,
    options.baselineEvery,
  ).length;
  return options.workers.length * (options.serverWarmUpSeconds + phases * (options.warmUpSeconds + options.seconds));
}

async function main(): Promise<number> {
  const parsed = parseBenchArgs(process.argv.slice(2));
  if (parsed.kind === "help") {
    process.stdout.write(USAGE);
    return 0;
  }
  if (parsed.kind === "invalid") {
    process.stderr.write(`bench: ${parsed.message}\n${USAGE}`);
    return 2;
  }
  const options = parsed.options;
  const startedAt = new Date();
  const t0 = performance.now();
  // npm runs scripts from the package folder; paths given on the command line are the caller's.
  const callerDir = process.env.INIT_CWD ?? process.cwd();
  const outDir = options.outDir ? resolve(callerDir, options.outDir) : resolve(REPO_ROOT, defaultOutDir(startedAt));
  const cpuProfDir = options.serverCpuProfDir ? resolve(callerDir, options.serverCpuProfDir) : undefined;
  const machine = {
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "unknown",
    loadAverage: loadavg().map((v) => Number(v.toFixed(2))),
  };
  log(
    `keyward bench${options.quick ? " (quick)" : ""}: ${options.cases.length} cases at ${options.concurrency.join(", ")} in flight, ` +
      `${options.warmUpSeconds} s warm-up + ${options.seconds} s each, ${options.loadProcesses} load processes × ${options.connections} connections; ` +
      `about ${Math.round(estimateSeconds(options))} s of load\n` +
      `node ${machine.node}, ${machine.cpus} CPUs, load average ${machine.loadAverage.join(" ")}`,
  );

  const database = await openBenchDatabase();
  log(`database: ${database.description} (ready after ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  const root = await mkdtemp(join(tmpdir(), "keyward-bench-"));
  const outcomes: RunOutcome[] = [];
  const failures: string[] = [];
  let peerPhases: PeerPhase[] = [];
  try {
    if (cpuProfDir) await mkdir(cpuProfDir, { recursive: true });
    for (const workers of options.workers) {
      if (interrupted) break;
      const outcome = await runWithWorkers(options, workers, database, root, cpuProfDir);
      outcomes.push(outcome);
      failures.push(...outcome.failures);
    }
    if (options.peer && !interrupted) {
      const missing = await peerMissing();
      if (missing) {
        failures.push(missing);
      } else {
        peerPhases = await runPeer(options, options.peer, database, root);
        // The peer being slow is a finding, not a failure: only errors, or Keyward answering nothing, fail the run.
        for (const p of peerPhases.filter((p) => p.errors > 0 || (p.target === "keyward" && p.calls === 0))) {
          failures.push(`peer comparison: ${p.target} ${p.caseId} at ${p.concurrency}: ${p.errors} errors, ${p.calls} calls; first: ${p.firstError ?? "none"}`);
        }
      }
    }
  } catch (err) {
    failures.push((err as Error).message);
  } finally {
    await rm(root, { recursive: true, force: true });
    await database.release().catch((err: Error) => log(`could not stop the database: ${err.message}`));
  }
  if (interrupted) {
    log("interrupted: no results written");
    return 130;
  }

  const wallSeconds = (performance.now() - t0) / 1000;
  const title = (run: WorkersRun) => (run.workers === undefined ? "server defaults" : `${run.workers} worker${run.workers === 1 ? "" : "s"}`);
  const sections: string[] = [
    `# Keyward bench, ${startedAt.toISOString()}`,
    "",
    `node ${machine.node}, ${machine.cpus} × ${machine.cpuModel}, load average at start ${machine.loadAverage.join(" ")}; ` +
      `PostgreSQL ${database.description.split(",")[0]}; ${options.loadProcesses} load processes × ${options.connections} connections; ` +
      `${options.warmUpSeconds} s warm-up + ${options.seconds} s per phase; wall time ${Math.round(wallSeconds)} s.`,
  ];
  for (const { run, targets, auditEvents, serverLogErrors } of outcomes) {
    sections.push(
      "",
      `## ${title(run)} (${run.serverProcesses} server process${run.serverProcesses === 1 ? "" : "es"})`,
      "",
      resultsTable(run),
      "",
      "× baseline: the case over the mean of the Health/Check measurements just before and after it at the same concurrency; " +
        "baselines apart: how far those two differed (the noise floor of the ratio). server µs/call: CPU of every server process per answered call, " +
        "and × baseline µs/call the same over the baselines' (steadier than calls/s when other work takes cores).",
      "",
      "Baseline drift:",
      "",
      baselineTable(run),
      "",
      `Targets:`,
      "",
      targetsTable(targets),
      "",
      `Server resident memory: ${formatCount(run.idleRssMb ?? NaN)} MB idle, at most ${formatCount(Math.max(...run.phases.map((p) => p.serverRssMb ?? NaN)))} MB ` +
        `at the end of a phase; audit events written: ${auditEvents ?? "?"}; server error log lines: ${serverLogErrors.count}.`,
    );
  }
  if (outcomes.length > 1) {
    sections.push("", "## Workers compared", "", workersTable(outcomes.map((o) => o.run)));
  }
  if (options.peer && peerPhases.length > 0) {
    const name = PEER_NAMES[options.peer];
    sections.push(
      "",
      `## Keyward and ${name}`,
      "",
      peerTable(peerPhases, options.peer),
      "",
      `Both servers on this machine with the same CA, driven by one Python process (grpcio stubs for Keyward, PyKMIP's client for ${name}), ` +
        "a thread and a connection per call in flight, the two measured one after the other for each case. " +
        "server µs/call: CPU of the server's own processes per answered call. Keyward audits every call durably before answering; " +
        `${name} keeps its objects in SQLite and logs each operation.`,
    );
  }
  if (failures.length > 0) {
    sections.push("", "## Failures", "", ...failures.map((f) => `- ${f}`));
  }
  const markdown = `${sections.join("\n")}\n`;
  process.stdout.write(`\n${markdown}`);

  await mkdir(outDir, { recursive: true });
  const charts: string[] = [];
  for (const { run } of outcomes) {
    const file = outcomes.length === 1 ? "chart.svg" : `chart-workers-${run.workers ?? "default"}.svg`;
    const subtitle = `${startedAt.toISOString()}, ${title(run)}, node ${machine.node}, ${machine.cpus} CPUs; ${options.seconds} s per point`;
    await writeFile(join(outDir, file), renderChart(chartSpec(run, "Keyward bench", subtitle)));
    charts.push(file);
  }
  const json = {
    startedAt: startedAt.toISOString(),
    wallSeconds,
    machine,
    database: database.description.split(",")[0],
    options: { ...options, cases: options.cases.map((c) => c.id), workers: options.workers.map((w) => w ?? null) },
    runs: outcomes.map(({ run, targets, auditEvents, serverLogErrors }) => ({ ...run, targets, auditEvents, serverLogErrors })),
    peer: options.peer ? { name: PEER_NAMES[options.peer], phases: peerPhases } : null,
    failures,
  };
  await writeFile(join(outDir, "results.json"), `${JSON.stringify(json, (_, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`);
  await writeFile(join(outDir, "results.md"), markdown);
  log(`\nresults in ${relative(process.cwd(), outDir) || "."}: ${["results.json", "results.md", ...charts].join(", ")}; wall time ${Math.round(wallSeconds)} s`);
  const errors = outcomes.reduce((n, o) => n + totalErrors(o.run), 0);
  if (failures.length > 0) {
    log(`FAILED: ${failures.length} problem(s)${errors > 0 ? `, ${errors} failed calls` : ""}; see "Failures" above`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
