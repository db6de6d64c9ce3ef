import { DomainError } from "../errors.js";
import type { AuditEvent, AuditRecord } from "./event.js";

/** Settings of {@link createGroupCommitter}. */
export interface GroupCommitOptions {
  /**
   * Writes records as one durable unit and returns their events, in order.
   * Called for one batch at a time: batches never overlap.
   */
  writeBatch(records: readonly AuditRecord[]): Promise<AuditEvent[]>;
  /** Most records per batch. */
  maxBatch: number;
  /** Most records waiting (queued or in the batch being written); beyond it appends fail at once. */
  maxPending: number;
  /** How long an append may wait for durability before it fails. */
  timeoutMs: number;
  /** Told about failed batch writes (the callers get UNAVAILABLE). */
  onWriteError?(error: unknown, records: number): void;
  /** Told the number of records of each batch as its write starts (for metrics). Default: nothing. */
  onBatch?(records: number): void;
}

/** Appends records durably, many calls per write. */
export interface GroupCommitter {
  /**
   * Resolves with the event once it is durable. Rejects with a DomainError
   * "unavailable" when the write fails, when it is not durable within the
   * timeout, when `signal` aborts first (the call's deadline or
   * cancellation), or at once when too many appends are pending: a stalled
   * database makes calls fail fast rather than pile up.
   */
  append(record: AuditRecord, signal?: AbortSignal): Promise<AuditEvent>;
  /** Number of records waiting. */
  readonly pending: number;
  /** Writes what is queued, then refuses new appends. */
  close(): Promise<void>;
}

interface Waiter {
  readonly record: AuditRecord;
  readonly deadline: number;
  resolve: (event: AuditEvent) => void;
  reject: (error: DomainError) => void;
  settled: boolean;
}

const unavailable = (message: string, cause?: unknown) => new DomainError("unavailable", message, { cause });
const timeout = () => unavailable("audit log unavailable: the event could not be made durable in time");

/**
 * Group commit: while one batch is being written, new records queue up, and
 * the next batch takes all of them (up to `maxBatch`). Under load a batch
 * holds as many calls as arrived during one commit, so throughput scales with
 * concurrency while each caller waits about one commit.
 *
 * A waiter whose time runs out is failed at once, even if its batch is still
 * being written; the event may still become durable afterwards. An audited
 * call can thus fail yet leave an event, but no call can succeed without one.
 */
export function createGroupCommitter(options: GroupCommitOptions): GroupCommitter {
  const queue: Waiter[] = [];
  let current: Waiter[] = [];
  let writing: Promise<void> | undefined;
  let closed = false;

  const expire = () => {
    const now = Date.now();
    while (queue.length > 0 && queue[0]!.settled) {
      queue.shift();
    }
    for (const waiter of [...current, ...queue]) {
      if (waiter.deadline <= now) {
        settle(waiter, timeout());
      }
    }
  };
  const sweeper = setInterval(expire, 20);
  sweeper.unref();

  const drain = async (): Promise<void> => {
    while (queue.length > 0) {
      const batch = queue.splice(0, options.maxBatch).filter((waiter) => !waiter.settled);
      if (batch.length === 0) {
        continue;
      }
      current = batch;
      options.onBatch?.(batch.length);
      // The sweeper fails each waiter at its own deadline; the batch as a
      // whole is given up when the last of them has passed.
      const timeLeft = Math.max(0, Math.max(...batch.map((waiter) => waiter.deadline)) - Date.now());
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeLeft);
      });
      const written = options.writeBatch(batch.map((waiter) => waiter.record));
      try {
        const outcome = await Promise.race([written, timedOut]);
        if (outcome === "timeout") {
          batch.forEach((waiter) => settle(waiter, timeout()));
          // Wait for the write to end before starting the next batch: batches never overlap.
          await written.catch((err: unknown) => options.onWriteError?.(err, batch.length));
        } else {
          batch.forEach((waiter, index) => settle(waiter, outcome[index]!));
        }
      } catch (err) {
        options.onWriteError?.(err, batch.length);
        batch.forEach((waiter) => settle(waiter, unavailable("audit log unavailable", err)));
      } finally {
        clearTimeout(timer);
        current = [];
      }
    }
  };

  const settle = (waiter: Waiter, outcome: AuditEvent | DomainError) => {
    if (waiter.settled) {
      return;
    }
    waiter.settled = true;
    if (outcome instanceof DomainError) {
      waiter.reject(outcome);
    } else {
      waiter.resolve(outcome);
    }
  };

  // A batch starts on the next turn of the event loop, not inside the append
  // that found the writer idle: the appends of every call that completes in
  // this turn (all the callers a committed batch just released, say) then go
  // into the same batch, instead of the first going alone and the rest
  // waiting for it — which halves batch sizes under steady load.
  const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));
  const kick = () => {
    writing ??= nextTurn().then(drain).finally(() => {
      writing = undefined;
      if (queue.length > 0) {
        kick();
      }
    });
  };

  return {
    append(record, signal) {
      if (closed) {
        return Promise.reject(unavailable("audit log unavailable: the server is shutting down"));
      }
      if (queue.length + current.length >= options.maxPending) {
        return Promise.reject(unavailable("audit log unavailable: too many events waiting to be written"));
      }
      return new Promise<AuditEvent>((resolve, reject) => {
        const waiter: Waiter = { record, deadline: Date.now() + options.timeoutMs, resolve, reject, settled: false };
        if (signal) {
          if (signal.aborted) {
            return reject(unavailable("audit log unavailable: the call ended before its event was written"));
          }
          const onAbort = () => settle(waiter, unavailable("audit log unavailable: the call ended before its event was written"));
          signal.addEventListener("abort", onAbort, { once: true });
          waiter.resolve = (event) => {
            signal.removeEventListener("abort", onAbort);
            resolve(event);
          };
          waiter.reject = (error) => {
            signal.removeEventListener("abort", onAbort);
            reject(error);
          };
        }
        queue.push(waiter);
        kick();
      });
    },
    get pending() {
      return queue.length + current.length;
    },
    async close() {
      closed = true;
      await writing;
      clearInterval(sweeper);
    },
  };
}
