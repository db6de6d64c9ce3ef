import { afterEach, describe, expect, it } from "vitest";
import { chainRecords, GENESIS_HASH } from "../../../../src/domain/audit/chain.js";
import type { AuditEvent, AuditRecord } from "../../../../src/domain/audit/event.js";
import { createGroupCommitter, type GroupCommitOptions, type GroupCommitter } from "../../../../src/domain/audit/group-commit.js";
import { DomainError } from "../../../../src/domain/errors.js";
import { auditRecord } from "../../../fixtures/audit.js";

const record = (requestId: string): AuditRecord =>
  auditRecord({ time: new Date(Date.UTC(2026, 10, 24)), keyVersion: "", requestId });

/** A promise with its settle functions exposed. */
function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * An in-memory log: a real chain, each batch held until its gate opens (or
 * written at once when `gated` is false). Records every batch it was given.
 */
function memoryLog(options: { gated: boolean }) {
  let head = { sequence: 0n, hash: GENESIS_HASH };
  const batches: string[][] = [];
  const gates: Array<ReturnType<typeof deferred<void>>> = [];
  let inFlight = 0;
  let overlapped = false;
  const writeBatch = async (records: readonly AuditRecord[]): Promise<AuditEvent[]> => {
    overlapped ||= inFlight > 0;
    inFlight += 1;
    batches.push(records.map((r) => r.requestId));
    try {
      if (options.gated) {
        const gate = deferred<void>();
        gates.push(gate);
        await gate.promise;
      }
      const events = chainRecords(head, records);
      head = { sequence: events.at(-1)!.sequence, hash: events.at(-1)!.hash };
      return events;
    } finally {
      inFlight -= 1;
    }
  };
  return {
    writeBatch,
    batches,
    /** Opens the gate of batch `index` (0-based) once it exists. */
    async open(index: number) {
      await until(() => gates.length > index);
      gates[index]!.resolve();
    },
    gates,
    get overlapped() {
      return overlapped;
    },
  };
}

async function until(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error("condition not met in time");
    }
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Settles `promise` into a value or the error, so rejections can be inspected after the fact. */
const outcome = <T>(promise: Promise<T>) =>
  promise.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );

const expectUnavailable = (result: { ok: boolean; error?: unknown }) => {
  expect(result.ok).toBe(false);
  expect(result.error).toBeInstanceOf(DomainError);
  expect((result.error as DomainError).kind).toBe("unavailable");
};

describe("group commit", () => {
  let committer: GroupCommitter | undefined;
  let release: (() => void) | undefined;
  afterEach(async () => {
    release?.();
    release = undefined;
    await committer?.close();
    committer = undefined;
  });

  const start = (options: Partial<GroupCommitOptions> & Pick<GroupCommitOptions, "writeBatch">) =>
    (committer = createGroupCommitter({ maxBatch: 1000, maxPending: 10_000, timeoutMs: 5000, ...options }));

  it("batches the appends that arrive during a slow write into the next write", async () => {
    const log = memoryLog({ gated: true });
    const audit = start({ writeBatch: log.writeBatch, maxBatch: 500 });
    release = () => log.gates.forEach((gate) => gate.resolve());

    const first = audit.append(record("first"));
    await until(() => log.batches.length === 1);
    const many = Array.from({ length: 200 }, (_, i) => audit.append(record(`r${i}`)));
    expect(audit.pending).toBe(201);
    await log.open(0);
    await log.open(1);
    const events = await Promise.all([first, ...many]);

    expect(log.batches).toHaveLength(2);
    expect(log.batches[0]).toEqual(["first"]);
    expect(log.batches[1]).toEqual(Array.from({ length: 200 }, (_, i) => `r${i}`));
    // Each caller gets its own event, in order, on one unbroken chain.
    expect(events.map((event) => event.requestId)).toEqual(["first", ...Array.from({ length: 200 }, (_, i) => `r${i}`)]);
    expect(events.map((event) => event.sequence)).toEqual(Array.from({ length: 201 }, (_, i) => BigInt(i + 1)));
    expect(log.overlapped).toBe(false);
    expect(audit.pending).toBe(0);
  });

  it("puts the appends made in one turn of the event loop into one batch, also when the writer was idle", async () => {
    const log = memoryLog({ gated: false });
    const audit = start({ writeBatch: log.writeBatch });
    // 64 callers, each appending again as soon as its event is durable: every
    // batch holds all of them, not one caller and then the 63 others.
    await Promise.all(
      Array.from({ length: 64 }, async (_, caller) => {
        for (let round = 0; round < 5; round++) {
          await audit.append(record(`c${caller}-${round}`));
        }
      }),
    );
    expect(log.batches.map((batch) => batch.length)).toEqual([64, 64, 64, 64, 64]);
  });

  it("never puts more than maxBatch records in one write", async () => {
    const log = memoryLog({ gated: true });
    const audit = start({ writeBatch: log.writeBatch, maxBatch: 64 });
    release = () => log.gates.forEach((gate) => gate.resolve());

    const first = audit.append(record("first"));
    await until(() => log.batches.length === 1);
    const many = Array.from({ length: 200 }, (_, i) => audit.append(record(`r${i}`)));
    for (let i = 0; i < 5; i++) {
      await log.open(i);
    }
    await Promise.all([first, ...many]);
    expect(log.batches.map((batch) => batch.length)).toEqual([1, 64, 64, 64, 8]);
    expect(log.overlapped).toBe(false);
  });

  it("fails an append UNAVAILABLE at its timeout when the write hangs", async () => {
    const hung = deferred<AuditEvent[]>();
    release = () => hung.resolve([]);
    const audit = start({ writeBatch: () => hung.promise, timeoutMs: 100 });
    const started = performance.now();
    const result = await outcome(audit.append(record("slow")));
    const elapsed = performance.now() - started;
    expectUnavailable(result);
    expect(elapsed).toBeGreaterThanOrEqual(95);
    expect(elapsed).toBeLessThan(400);
  });

  it("refuses at once when too many appends are pending", async () => {
    const log = memoryLog({ gated: true });
    release = () => log.gates.forEach((gate) => gate.resolve());
    const audit = start({ writeBatch: log.writeBatch, maxPending: 3 });
    const admitted = [audit.append(record("a")), audit.append(record("b")), audit.append(record("c"))].map(outcome);
    expect(audit.pending).toBe(3);

    const started = performance.now();
    const refused = await outcome(audit.append(record("d")));
    expect(performance.now() - started).toBeLessThan(20);
    expectUnavailable(refused);
    expect((refused as { error: Error }).error.message).toMatch(/too many events waiting/);

    // Those admitted before the limit still commit (appended in one turn, in one batch).
    await log.open(0);
    for (const result of await Promise.all(admitted)) {
      expect(result.ok).toBe(true);
    }
    expect(log.batches).toEqual([["a", "b", "c"]]);
  });

  it("fails every waiter of a batch UNAVAILABLE when the write fails, and reports the error", async () => {
    const failure = new Error("connection terminated");
    const reported: Array<{ error: unknown; records: number }> = [];
    const gate = deferred<void>();
    let calls = 0;
    const audit = start({
      writeBatch: async (records) => {
        calls += 1;
        if (calls === 1) {
          await gate.promise;
          return chainRecords({ sequence: 0n, hash: GENESIS_HASH }, records);
        }
        throw failure;
      },
      onWriteError: (error, records) => reported.push({ error, records }),
    });
    const first = outcome(audit.append(record("ok")));
    await until(() => calls === 1);
    const doomed = Array.from({ length: 5 }, (_, i) => outcome(audit.append(record(`x${i}`))));
    gate.resolve();
    expect((await first).ok).toBe(true);
    for (const result of await Promise.all(doomed)) {
      expectUnavailable(result);
      expect((result as { error: Error }).error.cause).toBe(failure);
    }
    expect(reported).toEqual([{ error: failure, records: 5 }]);
  });

  it("fails an append UNAVAILABLE when its signal aborts, and at once when already aborted", async () => {
    const hung = deferred<AuditEvent[]>();
    release = () => hung.resolve([]);
    const audit = start({ writeBatch: () => hung.promise });
    const controller = new AbortController();
    const pending = outcome(audit.append(record("cancelled"), controller.signal));
    setTimeout(() => controller.abort(), 20);
    const started = performance.now();
    const result = await pending;
    expect(performance.now() - started).toBeLessThan(500);
    expectUnavailable(result);
    expect((result as { error: Error }).error.message).toMatch(/call ended/);

    const already = await outcome(audit.append(record("late"), AbortSignal.abort()));
    expectUnavailable(already);
  });

  it("close() writes what is queued, then refuses new appends", async () => {
    const log = memoryLog({ gated: true });
    const audit = createGroupCommitter({ writeBatch: log.writeBatch, maxBatch: 1000, maxPending: 100, timeoutMs: 5000 });
    const first = audit.append(record("first"));
    await until(() => log.batches.length === 1);
    const queued = [audit.append(record("q1")), audit.append(record("q2"))];
    const closing = audit.close();
    expectUnavailable(await outcome(audit.append(record("after close"))));
    await log.open(0);
    await log.open(1);
    await closing;
    const events = await Promise.all([first, ...queued]);
    expect(events.map((event) => event.requestId)).toEqual(["first", "q1", "q2"]);
    expect(log.batches).toEqual([["first"], ["q1", "q2"]]);
  });
});
