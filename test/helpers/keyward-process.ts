import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll } from "vitest";

/** The repository root: the CLI runs from there, as `npm run keyward` would. */
export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** How a CLI command ended, and everything it wrote. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * `node --import tsx src/cli.ts <args>` with exactly `env` (plus PATH), so
 * nothing from the test runner's environment leaks into the command;
 * resolves when it exits.
 */
export function keywardCli(args: string[], env: Record<string, string>): Promise<CliRun> {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** `keyward serve` running as a child process. */
export interface ServerProcess {
  readonly child: ChildProcess;
  readonly url: string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** stdout and stderr so far, for failure messages. */
  output(): string;
  /** The stdout lines so far (pino JSON), empty lines left out. */
  lines(): string[];
}

const running = new Set<ChildProcess>();

/**
 * `keyward serve` as a child process on loopback port 0, with exactly `env`
 * (plus PATH); resolves once it logs "keyward listening" (or the message
 * starting with `options.until`, which must carry the address), rejects if
 * it exits first or has not listened within 30 s. Stop what is left with
 * killServerProcesses() after the tests.
 */
export async function serveKeyward(env: Record<string, string>, options: { until?: string } = {}): Promise<ServerProcess> {
  const until = `"msg":"${options.until ?? "keyward listening"}`;
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", "serve"], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", KEYWARD_LISTEN: "127.0.0.1:0", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  let out = "";
  let err = "";
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`keyward did not listen within 30 s\n${out}\n${err}`)), 30_000);
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (err += chunk));
    let listening = false;
    child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
      // Searched until found only: a busy server writes megabytes of access log.
      const match = !listening && out.includes(until) ? /"address":"127\.0\.0\.1:(\d+)"/.exec(out) : null;
      if (match) {
        listening = true;
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`keyward exited (${code ?? signal}) before listening\n${out}\n${err}`));
    });
  });
  return {
    child,
    url: `https://127.0.0.1:${port}`,
    exited,
    output: () => `${out}\n${err}`,
    lines: () => out.split("\n").filter(Boolean),
  };
}

/** A pino JSON line of the server's log. */
export type LogLine = Record<string, unknown> & { msg: string };

/** The server's stdout so far as parsed log lines (anything not JSON left out). */
export function logLines(server: ServerProcess): LogLine[] {
  return server.lines().flatMap((line) => {
    try {
      return [JSON.parse(line) as LogLine];
    } catch {
      return [];
    }
  });
}

/** SIGKILLs every process serveKeyward started that has not exited yet. */
export function killServerProcesses(): void {
  for (const child of running) {
    child.kill("SIGKILL");
  }
}

/**
 * Steps to run once a file's tests are done (push onto the returned list):
 * every server process serveKeyward started is killed first, then the
 * steps run, the last added first.
 */
export function cleanupAfterAll(): Array<() => Promise<unknown> | unknown> {
  const steps: Array<() => Promise<unknown> | unknown> = [];
  afterAll(async () => {
    killServerProcesses();
    for (const step of steps.reverse()) await step();
  });
  return steps;
}
