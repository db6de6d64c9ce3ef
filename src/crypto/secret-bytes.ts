import { timingSafeEqual } from "node:crypto";

const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");

/**
 * Bytes that must never be printed: key material, root keys, plaintext.
 *
 * The constructor copies its input, so a caller that later zeroes or reuses
 * its buffer cannot change (or observe) the secret. `toString`, `toJSON` and
 * `util.inspect` show only the length, so a secret that slips into a log
 * line, an error message or a JSON body stays unreadable.
 */
export class SecretBytes {
  readonly #bytes: Buffer;

  constructor(bytes: Uint8Array) {
    this.#bytes = Buffer.from(bytes);
  }

  get length(): number {
    return this.#bytes.length;
  }

  /** The raw bytes, for handing to node:crypto. Callers must not retain or log them. */
  expose(): Buffer {
    return this.#bytes;
  }

  /** Constant-time comparison; different lengths compare unequal. */
  equals(other: SecretBytes): boolean {
    const a = this.#bytes;
    const b = other.#bytes;
    return a.length === b.length && timingSafeEqual(a, b);
  }

  toString(): string {
    return `SecretBytes(${this.#bytes.length} bytes)`;
  }

  toJSON(): string {
    return this.toString();
  }

  [inspectSymbol](): string {
    return this.toString();
  }
}
