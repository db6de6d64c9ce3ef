import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { SecretBytes } from "./secret-bytes.js";

const FORMAT = 0x01;
const NONCE_LENGTH = 12;
const TAG_LENGTH = 16;

/** Thrown when wrapped material does not open: wrong root key, wrong binding, or tampering. */
export class KeyUnwrapError extends Error {
  override name = "KeyUnwrapError";
}

/**
 * Wraps key material under the root key with AES-256-GCM (NIST SP 800-38D,
 * RFC 5116 AEAD_AES_256_GCM). Layout of the result:
 *
 * ```
 * 0x01 (format) || nonce (12 bytes, random) || ciphertext (len(material)) || tag (16 bytes)
 * ```
 *
 * `binding` is the associated data: it names what the material is (key id,
 * version, algorithm), so wrapped material moved to another row fails to
 * unwrap instead of being used as the wrong key. A random 96-bit nonce is
 * safe for far more wraps than a deployment makes (under 2^32 per key).
 */
export function wrapKey(rootKey: SecretBytes, material: SecretBytes, binding: string): Buffer {
  const nonce = randomBytes(NONCE_LENGTH);
  const cipher = createCipheriv("aes-256-gcm", rootKey.expose(), nonce, { authTagLength: TAG_LENGTH });
  cipher.setAAD(Buffer.from(binding, "utf8"));
  const ciphertext = Buffer.concat([cipher.update(material.expose()), cipher.final()]);
  return Buffer.concat([Buffer.of(FORMAT), nonce, ciphertext, cipher.getAuthTag()]);
}

/**
 * Opens what {@link wrapKey} produced with the same root key and binding.
 *
 * @throws KeyUnwrapError (one message, whatever the cause) when it does not open.
 */
export function unwrapKey(rootKey: SecretBytes, wrapped: Uint8Array, binding: string): SecretBytes {
  const bytes = Buffer.from(wrapped);
  if (bytes.length < 1 + NONCE_LENGTH + TAG_LENGTH || bytes[0] !== FORMAT) {
    throw new KeyUnwrapError("key material does not unwrap");
  }
  const nonce = bytes.subarray(1, 1 + NONCE_LENGTH);
  const tag = bytes.subarray(bytes.length - TAG_LENGTH);
  const ciphertext = bytes.subarray(1 + NONCE_LENGTH, bytes.length - TAG_LENGTH);
  try {
    const decipher = createDecipheriv("aes-256-gcm", rootKey.expose(), nonce, { authTagLength: TAG_LENGTH });
    decipher.setAAD(Buffer.from(binding, "utf8"));
    decipher.setAuthTag(tag);
    const material = Buffer.concat([decipher.update(ciphertext), decipher.final()]);
    const secret = new SecretBytes(material);
    material.fill(0);
    return secret;
  } catch (err) {
    throw new KeyUnwrapError("key material does not unwrap", { cause: err });
  }
}
