import type { Role } from "../domain/authz/roles.js";
import type { AuditEvent } from "../domain/audit/event.js";
import type { StoredCheckpoint, StoredSigningKey } from "../storage/pg/audit-repository.js";

/**
 * The audit export format, version 1: what `keyward audit export` writes and
 * `keyward audit verify --file` reads. An auditor can verify a file with this
 * description and the event encoding documented in
 * src/domain/audit/chain.ts, without any Keyward code.
 *
 * The file is UTF-8 JSON lines: one JSON object per line, each line ending
 * in "\n", no blank lines, in three sections, in this order:
 *
 * 1. One line per event, in ascending sequence order:
 *    ```
 *    {"sequence":"42","time":"2026-11-24T07:30:00.123Z","identity":"spiffe://keyward.local/service",
 *     "roles":["SERVICE"],"method":"/keyward.v1.CryptoService/Encrypt","resources":["keys/payments"],
 *     "key_version":"keys/payments/versions/1","result_code":0,"result_message":"","request_id":"…",
 *     "peer_address":"127.0.0.1:50412","policy_digest":"…","previous_hash":"<64 hex>","hash":"<64 hex>"}
 *    ```
 *    - `sequence`: decimal string (int64 does not fit a JSON number).
 *    - `time`: ISO-8601 in UTC with exactly three fractional digits; the
 *      chain hashes it as decimal milliseconds since the Unix epoch.
 *    - `result_code`: JSON number, 0 to 16 (gRPC status code).
 *    - `roles`, `resources`: arrays of strings, in stored order.
 *    - `previous_hash`, `hash`: 32 bytes as 64 lower-case hex digits.
 *    - all other fields: strings, as stored.
 * 2. One line per signed checkpoint, ascending by sequence:
 *    ```
 *    {"checkpoint":{"sequence":"40","hash":"<64 hex>","time":"2026-11-24T07:31:00.000Z",
 *     "key_id":"<64 hex>","signature":"<128 hex>"}}
 *    ```
 * 3. One line per checkpoint signing key (there is one per deployment today);
 *    its private half is never exported:
 *    ```
 *    {"signing_key":{"key_id":"<64 hex>","algorithm":"…","public_key_pem":"-----BEGIN PUBLIC KEY-----\n…"}}
 *    ```
 *
 * An export of the range `from..to` holds the events with sequence in that
 * range and the checkpoints with sequence in `from-1..to` (the one at
 * `from-1` vouches for the first event's `previous_hash`; for `from` = 1 that
 * is sequence 0, the empty log, whose hash is 32 zero bytes).
 *
 * To verify (what `keyward audit verify` does):
 *
 * 1. Obtain the Ed25519 public key from a channel you trust, not from the
 *    file: the `signing_key` lines only show which key the exporter claims.
 *    Its key id is SHA-256 of its DER SubjectPublicKeyInfo, lower-case hex.
 * 2. For each checkpoint: `key_id` is that key's id, and `signature` is a
 *    valid Ed25519 signature by it over the UTF-8 bytes
 *    `"keyward-audit-checkpoint-v1\n" + sequence + "\n" + hash + "\n" + ms + "\n"`
 *    (sequence decimal, hash lower-case hex, ms = `time` as decimal
 *    milliseconds since the Unix epoch); see src/domain/audit/checkpoint.ts.
 * 3. Walk the events with `expected = from` and `previous` = 32 zero bytes
 *    for `from` = 1 (else the first event's `previous_hash`, vouched for only
 *    by a checkpoint at `from-1`). Each event must have `sequence ==
 *    expected`, `previous_hash == previous`, and `hash == SHA-256(previous ||
 *    encoding)` with the encoding of chain.ts; where a checkpoint has this
 *    sequence, `hash` must equal the checkpoint's hash. Then `previous =
 *    hash`, `expected += 1`.
 * 4. After the last event, no checkpoint may lie beyond it: one that does
 *    proves that events were cut off the tail.
 *
 * Events after the last checkpoint are held by the chain alone: anyone able
 * to write the file (or the database) can rewrite them consistently, so only
 * a checkpoint proves that they are authentic.
 */
export const AUDIT_EXPORT_FORMAT = "keyward-audit-export-v1";

/** A signing key without its private half, as exported. */
export type PublicSigningKey = Omit<StoredSigningKey, "wrappedPrivateKey">;

/** One parsed line of an export; `invalid` says what is wrong with it. */
export type ExportLine =
  | { readonly kind: "event"; readonly event: AuditEvent }
  | { readonly kind: "checkpoint"; readonly checkpoint: StoredCheckpoint }
  | { readonly kind: "signing_key"; readonly key: PublicSigningKey }
  | { readonly kind: "invalid"; readonly problem: string };

const hex = (bytes: Buffer): string => bytes.toString("hex");

/** The line (with "\n") for an event. */
export function formatEventLine(event: AuditEvent): string {
  return `${JSON.stringify({
    sequence: event.sequence.toString(10),
    time: event.time.toISOString(),
    identity: event.identity,
    roles: event.roles,
    method: event.method,
    resources: event.resources,
    key_version: event.keyVersion,
    result_code: event.resultCode,
    result_message: event.resultMessage,
    request_id: event.requestId,
    peer_address: event.peerAddress,
    policy_digest: event.policyDigest,
    previous_hash: hex(event.previousHash),
    hash: hex(event.hash),
  })}\n`;
}

/** The line (with "\n") for a checkpoint. */
export function formatCheckpointLine(checkpoint: StoredCheckpoint): string {
  return `${JSON.stringify({
    checkpoint: {
      sequence: checkpoint.sequence.toString(10),
      hash: hex(checkpoint.hash),
      time: checkpoint.time.toISOString(),
      key_id: checkpoint.keyId,
      signature: hex(checkpoint.signature),
    },
  })}\n`;
}

/** The line (with "\n") for a signing key; only its public half. */
export function formatSigningKeyLine(key: PublicSigningKey): string {
  return `${JSON.stringify({
    signing_key: { key_id: key.keyId, algorithm: key.algorithm, public_key_pem: key.publicKeyPem },
  })}\n`;
}

const EVENT_FIELDS = [
  "sequence",
  "time",
  "identity",
  "roles",
  "method",
  "resources",
  "key_version",
  "result_code",
  "result_message",
  "request_id",
  "peer_address",
  "policy_digest",
  "previous_hash",
  "hash",
] as const;
const CHECKPOINT_FIELDS = ["sequence", "hash", "time", "key_id", "signature"] as const;
const SIGNING_KEY_FIELDS = ["key_id", "algorithm", "public_key_pem"] as const;

const MAX_SEQUENCE = 2n ** 63n - 1n;
const ISO_MILLIS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

class LineError extends Error {}

/**
 * Parses one line (without its "\n"). Strict: every field present with its
 * type, no other fields, hex lower-case, times in the exact format written,
 * so that a file has one reading only. Never throws for bad input: it
 * returns `invalid` with the problem.
 */
export function parseExportLine(text: string): ExportLine {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: "invalid", problem: "not valid JSON" };
  }
  try {
    const object = asObject(value, "line");
    if ("checkpoint" in object) {
      exactKeys(object, ["checkpoint"], "line");
      const checkpoint = asObject(object.checkpoint, "checkpoint");
      exactKeys(checkpoint, CHECKPOINT_FIELDS, "checkpoint");
      return {
        kind: "checkpoint",
        checkpoint: {
          sequence: asSequence(checkpoint.sequence, "checkpoint sequence", 0n),
          hash: asHex(checkpoint.hash, "checkpoint hash", 32),
          time: asTime(checkpoint.time, "checkpoint time"),
          keyId: asHex(checkpoint.key_id, "checkpoint key_id", 32).toString("hex"),
          signature: asHex(checkpoint.signature, "checkpoint signature"),
        },
      };
    }
    if ("signing_key" in object) {
      exactKeys(object, ["signing_key"], "line");
      const key = asObject(object.signing_key, "signing_key");
      exactKeys(key, SIGNING_KEY_FIELDS, "signing_key");
      return {
        kind: "signing_key",
        key: {
          keyId: asHex(key.key_id, "signing_key key_id", 32).toString("hex"),
          algorithm: asString(key.algorithm, "signing_key algorithm"),
          publicKeyPem: asString(key.public_key_pem, "signing_key public_key_pem"),
        },
      };
    }
    exactKeys(object, EVENT_FIELDS, "event");
    const resultCode = object.result_code;
    if (typeof resultCode !== "number" || !Number.isInteger(resultCode) || resultCode < 0 || resultCode > 16) {
      throw new LineError("event result_code must be an integer from 0 to 16");
    }
    return {
      kind: "event",
      event: {
        sequence: asSequence(object.sequence, "event sequence", 1n),
        time: asTime(object.time, "event time"),
        identity: asString(object.identity, "event identity"),
        roles: asStrings(object.roles, "event roles") as Role[],
        method: asString(object.method, "event method"),
        resources: asStrings(object.resources, "event resources"),
        keyVersion: asString(object.key_version, "event key_version"),
        resultCode,
        resultMessage: asString(object.result_message, "event result_message"),
        requestId: asString(object.request_id, "event request_id"),
        peerAddress: asString(object.peer_address, "event peer_address"),
        policyDigest: asString(object.policy_digest, "event policy_digest"),
        previousHash: asHex(object.previous_hash, "event previous_hash", 32),
        hash: asHex(object.hash, "event hash", 32),
      },
    };
  } catch (err) {
    if (err instanceof LineError) {
      return { kind: "invalid", problem: err.message };
    }
    throw err;
  }
}

function asObject(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new LineError(`${what} must be a JSON object`);
  }
  return value as Record<string, unknown>;
}

function exactKeys(object: Record<string, unknown>, keys: readonly string[], what: string): void {
  for (const key of keys) {
    if (!(key in object)) {
      throw new LineError(`${what} lacks "${key}"`);
    }
  }
  for (const key of Object.keys(object)) {
    if (!keys.includes(key)) {
      throw new LineError(`${what} has an unexpected field "${key}"`);
    }
  }
}

function asString(value: unknown, what: string): string {
  if (typeof value !== "string") {
    throw new LineError(`${what} must be a string`);
  }
  return value;
}

function asStrings(value: unknown, what: string): string[] {
  if (!Array.isArray(value) || !value.every((item) => typeof item === "string")) {
    throw new LineError(`${what} must be an array of strings`);
  }
  return value as string[];
}

function asSequence(value: unknown, what: string, min: bigint): bigint {
  if (typeof value !== "string" || !/^(0|[1-9]\d{0,18})$/.test(value)) {
    throw new LineError(`${what} must be a decimal string`);
  }
  const sequence = BigInt(value);
  if (sequence < min || sequence > MAX_SEQUENCE) {
    throw new LineError(`${what} is out of range`);
  }
  return sequence;
}

function asHex(value: unknown, what: string, length?: number): Buffer {
  if (typeof value !== "string" || !/^(?:[0-9a-f]{2})*$/.test(value) || (length !== undefined && value.length !== length * 2)) {
    throw new LineError(`${what} must be ${length === undefined ? "" : `${length} bytes as `}lower-case hex`);
  }
  return Buffer.from(value, "hex");
}

function asTime(value: unknown, what: string): Date {
  const text = asString(value, what);
  const time = new Date(text);
  // Round-tripping rejects dates that parse but are not written this way (2026-02-30…).
  if (!ISO_MILLIS.test(text) || Number.isNaN(time.getTime()) || time.toISOString() !== text) {
    throw new LineError(`${what} must be ISO-8601 UTC with milliseconds, e.g. 2026-11-24T07:30:00.123Z`);
  }
  return time;
}
