import { describe, expect, it } from "vitest";
import { DomainError } from "../../../../src/domain/errors.js";
import { DEFAULT_SYMBOLS, generateValue, type GenerateFormat, type GenerateSpec } from "../../../../src/domain/secrets/generate.js";

/**
 * generateValue against secrets.proto's GenerateSecretFormat and
 * GenerateSecretSpec: sizes, alphabets, required character classes, and a
 * loose statistical check that ALPHANUMERIC is drawn uniformly. The bounds
 * are set so that a correct generator fails them with probability far below
 * one in a million; a biased one (modulo bias, a missing class, a fixed
 * position for required characters) fails them every time.
 */

const LOWER = "abcdefghijklmnopqrstuvwxyz";
const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS = "0123456789";
const ALPHANUMERIC = LOWER + UPPER + DIGITS;

const gen = (spec: GenerateSpec): string => {
  const value = generateValue(spec);
  expect(Buffer.isBuffer(value)).toBe(true);
  return value.toString("utf8");
};

const only = (alphabet: string, value: string) => [...value].every((c) => alphabet.includes(c));
const some = (alphabet: string, value: string) => [...value].some((c) => alphabet.includes(c));

describe("generateValue: encodings of random bytes", () => {
  it.each([8, 9, 10, 33, 4096])("HEX of %i bytes is lowercase hex, two characters per byte", (length) => {
    const value = gen({ length, format: "HEX" });
    expect(value).toMatch(/^[0-9a-f]+$/);
    expect(value.length).toBe(2 * length);
    expect(Buffer.from(value, "hex").length).toBe(length);
  });

  it.each([8, 9, 10, 33, 4096])("BASE64 of %i bytes is padded standard base64 (RFC 4648 section 4)", (length) => {
    const value = gen({ length, format: "BASE64" });
    expect(value).toMatch(/^[A-Za-z0-9+/]*={0,2}$/);
    expect(value.length).toBe(4 * Math.ceil(length / 3));
    const decoded = Buffer.from(value, "base64");
    expect(decoded.length).toBe(length);
    expect(decoded.toString("base64")).toBe(value);
  });

  it.each([8, 9, 10, 33, 4096])("BASE64URL of %i bytes is unpadded base64url (RFC 4648 section 5)", (length) => {
    const value = gen({ length, format: "BASE64URL" });
    expect(value).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(value.length).toBe(Math.ceil((4 * length) / 3));
    const decoded = Buffer.from(value, "base64url");
    expect(decoded.length).toBe(length);
    expect(decoded.toString("base64url")).toBe(value);
  });

  it("uses the whole base64 alphabets, including + / and - _", () => {
    const standard = Array.from({ length: 50 }, () => gen({ length: 60, format: "BASE64" })).join("");
    const url = Array.from({ length: 50 }, () => gen({ length: 60, format: "BASE64URL" })).join("");
    expect(standard).toMatch(/\+/);
    expect(standard).toMatch(/\//);
    expect(url).toMatch(/-/);
    expect(url).toMatch(/_/);
  });

  it.each<GenerateFormat>(["HEX", "BASE64", "BASE64URL", "ALPHANUMERIC", "PASSWORD"])("%s never repeats a value", (format) => {
    const values = new Set(Array.from({ length: 200 }, () => gen({ length: 16, format })));
    expect(values.size).toBe(200);
  });
});

describe("generateValue: ALPHANUMERIC", () => {
  it.each([8, 9, 64, 4096])("has exactly %i characters from A-Z, a-z, 0-9", (length) => {
    const value = gen({ length, format: "ALPHANUMERIC" });
    expect(value.length).toBe(length);
    expect(value).toMatch(/^[A-Za-z0-9]+$/);
  });

  it("draws each of the 62 characters about equally often (chi-square, 61 degrees of freedom)", () => {
    const counts = new Map<string, number>([...ALPHANUMERIC].map((c) => [c, 0]));
    const draws = 62 * 600;
    let text = "";
    while (text.length < draws) text += gen({ length: 4096, format: "ALPHANUMERIC" });
    for (const c of text.slice(0, draws)) counts.set(c, counts.get(c)! + 1);
    expect(counts.size).toBe(62);
    const expected = draws / 62;
    const chiSquare = [...counts.values()].reduce((sum, n) => sum + (n - expected) ** 2 / expected, 0);
    // Mean 61, standard deviation about 11: 140 is beyond seven deviations.
    // A modulo bias (e.g. a byte % 62) puts it in the thousands.
    expect(chiSquare).toBeLessThan(140);
    for (const [c, n] of counts) {
      expect(n, c).toBeGreaterThan(expected / 2);
    }
  });
});

describe("generateValue: PASSWORD", () => {
  const FULL = ALPHANUMERIC + DEFAULT_SYMBOLS;

  it("uses letters, digits and the default symbols, which leave out quotes, backslash, backtick and space", () => {
    expect(DEFAULT_SYMBOLS).not.toMatch(/['"\\` ]/);
    const text = Array.from({ length: 200 }, () => gen({ length: 64, format: "PASSWORD" })).join("");
    expect(only(FULL, text)).toBe(true);
    for (const c of FULL) {
      expect(text, `never drew ${c}`).toContain(c);
    }
  });

  it.each([8, 9, 100, 4096])("has exactly %i characters", (length) => {
    const value = gen({ length, format: "PASSWORD", requireLowercase: true, requireUppercase: true, requireDigit: true, requireSymbol: true });
    expect([...value].length).toBe(length);
    expect(Buffer.byteLength(value)).toBe(length);
  });

  it("always holds every required class, even at the shortest length, over many draws", () => {
    for (let i = 0; i < 3000; i++) {
      const value = gen({ length: 8, format: "PASSWORD", requireLowercase: true, requireUppercase: true, requireDigit: true, requireSymbol: true });
      expect(value.length).toBe(8);
      expect(some(LOWER, value) && some(UPPER, value) && some(DIGITS, value) && some(DEFAULT_SYMBOLS, value), value).toBe(true);
      expect(only(FULL, value), value).toBe(true);
    }
  });

  it.each([
    ["lowercase", { requireLowercase: true }, LOWER],
    ["uppercase", { requireUppercase: true }, UPPER],
    ["digit", { requireDigit: true }, DIGITS],
    ["symbol", { requireSymbol: true }, DEFAULT_SYMBOLS],
  ] as const)("requiring only a %s guarantees one, over many draws", (_, flags, alphabet) => {
    // Without the guarantee, 8 characters drawn from 90 miss the 10 digits
    // about 39% of the time and the 28 symbols about 5%: 2000 draws would
    // miss a class hundreds of times.
    for (let i = 0; i < 2000; i++) {
      const value = gen({ length: 8, format: "PASSWORD", ...flags });
      expect(some(alphabet, value), value).toBe(true);
    }
  });

  it("puts the required character at a random position, not always the same one", () => {
    // With the one symbol "#" required, a position holds "#" about 1/12
    // (placed there) + 1/63 (drawn there) of the time, about 119 times in
    // 1200 draws; a generator that always placed it at one position would
    // show about 1200 there and about 19 elsewhere.
    const draws = 1200;
    const atPosition = Array.from({ length: 12 }, () => 0);
    for (let i = 0; i < draws; i++) {
      const value = gen({ length: 12, format: "PASSWORD", requireSymbol: true, symbols: "#" });
      [...value].forEach((c, at) => c === "#" && atPosition[at]!++);
    }
    for (const [at, n] of atPosition.entries()) {
      expect(n, `position ${at}`).toBeGreaterThan(60);
      expect(n, `position ${at}`).toBeLessThan(200);
    }
  });

  it("draws symbols only from the given set, and requiring a symbol means one of those", () => {
    const symbols = "#@";
    for (let i = 0; i < 1000; i++) {
      const value = gen({ length: 8, format: "PASSWORD", requireSymbol: true, symbols });
      expect(only(ALPHANUMERIC + symbols, value), value).toBe(true);
      expect(some(symbols, value), value).toBe(true);
    }
  });

  it("treats empty symbols as the default set", () => {
    const text = Array.from({ length: 300 }, () => gen({ length: 32, format: "PASSWORD", symbols: "" })).join("");
    expect(only(FULL, text)).toBe(true);
    expect(some(DEFAULT_SYMBOLS, text)).toBe(true);
  });
});

describe("generateValue: length out of range", () => {
  const formats: GenerateFormat[] = ["HEX", "BASE64", "BASE64URL", "ALPHANUMERIC", "PASSWORD"];
  const lengths = [7, 4097, 0, -8, 8.5, Number.NaN, Number.POSITIVE_INFINITY, 1_000_000];
  for (const format of formats) {
    it.each(lengths)(`${format} refuses length %d with INVALID_ARGUMENT`, (length) => {
      let thrown: unknown;
      try {
        generateValue({ length, format, requireDigit: format === "PASSWORD" });
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toBeInstanceOf(DomainError);
      expect((thrown as DomainError).kind).toBe("invalid-argument");
      expect((thrown as DomainError).message).toBe("spec.length must be 8..4096");
    });
  }

  it.each(formats)("%s accepts both ends of the range, 8 and 4096", (format) => {
    expect(generateValue({ length: 8, format }).length).toBeGreaterThanOrEqual(8);
    expect(generateValue({ length: 4096, format }).length).toBeGreaterThanOrEqual(4096);
  });
});
