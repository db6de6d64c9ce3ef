import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { Code, ConnectError } from "@connectrpc/connect";

/** How one call ended, seen by the client. */
export interface TimedOutcome<T = unknown> {
  /** Which kind of call (e.g. "Encrypt"), for summaries. */
  readonly kind: string;
  /** Sent as `x-request-id`, so the call's audit event and access log line can be found. */
  readonly requestId: string;
  /** 0 for OK, else the gRPC code. */
  readonly code: Code | 0;
  readonly message: string;
  /** performance.now() when the call was made and when it ended. */
  readonly startedAt: number;
  readonly endedAt: number;
  readonly value?: T;
}

/** The options each call gets: its request id header and its deadline. */
export interface CallOptions {
  readonly headers: Record<string, string>;
  readonly timeoutMs: number;
}

/**
 * Makes one call with a fresh `x-request-id` (`<kind>-<uuid>`) and a
 * deadline; never rejects: failures become the outcome's code and message.
 */
export async function timedCall<T>(
  kind: string,
  call: (options: CallOptions) => Promise<T>,
  timeoutMs: number,
): Promise<TimedOutcome<T>> {
  const requestId = `${kind}-${randomUUID()}`;
  const startedAt = performance.now();
  try {
    const value = await call({ headers: { "x-request-id": requestId }, timeoutMs });
    return { kind, requestId, code: 0, message: "", startedAt, endedAt: performance.now(), value };
  } catch (err) {
    const error = ConnectError.from(err);
    return { kind, requestId, code: error.code, message: error.rawMessage, startedAt, endedAt: performance.now() };
  }
}

/** `{ "OK": 20, "Unavailable": 3 }`: outcomes counted by code name, for readable failures. */
export function codeNames(outcomes: readonly TimedOutcome[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const o of outcomes) {
    const name = o.code === 0 ? "OK" : Code[o.code];
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

/** Resident set size of a process in KiB (VmRSS in /proc/<pid>/status). */
export async function residentKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]);
}

/** Runs `tasks` with at most `concurrency` in flight; resolves with their results in order. */
export async function pooled<T>(tasks: Array<() => Promise<T>>, concurrency: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, tasks.length) }, async () => {
      while (next < tasks.length) {
        const index = next++;
        results[index] = await tasks[index]!();
      }
    }),
  );
  return results;
}
