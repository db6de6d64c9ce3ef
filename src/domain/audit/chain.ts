import { createHash } from "node:crypto";
import type { AuditEvent, AuditRecord } from "./event.js";

/** `previous_hash` of the first event. */
export const GENESIS_HASH: Buffer = Buffer.alloc(32);

const DOMAIN_TAG = "keyward-audit-event-v1";

/**
 * The canonical encoding of an event, hashed into the chain. An auditor can
 * re-implement it from this description alone:
 *
 * ```
 * hash      = SHA-256( previous_hash (32 bytes) || encoding )
 * encoding  = field("keyward-audit-event-v1")
 *          || field(sequence)        decimal ASCII, e.g. "42"
 *          || field(time)            decimal ASCII milliseconds since the Unix epoch
 *          || field(identity)        UTF-8
 *          || list(roles)            each "ADMIN" | "SERVICE" | "AUDITOR"
 *          || field(method)          e.g. "/keyward.v1.CryptoService/Encrypt"
 *          || list(resources)
 *          || field(key_version)
 *          || field(result_code)     decimal ASCII, "0" .. "16"
 *          || field(result_message)
 *          || field(request_id)
 *          || field(peer_address)
 *          || field(policy_digest)
 * field(s)  = uint32 big-endian byte length of UTF-8(s) || UTF-8(s)
 * list(xs)  = uint32 big-endian count || field(x) for each x, in order
 * ```
 *
 * Every value is length-prefixed, so no two different events share an
 * encoding, and the sequence number and time are inside the hash, so events
 * cannot be reordered, renumbered or re-dated without breaking the chain.
 */
export function encodeEvent(sequence: bigint, record: AuditRecord): Buffer {
  // Written into one buffer sized up front: this runs for every event while
  // the chain head is locked, so it avoids a small allocation per field.
  const fields: string[] = [DOMAIN_TAG, sequence.toString(10), record.time.getTime().toString(10), record.identity];
  const rolesAt = fields.length;
  fields.push(...record.roles, record.method);
  const resourcesAt = rolesAt + record.roles.length + 1;
  fields.push(
    ...record.resources,
    record.keyVersion,
    record.resultCode.toString(10),
    record.resultMessage,
    record.requestId,
    record.peerAddress,
    record.policyDigest,
  );
  let size = 8; // the two list counts
  for (const value of fields) {
    size += 4 + Buffer.byteLength(value, "utf8");
  }
  const out = Buffer.allocUnsafe(size);
  let offset = 0;
  fields.forEach((value, index) => {
    if (index === rolesAt) offset = out.writeUInt32BE(record.roles.length, offset);
    if (index === resourcesAt) offset = out.writeUInt32BE(record.resources.length, offset);
    const length = out.write(value, offset + 4, "utf8");
    out.writeUInt32BE(length, offset);
    offset += 4 + length;
  });
  return out;
}

/** SHA-256(previous_hash || encoding). */
export function hashEvent(previousHash: Buffer, sequence: bigint, record: AuditRecord): Buffer {
  return createHash("sha256").update(previousHash).update(encodeEvent(sequence, record)).digest();
}

/** Places records after `head`, in order: the pure half of an append. */
export function chainRecords(
  head: { sequence: bigint; hash: Buffer },
  records: readonly AuditRecord[],
): AuditEvent[] {
  let sequence = head.sequence;
  let previousHash = head.hash;
  return records.map((record) => {
    sequence += 1n;
    const hash = hashEvent(previousHash, sequence, record);
    const event: AuditEvent = { ...record, sequence, previousHash, hash };
    previousHash = hash;
    return event;
  });
}

/** Where and why a chain breaks. */
export interface ChainBreak {
  readonly sequence: bigint;
  readonly reason: string;
}

/** A signed statement that the event at `sequence` had `hash`. */
export interface CheckpointClaim {
  readonly sequence: bigint;
  readonly hash: Buffer;
}

/**
 * Verifies events fed in sequence order, page by page, holding only the last
 * hash. Checks, for each event: its sequence is the next expected one (else
 * "missing sequence"), its previous_hash is the hash of the event before
 * (else "previous_hash mismatch"), and its hash is what the encoding gives
 * (else "hash mismatch"). Then `finish` checks checkpoints: a checkpoint
 * beyond the last event means the tail was cut off; one whose hash differs
 * means the chain was rewritten.
 */
export interface ChainVerifier {
  /** Returns the break at this event, if any; stop feeding after a break. */
  add(event: AuditEvent): ChainBreak | undefined;
  /** Checks that nothing is missing at the end (per `end` and the checkpoints). */
  finish(): ChainBreak | undefined;
  readonly verified: bigint;
  readonly lastSequence: bigint;
  readonly lastHash: Buffer;
}

/**
 * @param start first sequence expected, and the hash of the event before it
 *   (GENESIS_HASH for sequence 1).
 * @param end the last sequence the range should reach, when known: events
 *   missing at the end are then a break too.
 * @param checkpoints signed claims to hold the events to; those beyond `end` are ignored.
 */
export function createChainVerifier(start: {
  sequence: bigint;
  previousHash: Buffer;
  end?: bigint;
  checkpoints?: readonly CheckpointClaim[];
}): ChainVerifier {
  let expected = start.sequence;
  let previousHash = start.previousHash;
  let verified = 0n;
  const claims = new Map<bigint, Buffer>();
  let furthestClaim = 0n;
  for (const checkpoint of start.checkpoints ?? []) {
    if (checkpoint.sequence >= start.sequence && (start.end === undefined || checkpoint.sequence <= start.end)) {
      claims.set(checkpoint.sequence, checkpoint.hash);
      furthestClaim = checkpoint.sequence > furthestClaim ? checkpoint.sequence : furthestClaim;
    }
  }
  return {
    add(event) {
      if (event.sequence !== expected) {
        return {
          sequence: expected,
          reason: event.sequence > expected ? `missing sequence ${expected}` : `sequence ${event.sequence} out of order`,
        };
      }
      if (!event.previousHash.equals(previousHash)) {
        return { sequence: event.sequence, reason: "previous_hash mismatch" };
      }
      if (!hashEvent(previousHash, event.sequence, event).equals(event.hash)) {
        return { sequence: event.sequence, reason: "hash mismatch" };
      }
      const claimed = claims.get(event.sequence);
      if (claimed && !claimed.equals(event.hash)) {
        return { sequence: event.sequence, reason: "hash differs from the signed checkpoint" };
      }
      previousHash = event.hash;
      expected += 1n;
      verified += 1n;
      return undefined;
    },
    finish() {
      const last = expected - 1n;
      if (furthestClaim > last) {
        return {
          sequence: expected,
          reason: `missing sequence ${expected}: a signed checkpoint covers sequence ${furthestClaim}`,
        };
      }
      if (start.end !== undefined && last < start.end) {
        return { sequence: expected, reason: `missing sequence ${expected}` };
      }
      return undefined;
    },
    get verified() {
      return verified;
    },
    get lastSequence() {
      return expected - 1n;
    },
    get lastHash() {
      return previousHash;
    },
  };
}
