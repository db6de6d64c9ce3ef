import { randomFillSync } from "node:crypto";

/**
 * Fills its argument with random bytes. The default everywhere in crypto/ is
 * {@link fillRandom}; tests inject fixed bytes through this type to check
 * known-answer vectors.
 */
export type FillRandom = (target: Uint8Array) => void;

const POOL_SIZE = 4096;
const LARGEST_FROM_POOL = 256;
const pool = Buffer.alloc(POOL_SIZE);
let used = POOL_SIZE;

/**
 * Fills `target` with bytes from the operating system's CSPRNG (OpenSSL's
 * `RAND_bytes` through `crypto.randomFillSync`).
 *
 * Requests of up to 256 bytes (nonces, data keys) are served from a 4 KiB
 * batch drawn in one call, as node's own `crypto.randomUUID` batches its
 * entropy: each call into node costs about 1.6 µs whatever its size, a
 * tenth of an envelope encryption, while copying 32 bytes costs nothing.
 * Bytes handed out are zeroed in the batch at once, so no key material
 * lingers there after use and no byte is ever handed out twice.
 */
export function fillRandom(target: Uint8Array): void {
  const length = target.length;
  if (length > LARGEST_FROM_POOL) {
    randomFillSync(target);
    return;
  }
  if (used + length > POOL_SIZE) {
    randomFillSync(pool);
    used = 0;
  }
  pool.copy(target, 0, used, used + length);
  pool.fill(0, used, used + length);
  used += length;
}
