import { setTimeout as sleep } from "node:timers/promises";
import { isDatabaseUnavailable } from "./errors.js";

/** Options for {@link waitForDatabase}. */
export interface WaitOptions {
  /** The database's URL: named in log lines by host, port and database only (never user or password). */
  connectionString: string;
  /** Told about each failed attempt, with the redacted error message and the delay before the next. */
  onRetry(retry: { attempt: number; error: string; retryInMs: number; database: string }): void;
  /** Told once, when the first attempt fails and waiting begins; awaited. */
  onWaiting?(): Promise<void> | void;
  /** Aborting ends the wait at once: the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /** First delay between attempts. Default: 500 ms; doubled after each failure. */
  initialDelayMs?: number;
  /** Longest delay between attempts. Default: 10 s. */
  maxDelayMs?: number;
}

/**
 * Runs `attempt` until it succeeds, as long as it fails because the
 * database is unreachable ({@link isDatabaseUnavailable}): at start-up the
 * database may come up after the server (compose, a restarting cluster, a
 * failover). Between attempts it waits with exponential backoff (0.5 s, 1 s,
 * 2 s ... capped at 10 s). Any other failure (wrong credentials, a missing
 * database, a failed migration) is not going to pass by waiting and is
 * thrown at once.
 *
 * @returns what `attempt` returned.
 * @throws the first failure that is not unavailability; the signal's reason when aborted.
 */
export async function waitForDatabase<T>(attempt: () => Promise<T>, options: WaitOptions): Promise<T> {
  const { signal } = options;
  const maxDelayMs = options.maxDelayMs ?? 10_000;
  let delayMs = options.initialDelayMs ?? 500;
  const redact = redactor(options.connectionString);
  for (let n = 1; ; n++) {
    signal?.throwIfAborted();
    try {
      return await abortable(attempt(), signal);
    } catch (err) {
      if (signal?.aborted || !isDatabaseUnavailable(err)) {
        throw err;
      }
      if (n === 1) {
        await options.onWaiting?.();
      }
      options.onRetry({ attempt: n, error: redact(messageOf(err)), retryInMs: delayMs, database: redact.target });
      await sleep(delayMs, undefined, { signal }).catch((error: unknown) => {
        signal?.throwIfAborted();
        throw error;
      });
      delayMs = Math.min(delayMs * 2, maxDelayMs);
    }
  }
}

/** `promise`, or the signal's reason as soon as it aborts (the attempt itself is left to end by its own timeouts). */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) {
    return promise;
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** An AggregateError (every address of a host refused) has an empty message of its own. */
function messageOf(err: unknown): string {
  if (err instanceof AggregateError && err.message === "") {
    return err.errors.map(messageOf).join("; ");
  }
  return err instanceof Error ? err.message : String(err);
}

/**
 * Removes the URL's password (raw and percent-decoded) from any text, and
 * names the target as `host:port/database`. Error messages of pg and node
 * name hosts and ports, not credentials; this holds even if one ever did.
 */
function redactor(connectionString: string): ((text: string) => string) & { target: string } {
  let secrets: string[] = [];
  let target = "(unparsable URL)";
  try {
    const url = new URL(connectionString);
    secrets = [url.password, decodeURIComponent(url.password)].filter((s) => s.length > 0);
    target = `${url.hostname}:${url.port || "5432"}${url.pathname}`;
  } catch {
    // Nothing to name; the text is still passed through below.
  }
  const redact = (text: string) => secrets.reduce((out, secret) => out.replaceAll(secret, "[redacted]"), text);
  return Object.assign(redact, { target: redact(target) });
}
