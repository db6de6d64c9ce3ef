/** `keyward serve` as the bench's child process, and CPU figures from /proc. */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readdirSync, readFileSync } from "node:fs";
import { open, readFile, truncate } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = fileURLToPath(new URL("../../..", import.meta.url));

const LISTEN_TIMEOUT_MS = 90_000;
const STOP_TIMEOUT_MS = 20_000;

export interface ServerProcess {
  readonly pid: number;
  readonly port: number;
  /** Set once the process has exited. */
  exit(): { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** SIGTERM (drain, and write the CPU profile), then SIGKILL if it does not stop. */
  stop(): Promise<void>;
  /** The log's last lines but access lines (one per call, which say nothing about a failure), for failure messages. */
  logTail(lines?: number): Promise<string>;
  /**
   * Error and fatal lines logged since the last call (at most a few kept),
   * then empties the log file: at info level the access log is a line per
   * call, hundreds of megabytes over a full run.
   */
  drainLog(): Promise<{ count: number; examples: string[] }>;
}

/**
 * Starts `node [--cpu-prof …] --import tsx src/cli.ts serve` with exactly
 * `env` (plus PATH), its stdout and stderr appended to `logFile` rather than
 * piped (reading the access log here would spend the load's CPU on the same
 * cores). Resolves once it logs that it listens — with several workers, once
 * all of them do — with the port it chose.
 */
export async function startServer(options: {
  env: Record<string, string>;
  logFile: string;
  workers: number;
  cpuProfDir: string | undefined;
}): Promise<ServerProcess> {
  const { env, logFile, workers, cpuProfDir } = options;
  const nodeFlags = cpuProfDir ? ["--cpu-prof", `--cpu-prof-dir=${cpuProfDir}`] : [];
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
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitPromise = new Promise<void>((done) =>
    child.once("exit", (code, signal) => {
      exited = { code, signal };
      done();
    }),
  );
  const stop = async () => {
    if (exited) return;
    child.kill("SIGTERM");
    const timer = sleep(STOP_TIMEOUT_MS).then(() => "timeout" as const);
    if ((await Promise.race([exitPromise, timer])) === "timeout") {
      process.stderr.write(`server did not stop within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM; killing it\n`);
      killTree(child.pid!);
      await exitPromise;
    }
  };
  const logTail = async (lines = 40) => {
    const log = await readFile(logFile, "utf8").catch(() => "");
    return tail(log.split("\n").filter((line) => !line.includes('"msg":"call"')).join("\n"), lines);
  };

  // A supervisor of several workers announces once all of them listen.
  const ready = workers > 1 ? '"msg":"keyward workers listening"' : '"msg":"keyward listening"';
  const deadline = performance.now() + LISTEN_TIMEOUT_MS;
  for (;;) {
    const log = await readFile(logFile, "utf8");
    const line = log.split("\n").find((l) => l.includes(ready));
    const match = line ? /"address":"127\.0\.0\.1:(\d+)"/.exec(line) : null;
    if (match) {
      return { pid: child.pid!, port: Number(match[1]), exit: () => exited, stop, logTail, drainLog: () => drainLog(logFile) };
    }
    if (exited || performance.now() > deadline) {
      await stop();
      throw new Error(`keyward ${exited ? `exited (${exited.code ?? exited.signal})` : "timed out"} before listening; its log:\n${tail(log, 40)}`);
    }
    await sleep(100);
  }
}

const tail = (text: string, lines: number) => text.trimEnd().split("\n").slice(-lines).join("\n");

async function drainLog(logFile: string): Promise<{ count: number; examples: string[] }> {
  const examples: string[] = [];
  let count = 0;
  const handle = await open(logFile, "r");
  try {
    // Scanned as bytes, in chunks: the file can be large and only a few lines matter.
    const chunk = Buffer.alloc(4 << 20);
    let carry = Buffer.alloc(0);
    for (let position = 0; ; ) {
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, position);
      if (bytesRead === 0) break;
      position += bytesRead;
      const data = Buffer.concat([carry, chunk.subarray(0, bytesRead)]);
      const lastNewline = data.lastIndexOf(10);
      const complete = lastNewline < 0 ? Buffer.alloc(0) : data.subarray(0, lastNewline + 1);
      carry = Buffer.from(lastNewline < 0 ? data : data.subarray(lastNewline + 1));
      for (const marker of ['"level":"error"', '"level":"fatal"']) {
        for (let at = complete.indexOf(marker); at >= 0; at = complete.indexOf(marker, at + 1)) {
          count++;
          if (examples.length < 3) {
            const start = complete.lastIndexOf(10, at) + 1;
            const end = complete.indexOf(10, at);
            examples.push(complete.subarray(start, end < 0 ? undefined : end).toString("utf8").slice(0, 500));
          }
        }
      }
    }
  } finally {
    await handle.close();
  }
  // The server appends (O_APPEND): after truncation its next line starts the file again.
  await truncate(logFile, 0);
  return { count, examples };
}

/** Parent pid of every process, from /proc (Linux); empty elsewhere. */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      out.set(Number(entry), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // Exited meanwhile.
    }
  }
  return out;
}

/** `root` and every process below it. */
export function processTree(root: number): number[] {
  const parentOf = parents();
  const tree = [root];
  for (let i = 0; i < tree.length; i++) {
    for (const [pid, ppid] of parentOf) if (ppid === tree[i]) tree.push(pid);
  }
  return tree;
}

function killTree(root: number): void {
  for (const pid of processTree(root).reverse()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
}

/** User + system CPU seconds of processes, from /proc (Linux); undefined when none could be read. */
export function cpuSeconds(pids: readonly number[]): number | undefined {
  let total: number | undefined;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      // After the parenthesised command name, utime and stime are fields 12 and 13.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      total = (total ?? 0) + (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
    } catch {
      // Exited, or not Linux.
    }
  }
  return total;
}

/** Busy CPU seconds of the whole machine (every core and process), from /proc/stat; undefined off Linux. */
export function machineBusySeconds(): number | undefined {
  try {
    const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: all but idle and iowait is busy.
    const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
    return (total - cpu[3]! - cpu[4]!) / 100;
  } catch {
    return undefined;
  }
}

/** Resident memory of processes in MB (VmRSS, from /proc; Linux); undefined when none could be read. */
export function residentMegabytes(pids: readonly number[]): number | undefined {
  let total: number | undefined;
  for (const pid of pids) {
    try {
      const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      if (match) total = (total ?? 0) + Number(match[1]) / 1024;
    } catch {
      // Exited, or not Linux.
    }
  }
  return total;
}
