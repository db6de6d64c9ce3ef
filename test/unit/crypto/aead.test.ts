import { createSecretKey } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  AEAD_ALGORITHMS,
  AEAD_OVERHEAD,
  type AeadAlgorithm,
  createAead,
  DECRYPTION_FAILED,
  DecryptionError,
  type FillRandom,
  generateAeadKey,
} from "../../../src/crypto/aead.js";
import { AEAD_KNOWN_ANSWERS } from "../../fixtures/crypto/rfc-vectors.js";

const hex = (s: string) => Buffer.from(s, "hex");

/** A "random" source that hands out `bytes` once, for known-answer tests. */
function fixed(bytes: Uint8Array): FillRandom {
  let used = false;
  return (target) => {
    expect(used).toBe(false);
    expect(target.length).toBe(bytes.length);
    target.set(bytes);
    used = true;
  };
}

function expectDecryptionFailure(fn: () => unknown): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(DecryptionError);
  expect((caught as Error).message).toBe(DECRYPTION_FAILED);
  expect((caught as Error).cause).toBeDefined();
}

describe("AEAD known answers (GCM spec, RFC 8439)", () => {
  it.each(AEAD_KNOWN_ANSWERS.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    const aead = createAead(v.algorithm, createSecretKey(v.key), { fillRandom: fixed(v.nonce) });
    const expected = Buffer.concat([v.nonce, v.ciphertext, v.tag]);
    expect(aead.encrypt(v.plaintext, v.aad).toString("hex")).toBe(expected.toString("hex"));
    expect(createAead(v.algorithm, createSecretKey(v.key)).decrypt(expected, v.aad)).toEqual(v.plaintext);
  });
});

describe.each(AEAD_ALGORITHMS)("%s", (algorithm: AeadAlgorithm) => {
  const key = createSecretKey(generateAeadKey().expose());
  const aead = createAead(algorithm, key);
  const plaintext = Buffer.from("attack at dawn, bring the usual");
  const aad = Buffer.from("record 42");
  const sealed = aead.encrypt(plaintext, aad);

  it.each([0, 1, 15, 16, 17, 1024, 65_537])("round-trips %i bytes", (size) => {
    const data = Buffer.alloc(size, 0x5c);
    const out = aead.encrypt(data, aad);
    expect(out.length).toBe(size + AEAD_OVERHEAD);
    // Buffer.equals: toEqual compares large buffers element by element, slowly.
    expect(aead.decrypt(out, aad).equals(data)).toBe(true);
    expect(aead.decrypt(aead.encrypt(data, Buffer.alloc(0)), Buffer.alloc(0)).equals(data)).toBe(true);
  });

  it("draws a fresh nonce per message", () => {
    const nonces = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      nonces.add(aead.encrypt(plaintext, aad).subarray(0, 12).toString("hex"));
    }
    expect(nonces.size).toBe(1000);
  });

  it("reports its algorithm", () => {
    expect(aead.algorithm).toBe(algorithm);
  });

  const tampered: Array<[string, () => unknown]> = [
    ["a flipped bit in the nonce", () => aead.decrypt(flip(sealed, 0), aad)],
    ["a flipped bit in the ciphertext", () => aead.decrypt(flip(sealed, 12), aad)],
    ["a flipped bit in the tag", () => aead.decrypt(flip(sealed, sealed.length - 1), aad)],
    ["other associated data", () => aead.decrypt(sealed, Buffer.from("record 43"))],
    ["missing associated data", () => aead.decrypt(sealed, Buffer.alloc(0))],
    ["a truncated tag", () => aead.decrypt(sealed.subarray(0, sealed.length - 1), aad)],
    ["an extra byte", () => aead.decrypt(Buffer.concat([sealed, Buffer.of(0)]), aad)],
    ["only nonce and tag", () => aead.decrypt(sealed.subarray(0, AEAD_OVERHEAD), aad)],
    ["fewer bytes than nonce and tag", () => aead.decrypt(sealed.subarray(0, AEAD_OVERHEAD - 1), aad)],
    ["no bytes", () => aead.decrypt(Buffer.alloc(0), aad)],
    ["another key", () => createAead(algorithm, createSecretKey(generateAeadKey().expose())).decrypt(sealed, aad)],
    [
      "the other algorithm with the same key",
      () => createAead(algorithm === "AES_256_GCM" ? "CHACHA20_POLY1305" : "AES_256_GCM", key).decrypt(sealed, aad),
    ],
  ];
  it.each(tampered)("refuses %s with the opaque error", (_name, fn) => {
    expectDecryptionFailure(fn);
  });

  it("fails on every single flipped bit", () => {
    for (let i = 0; i < sealed.length * 8; i++) {
      expectDecryptionFailure(() => aead.decrypt(flip(sealed, i >> 3, 1 << (i & 7)), aad));
    }
  });

  it.each([
    ["a 16-byte key", createSecretKey(Buffer.alloc(16))],
    ["a 33-byte key", createSecretKey(Buffer.alloc(33))],
  ])("refuses %s", (_name, badKey) => {
    expect(() => createAead(algorithm, badKey)).toThrow(TypeError);
  });
});

it("refuses an algorithm that is not an AEAD", () => {
  expect(() => createAead("HMAC_SHA256" as AeadAlgorithm, createSecretKey(Buffer.alloc(32)))).toThrow(TypeError);
});

function flip(bytes: Buffer, index: number, mask = 0x01): Buffer {
  const copy = Buffer.from(bytes);
  copy[index] = copy[index]! ^ mask;
  return copy;
}
