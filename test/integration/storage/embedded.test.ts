import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startEmbeddedPostgres } from "../../../src/storage/pg/embedded.js";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const EMBEDDED_MODULE = pathToFileURL(join(REPO_ROOT, "src/storage/pg/embedded.ts")).href;

let root: string;
/** Processes this file started, killed in afterAll if a test failed half-way. */
const spawnedPids = new Set<number>();
const stops: (() => Promise<void>)[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "keyward-embedded-test-"));
  // When running as root the cluster belongs to the postgres system user,
  // which must be able to enter the 0700 folder mkdtemp made.
  await chmod(root, 0o755);
});

afterAll(async () => {
  for (const stop of stops.splice(0)) await stop().catch(() => {});
  for (const pid of spawnedPids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  await rm(root, { recursive: true, force: true });
});

async function query(connectionString: string, sql: string): Promise<Record<string, unknown>[]> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 5_000 });
  client.on("error", () => {});
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Alive and not a zombie (this sandbox's PID 1 may not reap orphans). */
async function isRunning(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const text = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const state = text.slice(text.lastIndexOf(")") + 2, text.lastIndexOf(")") + 3);
  return state !== "" && state !== "Z";
}

async function postmasterPid(dataDir: string): Promise<number> {
  const text = await readFile(join(dataDir, "postmaster.pid"), "utf8");
  return Number.parseInt(text.split("\n")[0] ?? "", 10);
}

/** Starts the cluster in a separate Node process (tsx loader) and resolves once it serves. */
async function startInChild(dataDir: string): Promise<{ child: ChildProcess; connectionString: string }> {
  const script = join(root, "child.mts");
  await writeFile(
    script,
    `import { startEmbeddedPostgres } from ${JSON.stringify(EMBEDDED_MODULE)};
const server = await startEmbeddedPostgres({ dataDir: process.argv[2], log: () => {} });
process.stdout.write("READY " + server.connectionString + "\\n");
setInterval(() => {}, 60_000);
`,
  );
  const child = spawn(process.execPath, ["--import", "tsx", script, dataDir], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (child.pid !== undefined) spawnedPids.add(child.pid);
  let stdout = "";
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const connectionString = await new Promise<string>((resolveReady, reject) => {
    const timer = setTimeout(() => reject(new Error(`child not ready in 20 s: ${stderr}`)), 20_000);
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      const match = /READY (\S+)\n/.exec(stdout);
      if (match?.[1] !== undefined) {
        clearTimeout(timer);
        resolveReady(match[1]);
      }
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`child exited early (code ${code}, signal ${signal}): ${stderr}`));
    });
  });
  return { child, connectionString };
}

describe("startEmbeddedPostgres", () => {
  it("initialises a cluster, serves the keyward database and stops idempotently", async () => {
    const dataDir = join(root, "fresh");
    const lines: string[] = [];
    const server = await startEmbeddedPostgres({ dataDir, log: (line) => lines.push(line) });
    stops.push(server.stop);

    const rows = await query(
      server.connectionString,
      "SELECT current_database() AS db, current_user AS usr, current_setting('server_encoding') AS enc",
    );
    expect(rows).toEqual([{ db: "keyward", usr: "keyward", enc: "UTF8" }]);
    expect(server.connectionString).toMatch(/^postgres:\/\/keyward:[^@]+@127\.0\.0\.1:\d+\/keyward$/);
    const credentials = await stat(join(dataDir, "keyward-credentials.json"));
    expect(credentials.mode & 0o777).toBe(0o600);
    const password = decodeURIComponent(new URL(server.connectionString).password);
    expect(password.length).toBeGreaterThanOrEqual(32);
    expect(lines.join("\n")).not.toContain(password);
    expect(lines.join("\n")).toMatch(/ready to accept connections/);

    await server.stop();
    await server.stop();
    await expect(query(server.connectionString, "SELECT 1")).rejects.toThrow();
    await expect(stat(join(dataDir, "postmaster.pid"))).rejects.toThrow();

    // Second start reuses the cluster and its credentials: data survives.
    const again = await startEmbeddedPostgres({ dataDir, log: () => {} });
    stops.push(again.stop);
    expect(new URL(again.connectionString).password).toBe(new URL(server.connectionString).password);
    await query(again.connectionString, "CREATE TABLE survives (v int)");
    await again.stop();
    const third = await startEmbeddedPostgres({ dataDir, log: () => {} });
    stops.push(third.stop);
    await expect(query(third.connectionString, "SELECT count(*)::int AS n FROM survives")).resolves.toEqual([{ n: 0 }]);
    await third.stop();
  });

  it("takes over a data folder whose owning process was SIGKILLed", async () => {
    const dataDir = join(root, "stale");
    const { child, connectionString } = await startInChild(dataDir);
    const orphanPid = await postmasterPid(dataDir);
    spawnedPids.add(orphanPid);
    await expect(query(connectionString, "SELECT 1 AS one")).resolves.toEqual([{ one: 1 }]);

    const exited = once(child, "exit");
    child.kill("SIGKILL");
    await exited;

    // The postmaster outlives its parent and still holds the folder.
    expect(await isRunning(orphanPid)).toBe(true);
    expect(await postmasterPid(dataDir)).toBe(orphanPid);

    const lines: string[] = [];
    const server = await startEmbeddedPostgres({ dataDir, log: (line) => lines.push(line) });
    stops.push(server.stop);

    expect(await isRunning(orphanPid)).toBe(false);
    expect(lines.join("\n")).toMatch(new RegExp(`stopping PostgreSQL \\(pid ${orphanPid}\\)`));
    expect(await postmasterPid(dataDir)).not.toBe(orphanPid);
    await expect(query(server.connectionString, "SELECT current_database() AS db")).resolves.toEqual([{ db: "keyward" }]);
    await server.stop();
  });

  it("removes a postmaster.pid that names a dead process", async () => {
    const dataDir = join(root, "dead-pid");
    const first = await startEmbeddedPostgres({ dataDir, log: () => {} });
    stops.push(first.stop);
    await first.stop();
    // A pid that cannot be running: above the kernel's pid_max ceiling.
    await writeFile(join(dataDir, "postmaster.pid"), `4194999\n${dataDir}\n`);

    const lines: string[] = [];
    const server = await startEmbeddedPostgres({ dataDir, log: (line) => lines.push(line) });
    stops.push(server.stop);

    expect(lines.join("\n")).toMatch(/removing stale .*postmaster\.pid/);
    await expect(query(server.connectionString, "SELECT 1 AS one")).resolves.toEqual([{ one: 1 }]);
    await server.stop();
  });

  it("reports why PostgreSQL failed to start, without the password", async () => {
    const dataDir = join(root, "port-taken");
    const first = await startEmbeddedPostgres({ dataDir, log: () => {} });
    stops.push(first.stop);
    const port = Number(new URL(first.connectionString).port);
    const password = decodeURIComponent(new URL(first.connectionString).password);
    const otherDir = join(root, "port-taken-2");

    const error = await startEmbeddedPostgres({ dataDir: otherDir, log: () => {}, port }).then(
      () => undefined,
      (reason: unknown) => reason,
    );

    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(/could not bind|Address already in use/i);
    expect((error as Error).message).not.toContain(password);
    await first.stop();
  });

  it("refuses to initialise over a folder that holds other files", async () => {
    const dataDir = join(root, "not-empty");
    await mkdir(dataDir);
    await writeFile(join(dataDir, "notes.txt"), "mine\n");
    await expect(startEmbeddedPostgres({ dataDir, log: () => {} })).rejects.toThrow(/not empty/);
  });
});
