import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { DataKeySpec } from "../../gen/keyward/v1/crypto_pb.js";
import type { KeywardClient } from "./client.js";

/*
 * Envelope encryption of payloads of any size, done by the caller: Keyward
 * makes and wraps a data key (GenerateDataKey) and later unwraps it
 * (Decrypt); the payload never goes to the server and is encrypted here with
 * AES-256-GCM (NIST SP 800-38D).
 *
 * Envelope, format version 1 (integers big-endian):
 *
 * | offset   | length | field                                                        |
 * |----------|--------|--------------------------------------------------------------|
 * | 0        | 1      | format version, 0x01                                         |
 * | 1        | 2      | w, length of the wrapped data key, uint16, 1..65535          |
 * | 3        | w      | wrapped data key: GenerateDataKey's ciphertext of a 32-byte  |
 * |          |        |   data key, made with associated_data = A (a Keyward         |
 * |          |        |   ciphertext: it names the key and key version)              |
 * | 3+w      | 12     | IV, random                                                   |
 * | 15+w     | L      | the payload encrypted with the data key, AES-256-GCM         |
 * | 15+w+L   | 16     | GCM tag                                                      |
 *
 * Overhead: 31 + w bytes, where w is 129 + n for a key name of n bytes
 * (Keyward's 97 + n bytes of framing around the 32-byte data key): 173
 * bytes in all for `keys/payments`.
 *
 * A is the caller's associated data (empty when not given). It binds twice:
 * the server unwraps the data key only with the same A, and the GCM
 * associated data is bytes [0, 15+w) of the envelope (everything before the
 * encrypted payload) || A. So the tag authenticates the format version, the
 * wrapped key beside it, the IV and A; a changed byte anywhere, or another
 * A, fails. The prefix is self-delimiting, so appending A keeps the encoding
 * injective. A is at most 65536 bytes (GenerateDataKey's limit).
 */

/** The format version envelopeEncrypt writes and the only one envelopeDecrypt reads. */
export const ENVELOPE_FORMAT_VERSION = 1;

const DATA_KEY_LENGTH = 32;
const IV_LENGTH = 12;
const TAG_LENGTH = 16;
const EMPTY = new Uint8Array(0);

/** Every envelope that does not open fails with this, as Keyward's Decrypt does: the reason is not an oracle. */
const decryptionFailed = () => new ConnectError("decryption failed", Code.InvalidArgument);

/**
 * Encrypts `plaintext` (any size a Buffer holds) under a fresh data key from
 * GenerateDataKey with `keyName` (`keys/{key}` or a version of it) and
 * returns the envelope described above. The plaintext data key is zeroed
 * before returning. Fails as GenerateDataKey fails (SERVICE role on the key
 * needed; `aad` at most 65536 bytes).
 */
export async function envelopeEncrypt(
  client: Pick<KeywardClient, "crypto">,
  keyName: string,
  plaintext: Uint8Array,
  aad: Uint8Array = EMPTY,
  options?: CallOptions,
): Promise<Buffer> {
  const generated = await client.crypto.generateDataKey(
    { name: keyName, length: { case: "keySpec", value: DataKeySpec.AES_256 }, associatedData: aad },
    options,
  );
  const dataKey = generated.plaintext;
  try {
    const wrapped = generated.ciphertext;
    if (dataKey.length !== DATA_KEY_LENGTH || wrapped.length === 0 || wrapped.length > 0xffff) {
      throw new ConnectError("GenerateDataKey answered an unexpected data key", Code.Internal);
    }
    const header = Buffer.alloc(3 + wrapped.length + IV_LENGTH);
    header[0] = ENVELOPE_FORMAT_VERSION;
    header.writeUInt16BE(wrapped.length, 1);
    header.set(wrapped, 3);
    const iv = randomBytes(IV_LENGTH);
    header.set(iv, 3 + wrapped.length);
    const cipher = createCipheriv("aes-256-gcm", dataKey, iv, { authTagLength: TAG_LENGTH });
    cipher.setAAD(Buffer.concat([header, aad]));
    return Buffer.concat([header, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  } finally {
    dataKey.fill(0);
  }
}

/**
 * Opens an envelope made by {@link envelopeEncrypt}: Decrypt with `keyName`
 * (`keys/{key}`, the key expected to have wrapped the data key) unwraps the
 * data key, which is zeroed after use. Anything that does not open —
 * truncated, altered, another format, another `aad`, another key — fails
 * INVALID_ARGUMENT "decryption failed"; Decrypt's other failures (key
 * disabled: FAILED_PRECONDITION, …) pass through.
 */
export async function envelopeDecrypt(
  client: Pick<KeywardClient, "crypto">,
  keyName: string,
  envelope: Uint8Array,
  aad: Uint8Array = EMPTY,
  options?: CallOptions,
): Promise<Buffer> {
  const bytes = Buffer.from(envelope.buffer, envelope.byteOffset, envelope.byteLength);
  if (bytes.length < 3 || bytes[0] !== ENVELOPE_FORMAT_VERSION) {
    throw decryptionFailed();
  }
  const w = bytes.readUInt16BE(1);
  const headerLength = 3 + w + IV_LENGTH;
  if (w === 0 || bytes.length < headerLength + TAG_LENGTH) {
    throw decryptionFailed();
  }
  const unwrapped = await client.crypto.decrypt({ name: keyName, ciphertext: bytes.subarray(3, 3 + w), associatedData: aad }, options);
  const dataKey = unwrapped.plaintext;
  let opened: Buffer | undefined;
  try {
    if (dataKey.length !== DATA_KEY_LENGTH) {
      throw decryptionFailed();
    }
    const decipher = createDecipheriv("aes-256-gcm", dataKey, bytes.subarray(3 + w, headerLength), { authTagLength: TAG_LENGTH });
    decipher.setAAD(Buffer.concat([bytes.subarray(0, headerLength), aad]));
    decipher.setAuthTag(bytes.subarray(bytes.length - TAG_LENGTH));
    opened = decipher.update(bytes.subarray(headerLength, bytes.length - TAG_LENGTH));
    decipher.final();
    const plaintext = opened;
    opened = undefined;
    return plaintext;
  } catch (err) {
    throw err instanceof ConnectError ? err : decryptionFailed();
  } finally {
    dataKey.fill(0);
    // Decrypted but not authenticated: never handed out, not left in memory.
    opened?.fill(0);
  }
}
