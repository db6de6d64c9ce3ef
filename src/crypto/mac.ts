import { createHmac, type KeyObject, randomBytes, timingSafeEqual } from "node:crypto";
import { SecretBytes } from "./secret-bytes.js";

/**
 * The algorithms of keys of purpose MAC (keys.proto KeyAlgorithm): HMAC
 * (RFC 2104, FIPS 198-1) with SHA-256 or SHA-512.
 *
 * | algorithm   | hash    | generated key | tag      |
 * |-------------|---------|---------------|----------|
 * | HMAC_SHA256 | SHA-256 | 32 bytes      | 32 bytes |
 * | HMAC_SHA512 | SHA-512 | 64 bytes      | 64 bytes |
 *
 * Generated keys are as long as the hash output, the length RFC 2104 §3
 * recommends at least; a longer key would be no stronger than the hash
 * allows, and one longer than the block size would be hashed first.
 */
export type MacAlgorithm = "HMAC_SHA256" | "HMAC_SHA512";

/** Every {@link MacAlgorithm}, in keys.proto order. */
export const MAC_ALGORITHMS: readonly MacAlgorithm[] = Object.freeze(["HMAC_SHA256", "HMAC_SHA512"]);

const PARAMETERS = {
  HMAC_SHA256: { hash: "sha256", keyLength: 32, tagLength: 32 },
  HMAC_SHA512: { hash: "sha512", keyLength: 64, tagLength: 64 },
} as const satisfies Record<MacAlgorithm, { hash: string; keyLength: number; tagLength: number }>;

/** True when `value` names a {@link MacAlgorithm}. */
export function isMacAlgorithm(value: string): value is MacAlgorithm {
  return Object.hasOwn(PARAMETERS, value);
}

/** Length of the keys {@link generateMacKey} makes for `algorithm`, in bytes: 32 or 64. */
export function macKeyLength(algorithm: MacAlgorithm): number {
  return PARAMETERS[algorithm].keyLength;
}

/** Length of the tags of `algorithm`, in bytes: 32 or 64. */
export function macTagLength(algorithm: MacAlgorithm): number {
  return PARAMETERS[algorithm].tagLength;
}

/** A MAC with one key. Cache it with the key version. */
export interface Mac {
  readonly algorithm: MacAlgorithm;

  /** The full-length HMAC tag of `data` (32 or 64 bytes). */
  compute(data: Uint8Array): Buffer;

  /**
   * True when `tag` is the HMAC of `data`. Compares in constant time
   * (`crypto.timingSafeEqual`); only full-length tags are accepted, so a
   * truncated tag, of any length, is false. Never throws for any tag bytes.
   */
  verify(data: Uint8Array, tag: Uint8Array): boolean;
}

/** A fresh random key of {@link macKeyLength} bytes (from the operating system's CSPRNG). */
export function generateMacKey(algorithm: MacAlgorithm): SecretBytes {
  const raw = randomBytes(PARAMETERS[algorithm].keyLength);
  const key = new SecretBytes(raw);
  raw.fill(0);
  return key;
}

/**
 * A {@link Mac} for `algorithm` with `key`, a secret KeyObject
 * (`crypto.createSecretKey`) of any non-zero length, as RFC 2104 allows;
 * key-material.ts insists on the generated lengths for stored keys.
 *
 * @throws TypeError when `key` is not a non-empty secret key, or
 * `algorithm` is not a MAC algorithm.
 */
export function createMac(algorithm: MacAlgorithm, key: KeyObject): Mac {
  if (!isMacAlgorithm(algorithm)) {
    throw new TypeError(`not a MAC algorithm: ${String(algorithm)}`);
  }
  if (key.type !== "secret" || !key.symmetricKeySize) {
    throw new TypeError(`${algorithm} needs a non-empty secret key`);
  }
  const { hash, tagLength } = PARAMETERS[algorithm];
  const compute = (data: Uint8Array): Buffer => createHmac(hash, key).update(data).digest();
  return {
    algorithm,
    compute,
    verify(data, tag) {
      // The tag length is public (fixed by the algorithm), so checking it
      // first leaks nothing; timingSafeEqual needs equal lengths.
      return tag.length === tagLength && timingSafeEqual(compute(data), tag);
    },
  };
}
