import * as nodeCrypto from "node:crypto";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { beforeEach, describe, expect, it, vi } from "vitest";
import { createMac, generateMacKey, MAC_ALGORITHMS } from "../../../src/crypto/mac.js";
import { SecretBytes } from "../../../src/crypto/secret-bytes.js";

/**
 * Wherever a secret or a MAC is compared, the comparison takes the same
 * time whatever the bytes: node:crypto's timingSafeEqual, never `===`,
 * Buffer#equals or a loop that stops at the first difference. Otherwise a
 * caller timing VerifyMac could learn a valid tag byte by byte.
 *
 * Pinned three ways: the comparisons are observed calling timingSafeEqual
 * (node:crypto wrapped below), every same-length wrong tag is refused, and a
 * scan of src/ finds every Buffer#equals, each one listed here with why the
 * bytes it compares are public.
 */

const calls = vi.hoisted(() => [] as Array<[number, number]>);
vi.mock("node:crypto", async (importOriginal) => {
  const actual = await importOriginal<typeof import("node:crypto")>();
  const timingSafeEqual = (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => {
    calls.push([a.byteLength, b.byteLength]);
    return actual.timingSafeEqual(a, b);
  };
  return { ...actual, default: { ...actual, timingSafeEqual }, timingSafeEqual };
});

const SRC = join(import.meta.dirname, "../../../src");

describe("MAC verification compares tags in constant time", () => {
  beforeEach(() => {
    calls.length = 0;
  });

  it.each(MAC_ALGORITHMS)("%s: refuses every tag with one byte changed, each through timingSafeEqual over the full length", (algorithm) => {
    const mac = createMac(algorithm, nodeCrypto.createSecretKey(generateMacKey(algorithm).expose()));
    const data = Buffer.from("GET /v1/orders/42");
    const tag = mac.compute(data);
    expect(mac.verify(data, tag)).toBe(true);
    for (let i = 0; i < tag.length; i++) {
      for (const mask of [0x01, 0x80, 0xff]) {
        const wrong = Buffer.from(tag);
        wrong[i]! ^= mask;
        expect(mac.verify(data, wrong), `byte ${i} ^ ${mask}`).toBe(false);
      }
    }
    // One comparison per verify, of two full-length tags: no early exit.
    expect(calls).toHaveLength(1 + tag.length * 3);
    expect(calls.every(([a, b]) => a === tag.length && b === tag.length)).toBe(true);
  });

  it("refuses a tag of another length without comparing (the length is public: fixed by the algorithm)", () => {
    const mac = createMac("HMAC_SHA256", nodeCrypto.createSecretKey(generateMacKey("HMAC_SHA256").expose()));
    const tag = mac.compute(Buffer.from("x"));
    for (const length of [0, 1, 16, 31, 33, 64]) {
      expect(mac.verify(Buffer.from("x"), Buffer.concat([tag, Buffer.alloc(64)]).subarray(0, length))).toBe(false);
    }
    expect(calls).toEqual([]);
  });

  it("SecretBytes.equals goes through timingSafeEqual", () => {
    const a = new SecretBytes(nodeCrypto.randomBytes(32));
    const b = new SecretBytes(a.expose());
    expect(a.equals(b)).toBe(true);
    const c = Buffer.from(a.expose());
    c[31]! ^= 1;
    expect(a.equals(new SecretBytes(c))).toBe(false);
    expect(calls).toEqual([
      [32, 32],
      [32, 32],
    ]);
    expect(a.equals(new SecretBytes(Buffer.alloc(16)))).toBe(false);
  });
});

describe("the source compares secrets only in constant time", () => {
  const files = (dir: string): string[] =>
    readdirSync(dir).flatMap((name) => {
      const path = join(dir, name);
      return statSync(path).isDirectory() ? files(path) : path.endsWith(".ts") ? [path] : [];
    });
  const sources = files(SRC).map((path) => ({ path: relative(SRC, path), text: readFileSync(path, "utf8") }));

  /**
   * How many Buffer#equals each file of src/ holds, and why the bytes they
   * compare are public. A new one fails this test until it is counted here
   * (or, comparing anything secret, replaced by timingSafeEqual).
   */
  const PUBLIC_COMPARISONS: Record<string, { count: number; why: string }> = {
    "crypto/envelope.ts": {
      count: 2,
      why: "the key name a ciphertext claims; the associated data of two items of one batch call, both the caller's own (associated data is authenticated, not confidential)",
    },
    "domain/audit/chain.ts": { count: 3, why: "audit chain and checkpoint hashes, published" },
    "domain/audit/signer.ts": { count: 2, why: "the chain head's hash; public keys" },
    "domain/secrets/value-check.ts": { count: 1, why: "a fixed format header (openssh-key-v1)" },
    "domain/secrets/secret-manager.ts": { count: 1, why: "ciphertexts, which reveal nothing without the key" },
    "tools/audit-verify.ts": { count: 2, why: "audit chain and checkpoint hashes" },
    "tools/root-key-command.ts": { count: 1, why: "SecretBytes.equals, itself constant-time" },
  };

  it("counts every Buffer#equals in src/ as comparing public bytes", () => {
    const found: Record<string, number> = {};
    for (const { path, text } of sources) {
      const count = text.match(/\.equals\(/g)?.length ?? 0;
      if (count > 0) found[path] = count;
    }
    const listed = Object.fromEntries(Object.entries(PUBLIC_COMPARISONS).map(([path, { count }]) => [path, count]));
    expect(found, "compare secrets with timingSafeEqual; count public comparisons in this test").toEqual(listed);
    expect(sources.some(({ text }) => /Buffer\.compare\(/.test(text)), "Buffer.compare stops at the first difference").toBe(false);
  });

  it.each([
    ["crypto/mac.ts", "MAC tags"],
    ["crypto/secret-bytes.ts", "secret bytes"],
    ["storage/pg/deployment-repository.ts", "the root key check value at start"],
    ["tools/root-key-command.ts", "the root key check value before a rotation"],
    ["tools/doctor-command.ts", "the root key check value in doctor"],
  ])("%s compares %s with timingSafeEqual", (path) => {
    const text = sources.find((s) => s.path === path)!.text;
    expect(text).toMatch(/timingSafeEqual\(/);
  });

  it("never compares the root key check value with === or Buffer#equals", () => {
    for (const { path, text } of sources) {
      for (const line of text.split("\n")) {
        if (/root_?key_?check/i.test(line)) {
          // Comparing lengths is fine (they are fixed); comparing the values is not.
          expect(line, path).not.toMatch(/\.equals\(|root_?key_?check(?!\.length)\w*\s*[!=]==|[!=]==\s*\w*root_?key_?check(?!\.length)/i);
        }
      }
    }
  });
});
