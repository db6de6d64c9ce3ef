import { createPrivateKey, createSecretKey, type KeyObject } from "node:crypto";
import {
  AEAD_ALGORITHMS,
  AEAD_KEY_LENGTH,
  type Aead,
  type AeadAlgorithm,
  createAead,
  generateAeadKey,
  isAeadAlgorithm,
} from "./aead.js";
import {
  createMac,
  generateMacKey,
  isMacAlgorithm,
  type Mac,
  MAC_ALGORITHMS,
  type MacAlgorithm,
  macKeyLength,
} from "./mac.js";
import type { SecretBytes } from "./secret-bytes.js";
import {
  createSigner,
  createVerifier,
  generateSigningKey,
  isSigningAlgorithm,
  SIGNING_ALGORITHMS,
  type Signer,
  type SigningAlgorithm,
  type Verifier,
} from "./signing.js";

/**
 * Every algorithm of keys.proto KeyAlgorithm, as crypto/ names it (the
 * proto enum value without its `KEY_ALGORITHM_` prefix; only the edge maps
 * one to the other).
 */
export type KeyAlgorithm = AeadAlgorithm | SigningAlgorithm | MacAlgorithm;

/** What a key is for (keys.proto KeyPurpose without its prefix). */
export type KeyPurpose = "ENCRYPT_DECRYPT" | "SIGN_VERIFY" | "MAC";

/** Every {@link KeyAlgorithm}, in keys.proto order. */
export const KEY_ALGORITHMS: readonly KeyAlgorithm[] = Object.freeze([
  ...AEAD_ALGORITHMS,
  ...SIGNING_ALGORITHMS,
  ...MAC_ALGORITHMS,
]);

/** True when `value` names a {@link KeyAlgorithm}. */
export function isKeyAlgorithm(value: string): value is KeyAlgorithm {
  return isAeadAlgorithm(value) || isSigningAlgorithm(value) || isMacAlgorithm(value);
}

/** The purpose an algorithm belongs to. */
export function keyPurpose(algorithm: KeyAlgorithm): KeyPurpose {
  if (isAeadAlgorithm(algorithm)) {
    return "ENCRYPT_DECRYPT";
  }
  return isSigningAlgorithm(algorithm) ? "SIGN_VERIFY" : "MAC";
}

/**
 * Thrown when stored key material does not fit its algorithm: the wrong
 * length, unparsable DER, or a key of another type, curve or size. After a
 * successful unwrap (AAD binds the algorithm) this means corruption or a
 * bug, never a caller's mistake. The message names the algorithm and the
 * length, never the bytes; the parser's error is in `cause`.
 */
export class KeyMaterialError extends Error {
  override name = "KeyMaterialError";
}

/**
 * Key material for one key version, as generated. Its `material` is what to
 * wrap with the root key (key-wrap.ts) and store:
 *
 * | algorithm                        | material                                         |
 * |----------------------------------|--------------------------------------------------|
 * | AES_256_GCM, CHACHA20_POLY1305   | 32 random bytes                                  |
 * | HMAC_SHA256                      | 32 random bytes                                  |
 * | HMAC_SHA512                      | 64 random bytes                                  |
 * | ED25519, ECDSA_*, RSA_PSS_*      | private key, PKCS#8 PrivateKeyInfo DER (RFC 5958)|
 */
export interface KeyMaterial {
  readonly algorithm: KeyAlgorithm;
  readonly material: SecretBytes;
  /** For SIGN_VERIFY algorithms: the public key, SPKI PEM (RFC 7468 `PUBLIC KEY`). Not secret. */
  readonly publicKeyPem?: string;
}

/**
 * Generates material for a new key version of `algorithm` with node:crypto
 * (the operating system's CSPRNG; key pairs on the libuv thread pool, so an
 * RSA-4096 key does not stall the event loop).
 *
 * @throws TypeError when `algorithm` is not a {@link KeyAlgorithm}.
 */
export async function generateKeyMaterial(algorithm: KeyAlgorithm): Promise<KeyMaterial> {
  if (isAeadAlgorithm(algorithm)) {
    return { algorithm, material: generateAeadKey() };
  }
  if (isMacAlgorithm(algorithm)) {
    return { algorithm, material: generateMacKey(algorithm) };
  }
  if (isSigningAlgorithm(algorithm)) {
    const { privateKey, publicKeyPem } = await generateSigningKey(algorithm);
    return { algorithm, material: privateKey, publicKeyPem };
  }
  throw new TypeError(`not a key algorithm: ${String(algorithm)}`);
}

/** A key version's material, parsed once into what uses it. */
export type LoadedKey =
  | { readonly purpose: "ENCRYPT_DECRYPT"; readonly algorithm: AeadAlgorithm; readonly aead: Aead }
  | {
      readonly purpose: "SIGN_VERIFY";
      readonly algorithm: SigningAlgorithm;
      readonly signer: Signer;
      readonly verifier: Verifier;
      /** The public key, SPKI PEM, as GetPublicKey returns it. */
      readonly publicKeyPem: string;
    }
  | { readonly purpose: "MAC"; readonly algorithm: MacAlgorithm; readonly mac: Mac };

/**
 * Parses stored material (the table at {@link KeyMaterial}) into KeyObjects
 * and the primitives built on them, checking that it fits `algorithm`.
 * Parse once per key version and cache the result: nothing here is redone
 * per call. The material can be zeroed afterwards; the KeyObjects hold their
 * own copies.
 *
 * @throws KeyMaterialError when the material does not fit the algorithm.
 * @throws TypeError when `algorithm` is not a {@link KeyAlgorithm}.
 */
export function loadKey(algorithm: KeyAlgorithm, material: SecretBytes): LoadedKey {
  if (isAeadAlgorithm(algorithm)) {
    const key = secretKey(algorithm, material, AEAD_KEY_LENGTH);
    return { purpose: "ENCRYPT_DECRYPT", algorithm, aead: createAead(algorithm, key) };
  }
  if (isMacAlgorithm(algorithm)) {
    const key = secretKey(algorithm, material, macKeyLength(algorithm));
    return { purpose: "MAC", algorithm, mac: createMac(algorithm, key) };
  }
  if (isSigningAlgorithm(algorithm)) {
    let privateKey: KeyObject;
    let signer: Signer;
    let verifier: Verifier;
    try {
      privateKey = createPrivateKey({ key: material.expose(), format: "der", type: "pkcs8" });
      signer = createSigner(algorithm, privateKey);
      verifier = createVerifier(algorithm, privateKey);
    } catch (err) {
      throw new KeyMaterialError(
        `key material (${material.length} bytes) is not a PKCS#8 ${algorithm} private key`,
        { cause: err },
      );
    }
    return { purpose: "SIGN_VERIFY", algorithm, signer, verifier, publicKeyPem: verifier.publicKeyPem };
  }
  throw new TypeError(`not a key algorithm: ${String(algorithm)}`);
}

function secretKey(algorithm: KeyAlgorithm, material: SecretBytes, length: number): KeyObject {
  if (material.length !== length) {
    throw new KeyMaterialError(`key material for ${algorithm} must be ${length} bytes, not ${material.length}`);
  }
  return createSecretKey(material.expose());
}
