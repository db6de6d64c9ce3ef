import pg from "pg";

/** Options for {@link createPool}. */
export interface PoolOptions {
  /** A `postgres://` URL (or anything node-postgres accepts as `connectionString`). */
  connectionString: string;
  /**
   * Schema every connection uses as its only `search_path` entry. Unqualified
   * table names then resolve in this schema. Default: the server's own
   * `search_path` (normally `"$user", public`).
   */
  schema?: string;
  /** Maximum number of connections. Default: 10. */
  max?: number;
  /** `application_name` shown in `pg_stat_activity`. Default: `"keyward"`. */
  applicationName?: string;
  /**
   * Called when a connection fails while nobody is awaiting it (an idle client
   * dropped by the server, a network cut between two queries of a checked-out
   * client). The pool has already discarded the broken client. Default: ignore,
   * since the next query on a fresh connection reports any lasting outage.
   */
  onError?: (error: Error) => void;
  /**
   * Client-side bounds, so that a database that stops answering (frozen,
   * partitioned) fails queries instead of hanging them: how long to wait for
   * a connection, and for a query's answer. Default: no bound.
   */
  connectTimeoutMs?: number;
  queryTimeoutMs?: number;
}

/**
 * Creates a node-postgres pool.
 *
 * Guarantees:
 * - With `schema`, every connection (including ones opened later to replace
 *   broken ones) starts with `search_path` set to exactly that schema, through
 *   the `options` startup parameter, so no query can run before it is set.
 * - A connection error that no query is waiting for never becomes an uncaught
 *   `error` event: it goes to `onError` instead of crashing the process.
 *
 * Connecting is lazy: this function does not touch the network and does not
 * throw for an unreachable server (the first query rejects instead).
 *
 * @throws TypeError when `schema` is empty.
 */
export function createPool(options: PoolOptions): pg.Pool {
  const onError = options.onError ?? (() => {});
  const config: pg.PoolConfig = {
    connectionString: options.connectionString,
    max: options.max ?? 10,
    application_name: options.applicationName ?? "keyward",
    ...(options.connectTimeoutMs !== undefined ? { connectionTimeoutMillis: options.connectTimeoutMs } : {}),
    ...(options.queryTimeoutMs !== undefined ? { query_timeout: options.queryTimeoutMs } : {}),
  };
  if (options.schema !== undefined) {
    applySearchPath(config, options.schema);
  }
  const pool = new pg.Pool(config);
  // pg-pool emits "error" for idle clients that break; without a listener
  // Node would turn it into an uncaught exception and kill the server.
  pool.on("error", (error) => onError(error));
  // A checked-out client has no pool listener; if its socket dies between two
  // queries it emits "error" on itself. A permanent listener keeps that from
  // crashing the process; the client is then unusable and its next query
  // rejects, which the caller sees and releases with an error.
  pool.on("connect", (client) => {
    client.on("error", (error) => onError(error));
  });
  return pool;
}

/**
 * Sets `-c search_path=<schema>` as the startup `options` parameter.
 *
 * The schema is quoted as an SQL identifier (so any name works and none is
 * case-folded), then backslash-escaped for the server's whitespace-separated
 * options parser. node-postgres lets an `options` parameter inside the URL
 * override the config field, so when the URL has one we append ours to it there.
 */
function applySearchPath(config: pg.PoolConfig, schema: string): void {
  if (schema.length === 0) {
    throw new TypeError("schema must not be empty");
  }
  const identifier = `"${schema.replaceAll('"', '""')}"`;
  const option = `-c search_path=${identifier.replace(/[\\\s]/g, "\\$&")}`;
  let url: URL | undefined;
  try {
    url = new URL(config.connectionString ?? "");
  } catch {
    url = undefined;
  }
  const existing = url?.searchParams.get("options");
  if (url !== undefined && existing !== null && existing !== undefined) {
    url.searchParams.set("options", `${existing} ${option}`);
    config.connectionString = url.toString();
  } else {
    config.options = option;
  }
}
