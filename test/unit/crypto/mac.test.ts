import { createSecretKey } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  createMac,
  generateMacKey,
  MAC_ALGORITHMS,
  type MacAlgorithm,
  macKeyLength,
  macTagLength,
} from "../../../src/crypto/mac.js";
import { HMAC_KNOWN_ANSWERS } from "../../fixtures/crypto/rfc-vectors.js";

const hex = (s: string) => Buffer.from(s, "hex");

describe("HMAC known answers (RFC 4231)", () => {
  const cases = HMAC_KNOWN_ANSWERS.flatMap((v) => [
    [`${v.name}, HMAC_SHA256`, "HMAC_SHA256", v.key, v.data, v.sha256] as const,
    [`${v.name}, HMAC_SHA512`, "HMAC_SHA512", v.key, v.data, v.sha512] as const,
  ]);
  it.each(cases)("%s", (_name, algorithm, key, data, tag) => {
    const mac = createMac(algorithm, createSecretKey(key));
    expect(mac.compute(data).toString("hex")).toBe(tag.toString("hex"));
    expect(mac.verify(data, tag)).toBe(true);
  });
});

describe.each(MAC_ALGORITHMS)("%s", (algorithm: MacAlgorithm) => {
  const key = generateMacKey(algorithm);
  const mac = createMac(algorithm, createSecretKey(key.expose()));
  const data = Buffer.from("GET /v1/orders/42 2026-01-01T00:00:00Z");
  const tag = mac.compute(data);

  it("generates keys as long as the hash output, and tags of that length", () => {
    expect(key.length).toBe(macKeyLength(algorithm));
    expect(tag.length).toBe(macTagLength(algorithm));
    expect(generateMacKey(algorithm).equals(key)).toBe(false);
  });

  it("verifies its own tags", () => {
    expect(mac.verify(data, tag)).toBe(true);
    expect(mac.verify(Buffer.alloc(0), mac.compute(Buffer.alloc(0)))).toBe(true);
  });

  const wrong: Array<[string, Buffer, Buffer]> = [
    ["other data", Buffer.from("GET /v1/orders/43 2026-01-01T00:00:00Z"), tag],
    ["a flipped bit in the tag", data, Buffer.from(tag.map((b, i) => (i === 5 ? b ^ 1 : b)))],
    ["a truncated tag", data, tag.subarray(0, 16)],
    ["a tag one byte short", data, tag.subarray(0, tag.length - 1)],
    ["a tag one byte long", data, Buffer.concat([tag, Buffer.of(0)])],
    ["an empty tag", data, Buffer.alloc(0)],
    ["a zero tag", data, Buffer.alloc(tag.length)],
  ];
  it.each(wrong)("returns false for %s", (_name, d, t) => {
    expect(mac.verify(d, t)).toBe(false);
  });

  it("does not verify under another key", () => {
    const other = createMac(algorithm, createSecretKey(generateMacKey(algorithm).expose()));
    expect(other.verify(data, tag)).toBe(false);
  });

  it("refuses a key that is not a secret key", () => {
    expect(() => createMac(algorithm, createSecretKey(Buffer.alloc(0)))).toThrow();
  });
});
