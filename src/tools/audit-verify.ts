import { createReadStream } from "node:fs";
import { createPublicKey } from "node:crypto";
import { createInterface } from "node:readline";
import type pg from "pg";
import { createChainVerifier, GENESIS_HASH, type ChainBreak, type ChainVerifier } from "../domain/audit/chain.js";
import { publicKeyId, verifyCheckpoint } from "../domain/audit/checkpoint.js";
import type { AuditEvent } from "../domain/audit/event.js";
import type { StoredCheckpoint } from "../storage/pg/audit-repository.js";
import { parseExportLine, type PublicSigningKey } from "./audit-export-format.js";
import { DEFAULT_PAGE_SIZE, MAX_SEQUENCE, withAuditSnapshot } from "./audit-snapshot.js";

/** What to verify and against which key. */
export interface AuditVerifyOptions {
  /** First sequence verified. Default: 1 (the whole log, from the genesis hash). */
  readonly from?: bigint;
  /**
   * Last sequence verified; events up to it must all be present. Default:
   * every event there is (from the database: at least up to `audit_head`).
   */
  readonly to?: bigint;
  /**
   * The checkpoint public key (PEM SPKI, Ed25519) the auditor trusts.
   * Default: the signing key(s) stored in the source itself, which an
   * attacker able to rewrite the source could have replaced: the result then
   * shows internal consistency only, and says so (`keyPinned: false`).
   */
  readonly publicKeyPem?: string;
  /** Rows per database query. Default: 1000. */
  readonly pageSize?: number;
}

/** The outcome of a verification. */
export interface AuditVerification {
  /** The chain is unbroken over the range and every checkpoint in it is authentic and agrees with it. */
  readonly intact: boolean;
  /** "database" or "file <path>". */
  readonly source: string;
  readonly from: bigint;
  /** Events that passed every check, from `from` on. */
  readonly verifiedCount: bigint;
  /** Sequence of the last event that passed (`from - 1` when none did). */
  readonly lastVerifiedSequence: bigint;
  /** Where the chain first breaks; absent when it does not (a checkpoint failure alone leaves it absent). */
  readonly firstBrokenSequence: bigint | undefined;
  /** Why it is not intact: the chain break, else the first of `failures`. */
  readonly reason: string | undefined;
  /** Authentic checkpoints in the range that the events were checked against and matched. */
  readonly checkpointsVerified: number;
  /** Sequence of the last of those, if any: the events after it are held by the chain alone. */
  readonly lastCheckpointSequence: bigint | undefined;
  /**
   * Failures besides the chain break, each naming its subject: checkpoints
   * (bad signature, another key, a fork), signing keys, malformed lines
   * after a file's events.
   */
  readonly failures: readonly string[];
  /** Whether the key came from the caller (true) or from the source itself (false). */
  readonly keyPinned: boolean;
  /** Id of the pinned key, or of the source's keys. */
  readonly keyIds: readonly string[];
}

/** A usage problem found before verifying: the public key given is not usable. */
export class VerifyUsageError extends Error {
  override name = "VerifyUsageError";
}

/**
 * Verifies the audit log of the database behind `pool`, from one snapshot,
 * without the server. Checks every stored checkpoint in `from-1..to` with the
 * key, then the chain (createChainVerifier) against the authentic ones, and
 * that the events reach `audit_head` and not beyond it (an event past the
 * head was not appended through the normal path).
 *
 * @throws VerifyUsageError when `publicKeyPem` is not an Ed25519 public key;
 *   NoAuditLogError when the schema holds no audit tables; database errors.
 */
export async function verifyAuditDatabase(pool: pg.Pool, options: AuditVerifyOptions = {}): Promise<AuditVerification> {
  const pinned = options.publicKeyPem === undefined ? undefined : pinnedKey(options.publicKeyPem);
  const from = options.from ?? 1n;
  return withAuditSnapshot(
    pool,
    async (snapshot) => {
      const head = await snapshot.head();
      const keys = await snapshot.signingKeys();
      const checkpoints: StoredCheckpoint[] = [];
      for await (const checkpoint of snapshot.checkpoints(from - 1n, options.to ?? MAX_SEQUENCE)) {
        checkpoints.push(checkpoint);
      }
      async function* items(): AsyncGenerator<EventItem> {
        for await (const events of snapshot.eventPages(from, options.to ?? MAX_SEQUENCE)) {
          yield { events };
        }
      }
      return verify({ source: "database", from, to: options.to, pinned, keys, checkpoints, items: items(), head: head.sequence });
    },
    options.pageSize ?? DEFAULT_PAGE_SIZE,
  );
}

/**
 * Verifies an export file (audit-export-format.ts) with no database. Reads
 * the file twice, line by line: first for its checkpoints and keys, then to
 * walk the events, so memory does not grow with the number of events. A
 * line that does not parse, or is out of place, breaks the chain there.
 *
 * @throws VerifyUsageError when `publicKeyPem` is not an Ed25519 public key;
 *   the file system's errors (missing, unreadable file).
 */
export async function verifyAuditFile(path: string, options: AuditVerifyOptions = {}): Promise<AuditVerification> {
  const pinned = options.publicKeyPem === undefined ? undefined : pinnedKey(options.publicKeyPem);
  const from = options.from ?? 1n;
  const to = options.to ?? MAX_SEQUENCE;
  const keys: PublicSigningKey[] = [];
  const checkpoints: StoredCheckpoint[] = [];
  for await (const { line } of readLines(path, true)) {
    if (line.kind === "checkpoint" && line.checkpoint.sequence >= from - 1n && line.checkpoint.sequence <= to) {
      checkpoints.push(line.checkpoint);
    } else if (line.kind === "signing_key") {
      keys.push(line.key);
    }
  }
  async function* items(): AsyncGenerator<EventItem> {
    // Events go out in batches: one await per batch, not per line.
    let batch: AuditEvent[] = [];
    // The sections come in order: events, checkpoints, signing keys.
    let section = 0;
    for await (const { number, line } of readLines(path)) {
      const rank = line.kind === "event" ? 0 : line.kind === "checkpoint" ? 1 : line.kind === "signing_key" ? 2 : -1;
      if (rank < 0 || rank < section) {
        const problem = line.kind === "invalid" ? line.problem : `${line.kind} line after the ${SECTIONS[section]} lines`;
        if (batch.length > 0) {
          yield { events: batch };
          batch = [];
        }
        if (section === 0 || line.kind === "event") {
          yield { problem: `line ${number}: ${problem}` };
          return;
        }
        yield { trailerProblem: `line ${number}: ${problem}` };
        continue;
      }
      section = rank;
      if (line.kind === "event" && line.event.sequence >= from && line.event.sequence <= to) {
        batch.push(line.event);
        if (batch.length >= FILE_BATCH) {
          yield { events: batch };
          batch = [];
        }
      }
    }
    if (batch.length > 0) {
      yield { events: batch };
    }
  }
  return verify({ source: `file ${path}`, from, to: options.to, pinned, keys, checkpoints, items: items() });
}

const SECTIONS = ["event", "checkpoint", "signing_key"] as const;
const FILE_BATCH = 1000;

/** What the walk is fed: events in order, or a problem where the next event should be (or in the trailing lines). */
type EventItem = { events: AuditEvent[] } | { problem: string } | { trailerProblem: string };

/**
 * The file's lines, parsed, with their 1-based numbers. With `eventsSkipped`,
 * lines that open like an event are not parsed: under the strict parse such
 * a line is an event or invalid, never a checkpoint or a key.
 */
async function* readLines(path: string, eventsSkipped = false) {
  const input = createReadStream(path, { encoding: "utf8" });
  const lines = createInterface({ input, crlfDelay: Infinity });
  let number = 0;
  try {
    for await (const text of lines) {
      number += 1;
      if (eventsSkipped && text.startsWith('{"sequence":')) {
        continue;
      }
      yield { number, line: text.length === 0 ? ({ kind: "invalid", problem: "empty line" } as const) : parseExportLine(text) };
    }
  } finally {
    lines.close();
    input.destroy();
  }
}

function pinnedKey(pem: string): { pem: string; keyId: string } {
  let type: string | undefined;
  try {
    type = createPublicKey(pem).asymmetricKeyType;
  } catch (err) {
    throw new VerifyUsageError("the public key is not a PEM public key", { cause: err });
  }
  if (type !== "ed25519") {
    throw new VerifyUsageError(`the public key is ${type ?? "of an unknown type"}, not Ed25519`);
  }
  return { pem, keyId: publicKeyId(pem) };
}

const short = (keyId: string) => `${keyId.slice(0, 16)}…`;

/**
 * The checks common to both sources, in order: which keys may sign
 * (pinned, else the source's own, each matching its id); each checkpoint's
 * key and signature, the authentic ones becoming claims; the walk of the
 * events with createChainVerifier, the checkpoint at `from-1` holding the
 * first link; then, for a database, the events against `audit_head`.
 */
async function verify(input: {
  source: string;
  from: bigint;
  to: bigint | undefined;
  pinned: { pem: string; keyId: string } | undefined;
  keys: readonly PublicSigningKey[];
  checkpoints: readonly StoredCheckpoint[];
  items: AsyncIterable<EventItem>;
  /** `audit_head.sequence`, for a database. */
  head?: bigint;
}): Promise<AuditVerification> {
  const { from, pinned } = input;
  const failures: string[] = [];

  // The keys checkpoints may be signed with: the pinned one, else those the
  // source names, each checked to be the key its id says.
  const usable = new Map<string, string>();
  if (pinned) {
    usable.set(pinned.keyId, pinned.pem);
  } else {
    for (const key of input.keys) {
      if (ed25519KeyId(key.publicKeyPem) === key.keyId) {
        usable.set(key.keyId, key.publicKeyPem);
      } else {
        failures.push(`signing key ${short(key.keyId)} in the ${input.source} is not an Ed25519 key with that id`);
      }
    }
  }

  // Authentic checkpoints become claims on the chain. Two authentic ones
  // that disagree on a sequence mean the signer vouched for two histories.
  const authentic: StoredCheckpoint[] = [];
  const claims = new Map<bigint, Buffer>();
  for (const checkpoint of input.checkpoints) {
    const name = `checkpoint at sequence ${checkpoint.sequence}`;
    const pem = usable.get(checkpoint.keyId);
    if (pem === undefined) {
      failures.push(
        pinned
          ? `${name} is signed by key ${short(checkpoint.keyId)}, not by the pinned key ${short(pinned.keyId)}`
          : `${name} is signed by key ${short(checkpoint.keyId)}, which is not a valid signing key of the ${input.source}`,
      );
    } else if (!signatureHolds(checkpoint, pem)) {
      failures.push(`${name}: its signature does not verify with key ${short(checkpoint.keyId)}`);
    } else if (claims.has(checkpoint.sequence) && !claims.get(checkpoint.sequence)!.equals(checkpoint.hash)) {
      failures.push(`${name}: signed checkpoints claim two different hashes for it (a fork)`);
    } else {
      claims.set(checkpoint.sequence, checkpoint.hash);
      authentic.push(checkpoint);
    }
  }

  // With a database, `end` is left out: the verifier ignores checkpoints
  // beyond `end`, and audit_head moved back must not hide one. The head is
  // checked after the walk instead.
  const start = (previousHash: Buffer): ChainVerifier =>
    createChainVerifier({
      sequence: from,
      previousHash,
      end: input.head === undefined ? input.to : undefined,
      checkpoints: [...claims].map(([sequence, hash]) => ({ sequence, hash })),
    });
  // The checkpoint at from-1 vouches for the hash the first event links to.
  let anchorHeld = false;
  const checkAnchor = (previousHash: Buffer): ChainBreak | undefined => {
    const claimed = claims.get(from - 1n);
    if (claimed && !claimed.equals(previousHash)) {
      return { sequence: from, reason: `previous_hash differs from the signed checkpoint at sequence ${from - 1n}` };
    }
    anchorHeld = true;
    return undefined;
  };

  let verifier: ChainVerifier | undefined;
  let broken: ChainBreak | undefined;
  if (from === 1n) {
    verifier = start(GENESIS_HASH);
    broken = checkAnchor(GENESIS_HASH);
  }
  if (!broken) {
    for await (const item of input.items) {
      if ("trailerProblem" in item) {
        failures.push(item.trailerProblem);
        continue;
      }
      if ("problem" in item) {
        broken = { sequence: (verifier?.lastSequence ?? from - 1n) + 1n, reason: item.problem };
        break;
      }
      for (const event of item.events) {
        if (!verifier) {
          // A range after sequence 1 links to an event outside it: the link is
          // taken as given, unless a checkpoint at from-1 says otherwise.
          verifier = start(event.previousHash);
          broken = event.sequence === from ? checkAnchor(event.previousHash) : undefined;
          if (broken) {
            break;
          }
        }
        broken = verifier.add(event);
        if (broken) {
          break;
        }
      }
      if (broken) {
        break;
      }
    }
  }
  verifier ??= start(GENESIS_HASH);
  broken ??= verifier.finish();

  if (!broken && input.head !== undefined) {
    const head = input.head;
    const last = verifier.lastSequence;
    const end = input.to !== undefined && input.to < head ? input.to : head;
    if (verifier.verified > 0n && last > head) {
      // appendWithin moves audit_head in the transaction that inserts the
      // events, and the snapshot sees both or neither: an event past the
      // head was written some other way.
      const sequence = head + 1n > from ? head + 1n : from;
      broken = { sequence, reason: `sequence ${sequence} lies beyond the chain head (audit_head is at ${head}): not appended through Keyward` };
    } else if (last < end) {
      broken = { sequence: last + 1n, reason: `missing sequence ${last + 1n} (audit_head is at ${head})` };
    }
  }

  const lastVerifiedSequence = broken ? broken.sequence - 1n : verifier.lastSequence;
  const checked = authentic.filter(
    (checkpoint) => checkpoint.sequence <= lastVerifiedSequence && (checkpoint.sequence >= from || anchorHeld),
  );
  return {
    intact: !broken && failures.length === 0,
    source: input.source,
    from,
    verifiedCount: lastVerifiedSequence >= from ? lastVerifiedSequence - from + 1n : 0n,
    lastVerifiedSequence,
    firstBrokenSequence: broken?.sequence,
    reason: broken?.reason ?? failures[0],
    checkpointsVerified: checked.length,
    lastCheckpointSequence: checked.reduce<bigint | undefined>((last, c) => (last === undefined || c.sequence > last ? c.sequence : last), undefined),
    failures,
    keyPinned: pinned !== undefined,
    keyIds: [...usable.keys()],
  };
}

function ed25519KeyId(pem: string): string | undefined {
  try {
    return createPublicKey(pem).asymmetricKeyType === "ed25519" ? publicKeyId(pem) : undefined;
  } catch {
    return undefined;
  }
}

function signatureHolds(checkpoint: StoredCheckpoint, pem: string): boolean {
  try {
    return verifyCheckpoint(checkpoint, pem);
  } catch {
    return false;
  }
}

/** One line for humans: the verdict, what was covered, and whether the key was pinned. */
export function summarizeVerification(result: AuditVerification): string {
  const plural = (n: bigint | number, word: string) => `${n} ${word}${n.toString() === "1" ? "" : "s"}`;
  const range = result.verifiedCount > 0n ? ` (sequences ${result.from}..${result.lastVerifiedSequence})` : "";
  const events = plural(result.verifiedCount, "event");
  const source = `from the ${result.source}`;
  const parts: string[] = [];
  if (result.intact) {
    parts.push(`intact: ${events} verified${range} ${source}`);
  } else if (result.firstBrokenSequence !== undefined) {
    parts.push(`BROKEN at sequence ${result.firstBrokenSequence}: ${result.reason}`, `${events} verified before it${range} ${source}`);
  } else {
    parts.push(`BROKEN: ${result.failures.join("; ")}`, `the chain itself holds: ${events} verified${range} ${source}`);
  }
  parts.push(
    `${plural(result.checkpointsVerified, "signed checkpoint")} verified` +
      (result.lastCheckpointSequence !== undefined ? `, the last at sequence ${result.lastCheckpointSequence}` : ""),
  );
  if (result.firstBrokenSequence !== undefined && result.failures.length > 0) {
    parts.push(`also: ${result.failures.join("; ")}`);
  }
  if (result.verifiedCount > 0n && result.lastCheckpointSequence === undefined) {
    parts.push("no event is covered by a signed checkpoint");
  } else if (result.lastCheckpointSequence !== undefined && result.lastVerifiedSequence > result.lastCheckpointSequence) {
    parts.push(`events after sequence ${result.lastCheckpointSequence} are covered by no signed checkpoint`);
  }
  parts.push(
    result.keyPinned
      ? `public key pinned (key id ${short(result.keyIds[0] ?? "")})`
      : `public key NOT pinned (taken from the ${result.source} itself): this shows only that the log is internally consistent, ` +
          "not that it is authentic; pass --public-key with a key you trust",
  );
  return parts.join("; ");
}

/**
 * The machine-readable result: `intact`, `verified_count`,
 * `first_broken_sequence` (decimal string or null), `reason` (or null),
 * `checkpoints_verified`, plus `failures`, `key_pinned`, `key_ids`,
 * `source` and `last_verified_sequence`.
 */
export function verificationJson(result: AuditVerification): Record<string, unknown> {
  return {
    intact: result.intact,
    verified_count: Number(result.verifiedCount),
    first_broken_sequence: result.firstBrokenSequence?.toString() ?? null,
    reason: result.reason ?? null,
    checkpoints_verified: result.checkpointsVerified,
    failures: result.failures,
    key_pinned: result.keyPinned,
    key_ids: result.keyIds,
    source: result.source,
    last_verified_sequence: result.lastVerifiedSequence.toString(),
  };
}
