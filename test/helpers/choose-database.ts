import pg from "pg";
import { startPrivatePostgres } from "./private-postgres.js";

/** Probed when no URL is configured; KEYWARD_TEST_PROBE_URL overrides it (e.g. a closed port, to test the fallback). */
const DEFAULT_PROBE_URL = "postgres://postgres@127.0.0.1:5432/test";
const PROBE_TIMEOUT_MS = 2_000;

/** A PostgreSQL to run against, and how to let go of it. */
export interface ChosenDatabase {
  readonly url: string;
  /** "configured", "local" or "embedded". */
  readonly kind: string;
  release(): Promise<void>;
}

/**
 * Chooses the PostgreSQL for tests and benchmarks, in this order: `configured`
 * (the caller's environment variable), the probe URL (`KEYWARD_TEST_PROBE_URL`,
 * default `postgres://postgres@127.0.0.1:5432/test`) if it answers within 2 s,
 * else an embedded PostgreSQL in a fresh temporary folder that `release`
 * stops and deletes.
 */
export async function chooseDatabase(configured: string | undefined): Promise<ChosenDatabase> {
  if (configured) {
    return { url: configured, kind: "configured", release: async () => {} };
  }
  const probeUrl = process.env.KEYWARD_TEST_PROBE_URL || DEFAULT_PROBE_URL;
  if (await answers(probeUrl)) {
    return { url: probeUrl, kind: "local", release: async () => {} };
  }
  const db = await startPrivatePostgres("keyward-test-pg-");
  return { url: db.connectionString, kind: "embedded", release: () => db.destroy() };
}

/** Where a URL points, without anything else from it: the raw string may hold a password. */
export function describeDatabase(database: ChosenDatabase): string {
  try {
    const parsed = new URL(database.url);
    return `PostgreSQL (${database.kind}): ${parsed.host}${parsed.pathname}`;
  } catch {
    return `PostgreSQL (${database.kind}): (unparsable URL)`;
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
