import {
  AEAD_NONCE_LENGTH,
  AEAD_TAG_LENGTH,
  type Aead,
  type AeadAlgorithm,
  createAeadCipher,
  DecryptionError,
  openParts,
} from "./aead.js";
import { type FillRandom, fillRandom as defaultFillRandom } from "./random.js";

/*
 * Envelope encryption: every message gets a fresh 256-bit data key; the data
 * key encrypts the message with AES-256-GCM (NIST SP 800-38D) and the key
 * version's AEAD (AES-256-GCM or ChaCha20-Poly1305, RFC 8439) wraps the data
 * key. The ciphertext is self-describing, so decrypting needs only the
 * ciphertext, the key version it names, and the same associated data.
 *
 * Ciphertext, format version 1 (integers big-endian, n = key name length):
 *
 * | offset         | length | field                                                     |
 * |----------------|--------|-----------------------------------------------------------|
 * | 0              | 1      | format version, 0x01                                      |
 * | 1              | 2      | n, length of the key name in bytes, uint16, 1..512        |
 * | 3              | n      | key name, UTF-8 (the key's resource name, `keys/{key}`)   |
 * | 3+n            | 4      | key version, uint32, 1..2^32-1                            |
 * | 7+n            | 2      | w, length of the wrapped data key, uint16, 60             |
 * | 9+n            | w      | wrapped data key: the key version's AEAD output,          |
 * |                |        |   nonce (12) || encrypted data key (32) || tag (16)       |
 * | 9+n+w          | 12     | nonce of the data encryption (random)                     |
 * | 21+n+w         | L      | plaintext encrypted with the data key, AES-256-GCM        |
 * | 21+n+w+L       | 16     | GCM tag of the data encryption                            |
 *
 * Overhead: 97 + n bytes (609 with a 512-byte key name), within the 1024
 * bytes crypto.proto promises.
 *
 * Associated data (RFC 5116 §2.1), where A is the caller's associated data:
 *
 * - wrapping the data key: bytes [0, 7+n) of the ciphertext (format, key
 *   name, key version) || algorithm id (1 byte: 0x01 AES-256-GCM, 0x02
 *   ChaCha20-Poly1305, the keys.proto numbers) || A. A wrapped data key
 *   therefore opens only under the key name, version and algorithm it was
 *   made for, and only with the same A: a ciphertext moved to another key
 *   or version, even one holding the same key bytes, fails.
 * - encrypting the data: bytes [0, 9+n+w) of the ciphertext (everything
 *   before the nonce) || A. Every header byte is authenticated by the final
 *   tag as well, and the data is bound to the wrapped key beside it.
 *
 * Both prefixes are self-delimiting (length-prefixed or fixed-width fields),
 * so appending A keeps the encoding injective.
 */

/** The format version this module writes and the only one it reads. */
export const CIPHERTEXT_FORMAT_VERSION = 1;
/** Longest key name, in UTF-8 bytes. */
export const MAX_KEY_NAME_LENGTH = 512;
/** Largest plaintext, in bytes (256 KiB, crypto.proto's limit). */
export const MAX_PLAINTEXT_LENGTH = 262_144;
/** Largest ciphertext accepted, in bytes (256 KiB + 1 KiB, crypto.proto's limit). */
export const MAX_CIPHERTEXT_LENGTH = 263_168;
/** Length of a data key, in bytes: an AES-256 key. */
export const DATA_KEY_LENGTH = 32;
/** Length of a wrapped data key, in bytes, in format version 1. */
export const WRAPPED_DATA_KEY_LENGTH = AEAD_NONCE_LENGTH + DATA_KEY_LENGTH + AEAD_TAG_LENGTH;
/** Overhead of a ciphertext beyond its plaintext, key name excluded: 97 bytes. */
export const CIPHERTEXT_FIXED_OVERHEAD = 1 + 2 + 4 + 2 + WRAPPED_DATA_KEY_LENGTH + AEAD_NONCE_LENGTH + AEAD_TAG_LENGTH;
/** Largest overhead of a ciphertext beyond its plaintext: 609 bytes. */
export const MAX_CIPHERTEXT_OVERHEAD = CIPHERTEXT_FIXED_OVERHEAD + MAX_KEY_NAME_LENGTH;

const MAX_KEY_VERSION = 0xffff_ffff;
const ALGORITHM_IDS = { AES_256_GCM: 0x01, CHACHA20_POLY1305: 0x02 } as const satisfies Record<AeadAlgorithm, number>;
const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** What {@link parseCiphertext} reads from a ciphertext without any key. */
export interface CiphertextHeader {
  /** Always 1: other versions are rejected. */
  readonly formatVersion: number;
  /** The name of the key that encrypted, as given to {@link createEnvelope}. */
  readonly keyName: string;
  /** The version of that key, 1..2^32-1. */
  readonly keyVersion: number;
}

/** Options of {@link createEnvelope}. */
export interface EnvelopeOptions {
  /** The key's name, written into every ciphertext: 1..512 UTF-8 bytes, e.g. `keys/payments`. */
  keyName: string;
  /** The key version's number, 1..2^32-1. */
  version: number;
  /** The key version's AEAD (aead.ts `createAead`), which wraps data keys. */
  aead: Aead;
  /**
   * Source of data keys and data nonces, called first for the data key, then
   * for the nonce. Default: random.ts `fillRandom` (the operating system's
   * CSPRNG). Anything else is for known-answer tests only.
   */
  fillRandom?: FillRandom;
}

/** Envelope encryption with one key version; cache it with the version's key. */
export interface Envelope {
  readonly keyName: string;
  readonly version: number;
  readonly algorithm: AeadAlgorithm;

  /**
   * Encrypts `plaintext` under a fresh data key and authenticates
   * `associatedData`, which is not stored: decrypting needs it again, byte
   * for byte. Returns the ciphertext laid out as this file's table shows,
   * `97 + len(keyName)` bytes longer than the plaintext.
   *
   * @throws RangeError when the plaintext is longer than 256 KiB.
   */
  encrypt(plaintext: Uint8Array, associatedData: Uint8Array): Buffer;

  /**
   * Decrypts a ciphertext made by {@link Envelope.encrypt} of this key name
   * and version, with the same associated data. Returns a new buffer the
   * caller owns.
   *
   * @throws DecryptionError ("decryption failed", the reason in `cause`)
   * for anything else: another format version, key name or version, a
   * truncated, extended or altered ciphertext, other associated data.
   */
  decrypt(ciphertext: Uint8Array, associatedData: Uint8Array, dataKeys?: DataKeyMemo): Buffer;

  /**
   * {@link Envelope.encrypt} for many plaintexts with the same associated
   * data (BatchEncrypt): one data key, wrapped once, each message under a
   * random nonce of its own — half the AEAD set-ups per message. Each
   * ciphertext has the usual format and decrypts alone; ciphertexts made
   * together carry the same wrapped key bytes, so they show that they were.
   * Random 96-bit nonces keep a collision negligible at a batch's at most
   * 1000 messages (NIST SP 800-38D §8.3 allows 2^32 per key).
   *
   * @throws RangeError when a plaintext is longer than 256 KiB.
   */
  encryptAll(plaintexts: readonly Uint8Array[], associatedData: Uint8Array): Buffer[];
}

/**
 * Data keys unwrapped while decrypting a batch, by header and wrapped-key bytes:
 * ciphertexts made by one {@link Envelope.encryptAll} then unwrap once.
 * Zero them with {@link forgetDataKeys} when the batch is done.
 */
export type DataKeyMemo = Map<string, { readonly associatedData: Buffer; readonly dataKey: Buffer }>;

/** Zeroes and forgets every data key of `dataKeys`. */
export function forgetDataKeys(dataKeys: DataKeyMemo): void {
  for (const { dataKey } of dataKeys.values()) {
    dataKey.fill(0);
  }
  dataKeys.clear();
}

/**
 * Envelope encryption with the key version `options.version` of the key
 * `options.keyName`, whose AEAD is `options.aead`. The header and the
 * associated-data prefix of the wrap are encoded once here, not per message.
 *
 * @throws RangeError when the key name is empty or longer than 512 UTF-8
 * bytes, or the version is not an integer in 1..2^32-1.
 */
export function createEnvelope(options: EnvelopeOptions): Envelope {
  const { keyName, version, aead } = options;
  const fillRandom = options.fillRandom ?? defaultFillRandom;
  const name = Buffer.from(keyName, "utf8");
  if (name.length < 1 || name.length > MAX_KEY_NAME_LENGTH) {
    throw new RangeError(`key name must be 1..${MAX_KEY_NAME_LENGTH} UTF-8 bytes (got ${name.length})`);
  }
  if (!Number.isInteger(version) || version < 1 || version > MAX_KEY_VERSION) {
    throw new RangeError(`key version must be an integer in 1..${MAX_KEY_VERSION} (got ${version})`);
  }
  const algorithmId = ALGORITHM_IDS[aead.algorithm];
  if (algorithmId === undefined) {
    throw new RangeError(`not an AEAD algorithm: ${String(aead.algorithm)}`);
  }

  // format || n || name || version || algorithm id: the header, plus the
  // algorithm id so that the wrap's associated data prefix is ready as is.
  const headerLength = 1 + 2 + name.length + 4;
  const wrapContext = Buffer.alloc(headerLength + 1);
  wrapContext.writeUInt8(CIPHERTEXT_FORMAT_VERSION, 0);
  wrapContext.writeUInt16BE(name.length, 1);
  name.copy(wrapContext, 3);
  wrapContext.writeUInt32BE(version, 3 + name.length);
  wrapContext.writeUInt8(algorithmId, headerLength);
  const header = wrapContext.subarray(0, headerLength);

  const wrappedOffset = headerLength + 2;
  const nonceOffset = wrappedOffset + WRAPPED_DATA_KEY_LENGTH;
  const dataOffset = nonceOffset + AEAD_NONCE_LENGTH;
  const overhead = dataOffset + AEAD_TAG_LENGTH;

  function wrapAssociatedData(associatedData: Uint8Array): Uint8Array {
    return associatedData.length === 0 ? wrapContext : Buffer.concat([wrapContext, associatedData]);
  }

  function checkLength(plaintext: Uint8Array): void {
    if (plaintext.length > MAX_PLAINTEXT_LENGTH) {
      throw new RangeError(`plaintext is ${plaintext.length} bytes, more than ${MAX_PLAINTEXT_LENGTH}`);
    }
  }

  /** A fresh data key and its wrap for `associatedData`, zeroed once `use` returns. */
  function withDataKey<T>(associatedData: Uint8Array, use: (dataKey: Buffer, wrapped: Buffer) => T): T {
    // Buffer.alloc, not allocUnsafe: never a slice of the shared pool,
    // so zeroing it below really erases the data key.
    const dataKey = Buffer.alloc(DATA_KEY_LENGTH);
    try {
      fillRandom(dataKey);
      const wrapped = aead.encrypt(dataKey, wrapAssociatedData(associatedData));
      if (wrapped.length !== WRAPPED_DATA_KEY_LENGTH) {
        throw new Error(`wrapped data key is ${wrapped.length} bytes, not ${WRAPPED_DATA_KEY_LENGTH}`);
      }
      return use(dataKey, wrapped);
    } finally {
      dataKey.fill(0);
    }
  }

  /** One ciphertext under `dataKey`, with a nonce of its own. */
  function seal(dataKey: Buffer, wrapped: Buffer, plaintext: Uint8Array, associatedData: Uint8Array): Buffer {
    // allocUnsafe is safe: every byte is written below, and a ciphertext
    // is not secret.
    const out = Buffer.allocUnsafe(overhead + plaintext.length);
    header.copy(out, 0);
    out.writeUInt16BE(WRAPPED_DATA_KEY_LENGTH, headerLength);
    wrapped.copy(out, wrappedOffset);
    const nonce = out.subarray(nonceOffset, dataOffset);
    fillRandom(nonce);
    const cipher = createAeadCipher("aes-256-gcm", dataKey, nonce);
    cipher.setAAD(out.subarray(0, nonceOffset));
    if (associatedData.length > 0) {
      cipher.setAAD(associatedData);
    }
    let offset = dataOffset;
    offset += cipher.update(plaintext).copy(out, offset);
    offset += cipher.final().copy(out, offset);
    cipher.getAuthTag().copy(out, offset);
    return out;
  }

  /**
   * The data key of `frame`: remembered in `dataKeys` from an earlier
   * ciphertext with the same header, wrapped key and associated data, else
   * unwrapped (and remembered, when there is a memo). `remembered` keys are
   * zeroed by forgetDataKeys, the others by the caller.
   */
  function unwrap(frame: Frame, associatedData: Uint8Array, dataKeys: DataKeyMemo | undefined): { dataKey: Buffer; remembered: boolean } {
    // The header and wrapped key, which the wrap authenticated along with the associated data.
    const id = dataKeys && frame.authenticatedPrefix.toString("latin1");
    const known = id === undefined ? undefined : dataKeys!.get(id);
    if (known?.associatedData.equals(associatedData)) {
      return { dataKey: known.dataKey, remembered: true };
    }
    let dataKey: Buffer;
    try {
      dataKey = aead.decrypt(frame.wrappedKey, wrapAssociatedData(associatedData));
    } catch (err) {
      throw new DecryptionError({ cause: new Error("data key does not unwrap", { cause: err }) });
    }
    if (dataKey.length !== DATA_KEY_LENGTH) {
      dataKey.fill(0);
      throw new DecryptionError({ cause: new Error(`data key is ${dataKey.length} bytes`) });
    }
    if (id === undefined || known) {
      return { dataKey, remembered: false };
    }
    dataKeys!.set(id, { associatedData: Buffer.from(associatedData), dataKey });
    return { dataKey, remembered: true };
  }

  return {
    keyName,
    version,
    algorithm: aead.algorithm,

    encrypt(plaintext, associatedData) {
      checkLength(plaintext);
      return withDataKey(associatedData, (dataKey, wrapped) => seal(dataKey, wrapped, plaintext, associatedData));
    },

    encryptAll(plaintexts, associatedData) {
      plaintexts.forEach(checkLength);
      return withDataKey(associatedData, (dataKey, wrapped) =>
        plaintexts.map((plaintext) => seal(dataKey, wrapped, plaintext, associatedData)),
      );
    },

    decrypt(ciphertext, associatedData, dataKeys) {
      const frame = readFrame(ciphertext);
      if (!frame.name.equals(name) || frame.version !== version) {
        throw new DecryptionError({
          cause: new Error(
            `ciphertext is for ${describeName(frame.name)} version ${frame.version}, not ${keyName} version ${version}`,
          ),
        });
      }
      const { dataKey, remembered } = unwrap(frame, associatedData, dataKeys);
      try {
        return openParts("aes-256-gcm", dataKey, frame.nonce, frame.encrypted, frame.tag, [
          frame.authenticatedPrefix,
          associatedData,
        ]);
      } finally {
        if (!remembered) {
          dataKey.fill(0);
        }
      }
    },
  };
}

/**
 * Reads the header of a ciphertext without any key, so that a server can
 * learn which key version to load before decrypting. Checks the whole frame
 * (format version, every length against the bounds of this file's table, the
 * key name's UTF-8); it cannot check the tags, which need the key.
 *
 * @throws DecryptionError ("decryption failed", the reason in `cause`) when
 * the bytes are not a format-1 ciphertext: empty, truncated, longer than
 * 263168 bytes, an unknown format version, or any length out of bounds.
 */
export function parseCiphertext(ciphertext: Uint8Array): CiphertextHeader {
  const frame = readFrame(ciphertext);
  let keyName: string;
  try {
    keyName = UTF8.decode(frame.name);
  } catch (err) {
    throw new DecryptionError({ cause: new Error("key name is not UTF-8", { cause: err }) });
  }
  return { formatVersion: CIPHERTEXT_FORMAT_VERSION, keyName, keyVersion: frame.version };
}

/**
 * Bytes a ciphertext of key `keyName` adds to its plaintext: 97 plus the
 * name's UTF-8 length (at most 609).
 */
export function ciphertextOverhead(keyName: string): number {
  return CIPHERTEXT_FIXED_OVERHEAD + Buffer.byteLength(keyName, "utf8");
}

interface Frame {
  readonly name: Buffer;
  readonly version: number;
  readonly wrappedKey: Buffer;
  readonly authenticatedPrefix: Buffer;
  readonly nonce: Buffer;
  readonly encrypted: Buffer;
  readonly tag: Buffer;
}

/** Splits a ciphertext into its fields (views, no copies), checking every bound. */
function readFrame(ciphertext: Uint8Array): Frame {
  const bytes = Buffer.from(ciphertext.buffer, ciphertext.byteOffset, ciphertext.byteLength);
  const fail = (reason: string): never => {
    throw new DecryptionError({ cause: new Error(`malformed ciphertext (${bytes.length} bytes): ${reason}`) });
  };
  if (bytes.length < CIPHERTEXT_FIXED_OVERHEAD + 1) {
    fail("too short");
  }
  if (bytes.length > MAX_CIPHERTEXT_LENGTH) {
    fail(`longer than ${MAX_CIPHERTEXT_LENGTH} bytes`);
  }
  const format = bytes.readUInt8(0);
  if (format !== CIPHERTEXT_FORMAT_VERSION) {
    fail(`unknown format version ${format}`);
  }
  const nameLength = bytes.readUInt16BE(1);
  if (nameLength < 1 || nameLength > MAX_KEY_NAME_LENGTH) {
    fail(`key name length ${nameLength} out of 1..${MAX_KEY_NAME_LENGTH}`);
  }
  const headerLength = 3 + nameLength + 4;
  if (bytes.length < CIPHERTEXT_FIXED_OVERHEAD + nameLength) {
    fail("too short for its key name");
  }
  const version = bytes.readUInt32BE(3 + nameLength);
  if (version < 1) {
    fail("key version 0");
  }
  const wrappedLength = bytes.readUInt16BE(headerLength);
  if (wrappedLength !== WRAPPED_DATA_KEY_LENGTH) {
    fail(`wrapped data key length ${wrappedLength}, not ${WRAPPED_DATA_KEY_LENGTH}`);
  }
  const wrappedOffset = headerLength + 2;
  const nonceOffset = wrappedOffset + WRAPPED_DATA_KEY_LENGTH;
  const dataOffset = nonceOffset + AEAD_NONCE_LENGTH;
  const tagOffset = bytes.length - AEAD_TAG_LENGTH;
  if (tagOffset - dataOffset > MAX_PLAINTEXT_LENGTH) {
    fail(`encrypted data longer than ${MAX_PLAINTEXT_LENGTH} bytes`);
  }
  return {
    name: bytes.subarray(3, 3 + nameLength),
    version,
    wrappedKey: bytes.subarray(wrappedOffset, nonceOffset),
    authenticatedPrefix: bytes.subarray(0, nonceOffset),
    nonce: bytes.subarray(nonceOffset, dataOffset),
    encrypted: bytes.subarray(dataOffset, tagOffset),
    tag: bytes.subarray(tagOffset),
  };
}

/** A key name for an error's cause: printable, bounded, never more than the name. */
function describeName(name: Buffer): string {
  return JSON.stringify(name.toString("utf8").slice(0, 80));
}
