/** Socket errors of a database that cannot be reached (refused, reset, unroutable, unresolvable). */
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * SQLSTATEs of a server that is there but not serving: connection
 * exceptions (class 08), shutting down or starting up (57P01-57P03),
 * out of connection slots (53300).
 */
const UNAVAILABLE_SQLSTATES = /^(08...|57P0[1-3]|53300)$/;

/**
 * node-postgres reports a lost or timed-out connection with a plain Error
 * and no code; these are its messages (pg's client.js and pg-pool's index.js).
 */
const CONNECTION_MESSAGES = [
  "Connection terminated",
  "Connection terminated unexpectedly",
  "Connection terminated due to connection timeout",
  "timeout expired",
  "timeout exceeded when trying to connect",
  "Query read timeout",
  "Client has encountered a connection error and is not queryable",
];

/**
 * Whether `error` says that PostgreSQL could not be reached or stopped
 * answering — refused or cut connections, a server shutting down or
 * starting up, a client-side connect or query timeout — rather than that it
 * refused the request itself (bad SQL, a constraint, wrong credentials,
 * a missing database). The first kind goes away by itself: callers are
 * told UNAVAILABLE (retry later), and start-up waits. The second does not.
 *
 * Looks through `cause` chains and AggregateErrors (a host name resolving
 * to several addresses fails with one error per address).
 */
export function isDatabaseUnavailable(error: unknown, depth = 0): boolean {
  if (!(error instanceof Error) || depth > 8) {
    return false;
  }
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && (NETWORK_CODES.has(code) || UNAVAILABLE_SQLSTATES.test(code))) {
    return true;
  }
  if (CONNECTION_MESSAGES.includes(error.message)) {
    return true;
  }
  if (error instanceof AggregateError && error.errors.some((inner) => isDatabaseUnavailable(inner, depth + 1))) {
    return true;
  }
  return isDatabaseUnavailable(error.cause, depth + 1);
}
