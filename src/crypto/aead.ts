import {
  type CipherGCM,
  createCipheriv,
  createDecipheriv,
  type DecipherGCM,
  type KeyObject,
  randomBytes,
} from "node:crypto";
import { type FillRandom, fillRandom as defaultFillRandom } from "./random.js";
import { SecretBytes } from "./secret-bytes.js";

export type { FillRandom } from "./random.js";

/**
 * The AEAD algorithms of keys of purpose ENCRYPT_DECRYPT (keys.proto
 * KeyAlgorithm): AES-256-GCM (NIST SP 800-38D) and ChaCha20-Poly1305
 * (RFC 8439), both with a 256-bit key, a 96-bit nonce and a 128-bit tag.
 */
export type AeadAlgorithm = "AES_256_GCM" | "CHACHA20_POLY1305";

/** Every {@link AeadAlgorithm}, in keys.proto order. */
export const AEAD_ALGORITHMS: readonly AeadAlgorithm[] = Object.freeze(["AES_256_GCM", "CHACHA20_POLY1305"]);

/** Key length of both AEAD algorithms, in bytes. */
export const AEAD_KEY_LENGTH = 32;
/** Nonce length of both AEAD algorithms, in bytes (96 bits). */
export const AEAD_NONCE_LENGTH = 12;
/** Tag length of both AEAD algorithms, in bytes (128 bits). */
export const AEAD_TAG_LENGTH = 16;
/** What {@link Aead.encrypt} adds to the plaintext: nonce and tag, 28 bytes. */
export const AEAD_OVERHEAD = AEAD_NONCE_LENGTH + AEAD_TAG_LENGTH;

/** The one message of every {@link DecryptionError}. */
export const DECRYPTION_FAILED = "decryption failed";

/**
 * Thrown when a ciphertext does not decrypt: a flipped bit, a truncated or
 * extended ciphertext, the wrong key, the wrong associated data, or bytes that
 * are no ciphertext at all.
 *
 * The message is always "decryption failed", whatever the reason, so that
 * callers cannot use failures as an oracle (tink's AEAD does the same). The
 * precise reason, for the audit log only, is in `cause`; it names lengths,
 * key names and versions, never plaintext or key bytes.
 */
export class DecryptionError extends Error {
  override name = "DecryptionError";

  constructor(options?: { cause?: unknown }) {
    super(DECRYPTION_FAILED, options);
  }
}

/** Options of {@link createAead}. */
export interface AeadOptions {
  /**
   * Source of nonces. Default: random.ts `fillRandom` (the operating
   * system's CSPRNG). Anything else is for known-answer tests only: a
   * repeated nonce under one key breaks both confidentiality and
   * authenticity of AES-GCM and ChaCha20-Poly1305.
   */
  fillRandom?: FillRandom;
}

/**
 * Authenticated encryption with associated data (RFC 5116), shaped like
 * tink's `tink.AEAD`: the nonce is chosen inside, never by the caller.
 *
 * Ciphertext layout (RFC 5116 §3.1 style, as tink's AES-GCM writes it):
 *
 * ```
 * nonce (12 bytes, random) || encrypted plaintext (len(plaintext)) || tag (16 bytes)
 * ```
 */
export interface Aead {
  /** The algorithm this AEAD implements. */
  readonly algorithm: AeadAlgorithm;

  /**
   * Encrypts and authenticates `plaintext`, and authenticates
   * `associatedData` (not stored in the result: decrypting needs it again,
   * byte for byte). Returns a new buffer, 28 bytes longer than the plaintext.
   */
  encrypt(plaintext: Uint8Array, associatedData: Uint8Array): Buffer;

  /**
   * Decrypts what {@link Aead.encrypt} produced with the same key and
   * associated data. Returns a new buffer the caller owns.
   *
   * @throws DecryptionError ("decryption failed") when the ciphertext is
   * shorter than 28 bytes, or the tag does not verify.
   */
  decrypt(ciphertext: Uint8Array, associatedData: Uint8Array): Buffer;
}

const CIPHER_NAMES = {
  AES_256_GCM: "aes-256-gcm",
  CHACHA20_POLY1305: "chacha20-poly1305",
} as const satisfies Record<AeadAlgorithm, string>;

/** True when `value` names an {@link AeadAlgorithm}. */
export function isAeadAlgorithm(value: string): value is AeadAlgorithm {
  return Object.hasOwn(CIPHER_NAMES, value);
}

/** A fresh random 256-bit AEAD key (from the operating system's CSPRNG). */
export function generateAeadKey(): SecretBytes {
  const raw = randomBytes(AEAD_KEY_LENGTH);
  const key = new SecretBytes(raw);
  raw.fill(0);
  return key;
}

/**
 * An {@link Aead} for `algorithm` with `key`, a 32-byte secret KeyObject
 * (`crypto.createSecretKey`), so that a cached AEAD never re-parses its key.
 *
 * Nonces are 96 random bits per message. NIST SP 800-38D §8.3 caps random
 * 96-bit nonces at 2^32 messages per key; ChaCha20-Poly1305 shares that
 * bound in practice. Rotate a key version well before it encrypts 2^32
 * messages.
 *
 * @throws TypeError when `key` is not a secret key of 32 bytes, or
 * `algorithm` is not an AEAD algorithm.
 */
export function createAead(algorithm: AeadAlgorithm, key: KeyObject, options: AeadOptions = {}): Aead {
  if (!isAeadAlgorithm(algorithm)) {
    throw new TypeError(`not an AEAD algorithm: ${String(algorithm)}`);
  }
  if (key.type !== "secret" || key.symmetricKeySize !== AEAD_KEY_LENGTH) {
    throw new TypeError(`${algorithm} needs a secret key of ${AEAD_KEY_LENGTH} bytes`);
  }
  const cipherName = CIPHER_NAMES[algorithm];
  const fillRandom = options.fillRandom ?? defaultFillRandom;

  return {
    algorithm,

    encrypt(plaintext, associatedData) {
      // One output buffer: the nonce is drawn straight into it and the
      // encrypted bytes and tag are copied in once. allocUnsafe is safe:
      // every byte is written below, and a ciphertext is not secret.
      const out = Buffer.allocUnsafe(AEAD_NONCE_LENGTH + plaintext.length + AEAD_TAG_LENGTH);
      const nonce = out.subarray(0, AEAD_NONCE_LENGTH);
      fillRandom(nonce);
      const cipher = createAeadCipher(cipherName, key, nonce);
      if (associatedData.length > 0) {
        cipher.setAAD(associatedData);
      }
      let offset = AEAD_NONCE_LENGTH;
      offset += cipher.update(plaintext).copy(out, offset);
      offset += cipher.final().copy(out, offset);
      cipher.getAuthTag().copy(out, offset);
      return out;
    },

    decrypt(ciphertext, associatedData) {
      if (ciphertext.length < AEAD_OVERHEAD) {
        throw new DecryptionError({
          cause: new Error(`ciphertext is ${ciphertext.length} bytes, shorter than nonce and tag (${AEAD_OVERHEAD})`),
        });
      }
      const end = ciphertext.length - AEAD_TAG_LENGTH;
      return openParts(
        cipherName,
        key,
        ciphertext.subarray(0, AEAD_NONCE_LENGTH),
        ciphertext.subarray(AEAD_NONCE_LENGTH, end),
        ciphertext.subarray(end),
        [associatedData],
      );
    },
  };
}

type AeadCipherName = (typeof CIPHER_NAMES)[AeadAlgorithm];

/**
 * The cipher for one AEAD message, tag pinned at 128 bits. For crypto/ only
 * (envelope.ts encrypts its data with it).
 */
export function createAeadCipher(
  cipherName: AeadCipherName,
  key: KeyObject | Uint8Array,
  nonce: Uint8Array,
): CipherGCM {
  // Typed as GCM for both: @types/node wants plaintextLength in ChaCha20-
  // Poly1305's setAAD, which node does not (only CCM needs it).
  return createCipheriv(cipherName as "aes-256-gcm", key, nonce, { authTagLength: AEAD_TAG_LENGTH });
}

/**
 * Verifies and decrypts one AEAD message given as its parts. For crypto/
 * only (envelope.ts decrypts its data with it). The associated
 * data is authenticated as the concatenation of `associatedData` (OpenSSL
 * takes AAD in pieces, so nothing is copied to join them).
 *
 * The plaintext is released only after the tag verified; on failure the
 * unverified plaintext is zeroed and DecryptionError thrown.
 *
 * @throws DecryptionError when the tag does not verify.
 */
export function openParts(
  cipherName: AeadCipherName,
  key: KeyObject | Uint8Array,
  nonce: Uint8Array,
  encrypted: Uint8Array,
  tag: Uint8Array,
  associatedData: readonly Uint8Array[],
): Buffer {
  let plaintext: Buffer | undefined;
  try {
    // Typed as GCM for both, as in createAeadCipher.
    const decipher: DecipherGCM = createDecipheriv(cipherName as "aes-256-gcm", key, nonce, {
      authTagLength: AEAD_TAG_LENGTH,
    });
    for (const part of associatedData) {
      if (part.length > 0) {
        decipher.setAAD(part);
      }
    }
    decipher.setAuthTag(tag);
    plaintext = decipher.update(encrypted);
    const rest = decipher.final();
    return rest.length === 0 ? plaintext : Buffer.concat([plaintext, rest]);
  } catch (err) {
    plaintext?.fill(0);
    throw new DecryptionError({ cause: err });
  }
}
