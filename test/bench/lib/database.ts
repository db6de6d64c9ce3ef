/** The bench's PostgreSQL: the one given, else an embedded one of its own. */
import { dirname } from "node:path";
import pg from "pg";
import { startPrivatePostgres } from "../../helpers/private-postgres.js";

export interface BenchDatabase {
  /** May hold a password: never print it. */
  readonly url: string;
  /** Where it points, without credentials. */
  readonly description: string;
  release(): Promise<void>;
}

/**
 * `KEYWARD_BENCH_DATABASE_URL`, else `DATABASE_URL`, else an embedded
 * PostgreSQL started in a fresh temporary folder on a free port, which
 * `release` stops and deletes. Not the shared test database on 5432: the
 * bench should not load other people's test runs, nor be measured against them.
 */
export async function openBenchDatabase(): Promise<BenchDatabase> {
  const given = process.env.KEYWARD_BENCH_DATABASE_URL || process.env.DATABASE_URL;
  if (given) {
    return { url: given, description: `given: ${where(given)}`, release: async () => {} };
  }
  const db = await startPrivatePostgres("keyward-bench-pg-");
  return {
    url: db.connectionString,
    description: `embedded: ${where(db.connectionString)}, in ${dirname(db.dataDir)}`,
    release: () => db.destroy(),
  };
}

function where(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.host}${parsed.pathname}`;
  } catch {
    return "(unparsable URL)";
  }
}

/** Runs `query` on a connection of its own, then closes it. */
export async function withClient<T>(url: string, query: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  client.on("error", () => {});
  await client.connect();
  try {
    return await query(client);
  } finally {
    await client.end().catch(() => {});
  }
}
