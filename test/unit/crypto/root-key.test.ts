import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { generateRootKeyFile, parseRootKey, RootKeyError, rootKeyCheck } from "../../../src/crypto/root-key.js";
import { SecretBytes } from "../../../src/crypto/secret-bytes.js";

describe("root key", () => {
  it("parses a generated key file and 32 raw bytes", () => {
    const file = generateRootKeyFile();
    const key = parseRootKey(file);
    expect(key.length).toBe(32);
    expect(key.expose().toString("base64")).toBe(file.toString("latin1").trim());
    expect(parseRootKey(Buffer.alloc(32, 1)).expose()).toEqual(Buffer.alloc(32, 1));
  });

  it.each([
    ["31 raw bytes", Buffer.alloc(31)],
    ["33 raw bytes", Buffer.alloc(33)],
    ["base64 of 16 bytes", Buffer.from(Buffer.alloc(16).toString("base64"))],
    ["garbage", Buffer.from("not a key at all, not at all, not at all")],
  ])("refuses %s", (_name, material) => {
    expect(() => parseRootKey(material)).toThrow(RootKeyError);
  });

  it("has a check value that is a one-way function of the key (known answer)", () => {
    const key = new SecretBytes(Buffer.alloc(32, 0));
    // HMAC-SHA256(key = 32 zero bytes, "keyward root key check v1"), computed independently with openssl:
    // printf 'keyward root key check v1' | openssl dgst -sha256 -mac HMAC -macopt hexkey:00..00
    expect(rootKeyCheck(key).toString("hex")).toBe(ROOT_KEY_CHECK_OF_ZERO_KEY);
    expect(rootKeyCheck(new SecretBytes(Buffer.alloc(32, 1)))).not.toEqual(rootKeyCheck(key));
  });
});

describe("SecretBytes", () => {
  it("copies its input and never prints its bytes", () => {
    const raw = Buffer.from("super-secret-key-material-123456");
    const secret = new SecretBytes(raw);
    raw.fill(0);
    expect(secret.expose().toString()).toBe("super-secret-key-material-123456");
    for (const shown of [String(secret), JSON.stringify({ secret }), inspect(secret), `${secret}`]) {
      expect(shown).not.toContain("super-secret");
      expect(shown).toContain("32 bytes");
    }
  });

  it("compares in constant time, by value", () => {
    expect(new SecretBytes(Buffer.from("abc")).equals(new SecretBytes(Buffer.from("abc")))).toBe(true);
    expect(new SecretBytes(Buffer.from("abc")).equals(new SecretBytes(Buffer.from("abd")))).toBe(false);
    expect(new SecretBytes(Buffer.from("abc")).equals(new SecretBytes(Buffer.from("abcd")))).toBe(false);
  });
});

const ROOT_KEY_CHECK_OF_ZERO_KEY = "81a7dfa3752c12fcd1c5eb9c2894a355778ea43fa418705b653546543bb5b1d6";
