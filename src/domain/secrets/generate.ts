import { randomBytes, randomInt } from "node:crypto";
import { DomainError } from "../errors.js";

export type GenerateFormat = "HEX" | "BASE64" | "BASE64URL" | "ALPHANUMERIC" | "PASSWORD";

export interface GenerateSpec {
  /** Random bytes before encoding (HEX, BASE64, BASE64URL) or characters (ALPHANUMERIC, PASSWORD): 8..4096. */
  readonly length: number;
  readonly format: GenerateFormat;
  readonly requireLowercase?: boolean;
  readonly requireUppercase?: boolean;
  readonly requireDigit?: boolean;
  readonly requireSymbol?: boolean;
  /** PASSWORD only; empty: {@link DEFAULT_SYMBOLS}. */
  readonly symbols?: string;
}

const LOWER = "abcdefghijklmnopqrstuvwxyz";
const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS = "0123456789";
/** No quotes, backslash or backtick, which often need escaping. */
export const DEFAULT_SYMBOLS = "!#$%&()*+,-./:;<=>?@[]^_{|}~";

/** `length` characters drawn uniformly (crypto.randomInt, no modulo bias) from `alphabet`. */
function draw(alphabet: string, length: number): string[] {
  return Array.from({ length }, () => alphabet[randomInt(alphabet.length)]!);
}

/**
 * A random value from the operating system's CSPRNG. For PASSWORD, each
 * required class is guaranteed by placing one character of it at a random
 * position; the other positions are drawn from the whole alphabet.
 *
 * @throws DomainError "invalid-argument" when the length is out of range or
 *   too short for the required classes.
 */
export function generateValue(spec: GenerateSpec): Buffer {
  if (!Number.isInteger(spec.length) || spec.length < 8 || spec.length > 4096) {
    throw new DomainError("invalid-argument", "spec.length must be 8..4096");
  }
  switch (spec.format) {
    case "HEX":
      return Buffer.from(randomBytes(spec.length).toString("hex"));
    case "BASE64":
      return Buffer.from(randomBytes(spec.length).toString("base64"));
    case "BASE64URL":
      return Buffer.from(randomBytes(spec.length).toString("base64url"));
    case "ALPHANUMERIC":
      return Buffer.from(draw(LOWER + UPPER + DIGITS, spec.length).join(""));
    case "PASSWORD": {
      const symbols = spec.symbols || DEFAULT_SYMBOLS;
      const required = [
        spec.requireLowercase ? LOWER : "",
        spec.requireUppercase ? UPPER : "",
        spec.requireDigit ? DIGITS : "",
        spec.requireSymbol ? symbols : "",
      ].filter((s) => s !== "");
      if (required.length > spec.length) {
        throw new DomainError("invalid-argument", "spec.length is shorter than the number of required character classes");
      }
      const chars = draw(LOWER + UPPER + DIGITS + symbols, spec.length);
      // Distinct random positions for the required classes.
      const positions = [...chars.keys()];
      for (const alphabet of required) {
        const at = positions.splice(randomInt(positions.length), 1)[0]!;
        chars[at] = draw(alphabet, 1)[0]!;
      }
      return Buffer.from(chars.join(""));
    }
  }
}
