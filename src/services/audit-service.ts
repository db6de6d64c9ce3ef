import { createHash } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import type { AuditService, ListAuditEventsRequest, TailAuditEventsResponseSchema } from "../../gen/keyward/v1/audit_pb.js";
import { createChainVerifier, GENESIS_HASH, type ChainBreak, type CheckpointClaim } from "../domain/audit/chain.js";
import { verifyCheckpoint, type Checkpoint } from "../domain/audit/checkpoint.js";
import type { AuditEvent, AuditFilter } from "../domain/audit/event.js";
import type { CheckpointSigner } from "../domain/audit/signer.js";
import { DomainError } from "../domain/errors.js";
import { timestampToCeilDate, toProtoAuditCheckpoint, toProtoAuditEvent } from "./convert.js";


/** What the service reads from the audit log (the pg audit repository provides it). */
export interface AuditLogReader {
  head(): Promise<{ sequence: bigint; hash: Buffer }>;
  /** Events with `from <= sequence <= to`, ascending, at most `limit`. */
  range(from: bigint, to: bigint, limit: number): Promise<AuditEvent[]>;
  list(
    filter: AuditFilter,
    options: { after?: bigint; before?: bigint; newestFirst: boolean; limit: number },
  ): Promise<AuditEvent[]>;
  checkpoints(): Promise<Checkpoint[]>;
  /** The lowest sequence stored beyond the head, read in one snapshot: only a forger puts events there. */
  firstBeyondHead(): Promise<bigint | undefined>;
}

export interface AuditServiceDeps {
  readonly reader: AuditLogReader;
  readonly signer: CheckpointSigner;
  /** Aborted when the server starts draining: open tails end with UNAVAILABLE. */
  readonly shutdown: AbortSignal;
  /** Told about storage failures, which callers see as UNAVAILABLE. */
  readonly onReadError?: (error: unknown) => void;
  /** Tail tuning: how long an idle tail waits before polling again (default 150 ms), events per read (default 500). */
  readonly tail?: { readonly pollIntervalMs?: number; readonly batchSize?: number };
}

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;
const VERIFY_PAGE = 1000;
const PAGE_TOKEN_VERSION = 1;

/**
 * AuditService: reads, follows and verifies the audit log, and signs its
 * head. The calls themselves are audited by the interceptor like any other.
 *
 * Tails follow by polling the database, not by listening to this process's
 * appends, so a tail sees the events every replica writes.
 */
export function createAuditService(deps: AuditServiceDeps): ServiceImpl<typeof AuditService> {
  const pollIntervalMs = deps.tail?.pollIntervalMs ?? 150;
  const batchSize = deps.tail?.batchSize ?? 500;

  // The reader's failures are the database's: the caller may retry later.
  const read = async <T>(promise: Promise<T>): Promise<T> => {
    try {
      return await promise;
    } catch (err) {
      if (err instanceof DomainError) {
        throw err;
      }
      deps.onReadError?.(err);
      throw new DomainError("unavailable", "audit log unavailable", { cause: err });
    }
  };

  async function* tail(startSequence: bigint | undefined, callSignal: AbortSignal): AsyncGenerator<MessageInitShape<typeof TailAuditEventsResponseSchema>> {
    const head = await read(deps.reader.head());
    if (startSequence !== undefined && startSequence > head.sequence + 1n) {
      throw new DomainError(
        "out-of-range",
        `start_sequence ${startSequence} is beyond the next sequence to be written (${head.sequence + 1n})`,
      );
    }
    const signal = AbortSignal.any([callSignal, deps.shutdown]);
    let next = startSequence ?? head.sequence + 1n;
    for (;;) {
      if (callSignal.aborted) {
        return;
      }
      if (deps.shutdown.aborted) {
        throw new DomainError("unavailable", `the server is shutting down; resume with start_sequence ${next}`);
      }
      // `list` with only a lower bound, not `range`: a deleted event shows
      // as the next one found being too far, instead of a tail waiting forever.
      const events = await read(deps.reader.list({}, { after: next - 1n, newestFirst: false, limit: batchSize }));
      for (const event of events) {
        if (event.sequence !== next) {
          throw new DomainError("data-loss", `audit event ${next} is missing from the log`);
        }
        yield { event: toProtoAuditEvent(event) };
        next += 1n;
      }
      if (events.length < batchSize) {
        await sleep(pollIntervalMs, signal);
      }
    }
  }

  return {
    async listAuditEvents(request) {
      const filter = toFilter(request);
      const digest = filterDigest(filter, request.newestFirst);
      const cursor = request.pageToken === "" ? undefined : parsePageToken(request.pageToken, digest);
      const pageSize = Math.min(Math.max(request.pageSize, 0) || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
      const events = await read(
        deps.reader.list(filter, {
          after: request.newestFirst ? undefined : cursor,
          before: request.newestFirst ? cursor : undefined,
          newestFirst: request.newestFirst,
          limit: pageSize + 1,
        }),
      );
      const page = events.slice(0, pageSize);
      return {
        events: page.map(toProtoAuditEvent),
        nextPageToken: events.length > pageSize ? pageToken(page.at(-1)!.sequence, digest) : "",
      };
    },

    tailAuditEvents(request, context) {
      return tail(request.startSequence, context.signal);
    },

    async verifyAuditChain(request, context) {
      const [head, stored] = await read(Promise.all([deps.reader.head(), deps.reader.checkpoints()]));
      const claims = signedClaims(stored, deps.signer);
      // A signed checkpoint proves its events existed: a head row moved back
      // below it is a cut-off tail to report, not a shorter log to accept.
      const furthestClaim = claims.reduce((furthest, claim) => (claim.sequence > furthest ? claim.sequence : furthest), 0n);
      const last = head.sequence > furthestClaim ? head.sequence : furthestClaim;
      const start = request.startSequence ?? 1n;
      const end = request.endSequence ?? last;
      if (end > last || (start > end && !(start === 1n && end === 0n))) {
        throw new DomainError("out-of-range", `the range ${start}..${end} extends beyond the last event (${head.sequence})`);
      }
      const result = { startSequence: start, endSequence: end };

      let previousHash = GENESIS_HASH;
      if (start > 1n) {
        const before = await read(deps.reader.range(start - 1n, start - 1n, 1));
        if (before.length === 0) {
          return broken(result, 0n, { sequence: start - 1n, reason: `missing sequence ${start - 1n} (the event before the range)` });
        }
        previousHash = before[0]!.hash;
      }

      const verifier = createChainVerifier({ sequence: start, previousHash, end, checkpoints: claims });
      let chainBreak: ChainBreak | undefined;
      let next = start;
      while (chainBreak === undefined && next <= end) {
        // A long verification stops when the caller gives up (deadline, cancel).
        context.signal.throwIfAborted();
        const page = await read(deps.reader.range(next, end, VERIFY_PAGE));
        if (page.length === 0) {
          break;
        }
        for (const event of page) {
          chainBreak = verifier.add(event);
          if (chainBreak !== undefined) {
            break;
          }
        }
        next = verifier.lastSequence + 1n;
      }
      chainBreak ??= verifier.finish();
      if (chainBreak === undefined && request.endSequence === undefined) {
        const beyond = await read(deps.reader.firstBeyondHead());
        if (beyond !== undefined) {
          chainBreak = { sequence: beyond, reason: `sequence ${beyond} lies beyond the chain head` };
        }
      }
      if (chainBreak !== undefined) {
        return broken(result, verifier.verified, chainBreak);
      }
      return { ...result, intact: true, verifiedCount: verifier.verified, endHash: verifier.lastHash };
    },

    async getAuditCheckpoint() {
      const checkpoint = await read(deps.signer.sign());
      return { checkpoint: toProtoAuditCheckpoint(checkpoint, deps.signer) };
    },
  };
}

const broken = (range: { startSequence: bigint; endSequence: bigint }, verified: bigint, at: ChainBreak) => ({
  ...range,
  intact: false,
  verifiedCount: verified,
  firstBrokenSequence: at.sequence,
  reason: at.reason,
});

/**
 * Stored checkpoints that this deployment's key really signed: the table is
 * as writable as the events, so an unsigned "checkpoint" must not be able to
 * make an intact chain look broken.
 */
function signedClaims(stored: readonly Checkpoint[], signer: CheckpointSigner): CheckpointClaim[] {
  return stored.filter((checkpoint) => checkpoint.keyId === signer.keyId && verifyCheckpoint(checkpoint, signer.publicKeyPem));
}

function toFilter(request: ListAuditEventsRequest): AuditFilter {
  return {
    ...(request.startTime ? { startTime: timestampToCeilDate(request.startTime, "start_time") } : {}),
    ...(request.endTime ? { endTime: timestampToCeilDate(request.endTime, "end_time") } : {}),
    ...(request.identity !== "" ? { identity: request.identity } : {}),
    ...(request.method !== "" ? { method: request.method } : {}),
    ...(request.resource !== "" ? { resource: request.resource } : {}),
    ...(request.resultCode !== undefined ? { resultCode: request.resultCode } : {}),
  };
}

/** Binds a page token to the filters and order it was issued for (page_size may change, AIP-158). */
function filterDigest(filter: AuditFilter, newestFirst: boolean): string {
  const canonical = JSON.stringify([
    filter.startTime?.getTime() ?? null,
    filter.endTime?.getTime() ?? null,
    filter.identity ?? null,
    filter.method ?? null,
    filter.resource ?? null,
    filter.resultCode ?? null,
    newestFirst,
  ]);
  return createHash("sha256").update(canonical).digest("base64url").slice(0, 22);
}

/**
 * Page token: base64url of `{"v":1,"s":"<last sequence returned>","f":"<filter digest>"}`.
 * Not secret and not signed: a caller who edits it can only reach events the
 * same call could list anyway.
 */
function pageToken(lastSequence: bigint, digest: string): string {
  return Buffer.from(JSON.stringify({ v: PAGE_TOKEN_VERSION, s: lastSequence.toString(), f: digest })).toString("base64url");
}

function parsePageToken(token: string, digest: string): bigint {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    parsed = undefined;
  }
  const fields = parsed as { v?: unknown; s?: unknown; f?: unknown } | undefined;
  if (
    !fields ||
    typeof fields !== "object" ||
    fields.v !== PAGE_TOKEN_VERSION ||
    typeof fields.s !== "string" ||
    !/^\d{1,19}$/.test(fields.s) ||
    typeof fields.f !== "string"
  ) {
    throw new DomainError("invalid-argument", "page_token is malformed");
  }
  if (fields.f !== digest) {
    throw new DomainError("invalid-argument", "page_token was issued for different filters");
  }
  return BigInt(fields.s);
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      return resolve();
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
