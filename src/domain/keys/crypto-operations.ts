/**
 * The cryptographic operations of CryptoService on cached keys. Which
 * version serves which operation is decided by state-machine.ts
 * (`usableFor`); this file finds the version, asks, and runs the primitive.
 *
 * Errors: NOT_FOUND for a missing key or named version, FAILED_PRECONDITION
 * for a key or version not usable, INVALID_ARGUMENT for inputs the
 * algorithm does not take, and DecryptionError ("decryption failed", the
 * reason in `cause`) for any ciphertext that does not open.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { DecryptionError } from "../../crypto/aead.js";
import { forgetDataKeys, parseCiphertext, type DataKeyMemo, type Envelope } from "../../crypto/envelope.js";
import { SignatureInputError, type SignInput } from "../../crypto/signing.js";
import { DomainError } from "../errors.js";
import { keyVersionName, type Key } from "./key.js";
import type { KeyCache, OpenedVersion } from "./key-cache.js";
import { findVersion, missingVersion } from "./key-manager.js";
import type { StoredKey, UsageDelta } from "./repository.js";
import { KEY_OPERATIONS, usableFor, type KeyOperation } from "./state-machine.js";

/** A key version that served an operation: `keys/{key}/versions/{n}`. */
export type KeyVersionName = string;

/** Counts successful uses per version; flushed to storage in batches. */
export interface UsageRecorder {
  record(keyName: string, version: number, count: number): void;
  /** What was recorded since the last drain. */
  drain(): UsageDelta[];
  /** Puts back what a drain took but could not write, so no use is lost. */
  restore(deltas: readonly UsageDelta[]): void;
}

export function createUsageRecorder(now: () => Date = () => new Date()): UsageRecorder {
  let pending = new Map<string, { keyName: string; version: number; count: number }>();
  return {
    record(keyName, version, count) {
      const id = `${keyName}\u0000${version}`;
      const entry = pending.get(id);
      if (entry === undefined) {
        pending.set(id, { keyName, version, count });
      } else {
        entry.count += count;
      }
    },
    drain() {
      const at = now();
      // In key order, so that replicas writing the same rows lock them in one order.
      const drained = [...pending.values()]
        .map((e) => ({ ...e, lastUsedTime: at }))
        .sort((a, b) => (a.keyName < b.keyName ? -1 : a.keyName > b.keyName ? 1 : a.version - b.version));
      pending = new Map();
      return drained;
    },
    restore(deltas) {
      for (const d of deltas) {
        this.record(d.keyName, d.version, d.count);
      }
    },
  };
}

/** One item's outcome in a batch: a value, or the error the unary call would have given. */
export type ItemResult<T> = { readonly ok: true; readonly value: T; readonly keyVersion: string } | { readonly ok: false; readonly error: Error };

export interface CryptoOperations {
  encrypt(name: string, version: number | undefined, plaintext: Uint8Array, aad: Uint8Array): Promise<{ ciphertext: Buffer; keyVersion: KeyVersionName }>;
  decrypt(name: string, ciphertext: Uint8Array, aad: Uint8Array): Promise<{ plaintext: Buffer; keyVersion: KeyVersionName }>;
  reEncrypt(
    name: string,
    ciphertext: Uint8Array,
    aad: Uint8Array,
    destination: { name: string; version: number | undefined; aad: Uint8Array },
  ): Promise<{ ciphertext: Buffer; sourceKeyVersion: KeyVersionName; keyVersion: KeyVersionName }>;
  generateDataKey(name: string, version: number | undefined, length: number, aad: Uint8Array): Promise<{ plaintext: Buffer; ciphertext: Buffer; keyVersion: KeyVersionName }>;
  sign(name: string, version: number | undefined, input: SignInput): Promise<{ signature: Buffer; keyVersion: KeyVersionName }>;
  verify(name: string, version: number | undefined, input: SignInput, signature: Uint8Array): Promise<{ valid: boolean; keyVersion: KeyVersionName }>;
  mac(name: string, version: number | undefined, data: Uint8Array): Promise<{ mac: Buffer; keyVersion: KeyVersionName }>;
  verifyMac(name: string, version: number | undefined, data: Uint8Array, mac: Uint8Array): Promise<{ valid: boolean; keyVersion: KeyVersionName }>;
  batchEncrypt(
    name: string,
    version: number | undefined,
    items: readonly { plaintext: Uint8Array; aad: Uint8Array }[],
  ): Promise<{ results: ItemResult<Buffer>[]; keyVersion: KeyVersionName }>;
  batchDecrypt(name: string, items: readonly { ciphertext: Uint8Array; aad: Uint8Array }[]): Promise<ItemResult<Buffer>[]>;
  /**
   * Encrypts a value Keyward stores for itself (a secret version), with the
   * primary version or the one named, bound to `binding`. Such ciphertexts
   * and the callers' are kept apart (see {@link CALLER}): neither opens as
   * the other, whatever associated data is given.
   */
  sealValue(name: string, version: number | undefined, plaintext: Uint8Array, binding: Uint8Array): Promise<{ ciphertext: Buffer; keyVersion: KeyVersionName }>;
  /** Opens what {@link CryptoOperations.sealValue} made, with the same binding. */
  openValue(name: string, ciphertext: Uint8Array, binding: Uint8Array): Promise<{ plaintext: Buffer; keyVersion: KeyVersionName }>;
}

/**
 * Domain separation of the associated data: the first byte says whose
 * ciphertext it is. Callers' ciphertexts (CryptoService) carry CALLER,
 * values Keyward stores for itself carry STORED, so that a caller with
 * SERVICE on a secret's key and a copy of the database can neither decrypt
 * a stored secret value through Decrypt nor forge one through Encrypt.
 */
const CALLER = 0x00;
const STORED = 0x01;

function scoped(domain: number, aad: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(aad.length + 1);
  out[0] = domain;
  out.set(aad, 1);
  return out;
}

interface Resolved {
  readonly key: Key;
  readonly version: number;
  readonly opened: OpenedVersion;
  readonly name: KeyVersionName;
}

export function createCryptoOperations(deps: { cache: KeyCache; usage: UsageRecorder }): CryptoOperations {
  const { cache, usage } = deps;

  /** The version that serves `operation`: the named one, else the primary. */
  const resolve = async (name: string, version: number | undefined, operation: KeyOperation): Promise<Resolved> => {
    const cached = await cache.get(name);
    const { key } = cached.stored;
    const n = version ?? key.primaryVersion;
    const usable = usableFor(key, findVersion(cached.stored, n), operation);
    if (!usable.ok) {
      throw usable.error;
    }
    return { key, version: n, opened: await cached.open(n), name: keyVersionName(key.name, n) };
  };

  /**
   * The checks of `operation` that concern the named key itself, its purpose
   * and its state, whatever version or ciphertext comes with the call. They
   * come before the ciphertext is read: no ciphertext can ever be decrypted
   * with a MAC key or a DISABLED key, the caller can see both with GetKey,
   * so answering FAILED_PRECONDITION (as crypto.proto documents, and for
   * BatchDecrypt for the whole call) reveals nothing about the ciphertext.
   */
  const requireKeyUsable = (stored: StoredKey, operation: KeyOperation): void => {
    const { key } = stored;
    if (key.purpose === KEY_OPERATIONS[operation].purpose && key.state === "ENABLED") {
      return;
    }
    // usableFor checks purpose and key state before anything about the
    // version, so its refusal here is the key's, whichever version is asked.
    const usable = usableFor(key, findVersion(stored, key.primaryVersion), operation);
    if (!usable.ok) {
      throw usable.error;
    }
  };

  /**
   * The version a ciphertext names, checked before any key material is
   * touched: after the key's own checks, a ciphertext of another key, of a
   * version that never existed, or no ciphertext at all fails as
   * "decryption failed"; a version that exists but may not decrypt fails
   * with its precise FAILED_PRECONDITION.
   */
  const resolveCiphertext = async (name: string, ciphertext: Uint8Array): Promise<Resolved> => {
    const cached = await cache.get(name);
    requireKeyUsable(cached.stored, "decrypt");
    const header = parseCiphertext(ciphertext);
    if (header.keyName !== name) {
      throw new DecryptionError({ cause: new Error(`ciphertext is for another key (${header.keyName.slice(0, 80)})`) });
    }
    const { key } = cached.stored;
    const found = cached.stored.versions.find((v) => v.version === header.keyVersion);
    if (found === undefined && header.keyVersion >= 1 && header.keyVersion <= key.primaryVersion) {
      throw missingVersion(name, header.keyVersion);
    }
    if (found === undefined) {
      throw new DecryptionError({ cause: new Error(`ciphertext names version ${header.keyVersion} of ${name}, which does not exist`) });
    }
    const usable = usableFor(key, found, "decrypt");
    if (!usable.ok) {
      throw usable.error;
    }
    return { key, version: found.version, opened: await cached.open(found.version), name: keyVersionName(name, found.version) };
  };

  const envelopeOf = (resolved: Resolved): Envelope => {
    // usableFor has checked the purpose, so an ENCRYPT_DECRYPT key has its envelope.
    return resolved.opened.envelope!;
  };

  // usableFor has checked the purpose, so the primitives of that purpose are there.
  const signingOf = (resolved: Resolved) => {
    if (resolved.opened.loaded.purpose !== "SIGN_VERIFY") throw new TypeError("not a signing key");
    return resolved.opened.loaded;
  };
  const macOf = (resolved: Resolved) => {
    if (resolved.opened.loaded.purpose !== "MAC") throw new TypeError("not a MAC key");
    return resolved.opened.loaded.mac;
  };

  const used = (resolved: Resolved, count = 1) => usage.record(resolved.key.name, resolved.version, count);

  /** Encrypt or seal: the primary version (or the one named), associated data of `domain`. */
  const seal = async (domain: number, name: string, version: number | undefined, plaintext: Uint8Array, aad: Uint8Array) => {
    const resolved = await resolve(name, version, "encrypt");
    const ciphertext = envelopeOf(resolved).encrypt(plaintext, scoped(domain, aad));
    used(resolved);
    return { ciphertext, keyVersion: resolved.name };
  };

  /** Decrypt or open: the version the ciphertext names, associated data of `domain`. */
  const open = async (domain: number, name: string, ciphertext: Uint8Array, aad: Uint8Array) => {
    const resolved = await resolveCiphertext(name, ciphertext);
    const plaintext = envelopeOf(resolved).decrypt(ciphertext, scoped(domain, aad));
    used(resolved);
    return { plaintext, keyVersion: resolved.name };
  };

  const signInputError = (err: unknown): never => {
    if (err instanceof SignatureInputError) {
      throw new DomainError("invalid-argument", err.message, { cause: err });
    }
    throw err;
  };

  const asItemError = (err: unknown): Error => (err instanceof Error ? err : new Error(String(err)));

  return {
    encrypt: (name, version, plaintext, aad) => seal(CALLER, name, version, plaintext, aad),

    decrypt: (name, ciphertext, aad) => open(CALLER, name, ciphertext, aad),

    async reEncrypt(name, ciphertext, aad, destination) {
      const source = await resolveCiphertext(name, ciphertext);
      const target = await resolve(destination.name, destination.version, "encrypt");
      const plaintext = envelopeOf(source).decrypt(ciphertext, scoped(CALLER, aad));
      try {
        const out = envelopeOf(target).encrypt(plaintext, scoped(CALLER, destination.aad));
        used(source);
        used(target);
        return { ciphertext: out, sourceKeyVersion: source.name, keyVersion: target.name };
      } finally {
        plaintext.fill(0);
      }
    },

    async generateDataKey(name, version, length, aad) {
      const plaintext = randomBytes(length);
      return { plaintext, ...(await seal(CALLER, name, version, plaintext, aad)) };
    },

    async sign(name, version, input) {
      const resolved = await resolve(name, version, "sign");
      let signature: Buffer;
      try {
        signature = await signingOf(resolved).signer.sign(input);
      } catch (err) {
        return signInputError(err);
      }
      used(resolved);
      return { signature, keyVersion: resolved.name };
    },

    async verify(name, version, input, signature) {
      const resolved = await resolve(name, version, "verify");
      let valid: boolean;
      try {
        valid = await signingOf(resolved).verifier.verify(input, signature);
      } catch (err) {
        return signInputError(err);
      }
      used(resolved);
      return { valid, keyVersion: resolved.name };
    },

    async mac(name, version, data) {
      const resolved = await resolve(name, version, "mac");
      const mac = macOf(resolved).compute(data);
      used(resolved);
      return { mac, keyVersion: resolved.name };
    },

    async verifyMac(name, version, data, mac) {
      const resolved = await resolve(name, version, "verify-mac");
      const valid = macOf(resolved).verify(data, mac);
      used(resolved);
      return { valid, keyVersion: resolved.name };
    },

    async batchEncrypt(name, version, items) {
      const resolved = await resolve(name, version, "encrypt");
      const envelope = envelopeOf(resolved);
      // Items with the same associated data share one data key (Envelope.encryptAll).
      const groups = new Map<string, number[]>();
      items.forEach((item, i) => {
        const aad = Buffer.from(item.aad.buffer, item.aad.byteOffset, item.aad.byteLength).toString("latin1");
        const group = groups.get(aad);
        if (group) group.push(i);
        else groups.set(aad, [i]);
      });
      const results: ItemResult<Buffer>[] = new Array(items.length);
      for (const indexes of groups.values()) {
        try {
          const plaintexts = indexes.map((i) => items[i]!.plaintext);
          const ciphertexts = envelope.encryptAll(plaintexts, scoped(CALLER, items[indexes[0]!]!.aad));
          indexes.forEach((i, n) => (results[i] = { ok: true, value: ciphertexts[n]!, keyVersion: resolved.name }));
        } catch (err) {
          indexes.forEach((i) => (results[i] = { ok: false, error: asItemError(err) }));
        }
      }
      used(resolved, results.filter((r) => r.ok).length);
      return { results, keyVersion: resolved.name };
    },

    sealValue: (name, version, plaintext, binding) => seal(STORED, name, version, plaintext, binding),

    openValue: (name, ciphertext, binding) => open(STORED, name, ciphertext, binding),

    async batchDecrypt(name, items) {
      // A key that may not decrypt at all fails the call, not each item.
      requireKeyUsable((await cache.get(name)).stored, "decrypt");
      const results: ItemResult<Buffer>[] = [];
      // Ciphertexts made by one BatchEncrypt share a data key: unwrap it once.
      const dataKeys: DataKeyMemo = new Map();
      try {
        for (const item of items) {
          try {
            const resolved = await resolveCiphertext(name, item.ciphertext);
            const plaintext = envelopeOf(resolved).decrypt(item.ciphertext, scoped(CALLER, item.aad), dataKeys);
            used(resolved);
            results.push({ ok: true, value: plaintext, keyVersion: resolved.name });
          } catch (err) {
            if (err instanceof DomainError && err.kind === "not-found") {
              throw err;
            }
            results.push({ ok: false, error: asItemError(err) });
          }
        }
      } finally {
        forgetDataKeys(dataKeys);
      }
      return results;
    },
  };
}
