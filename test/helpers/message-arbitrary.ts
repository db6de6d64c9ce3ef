import { create, ScalarType, toBinary, type DescField, type DescMessage } from "@bufbuild/protobuf";
import fc from "fast-check";

/**
 * Realistic values for a field (names of resources that exist, ciphertexts
 * the server issued, ...), so that generated requests get past validation
 * into the handlers. `mixed` is blended with the generic values for the
 * field's type; `only` replaces them (for a field whose generic values would
 * cost too much, e.g. RSA-4096 key generation on every CreateKey).
 */
export type RealisticValues = { mixed: fc.Arbitrary<unknown> } | { only: fc.Arbitrary<unknown> };

export interface MessageArbitraryOptions {
  /** Realistic values for `field` of `parent`, or undefined to use the generic ones. */
  readonly realistic?: (field: DescField, parent: DescMessage) => RealisticValues | undefined;
  /** Nesting depth beyond which message fields are left empty. Default 4. */
  readonly maxDepth?: number;
  /**
   * Only fields with realistic values, and message fields (which may hold
   * some), are set: requests a real client would send, which mostly pass
   * validation and exercise the handlers. Default false: every field.
   */
  readonly plausible?: boolean;
}

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;
const UINT32_MAX = 4294967295;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

/** Values at and around the limits the protos state (page sizes, lengths, versions). */
const INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 63, 64, 65, 100, 999, 1000, 1001, 1023, 1024, 1025, 4096, 4097, 65536, 262144, 262145, 999999999, 1000000000];

function int32(): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...INTERESTING_INTS, INT32_MIN, INT32_MAX) },
    { weight: 1, arbitrary: fc.integer({ min: INT32_MIN, max: INT32_MAX }) },
  );
}

function uint32(): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...INTERESTING_INTS.filter((n) => n >= 0), UINT32_MAX) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: UINT32_MAX }) },
  );
}

function int64(): fc.Arbitrary<bigint> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...INTERESTING_INTS.map(BigInt), INT64_MIN, INT64_MAX, 999999999999999999n, 10n ** 18n) },
    { weight: 1, arbitrary: fc.bigInt({ min: INT64_MIN, max: INT64_MAX }) },
  );
}

function uint64(): fc.Arbitrary<bigint> {
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...INTERESTING_INTS.filter((n) => n >= 0).map(BigInt), INT64_MAX, UINT64_MAX) },
    { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: UINT64_MAX }) },
  );
}

/**
 * A string that is not valid UTF-8 on the wire. Protobuf-ES always encodes
 * strings as valid UTF-8, so the value is a placeholder (two DEL characters
 * and letters) that {@link encodeMessage} replaces, byte for byte, with an
 * invalid sequence of the same length after serialization.
 */
export const INVALID_UTF8_LETTERS = "ABCDEFGH";
const INVALID_UTF8_BYTES = [0xff, 0xfe, 0xc0, 0xc1, 0x80, 0xbf, 0xf5, 0xed];

export function invalidUtf8(): fc.Arbitrary<string> {
  return fc
    .array(fc.constantFrom(...INVALID_UTF8_LETTERS), { minLength: 2, maxLength: 12 })
    .map((letters) => `\u007f\u007f${letters.join("")}`);
}

/** Strings of every kind a caller could send: empty, control characters, Unicode, long, huge, not UTF-8. */
export function anyString(): fc.Arbitrary<string> {
  // Weighted so that a message averages a few hundred bytes: huge values
  // are rare, or the fuzzer would spend its time moving bytes.
  return fc.oneof(
    { weight: 160, arbitrary: fc.string({ maxLength: 24 }) },
    { weight: 80, arbitrary: fc.string({ unit: "grapheme", maxLength: 24 }) },
    { weight: 40, arbitrary: fc.string({ unit: "binary", maxLength: 16 }) },
    { weight: 80, arbitrary: fc.constantFrom("", " ", "\u0000", "a\u0000b", "\n", "\r\n", "../..", "%00", "*", "**", "versions", "latest", "\u202e", "\ud800") },
    { weight: 30, arbitrary: fc.integer({ min: 60, max: 1100 }).map((n) => "a".repeat(n)) },
    { weight: 1, arbitrary: fc.constantFrom(4096, 4096, 65_537, 300_000).map((n) => "x".repeat(n)) },
    { weight: 60, arbitrary: invalidUtf8() },
  );
}

/** Byte strings: empty, short random, and sizes at and just beyond the documented limits. */
export function anyBytes(): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    { weight: 300, arbitrary: fc.uint8Array({ maxLength: 48 }) },
    { weight: 100, arbitrary: fc.constantFrom(0, 1, 16, 31, 32, 33, 48, 64, 65, 1024, 1025) },
    { weight: 1, arbitrary: fc.constantFrom(65_536, 65_537, 262_144, 262_145, 263_168, 263_169) },
  ).map((value) => (typeof value === "number" ? filled(value) : value));
}

function filled(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    bytes[i] = (i * 131 + 7) & 0xff;
  }
  return bytes;
}

function scalar(type: ScalarType): fc.Arbitrary<unknown> {
  switch (type) {
    case ScalarType.STRING:
      return anyString();
    case ScalarType.BYTES:
      return anyBytes();
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return int32();
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return uint32();
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return int64();
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return uint64();
    case ScalarType.FLOAT:
      return fc.float();
    case ScalarType.DOUBLE:
      return fc.double();
  }
}

function enumNumbers(values: readonly { number: number }[]): fc.Arbitrary<number> {
  const numbers = values.map((v) => v.number);
  const max = Math.max(...numbers);
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...numbers) },
    { weight: 1, arbitrary: fc.constantFrom(-1, max + 1, 99, INT32_MAX, INT32_MIN) },
  );
}

/**
 * A generic arbitrary for messages of `desc`, built from its descriptor:
 * scalars with boundary values, enums with defined and undefined numbers,
 * repeated and map fields (usually short, sometimes at 1000/1001 or 64/65
 * entries), nested messages, one member or none of each oneof. Fields with
 * realistic values are always set; others are set or not at random. The
 * result is an init object for `create(desc, init)`.
 */
export function messageArbitrary(desc: DescMessage, options: MessageArbitraryOptions = {}, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  const maxDepth = options.maxDepth ?? 4;
  const required: string[] = [];
  const parts: Record<string, fc.Arbitrary<unknown>> = {};

  const valueOf = (field: DescField): { arbitrary: fc.Arbitrary<unknown>; realistic: boolean } => {
    const realistic = options.realistic?.(field, desc);
    if (realistic && "only" in realistic) {
      return { arbitrary: realistic.only, realistic: true };
    }
    const generic = genericValue(field);
    if (realistic) {
      return { arbitrary: fc.oneof({ weight: 6, arbitrary: realistic.mixed }, { weight: 1, arbitrary: generic }), realistic: true };
    }
    return { arbitrary: generic, realistic: false };
  };

  const genericValue = (field: DescField): fc.Arbitrary<unknown> => {
    const nested = (message: DescMessage) =>
      depth < maxDepth ? messageArbitrary(message, options, depth + 1) : fc.constant({} as Record<string, unknown>);
    switch (field.fieldKind) {
      case "scalar":
        return scalar(field.scalar);
      case "enum":
        return enumNumbers(field.enum.values);
      case "message":
        return nested(field.message);
      case "list": {
        const element =
          field.listKind === "scalar" ? scalar(field.scalar) : field.listKind === "enum" ? enumNumbers(field.enum.values) : nested(field.message);
        const blank = field.listKind === "message" ? {} : field.listKind === "enum" ? 0 : field.scalar === ScalarType.STRING ? "" : undefined;
        const short = fc.array(element, { maxLength: 4 });
        if (blank === undefined) {
          return short;
        }
        return fc.oneof(
          { weight: 30, arbitrary: short },
          { weight: 1, arbitrary: fc.constantFrom(1000, 1001).map((n) => Array.from({ length: n }, () => blank)) },
        );
      }
      case "map": {
        const key = field.mapKey === ScalarType.STRING ? anyString().filter((k) => !k.startsWith("\u007f")) : scalar(field.mapKey).map(String);
        const value =
          field.mapKind === "scalar" ? scalar(field.scalar) : field.mapKind === "enum" ? enumNumbers(field.enum.values) : nested(field.message);
        return fc.oneof(
          { weight: 30, arbitrary: fc.dictionary(key as fc.Arbitrary<string>, value, { maxKeys: 4 }) },
          {
            weight: 1,
            arbitrary: fc.constantFrom(64, 65).map((n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, field.mapKind === "scalar" ? "v" : {}]))),
          },
        );
      }
    }
  };

  for (const member of desc.members) {
    if (member.kind === "oneof") {
      const realisticFields = member.fields.filter((field) => options.realistic?.(field, desc) !== undefined);
      const fields = options.plausible ? realisticFields : member.fields;
      if (fields.length === 0) {
        continue;
      }
      parts[member.localName] = fc.oneof(...fields.map((field) => valueOf(field).arbitrary.map((value) => ({ case: field.localName, value }))));
      if (realisticFields.length > 0) {
        required.push(member.localName);
      }
      continue;
    }
    const { arbitrary, realistic } = valueOf(member);
    if (options.plausible && !realistic && member.fieldKind !== "message") {
      continue;
    }
    parts[member.localName] = arbitrary;
    if (realistic) {
      required.push(member.localName);
    }
  }
  return fc.record(parts, { requiredKeys: required as never[] }) as fc.Arbitrary<Record<string, unknown>>;
}

/**
 * `create(desc, init)` serialized, with every invalid-UTF-8 placeholder
 * (see {@link invalidUtf8}) replaced by invalid bytes of the same length,
 * so that length prefixes stay right.
 */
export function encodeMessage(desc: DescMessage, init: Record<string, unknown>): Uint8Array {
  const bytes = toBinary(desc, create(desc, init as never));
  for (let i = 0; i + 2 < bytes.length; i++) {
    if (bytes[i] !== 0x7f || bytes[i + 1] !== 0x7f) {
      continue;
    }
    let end = i + 2;
    while (end < bytes.length && INVALID_UTF8_LETTERS.includes(String.fromCharCode(bytes[end]!))) {
      end++;
    }
    if (end - i < 4) {
      continue;
    }
    bytes[i] = 0xe2; // a 3-byte sequence cut short by the next byte
    bytes[i + 1] = 0x28;
    for (let j = i + 2; j < end; j++) {
      bytes[j] = INVALID_UTF8_BYTES[INVALID_UTF8_LETTERS.indexOf(String.fromCharCode(bytes[j]!))]!;
    }
    i = end - 1;
  }
  return bytes;
}

/**
 * Mutations of an encoded message, for what a broken or hostile client
 * sends: truncated, a byte flipped, garbage appended, an unknown field
 * appended (decodes fine), a known field with the wrong wire type, a length
 * prefix far beyond the message, or nothing but random bytes.
 */
export function mutatedBytes(encoded: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return fc
    .tuple(
      encoded,
      fc.constantFrom("truncate", "flip", "append", "unknown-field", "wrong-wire-type", "long-length", "random"),
      fc.nat(),
      fc.uint8Array({ minLength: 1, maxLength: 32 }),
    )
    .map(([bytes, kind, at, noise]) => {
      const position = bytes.length === 0 ? 0 : at % bytes.length;
      switch (kind) {
        case "truncate":
          return bytes.subarray(0, position);
        case "flip": {
          const copy = Uint8Array.from(bytes.length === 0 ? [0] : bytes);
          copy[position] = copy[position]! ^ (noise[0]! | 1);
          return copy;
        }
        case "append":
          return concat(bytes, noise);
        case "unknown-field":
          // Field 4095, length-delimited: unknown to every request message.
          return concat(bytes, Uint8Array.from([0xfa, 0xff, 0x03, noise.length]), noise);
        case "wrong-wire-type":
          // Field 1 as a fixed32 (wire type 5), then field 2 as a start group (3).
          return concat(Uint8Array.from([0x0d, 1, 2, 3, 4, 0x13]), bytes);
        case "long-length":
          return concat(bytes, Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), noise);
        case "random":
          return noise;
      }
      return bytes;
    });
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
