import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { startEmbeddedPostgres } from "../../src/storage/pg/embedded.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** Base PostgreSQL for integration tests; each test file makes its own schema in it. */
    databaseUrl: string;
  }
}

/** Probed when no URL is configured; override to test the embedded fallback (e.g. a closed port). */
const DEFAULT_PROBE_URL = "postgres://postgres@127.0.0.1:5432/test";
const PROBE_TIMEOUT_MS = 2_000;

/**
 * vitest globalSetup: chooses the PostgreSQL for the whole run, in this order:
 * `KEYWARD_TEST_DATABASE_URL`, `DATABASE_URL`, the probe URL
 * (`KEYWARD_TEST_PROBE_URL`, default `postgres://postgres@127.0.0.1:5432/test`)
 * if it answers within 2 s, else an embedded PostgreSQL in a fresh temporary
 * folder that the teardown stops and deletes.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const configured = process.env.KEYWARD_TEST_DATABASE_URL || process.env.DATABASE_URL;
  if (configured) {
    project.provide("databaseUrl", configured);
    announce("configured", configured);
    return async () => {};
  }
  const probeUrl = process.env.KEYWARD_TEST_PROBE_URL || DEFAULT_PROBE_URL;
  if (await answers(probeUrl)) {
    project.provide("databaseUrl", probeUrl);
    announce("local", probeUrl);
    return async () => {};
  }

  const root = await mkdtemp(join(tmpdir(), "keyward-test-pg-"));
  // mkdtemp makes the folder 0700; when running as root the cluster belongs
  // to the postgres system user, which must be able to enter it.
  await chmod(root, 0o755);
  const lines: string[] = [];
  try {
    const server = await startEmbeddedPostgres({ dataDir: join(root, "data"), log: (line) => lines.push(line) });
    project.provide("databaseUrl", server.connectionString);
    announce("embedded", server.connectionString);
    return async () => {
      await server.stop();
      await rm(root, { recursive: true, force: true });
    };
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: PROBE_TIMEOUT_MS,
    query_timeout: PROBE_TIMEOUT_MS,
  });
  client.on("error", () => {});
  try {
    await client.connect();
    await client.query("SELECT 1");
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

function announce(kind: string, url: string): void {
  let where = "(unparsable URL)";
  try {
    const parsed = new URL(url);
    where = `${parsed.host}${parsed.pathname}`;
  } catch {
    // Never print the raw string: it may hold a password.
  }
  console.log(`[keyward tests] PostgreSQL (${kind}): ${where}`);
}
