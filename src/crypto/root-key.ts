import { createHmac, randomBytes } from "node:crypto";
import { SecretBytes } from "./secret-bytes.js";

/** Length of the root key in bytes: an AES-256 key. */
export const ROOT_KEY_LENGTH = 32;

/** Thrown when root key material is malformed; the message never contains key bytes. */
export class RootKeyError extends Error {
  override name = "RootKeyError";
}

/**
 * Parses root key material as stored in a key file or an environment variable:
 * either exactly 32 raw bytes, or the standard base64 of 32 bytes (surrounding
 * whitespace ignored).
 *
 * @throws RootKeyError when the material is neither.
 */
export function parseRootKey(material: Uint8Array): SecretBytes {
  if (material.length === ROOT_KEY_LENGTH) {
    return new SecretBytes(material);
  }
  const text = Buffer.from(material).toString("latin1").trim();
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    const decoded = Buffer.from(text, "base64");
    if (decoded.length === ROOT_KEY_LENGTH) {
      const key = new SecretBytes(decoded);
      decoded.fill(0);
      return key;
    }
  }
  throw new RootKeyError(
    `root key must be ${ROOT_KEY_LENGTH} raw bytes or their base64 encoding (got ${material.length} bytes)`,
  );
}

/** A fresh random root key, base64-encoded with a trailing newline, as written to a key file. */
export function generateRootKeyFile(): Buffer {
  const key = randomBytes(ROOT_KEY_LENGTH);
  const file = Buffer.from(`${key.toString("base64")}\n`, "latin1");
  key.fill(0);
  return file;
}

/**
 * A key check value: HMAC-SHA256(root key, "keyward root key check v1").
 *
 * Stored beside the data so that a server started with the wrong root key
 * refuses to start instead of failing every unwrap later. HMAC is one-way, so
 * the value reveals nothing about the key.
 */
export function rootKeyCheck(rootKey: SecretBytes): Buffer {
  return createHmac("sha256", rootKey.expose()).update("keyward root key check v1").digest();
}
