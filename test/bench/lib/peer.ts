/**
 * `npm run bench -- --peer kmip`: Keyward and a KMIP server (PyKMIP's, from
 * Debian's python3-pykmip) on the same machine, with the same CA, driven by
 * the same Python client process (drive.py) with the same operations. Not a
 * test: it reports, and fails only when a call fails or answers wrongly.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { kmipServerConfig, parsePeerLine, PEER_CASE_IDS, type Peer, type PeerPhase } from "./peer-report.js";
import type { Fixtures } from "./protocol.js";
import { REPO_ROOT } from "./server.js";

/** Debian's interpreter, which has python3-grpcio, python3-grpc-tools and python3-pykmip. */
const PYTHON = "/usr/bin/python3";
const KMIP_SERVER = "/usr/bin/pykmip-server";
const PEER_START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;

export interface PeerRunInput {
  readonly peer: Peer;
  /** Keyward's address and the pids of its processes, for CPU per call. */
  readonly address: string;
  readonly serverPids: readonly number[];
  /** Keyward's data folder: its dev PKI serves both servers. */
  readonly dataDir: string;
  readonly fixtures: Fixtures;
  /** A folder of the run's own, removed by the caller. */
  readonly workDir: string;
  readonly concurrency: readonly number[];
  readonly seconds: number;
  readonly warmUpSeconds: number;
  readonly log: (line: string) => void;
}

function run(command: string, args: readonly string[], options: { input?: string; cwd?: string } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { cwd: options.cwd ?? REPO_ROOT, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk));
    child.once("error", fail);
    child.once("close", (code) => done({ code, stdout, stderr }));
    child.stdin.end(options.input ?? "");
  });
}

/** Why the peer comparison cannot run on this machine, or undefined when it can. */
export async function peerMissing(): Promise<string | undefined> {
  const probe = await run(PYTHON, ["-c", "import grpc, grpc_tools, kmip"]).catch((err: Error) => ({ code: 1, stderr: err.message }));
  if (probe.code !== 0) {
    return `--peer kmip needs ${PYTHON} with grpcio, grpc_tools and PyKMIP: apt-get install python3-grpcio python3-grpc-tools python3-pykmip`;
  }
  return undefined;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address() as { port: number };
  await new Promise((done) => server.close(done));
  return port;
}

async function waitForPort(port: number, child: ChildProcess, logFile: string): Promise<void> {
  const deadline = Date.now() + PEER_START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the KMIP server exited (${child.exitCode}); see ${logFile}`);
    const open = await new Promise<boolean>((done) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => (socket.destroy(), done(true)));
      socket.once("error", () => done(false));
    });
    if (open) return;
    await sleep(200);
  }
  throw new Error(`the KMIP server did not listen on ${port} within ${PEER_START_TIMEOUT_MS / 1000} s; see ${logFile}`);
}

/**
 * SIGINT is the KMIP server's way to stop (it ignores SIGTERM); what is left
 * of its group after a few seconds is killed.
 */
async function stopKmipServer(kmip: ChildProcess): Promise<void> {
  const exited = kmip.exitCode !== null || kmip.signalCode !== null ? Promise.resolve() : new Promise((done) => kmip.once("exit", done));
  kmip.kill("SIGINT");
  await Promise.race([exited, sleep(STOP_TIMEOUT_MS)]);
  try {
    process.kill(-kmip.pid!, "SIGKILL");
  } catch {
    // The group is gone already.
  }
}

/** Starts the KMIP server, runs drive.py against both servers, and returns its phases. */
export async function runPeerComparison(input: PeerRunInput): Promise<PeerPhase[]> {
  const { workDir, dataDir, log } = input;
  const pki = join(dataDir, "pki");
  const stubs = join(workDir, "stubs");
  await mkdir(join(workDir, "policies"), { recursive: true });
  await mkdir(stubs, { recursive: true });

  // Python stubs from buf's image of the protos, as examples/python does.
  const image = join(stubs, "keyward.binpb");
  for (const [command, args] of [
    [join(REPO_ROOT, "node_modules/.bin/buf"), ["build", "-o", image]],
    [PYTHON, [join(REPO_ROOT, "examples/python/generate_stubs.py"), image, stubs]],
  ] as const) {
    const made = await run(command, args);
    if (made.code !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${made.stderr.trim()}`);
  }

  const port = await freePort();
  const config = join(workDir, "server.conf");
  const logFile = join(workDir, "kmip-server.log");
  await writeFile(
    config,
    kmipServerConfig(port, {
      certificate: join(pki, "server.crt"),
      key: join(pki, "server.key"),
      ca: join(pki, "ca.crt"),
      policies: join(workDir, "policies"),
      database: join(workDir, "kmip.db"),
    }),
  );
  // A process group of its own: the server forks a policy-file monitor,
  // which outlives it unless the group goes.
  const kmip = spawn(PYTHON, [KMIP_SERVER, "-f", config, "-l", logFile], { cwd: workDir, stdio: "ignore", detached: true });
  try {
    await waitForPort(port, kmip, logFile);
    log(`KMIP server (PyKMIP): pid ${kmip.pid}, 127.0.0.1:${port}`);
    const credentials = { ca: join(pki, "ca.crt"), cert: join(pki, "service.crt"), key: join(pki, "service.key") };
    const plan = {
      cases: PEER_CASE_IDS,
      concurrency: input.concurrency,
      seconds: input.seconds,
      warmUpSeconds: input.warmUpSeconds,
      plaintext1k: Buffer.from(input.fixtures.plaintexts["1k"]!).toString("hex"),
      message: Buffer.from(input.fixtures.message).toString("hex"),
      keyward: {
        address: input.address,
        pki: credentials,
        stubs,
        pids: input.serverPids,
        keys: { aes: input.fixtures.keys.aes, rsa2048: input.fixtures.keys.rsa2048 },
        ciphertext1k: Buffer.from(input.fixtures.ciphertexts["1k"]!).toString("hex"),
      },
      kmip: { port, pki: credentials, pid: kmip.pid },
    };
    const phases: PeerPhase[] = [];
    const driver = spawn(PYTHON, [join(REPO_ROOT, "test/bench/peer/drive.py")], { cwd: REPO_ROOT, stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    let pending = "";
    let malformed: Error | undefined;
    driver.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk).slice(-4000)));
    driver.stdout.on("data", (chunk: Buffer) => {
      pending += chunk;
      let newline: number;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        let phase: PeerPhase;
        try {
          phase = parsePeerLine(line);
        } catch (err) {
          malformed ??= err as Error;
          continue;
        }
        phases.push(phase);
        log(
          `  ${phase.target} ${phase.caseId} at ${phase.concurrency}: ${Math.round(phase.callsPerSecond)} calls/s, ` +
            `p99 ${phase.p99Ms?.toFixed(1) ?? "–"} ms, ${phase.errors} errors${phase.firstError ? ` (first: ${phase.firstError})` : ""}`,
        );
      }
    });
    driver.stdin.end(JSON.stringify(plan));
    const code = await new Promise<number | null>((done) => driver.once("close", done));
    if (code !== 0) throw new Error(`the peer driver exited ${code}: ${stderr.trim().split("\n").slice(-5).join(" / ")}`);
    if (malformed) throw malformed;
    return phases;
  } finally {
    await stopKmipServer(kmip);
  }
}
