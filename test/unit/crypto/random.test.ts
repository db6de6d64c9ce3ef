import { describe, expect, it } from "vitest";
import { fillRandom } from "../../../src/crypto/random.js";

describe("fillRandom", () => {
  it.each([1, 12, 32, 256, 257, 4096, 10_000])("fills all of a %i-byte buffer", (size) => {
    // Each byte stays zero with probability 1/256; OR-ing eight draws makes a
    // byte that is zero in all of them a 2^-64 event.
    const seen = new Uint8Array(size);
    for (let draw = 0; draw < 8; draw++) {
      const target = new Uint8Array(size);
      fillRandom(target);
      seen.forEach((_, i) => {
        seen[i]! |= target[i]!;
      });
    }
    expect(seen.every((b) => b !== 0)).toBe(true);
  });

  it("never hands out the same bytes twice, across batch refills", () => {
    const seen = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      const nonce = Buffer.alloc(12);
      fillRandom(nonce);
      seen.add(nonce.toString("hex"));
    }
    expect(seen.size).toBe(10_000);
  });

  it("leaves an empty buffer alone", () => {
    expect(() => fillRandom(new Uint8Array(0))).not.toThrow();
  });
});
