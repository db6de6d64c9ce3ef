import { generateKeyMaterial, loadKey, type LoadedKey } from "../../crypto/key-material.js";
import { unwrapKey, wrapKey } from "../../crypto/key-wrap.js";
import type { SecretBytes } from "../../crypto/secret-bytes.js";
import type { KeyAlgorithm } from "./key.js";
import { keyVersionName } from "./key.js";

/**
 * The associated data that binds wrapped material to its row: key name,
 * version and algorithm. Material copied into another version's row, or
 * another key's, does not unwrap.
 */
export function materialBinding(keyName: string, version: number, algorithm: string): string {
  return `keyward key material v1\u0000${keyVersionName(keyName, version)}\u0000${algorithm}`;
}

/** Fresh material for a version, wrapped by the root key; the plain material is never kept. */
export async function mintMaterial(
  rootKey: SecretBytes,
  keyName: string,
  version: number,
  algorithm: KeyAlgorithm,
): Promise<{ wrapped: Buffer; publicKeyPem: string | null }> {
  const generated = await generateKeyMaterial(algorithm);
  const wrapped = wrapKey(rootKey, generated.material, materialBinding(keyName, version, algorithm));
  generated.material.expose().fill(0);
  return { wrapped, publicKeyPem: generated.publicKeyPem ?? null };
}

/** Unwraps and parses a version's material into cacheable primitives. */
export function openMaterial(
  rootKey: SecretBytes,
  keyName: string,
  version: number,
  algorithm: KeyAlgorithm,
  wrapped: Uint8Array,
): LoadedKey {
  const material = unwrapKey(rootKey, wrapped, materialBinding(keyName, version, algorithm));
  try {
    return loadKey(algorithm, material);
  } finally {
    material.expose().fill(0);
  }
}

/** Re-wraps material from one root key to another, keeping its binding (root key rotation). */
export function rewrapMaterial(
  from: SecretBytes,
  to: SecretBytes,
  keyName: string,
  version: number,
  algorithm: string,
  wrapped: Uint8Array,
): Buffer {
  const binding = materialBinding(keyName, version, algorithm);
  const material = unwrapKey(from, wrapped, binding);
  try {
    return wrapKey(to, material, binding);
  } finally {
    material.expose().fill(0);
  }
}
