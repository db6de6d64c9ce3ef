import { createSecretKey } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  AEAD_ALGORITHMS,
  type AeadAlgorithm,
  createAead,
  DECRYPTION_FAILED,
  DecryptionError,
  type FillRandom,
  generateAeadKey,
} from "../../../src/crypto/aead.js";
import {
  CIPHERTEXT_FIXED_OVERHEAD,
  ciphertextOverhead,
  createEnvelope,
  type DataKeyMemo,
  type Envelope,
  forgetDataKeys,
  MAX_CIPHERTEXT_LENGTH,
  MAX_CIPHERTEXT_OVERHEAD,
  MAX_KEY_NAME_LENGTH,
  MAX_PLAINTEXT_LENGTH,
  parseCiphertext,
  WRAPPED_DATA_KEY_LENGTH,
} from "../../../src/crypto/envelope.js";
import { ENVELOPE_VECTORS } from "../../fixtures/crypto/envelope-vectors.js";

const hex = (s: string) => Buffer.from(s, "hex");
const AAD = Buffer.from("secrets/shop/prod/db-password#3");
const PLAINTEXT = Buffer.from("correct horse battery staple, 40 bytes..");

function envelopeFor(
  algorithm: AeadAlgorithm,
  keyName: string,
  version: number,
  key: Buffer = generateAeadKey().expose(),
): Envelope {
  return createEnvelope({ keyName, version, aead: createAead(algorithm, createSecretKey(key)) });
}

/** "Random" bytes handed out in order, for known-answer tests. */
function sequence(...chunks: Buffer[]): FillRandom {
  const queue = [...chunks];
  return (target) => {
    const next = queue.shift();
    expect(next?.length).toBe(target.length);
    target.set(next!);
  };
}

function expectDecryptionFailure(fn: () => unknown): DecryptionError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(DecryptionError);
  expect((caught as Error).message).toBe(DECRYPTION_FAILED);
  expect((caught as Error).cause).toBeInstanceOf(Error);
  return caught as DecryptionError;
}

/** Offsets of the fields of a format-1 ciphertext whose key name is n bytes long (envelope.ts's table). */
function layout(n: number, total: number) {
  return {
    format: 0,
    nameLength: 1,
    name: 3,
    version: 3 + n,
    wrappedLength: 7 + n,
    wrappedNonce: 9 + n,
    wrappedKey: 21 + n,
    wrappedTag: 53 + n,
    nonce: 69 + n,
    data: 81 + n,
    tag: total - 16,
  };
}

/** The same ciphertext with another key name and version in its header: a ciphertext "moved". */
function reframe(ciphertext: Buffer, oldName: string, keyName: string, version: number): Buffer {
  const oldLength = Buffer.byteLength(oldName);
  const name = Buffer.from(keyName);
  const head = Buffer.alloc(3 + name.length + 4);
  head[0] = 1;
  head.writeUInt16BE(name.length, 1);
  name.copy(head, 3);
  head.writeUInt32BE(version, 3 + name.length);
  return Buffer.concat([head, ciphertext.subarray(7 + oldLength)]);
}

function flip(bytes: Buffer, index: number, mask = 0x01): Buffer {
  const copy = Buffer.from(bytes);
  copy[index] = copy[index]! ^ mask;
  return copy;
}

describe("golden ciphertexts (independent implementation of the documented layout)", () => {
  it.each(ENVELOPE_VECTORS.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    const key = createSecretKey(hex(v.versionKey));
    const envelope = createEnvelope({
      keyName: v.keyName,
      version: v.version,
      aead: createAead(v.algorithm, key, { fillRandom: sequence(hex(v.wrapNonce)) }),
      fillRandom: sequence(hex(v.dataKey), hex(v.dataNonce)),
    });
    const ciphertext = envelope.encrypt(hex(v.plaintext), hex(v.associatedData));
    expect(ciphertext.toString("hex")).toBe(v.ciphertext);

    const fresh = createEnvelope({ keyName: v.keyName, version: v.version, aead: createAead(v.algorithm, key) });
    expect(fresh.decrypt(hex(v.ciphertext), hex(v.associatedData)).toString("hex")).toBe(v.plaintext);
    expect(parseCiphertext(hex(v.ciphertext))).toEqual({
      formatVersion: 1,
      keyName: v.keyName,
      keyVersion: v.version,
    });
  });
});

describe.each(AEAD_ALGORITHMS)("envelope with a %s key version", (algorithm) => {
  const keyName = "keys/tamper";
  const envelope = envelopeFor(algorithm, keyName, 5);
  const ciphertext = envelope.encrypt(PLAINTEXT, AAD);
  const at = layout(Buffer.byteLength(keyName), ciphertext.length);

  it("reports its key", () => {
    expect([envelope.keyName, envelope.version, envelope.algorithm]).toEqual([keyName, 5, algorithm]);
  });

  it.each([0, 1, 1024, MAX_PLAINTEXT_LENGTH])("round-trips %i bytes, overhead 97 + key name", (size) => {
    const plaintext = Buffer.alloc(size, 0xa5);
    for (const aad of [Buffer.alloc(0), AAD, Buffer.alloc(65_536, 7)]) {
      const sealed = envelope.encrypt(plaintext, aad);
      expect(sealed.length).toBe(size + ciphertextOverhead(keyName));
      expect(envelope.decrypt(sealed, aad).equals(plaintext)).toBe(true);
    }
  });

  it("uses a fresh data key and nonces per message", () => {
    const seen = { wrapped: new Set<string>(), nonce: new Set<string>() };
    for (let i = 0; i < 500; i++) {
      const sealed = envelope.encrypt(PLAINTEXT, AAD);
      seen.wrapped.add(sealed.subarray(at.wrappedNonce, at.nonce).toString("hex"));
      seen.nonce.add(sealed.subarray(at.nonce, at.data).toString("hex"));
    }
    expect([seen.wrapped.size, seen.nonce.size]).toEqual([500, 500]);
  });

  describe("encryptAll: one data key for a batch", () => {
    const plaintexts = Array.from({ length: 300 }, (_, i) => Buffer.alloc(i, i));
    const sealed = envelope.encryptAll(plaintexts, AAD);

    it("wraps the data key once and gives every message a nonce of its own", () => {
      const wrapped = new Set(sealed.map((c) => c.subarray(at.wrappedNonce, at.nonce).toString("hex")));
      const nonces = new Set(sealed.map((c) => c.subarray(at.nonce, at.data).toString("hex")));
      expect([wrapped.size, nonces.size]).toEqual([1, plaintexts.length]);
      // Another batch, another data key.
      const next = envelope.encryptAll(plaintexts.slice(0, 1), AAD)[0]!;
      expect(wrapped.has(next.subarray(at.wrappedNonce, at.nonce).toString("hex"))).toBe(false);
    });

    it("writes ciphertexts that each decrypt alone, with or without a memo of data keys", () => {
      const memo: DataKeyMemo = new Map();
      sealed.forEach((c, i) => {
        expect(envelope.decrypt(c, AAD).equals(plaintexts[i]!)).toBe(true);
        expect(envelope.decrypt(c, AAD, memo).equals(plaintexts[i]!)).toBe(true);
      });
      expect(memo.size).toBe(1);
      const [remembered] = [...memo.values()];
      forgetDataKeys(memo);
      expect(memo.size).toBe(0);
      expect(remembered!.dataKey.equals(Buffer.alloc(32))).toBe(true);
    });

    it("refuses, through the memo too, other associated data, a flipped bit or a header of another version", () => {
      const memo: DataKeyMemo = new Map();
      envelope.decrypt(sealed[1]!, AAD, memo);
      expectDecryptionFailure(() => envelope.decrypt(sealed[2]!, Buffer.from("other"), memo));
      expectDecryptionFailure(() => envelope.decrypt(flip(sealed[2]!, at.data), AAD, memo));
      expectDecryptionFailure(() => envelope.decrypt(flip(sealed[2]!, sealed[2]!.length - 1), AAD, memo));
      const otherVersion = envelopeFor(algorithm, keyName, 6);
      const moved = Buffer.from(sealed[2]!);
      moved.writeUInt32BE(6, at.version);
      expectDecryptionFailure(() => otherVersion.decrypt(moved, AAD, memo));
      expect(envelope.decrypt(sealed[2]!, AAD, memo).equals(plaintexts[2]!)).toBe(true);
      forgetDataKeys(memo);
    });

    it("refuses a plaintext over 256 KiB anywhere in the batch", () => {
      expect(() => envelope.encryptAll([PLAINTEXT, Buffer.alloc(MAX_PLAINTEXT_LENGTH + 1)], AAD)).toThrow(RangeError);
    });
  });

  it.each([
    ["format version", at.format],
    ["key name length", at.nameLength + 1],
    ["key name", at.name + 2],
    ["key version", at.version + 3],
    ["wrapped data key length", at.wrappedLength + 1],
    ["wrapped data key's nonce", at.wrappedNonce],
    ["wrapped data key's encrypted key", at.wrappedKey + 31],
    ["wrapped data key's tag", at.wrappedTag + 15],
    ["nonce", at.nonce + 11],
    ["encrypted data", at.data],
    ["tag", at.tag + 8],
  ])("refuses a flipped bit in the %s", (_region, index) => {
    expectDecryptionFailure(() => envelope.decrypt(flip(ciphertext, index), AAD));
  });

  it("refuses every single flipped bit", () => {
    for (let i = 0; i < ciphertext.length * 8; i++) {
      expectDecryptionFailure(() => envelope.decrypt(flip(ciphertext, i >> 3, 1 << (i & 7)), AAD));
    }
  });

  it("refuses every truncation and extension", () => {
    for (let length = 0; length < ciphertext.length; length++) {
      expectDecryptionFailure(() => envelope.decrypt(ciphertext.subarray(0, length), AAD));
    }
    for (const extra of [Buffer.of(0), Buffer.alloc(16), ciphertext.subarray(at.data)]) {
      expectDecryptionFailure(() => envelope.decrypt(Buffer.concat([ciphertext, extra]), AAD));
    }
  });

  it.each([
    ["other associated data", Buffer.from("secrets/shop/prod/db-password#4")],
    ["no associated data", Buffer.alloc(0)],
    ["associated data with one more byte", Buffer.concat([AAD, Buffer.of(0)])],
    ["associated data one byte short", AAD.subarray(0, AAD.length - 1)],
  ])("refuses %s", (_name, aad) => {
    expectDecryptionFailure(() => envelope.decrypt(ciphertext, aad));
  });

  it.each([0x00, 0x02, 0xff])("refuses format version %i", (format) => {
    const bad = Buffer.from(ciphertext);
    bad[0] = format;
    expectDecryptionFailure(() => envelope.decrypt(bad, AAD));
    expectDecryptionFailure(() => parseCiphertext(bad));
  });

  it("refuses a ciphertext of this key presented to another key or version", () => {
    expectDecryptionFailure(() => envelopeFor(algorithm, "keys/other", 5).decrypt(ciphertext, AAD));
    expectDecryptionFailure(() => envelopeFor(algorithm, keyName, 6).decrypt(ciphertext, AAD));
    expectDecryptionFailure(() => envelopeFor(algorithm, keyName, 5).decrypt(ciphertext, AAD));
  });

  describe("binds key name, version and algorithm, even for the same key bytes", () => {
    const keyBytes = generateAeadKey().expose();
    const original = envelopeFor(algorithm, keyName, 5, keyBytes);
    const sealed = original.encrypt(PLAINTEXT, AAD);

    it("decrypts with a second envelope over the same bytes", () => {
      expect(envelopeFor(algorithm, keyName, 5, keyBytes).decrypt(sealed, AAD).equals(PLAINTEXT)).toBe(true);
    });

    it.each([
      ["another key name", "keys/tamperer", 5],
      ["another version", keyName, 4],
      ["another name and version", "keys/x", 1],
    ])("refuses the header rewritten to %s", (_name, otherName, otherVersion) => {
      const moved = reframe(sealed, keyName, otherName, otherVersion);
      expect(parseCiphertext(moved)).toEqual({ formatVersion: 1, keyName: otherName, keyVersion: otherVersion });
      const err = expectDecryptionFailure(() => envelopeFor(algorithm, otherName, otherVersion, keyBytes).decrypt(moved, AAD));
      expect(String((err.cause as Error).message)).toBe("data key does not unwrap");
    });

    it("refuses the other algorithm", () => {
      const other = algorithm === "AES_256_GCM" ? "CHACHA20_POLY1305" : "AES_256_GCM";
      expectDecryptionFailure(() => envelopeFor(other, keyName, 5, keyBytes).decrypt(sealed, AAD));
    });

    it("refuses a wrapped data key taken from another ciphertext", () => {
      const donor = original.encrypt(PLAINTEXT, AAD);
      const spliced = Buffer.concat([donor.subarray(0, at.nonce), sealed.subarray(at.nonce)]);
      expectDecryptionFailure(() => original.decrypt(spliced, AAD));
    });

    it("refuses encrypted data taken from another ciphertext", () => {
      const donor = original.encrypt(PLAINTEXT, AAD);
      const spliced = Buffer.concat([sealed.subarray(0, at.nonce), donor.subarray(at.nonce)]);
      expectDecryptionFailure(() => original.decrypt(spliced, AAD));
    });
  });

  it("keeps plaintext and key bytes out of its errors", () => {
    const err = expectDecryptionFailure(() => envelope.decrypt(flip(ciphertext, at.tag), AAD));
    const shown: string[] = [];
    for (let e: unknown = err; e instanceof Error; e = e.cause) {
      shown.push(e.message, String(e.stack));
    }
    const text = shown.join("\n");
    expect(text).not.toContain(PLAINTEXT.toString());
    expect(text).not.toContain(PLAINTEXT.toString("hex"));
    expect(text).not.toContain(ciphertext.subarray(at.wrappedKey, at.wrappedTag).toString("hex"));
  });
});

describe("limits", () => {
  it("stays within crypto.proto's 1024 bytes of overhead with a 512-byte key name", () => {
    const keyName = `keys/${"k".repeat(MAX_KEY_NAME_LENGTH - 5)}`;
    const envelope = envelopeFor("AES_256_GCM", keyName, 0xffff_ffff);
    const sealed = envelope.encrypt(Buffer.alloc(MAX_PLAINTEXT_LENGTH), Buffer.alloc(0));
    expect(sealed.length - MAX_PLAINTEXT_LENGTH).toBe(MAX_CIPHERTEXT_OVERHEAD);
    expect(MAX_CIPHERTEXT_OVERHEAD).toBe(609);
    expect(MAX_CIPHERTEXT_OVERHEAD).toBeLessThanOrEqual(1024);
    expect(sealed.length).toBeLessThanOrEqual(MAX_CIPHERTEXT_LENGTH);
    expect(parseCiphertext(sealed)).toEqual({ formatVersion: 1, keyName, keyVersion: 0xffff_ffff });
    expect(envelope.decrypt(sealed, Buffer.alloc(0)).length).toBe(MAX_PLAINTEXT_LENGTH);
  });

  it("refuses plaintext over 256 KiB", () => {
    const envelope = envelopeFor("AES_256_GCM", "keys/a", 1);
    expect(() => envelope.encrypt(Buffer.alloc(MAX_PLAINTEXT_LENGTH + 1), Buffer.alloc(0))).toThrow(RangeError);
  });

  it.each([
    ["an empty key name", "", 1],
    ["a 513-byte key name", "k".repeat(513), 1],
    ["a key name of 257 two-byte characters (514 bytes)", "ü".repeat(257), 1],
    ["version 0", "keys/a", 0],
    ["a negative version", "keys/a", -1],
    ["a fractional version", "keys/a", 1.5],
    ["version 2^32", "keys/a", 2 ** 32],
    ["version NaN", "keys/a", Number.NaN],
  ])("refuses %s", (_name, keyName, version) => {
    expect(() => envelopeFor("AES_256_GCM", keyName, version)).toThrow(RangeError);
  });
});

describe("parseCiphertext", () => {
  const keyName = "keys/parse";
  const valid = envelopeFor("CHACHA20_POLY1305", keyName, 9).encrypt(Buffer.alloc(10), Buffer.alloc(0));
  const n = Buffer.byteLength(keyName);

  /** A frame with the given header fields and filler for the rest. */
  function frame(fields: { nameLength?: number; name?: Buffer; version?: number; wrappedLength?: number; rest?: number }) {
    const name = fields.name ?? Buffer.from(keyName);
    const head = Buffer.alloc(3 + name.length + 6);
    head[0] = 1;
    head.writeUInt16BE(fields.nameLength ?? name.length, 1);
    name.copy(head, 3);
    head.writeUInt32BE(fields.version ?? 1, 3 + name.length);
    head.writeUInt16BE(fields.wrappedLength ?? WRAPPED_DATA_KEY_LENGTH, 7 + name.length);
    return Buffer.concat([head, Buffer.alloc(fields.rest ?? WRAPPED_DATA_KEY_LENGTH + 12 + 16)]);
  }

  it("reads the header of a ciphertext without a key", () => {
    expect(parseCiphertext(valid)).toEqual({ formatVersion: 1, keyName, keyVersion: 9 });
    expect(parseCiphertext(frame({}))).toEqual({ formatVersion: 1, keyName, keyVersion: 1 });
    expect(parseCiphertext(new Uint8Array(valid))).toEqual({ formatVersion: 1, keyName, keyVersion: 9 });
  });

  it("keeps a key name exactly, byte order mark included", () => {
    const name = "\ufeffkeys/bom";
    expect(parseCiphertext(frame({ name: Buffer.from(name) })).keyName).toBe(name);
  });

  it("accepts the largest frame", () => {
    const name = Buffer.alloc(MAX_KEY_NAME_LENGTH, 0x6b);
    const largest = frame({ name, rest: WRAPPED_DATA_KEY_LENGTH + 12 + MAX_PLAINTEXT_LENGTH + 16 });
    expect(largest.length).toBe(MAX_PLAINTEXT_LENGTH + MAX_CIPHERTEXT_OVERHEAD);
    expect(parseCiphertext(largest).keyName).toBe(name.toString());
  });

  it.each([
    ["no bytes", Buffer.alloc(0)],
    ["one byte", Buffer.of(1)],
    ["the fixed overhead alone", Buffer.alloc(CIPHERTEXT_FIXED_OVERHEAD)],
    ["a header cut after the key name", valid.subarray(0, 3 + n)],
    ["a header cut in the key version", valid.subarray(0, 5 + n)],
    ["no room for nonce and tag", valid.subarray(0, valid.length - 10 - 1)],
    ["key name length 0", frame({ nameLength: 0, name: Buffer.alloc(0) })],
    ["key name length 513", frame({ name: Buffer.alloc(513, 0x6b) })],
    ["key name length past the end", frame({ nameLength: 0xffff })],
    ["key name that is not UTF-8", frame({ name: Buffer.from([0x6b, 0xff, 0xfe]) })],
    ["key name with a lone surrogate", frame({ name: Buffer.from([0xed, 0xa0, 0x80]) })],
    ["key version 0", frame({ version: 0 })],
    ["wrapped data key length 0", frame({ wrappedLength: 0 })],
    ["wrapped data key length 59", frame({ wrappedLength: 59 })],
    ["wrapped data key length 61", frame({ wrappedLength: 61 })],
    ["wrapped data key length 65535", frame({ wrappedLength: 0xffff })],
    ["encrypted data over 256 KiB", frame({ rest: WRAPPED_DATA_KEY_LENGTH + 12 + MAX_PLAINTEXT_LENGTH + 1 + 16 })],
    ["more than 263168 bytes", Buffer.concat([valid, Buffer.alloc(MAX_CIPHERTEXT_LENGTH)])],
    ["format version 2", Buffer.concat([Buffer.of(2), valid.subarray(1)])],
    ["text", Buffer.from("this is not a ciphertext, not at all, it is just text that is long enough to be one")],
  ])("refuses %s with the opaque error", (_name, bytes) => {
    expectDecryptionFailure(() => parseCiphertext(bytes));
  });
});
