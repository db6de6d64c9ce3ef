import { createHash, createPublicKey, verify as verifySignature } from "node:crypto";

/** A signed statement of the chain head. */
export interface Checkpoint {
  /** Sequence of the last event covered; 0 for an empty log. */
  readonly sequence: bigint;
  /** Hash of the event at `sequence` (32 zero bytes for an empty log). */
  readonly hash: Buffer;
  readonly time: Date;
  /** Ed25519 signature over {@link checkpointPayload}. */
  readonly signature: Buffer;
  /** SHA-256 of the signing key's DER SubjectPublicKeyInfo, lower-case hex. */
  readonly keyId: string;
}

/**
 * The exact bytes a checkpoint signs, UTF-8, four lines each ending in "\n":
 *
 * ```
 * keyward-audit-checkpoint-v1
 * <sequence, decimal>
 * <hash, lower-case hex>
 * <time, decimal milliseconds since the Unix epoch>
 * ```
 */
export function checkpointPayload(sequence: bigint, hash: Buffer, time: Date): Buffer {
  return Buffer.from(`keyward-audit-checkpoint-v1\n${sequence}\n${hash.toString("hex")}\n${time.getTime()}\n`, "utf8");
}

/** SHA-256 of a public key's DER SubjectPublicKeyInfo, lower-case hex: the key id. */
export function publicKeyId(publicKeyPem: string): string {
  const der = createPublicKey(publicKeyPem).export({ type: "spki", format: "der" });
  return createHash("sha256").update(der).digest("hex");
}

/**
 * Checks a checkpoint with the public key alone (PEM SPKI, Ed25519): its key
 * id names that key and its signature covers its sequence, hash and time.
 */
export function verifyCheckpoint(checkpoint: Checkpoint, publicKeyPem: string): boolean {
  if (publicKeyId(publicKeyPem) !== checkpoint.keyId) {
    return false;
  }
  const payload = checkpointPayload(checkpoint.sequence, checkpoint.hash, checkpoint.time);
  return verifySignature(null, payload, createPublicKey(publicKeyPem), checkpoint.signature);
}
