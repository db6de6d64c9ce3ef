import { describe, expect, it } from "vitest";
import { crc32c } from "../../../src/crypto/crc32c.js";

const ascending = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const descending = Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i));

describe("CRC32C known answers", () => {
  // The check value of the CRC catalogue (CRC-32/ISCSI) and the test vectors
  // of RFC 3720 §B.4 (iSCSI), which fixes the reflected Castagnoli polynomial.
  const cases: readonly (readonly [string, Uint8Array, number])[] = [
    ["empty input", new Uint8Array(0), 0x00000000],
    ['"123456789" (catalogue check value)', Buffer.from("123456789", "ascii"), 0xe3069283],
    ["32 bytes of zeros (RFC 3720)", Buffer.alloc(32, 0x00), 0x8a9136aa],
    ["32 bytes of 0xFF (RFC 3720)", Buffer.alloc(32, 0xff), 0x62a8ab43],
    ["32 ascending bytes 0x00..0x1F (RFC 3720)", ascending, 0x46dd794e],
    ["32 descending bytes 0x1F..0x00 (RFC 3720)", descending, 0x113fdb5c],
    ['"a"', Buffer.from("a", "ascii"), 0xc1d04330],
  ];

  it.each(cases)("%s", (_name, data, expected) => {
    expect(crc32c(data).toString(16).padStart(8, "0")).toBe(expected.toString(16).padStart(8, "0"));
  });
});

describe("crc32c", () => {
  it("returns an unsigned 32-bit integer, also when the top bit is set", () => {
    const value = crc32c(Buffer.from("123456789", "ascii"));
    expect(value).toBeGreaterThan(0x7fffffff);
    expect(Number.isInteger(value)).toBe(true);
    expect(value).toBeLessThanOrEqual(0xffffffff);
  });

  it("reads only the view it is given, not the whole underlying buffer", () => {
    const backing = Buffer.concat([Buffer.from("xx"), Buffer.from("123456789"), Buffer.from("yy")]);
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 2, 9);
    expect(crc32c(view)).toBe(0xe3069283);
  });

  it("changes when any single bit of the input changes", () => {
    const data = Buffer.from("123456789", "ascii");
    const seen = new Set<number>([crc32c(data)]);
    for (let bit = 0; bit < data.length * 8; bit++) {
      const flipped = Buffer.from(data);
      flipped[bit >> 3]! ^= 1 << (bit & 7);
      seen.add(crc32c(flipped));
    }
    // A CRC detects every single-bit error, so all 73 values differ.
    expect(seen.size).toBe(data.length * 8 + 1);
  });
});

describe("crc32c eight bytes at a time", () => {
  /** The textbook bit-at-a-time definition, to hold the table-driven one to. */
  const reference = (data: Uint8Array): number => {
    let crc = 0xffffffff;
    for (const byte of data) {
      crc ^= byte;
      for (let k = 0; k < 8; k++) crc = crc & 1 ? 0x82f63b78 ^ (crc >>> 1) : crc >>> 1;
    }
    return (crc ^ 0xffffffff) >>> 0;
  };

  it("agrees with the bit-at-a-time definition for every length 0..100 and a 64 KiB input", () => {
    let seed = 7;
    const bytes = (n: number) => Uint8Array.from({ length: n }, () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
    for (let n = 0; n <= 100; n++) {
      const data = bytes(n);
      expect(crc32c(data), `length ${n}`).toBe(reference(data));
    }
    const large = bytes(65_536);
    expect(crc32c(large)).toBe(reference(large));
  });
});
