import { createPrivateKey, createPublicKey, generateKeyPairSync, sign as signBytes, type KeyObject } from "node:crypto";
import { unwrapKey, wrapKey } from "../../crypto/key-wrap.js";
import { SecretBytes } from "../../crypto/secret-bytes.js";
import { checkpointPayload, publicKeyId, type Checkpoint } from "./checkpoint.js";

/** The only checkpoint algorithm so far: Ed25519 (RFC 8032, pure). */
export const CHECKPOINT_ALGORITHM = "ED25519";

/** The checkpoint key as stored: public half in the clear, private half wrapped by the root key. */
export interface SigningKeyRecord {
  readonly keyId: string;
  readonly algorithm: string;
  readonly publicKeyPem: string;
  readonly wrappedPrivateKey: Buffer;
}

/** What the signer needs from storage (the pg audit repository provides it). */
export interface CheckpointStore {
  head(): Promise<{ sequence: bigint; hash: Buffer }>;
  signingKey(): Promise<SigningKeyRecord | undefined>;
  /** Stores `key` unless one exists; returns the key in force (first writer wins). */
  saveSigningKey(key: SigningKeyRecord): Promise<SigningKeyRecord>;
  saveCheckpoint(checkpoint: Checkpoint): Promise<void>;
}

/** Signs the chain head with the deployment's audit signing key. */
export interface CheckpointSigner {
  /** SHA-256 of the public key's DER SubjectPublicKeyInfo, lower-case hex. */
  readonly keyId: string;
  readonly algorithm: typeof CHECKPOINT_ALGORITHM;
  /** PEM SubjectPublicKeyInfo: all a verifier needs (see verifyCheckpoint). */
  readonly publicKeyPem: string;
  /**
   * Reads the chain head, signs (sequence, hash, now), stores the checkpoint
   * and returns it.
   *
   * @throws whatever the store throws (the database is unreachable).
   */
  sign(): Promise<Checkpoint>;
  /**
   * Like {@link sign}, but returns undefined without signing when this
   * signer has already signed the same head: periodic checkpoints of an idle
   * log would only repeat themselves.
   */
  signIfMoved(): Promise<Checkpoint | undefined>;
}

/**
 * AAD of the wrapped private key: names what the material is, so a wrapped
 * key copied into another row (or presented under another key id) does not
 * unwrap. `keyward/audit-signing-key/v1|<key id>|ED25519`.
 */
export function signingKeyBinding(keyId: string, algorithm: string): string {
  return `keyward/audit-signing-key/v1|${keyId}|${algorithm}`;
}

/** Thrown at start when the stored signing key cannot be used. */
export class SigningKeyError extends Error {
  override name = "SigningKeyError";
}

/**
 * Loads the deployment's audit signing key, or creates it on first start:
 * an Ed25519 key pair whose PKCS#8 private key is stored only wrapped by the
 * root key (AES-256-GCM, see key-wrap.ts). Replicas starting together race
 * to store theirs; the first one stored wins and every replica uses it.
 *
 * The private key is unwrapped once into a KeyObject held in memory; the
 * unwrapped bytes are zeroed right after, and neither is ever logged or
 * stored.
 *
 * @param deps.now the clock, default `() => new Date()`; checkpoints carry whole milliseconds.
 * @throws SigningKeyError when the stored key is of another algorithm, does
 *   not unwrap with this root key, or its halves do not belong together.
 */
export async function createCheckpointSigner(deps: {
  store: CheckpointStore;
  rootKey: SecretBytes;
  now?: () => Date;
}): Promise<CheckpointSigner> {
  const now = deps.now ?? (() => new Date());
  const stored = (await deps.store.signingKey()) ?? (await deps.store.saveSigningKey(generateSigningKey(deps.rootKey)));
  const privateKey = openSigningKey(stored, deps.rootKey);
  let lastSigned: { sequence: bigint; hash: Buffer } | undefined;

  const sign = async (onlyIfMoved: boolean): Promise<Checkpoint | undefined> => {
    const head = await deps.store.head();
    if (onlyIfMoved && lastSigned?.sequence === head.sequence && lastSigned.hash.equals(head.hash)) {
      return undefined;
    }
    const time = new Date(now().getTime());
    const signature = signBytes(null, checkpointPayload(head.sequence, head.hash, time), privateKey);
    const checkpoint: Checkpoint = { sequence: head.sequence, hash: head.hash, time, signature, keyId: stored.keyId };
    await deps.store.saveCheckpoint(checkpoint);
    lastSigned = head;
    return checkpoint;
  };

  return {
    keyId: stored.keyId,
    algorithm: CHECKPOINT_ALGORITHM,
    publicKeyPem: stored.publicKeyPem,
    sign: () => sign(false) as Promise<Checkpoint>,
    signIfMoved: () => sign(true),
  };
}

function generateSigningKey(rootKey: SecretBytes): SigningKeyRecord {
  const pair = generateKeyPairSync("ed25519");
  const publicKeyPem = pair.publicKey.export({ type: "spki", format: "pem" }).toString();
  const keyId = publicKeyId(publicKeyPem);
  const der = pair.privateKey.export({ type: "pkcs8", format: "der" });
  const material = new SecretBytes(der);
  der.fill(0);
  const wrappedPrivateKey = wrapKey(rootKey, material, signingKeyBinding(keyId, CHECKPOINT_ALGORITHM));
  material.expose().fill(0);
  return { keyId, algorithm: CHECKPOINT_ALGORITHM, publicKeyPem, wrappedPrivateKey };
}

function openSigningKey(stored: SigningKeyRecord, rootKey: SecretBytes): KeyObject {
  if (stored.algorithm !== CHECKPOINT_ALGORITHM) {
    throw new SigningKeyError(`audit signing key ${stored.keyId} has unsupported algorithm ${stored.algorithm}`);
  }
  if (publicKeyId(stored.publicKeyPem) !== stored.keyId) {
    throw new SigningKeyError(`audit signing key ${stored.keyId}: the key id does not match the public key`);
  }
  let material: SecretBytes;
  try {
    material = unwrapKey(rootKey, stored.wrappedPrivateKey, signingKeyBinding(stored.keyId, stored.algorithm));
  } catch (err) {
    throw new SigningKeyError(`audit signing key ${stored.keyId} does not unwrap with this root key`, { cause: err });
  }
  try {
    const privateKey = createPrivateKey({ key: material.expose(), format: "der", type: "pkcs8" });
    // A private key that does not match the stored public key would sign
    // checkpoints nobody can verify: refuse it at start, not at audit time.
    const derived = createPublicKey(privateKey).export({ type: "spki", format: "der" });
    const expected = createPublicKey(stored.publicKeyPem).export({ type: "spki", format: "der" });
    if (privateKey.asymmetricKeyType !== "ed25519" || !derived.equals(expected)) {
      throw new SigningKeyError(`audit signing key ${stored.keyId}: the private key does not match the public key`);
    }
    return privateKey;
  } finally {
    material.expose().fill(0);
  }
}
