import {
  constants,
  createHash,
  createPublicKey,
  generateKeyPair,
  type KeyObject,
  type KeyPairKeyObjectResult,
  privateEncrypt,
  publicDecrypt,
  randomBytes,
  sign,
  timingSafeEqual,
  verify,
} from "node:crypto";
import { SecretBytes } from "./secret-bytes.js";

/**
 * The algorithms of keys of purpose SIGN_VERIFY (keys.proto KeyAlgorithm).
 *
 * | algorithm            | scheme                                   | signature                         |
 * |----------------------|------------------------------------------|-----------------------------------|
 * | ED25519              | PureEdDSA, RFC 8032 §5.1                  | 64 bytes                          |
 * | ECDSA_P256_SHA256    | ECDSA, FIPS 186-5, P-256, SHA-256         | DER ECDSA-Sig-Value (RFC 3279)    |
 * | ECDSA_P384_SHA384    | ECDSA, FIPS 186-5, P-384, SHA-384         | DER ECDSA-Sig-Value (RFC 3279)    |
 * | RSA_PSS_2048_SHA256  | RSASSA-PSS, RFC 8017 §8.1, SHA-256,       | 256 bytes                         |
 * | RSA_PSS_3072_SHA256  |   MGF1-SHA-256, 32-byte salt, e = 65537   | 384 bytes                         |
 * | RSA_PSS_4096_SHA256  |                                           | 512 bytes                         |
 */
export type SigningAlgorithm =
  | "ED25519"
  | "ECDSA_P256_SHA256"
  | "ECDSA_P384_SHA384"
  | "RSA_PSS_2048_SHA256"
  | "RSA_PSS_3072_SHA256"
  | "RSA_PSS_4096_SHA256";

/** Every {@link SigningAlgorithm}, in keys.proto order. */
export const SIGNING_ALGORITHMS: readonly SigningAlgorithm[] = Object.freeze([
  "ED25519",
  "ECDSA_P256_SHA256",
  "ECDSA_P384_SHA384",
  "RSA_PSS_2048_SHA256",
  "RSA_PSS_3072_SHA256",
  "RSA_PSS_4096_SHA256",
]);

/** RSASSA-PSS salt length of every RSA_PSS_* algorithm, in bytes. */
export const RSA_PSS_SALT_LENGTH = 32;

/**
 * What to sign or verify: the message itself, or its digest computed by the
 * caller with the algorithm's hash (see {@link digestSigning}).
 */
export type SignInput =
  | { readonly message: Uint8Array; readonly digest?: undefined }
  | { readonly digest: Uint8Array; readonly message?: undefined };

/**
 * Thrown when a sign or verify input is not acceptable for the algorithm: a
 * digest for an algorithm that signs messages only, or a digest of the
 * wrong length. A caller's mistake (INVALID_ARGUMENT at the edge); the
 * message says what was wrong and never contains the input.
 */
export class SignatureInputError extends Error {
  override name = "SignatureInputError";
}

/** Signs with one private key. Cache it with the key version. */
export interface Signer {
  readonly algorithm: SigningAlgorithm;

  /**
   * Signs a message, or a digest where {@link digestSigning} allows it.
   * ECDSA and RSA-PSS signatures are randomized; Ed25519's are deterministic.
   *
   * The private-key operation runs on the libuv thread pool, so the event
   * loop keeps serving other calls meanwhile (an RSA-4096 signature takes
   * about 10 ms). Only an RSA-PSS digest signature is computed on the
   * calling thread: node:crypto has no asynchronous raw RSA operation.
   * The input is copied when the call starts; changing it afterwards does
   * not change what is signed.
   *
   * @returns a promise of the signature; it rejects with
   * SignatureInputError for a digest the algorithm does not take (nothing
   * is thrown synchronously).
   */
  sign(input: SignInput): Promise<Buffer>;
}

/** Verifies with one public key. Cache it with the key version. */
export interface Verifier {
  readonly algorithm: SigningAlgorithm;
  /** The public key, PEM-encoded X.509 SubjectPublicKeyInfo (RFC 5280, RFC 7468 label `PUBLIC KEY`). */
  readonly publicKeyPem: string;

  /**
   * Resolves true when `signature` is a valid signature of the input.
   * Resolves false, never rejects, for any signature bytes that do not
   * verify, malformed ones included (wrong length, bad DER, values out of
   * range).
   *
   * Runs on the libuv thread pool like {@link Signer.sign}, except for an
   * RSA-PSS digest, which is checked on the calling thread. The input and
   * signature are copied when the call starts.
   *
   * @returns a promise of the verdict; it rejects with SignatureInputError
   * for a digest the algorithm does not take (nothing is thrown
   * synchronously).
   */
  verify(input: SignInput, signature: Uint8Array): Promise<boolean>;
}

/** A freshly generated signing key. */
export interface GeneratedSigningKey {
  /** The private key, PKCS#8 PrivateKeyInfo DER (RFC 5958; RFC 8410 for Ed25519, RFC 5915 for EC). */
  readonly privateKey: SecretBytes;
  /** The public key, SPKI PEM (RFC 7468 `PUBLIC KEY`). */
  readonly publicKeyPem: string;
}

type Hash = "sha256" | "sha384";

type Parameters =
  | { readonly kind: "ed25519" }
  | { readonly kind: "ecdsa"; readonly curve: "P-256" | "P-384"; readonly opensslCurve: string; readonly hash: Hash }
  | { readonly kind: "rsa-pss"; readonly modulusLength: 2048 | 3072 | 4096; readonly hash: "sha256" };

const PARAMETERS: Record<SigningAlgorithm, Parameters> = {
  ED25519: { kind: "ed25519" },
  ECDSA_P256_SHA256: { kind: "ecdsa", curve: "P-256", opensslCurve: "prime256v1", hash: "sha256" },
  ECDSA_P384_SHA384: { kind: "ecdsa", curve: "P-384", opensslCurve: "secp384r1", hash: "sha384" },
  RSA_PSS_2048_SHA256: { kind: "rsa-pss", modulusLength: 2048, hash: "sha256" },
  RSA_PSS_3072_SHA256: { kind: "rsa-pss", modulusLength: 3072, hash: "sha256" },
  RSA_PSS_4096_SHA256: { kind: "rsa-pss", modulusLength: 4096, hash: "sha256" },
};

const HASH_LENGTHS: Record<Hash, number> = { sha256: 32, sha384: 48 };

/** True when `value` names a {@link SigningAlgorithm}. */
export function isSigningAlgorithm(value: string): value is SigningAlgorithm {
  return Object.hasOwn(PARAMETERS, value);
}

/**
 * The hash an algorithm signs messages with (node:crypto's name), or
 * undefined for Ed25519, which signs the message itself.
 */
export function signingHash(algorithm: SigningAlgorithm): Hash | undefined {
  const p = PARAMETERS[algorithm];
  return p.kind === "ed25519" ? undefined : p.hash;
}

/**
 * Whether {@link Signer.sign} and {@link Verifier.verify} take a digest for
 * `algorithm`, and of what length; undefined when they take messages only.
 *
 * - ED25519: messages only; PureEdDSA (RFC 8032) has no prehashed form
 *   here (Ed25519ph is another algorithm).
 * - ECDSA_*: messages only. node:crypto (Node 20, OpenSSL 3.0) hashes
 *   inside `crypto.sign`/`crypto.verify`, `Sign`/`Verify` and WebCrypto
 *   alike, and offers no raw-digest ECDSA; `crypto.sign(null, digest, key)`
 *   signs SHA-256(digest) instead, which no verifier expects.
 * - RSA_PSS_*: a 32-byte SHA-256 digest, encoded here with EMSA-PSS (RFC
 *   8017 §9.1) and signed with the raw RSA private-key operation of OpenSSL
 *   (blinded); the result is the same signature as signing the message.
 */
export function digestSigning(
  algorithm: SigningAlgorithm,
): { readonly hash: Hash; readonly length: number } | undefined {
  const p = PARAMETERS[algorithm];
  return p.kind === "rsa-pss" ? { hash: p.hash, length: HASH_LENGTHS[p.hash] } : undefined;
}

/**
 * Generates a key pair for `algorithm` on the libuv thread pool (RSA-4096
 * takes a second or more; the event loop keeps running). RSA keys are plain
 * `rsaEncryption` keys with e = 65537, which every verifier reads; the PSS
 * parameters are this module's, not the key's.
 */
export async function generateSigningKey(algorithm: SigningAlgorithm): Promise<GeneratedSigningKey> {
  const p = PARAMETERS[algorithm];
  let pair: KeyPairKeyObjectResult;
  switch (p.kind) {
    case "ed25519":
      pair = await keyPair((done) => generateKeyPair("ed25519", {}, done));
      break;
    case "ecdsa":
      pair = await keyPair((done) => generateKeyPair("ec", { namedCurve: p.curve }, done));
      break;
    case "rsa-pss":
      pair = await keyPair((done) =>
        generateKeyPair("rsa", { modulusLength: p.modulusLength, publicExponent: 0x10001 }, done),
      );
      break;
  }
  const der = pair.privateKey.export({ type: "pkcs8", format: "der" });
  const privateKey = new SecretBytes(der);
  der.fill(0);
  return { privateKey, publicKeyPem: pair.publicKey.export({ type: "spki", format: "pem" }).toString() };
}

/** `crypto.generateKeyPair` as a promise (crypto/ imports only node:crypto: no util.promisify). */
function keyPair(
  start: (done: (err: Error | null, publicKey: KeyObject, privateKey: KeyObject) => void) => void,
): Promise<KeyPairKeyObjectResult> {
  return new Promise((resolve, reject) => {
    start((err, publicKey, privateKey) => (err ? reject(err) : resolve({ publicKey, privateKey })));
  });
}

/**
 * A node:crypto call in its callback form, which runs on the libuv thread
 * pool, as a promise (crypto/ imports only node:crypto: no util.promisify).
 * A synchronous throw of `start` (bad arguments) becomes a rejection too.
 */
function onThreadPool<T>(start: (done: (err: Error | null, value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    start((err, value) => (err ? reject(err) : resolve(value)));
  });
}

/**
 * A {@link Signer} for `algorithm` with `privateKey`
 * (`crypto.createPrivateKey` of the PKCS#8 DER).
 *
 * @throws TypeError when the key is not a private key of the algorithm's
 * type, curve or modulus length.
 */
export function createSigner(algorithm: SigningAlgorithm, privateKey: KeyObject): Signer {
  const p = checkKey(algorithm, privateKey, "private");
  const modulusBytes = p.kind === "rsa-pss" ? p.modulusLength / 8 : 0;
  return {
    algorithm,
    async sign(input) {
      const { message, digest } = checkInput(algorithm, p, input);
      switch (p.kind) {
        case "ed25519":
          return onThreadPool<Buffer>((done) => sign(null, message!, privateKey, done));
        case "ecdsa":
          return onThreadPool<Buffer>((done) => sign(p.hash, message!, { key: privateKey, dsaEncoding: "der" }, done));
        case "rsa-pss":
          if (message !== undefined) {
            return onThreadPool<Buffer>((done) =>
              sign(
                p.hash,
                message,
                { key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: RSA_PSS_SALT_LENGTH },
                done,
              ),
            );
          }
          // Synchronous on purpose: privateEncrypt has no callback form and
          // crypto.sign cannot take a precomputed digest, so this one path
          // still holds the event loop for the RSA operation.
          return privateEncrypt(
            { key: privateKey, padding: constants.RSA_NO_PADDING },
            emsaPssEncode(digest!, p.modulusLength - 1, modulusBytes),
          );
      }
    },
  };
}

/**
 * A {@link Verifier} for `algorithm` with `publicKey` (a public KeyObject,
 * or a private one whose public half is used).
 *
 * @throws TypeError when the key is not of the algorithm's type, curve or
 * modulus length.
 */
export function createVerifier(algorithm: SigningAlgorithm, publicKey: KeyObject): Verifier {
  const key = publicKey.type === "private" ? createPublicKey(publicKey) : publicKey;
  const p = checkKey(algorithm, key, "public");
  const modulusBytes = p.kind === "rsa-pss" ? p.modulusLength / 8 : 0;
  const publicKeyPem = key.export({ type: "spki", format: "pem" }).toString();
  return {
    algorithm,
    publicKeyPem,
    async verify(input, signature) {
      const { message, digest } = checkInput(algorithm, p, input);
      // Any failure past input checks is about the signature bytes (or a
      // corrupted signature OpenSSL refuses to parse): that is "invalid",
      // whether node:crypto throws it or passes it to the callback.
      try {
        switch (p.kind) {
          case "ed25519":
            return await onThreadPool<boolean>((done) => verify(null, message!, key, signature, done));
          case "ecdsa":
            return await onThreadPool<boolean>((done) =>
              verify(p.hash, message!, { key, dsaEncoding: "der" }, signature, done),
            );
          case "rsa-pss":
            if (signature.length !== modulusBytes) {
              return false;
            }
            if (message !== undefined) {
              return await onThreadPool<boolean>((done) =>
                verify(
                  p.hash,
                  message,
                  { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: RSA_PSS_SALT_LENGTH },
                  signature,
                  done,
                ),
              );
            }
            // Synchronous on purpose: publicDecrypt has no callback form
            // (the public-key operation is cheap next to signing).
            return emsaPssVerify(
              digest!,
              publicDecrypt({ key, padding: constants.RSA_NO_PADDING }, signature),
              p.modulusLength - 1,
              modulusBytes,
            );
        }
      } catch {
        return false;
      }
    },
  };
}

function checkKey(algorithm: SigningAlgorithm, key: KeyObject, type: "private" | "public"): Parameters {
  if (!isSigningAlgorithm(algorithm)) {
    throw new TypeError(`not a signing algorithm: ${String(algorithm)}`);
  }
  const p = PARAMETERS[algorithm];
  const details = key.asymmetricKeyDetails ?? {};
  const fits =
    key.type === type &&
    (p.kind === "ed25519"
      ? key.asymmetricKeyType === "ed25519"
      : p.kind === "ecdsa"
        ? key.asymmetricKeyType === "ec" && details.namedCurve === p.opensslCurve
        : key.asymmetricKeyType === "rsa" && details.modulusLength === p.modulusLength);
  if (!fits) {
    throw new TypeError(`not a ${algorithm} ${type} key`);
  }
  return p;
}

function checkInput(
  algorithm: SigningAlgorithm,
  p: Parameters,
  input: SignInput,
): { message: Uint8Array | undefined; digest: Uint8Array | undefined } {
  const { message, digest } = input;
  if ((message === undefined) === (digest === undefined)) {
    throw new SignatureInputError("exactly one of message and digest is required");
  }
  if (digest !== undefined) {
    if (p.kind === "ed25519") {
      throw new SignatureInputError(`${algorithm} signs messages only, not digests`);
    }
    if (p.kind === "ecdsa") {
      throw new SignatureInputError(
        `${algorithm} signs messages only here: node:crypto cannot sign or verify a precomputed ECDSA digest`,
      );
    }
    const length = HASH_LENGTHS[p.hash];
    if (digest.length !== length) {
      throw new SignatureInputError(
        `digest for ${algorithm} must be ${length} bytes (${p.hash}), got ${digest.length}`,
      );
    }
  }
  return { message, digest };
}

/*
 * EMSA-PSS (RFC 8017 §9.1) with SHA-256, MGF1-SHA-256 (§B.2.1) and a 32-byte
 * salt, for signing and verifying digests; messages go through OpenSSL's own
 * PSS. With emBits = modBits - 1 and emLen = ceil(emBits / 8):
 *
 *   M'        = 0x00 00 00 00 00 00 00 00 || mHash || salt
 *   H         = SHA-256(M')
 *   DB        = PS (emLen - sLen - hLen - 2 zero bytes) || 0x01 || salt
 *   maskedDB  = DB xor MGF1(H, emLen - hLen - 1), top 8*emLen - emBits bits cleared
 *   EM        = maskedDB || H || 0xbc
 *
 * The signature is RSASP1(EM) = EM^d mod n (§5.2.1), left-padded to the
 * modulus length k. For the 2048/3072/4096-bit moduli here emLen = k.
 */

const PSS_HASH = "sha256";
const PSS_HASH_LENGTH = 32;
const PSS_ZEROS = Buffer.alloc(8);

function emsaPssEncode(mHash: Uint8Array, emBits: number, k: number): Buffer {
  const emLen = Math.ceil(emBits / 8);
  const salt = randomBytes(RSA_PSS_SALT_LENGTH);
  const h = createHash(PSS_HASH).update(PSS_ZEROS).update(mHash).update(salt).digest();
  const dbLength = emLen - PSS_HASH_LENGTH - 1;
  const em = Buffer.alloc(k);
  const offset = k - emLen;
  const db = em.subarray(offset, offset + dbLength);
  db[dbLength - RSA_PSS_SALT_LENGTH - 1] = 0x01;
  salt.copy(db, dbLength - RSA_PSS_SALT_LENGTH);
  xorInPlace(db, mgf1(h, dbLength));
  db[0]! &= 0xff >>> (8 * emLen - emBits);
  h.copy(em, offset + dbLength);
  em[k - 1] = 0xbc;
  return em;
}

function emsaPssVerify(mHash: Uint8Array, decoded: Buffer, emBits: number, k: number): boolean {
  const emLen = Math.ceil(emBits / 8);
  if (decoded.length !== k) {
    return false;
  }
  const offset = k - emLen;
  for (let i = 0; i < offset; i++) {
    if (decoded[i] !== 0) {
      return false;
    }
  }
  const em = decoded.subarray(offset);
  const dbLength = emLen - PSS_HASH_LENGTH - 1;
  const topMask = 0xff >>> (8 * emLen - emBits);
  if (em[emLen - 1] !== 0xbc || (em[0]! & ~topMask) !== 0) {
    return false;
  }
  const h = em.subarray(dbLength, dbLength + PSS_HASH_LENGTH);
  const db = Buffer.from(em.subarray(0, dbLength));
  xorInPlace(db, mgf1(h, dbLength));
  db[0]! &= topMask;
  const separator = dbLength - RSA_PSS_SALT_LENGTH - 1;
  for (let i = 0; i < separator; i++) {
    if (db[i] !== 0) {
      return false;
    }
  }
  if (db[separator] !== 0x01) {
    return false;
  }
  const salt = db.subarray(separator + 1);
  const expected = createHash(PSS_HASH).update(PSS_ZEROS).update(mHash).update(salt).digest();
  return timingSafeEqual(expected, h);
}

/** MGF1 (RFC 8017 §B.2.1) with SHA-256. */
function mgf1(seed: Uint8Array, length: number): Buffer {
  const out = Buffer.alloc(length);
  const counter = Buffer.alloc(4);
  for (let i = 0, offset = 0; offset < length; i++, offset += PSS_HASH_LENGTH) {
    counter.writeUInt32BE(i, 0);
    createHash(PSS_HASH).update(seed).update(counter).digest().copy(out, offset);
  }
  return out;
}

function xorInPlace(target: Buffer, mask: Buffer): void {
  for (let i = 0; i < target.length; i++) {
    target[i]! ^= mask[i]!;
  }
}
