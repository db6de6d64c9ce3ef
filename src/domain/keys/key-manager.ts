/**
 * The key lifecycle, wired to storage: each operation reads the key under a
 * row lock, applies the pure transition from state-machine.ts and writes the
 * result with the call's audit event, in one transaction. Refusals come from
 * the state machine; this file adds only what needs storage (existence,
 * fresh material).
 *
 * @module
 */
import type { SecretBytes } from "../../crypto/secret-bytes.js";
import { DomainError } from "../errors.js";
import type { Clock } from "./clock.js";
import { keyVersionName, MAX_VERSION, type Key, type KeyAlgorithm, type KeyVersion } from "./key.js";
import { mintMaterial, openMaterial } from "./material.js";
import type { KeyFilter, KeyMutation, KeyRepository, StoredKey, WithinTransaction } from "./repository.js";
import {
  cancelDeletion,
  createKey,
  destroyDue,
  disableKey,
  disableVersion,
  enableKey,
  enableVersion,
  requireUsableFor,
  rotate,
  rotationDue,
  scheduleDeletion,
  updateKey,
  type KeyChange,
  type KeySpec,
  type KeyUpdate,
  type KeyVersionChange,
  type KeyWithVersion,
} from "./state-machine.js";

export interface KeyManagerDeps {
  readonly repository: KeyRepository;
  readonly rootKey: SecretBytes;
  readonly clock: Clock;
  /** Shortest pending window ScheduleKeyDeletion accepts, in milliseconds. */
  readonly minPendingWindowMs: number;
  /**
   * How many stored values (secret versions) of a key were encrypted with a
   * version below the given one: min_decryption_version may not rise above
   * what they still need.
   */
  readonly storedValuesBelow?: (keyName: string, version: number) => Promise<number>;
  /** Called after every change to a key has committed (or failed), so caches of it can be dropped. */
  readonly onChanged?: (keyName: string) => void;
}

/** What the scheduler did with one due key. */
export type DueOutcome = "rotated" | "destroyed" | "not-due";

export interface KeyManager {
  create(spec: KeySpec, within: WithinTransaction): Promise<KeyWithVersion>;
  /** @throws DomainError "not-found" */
  get(name: string): Promise<StoredKey>;
  list(filter: KeyFilter, after: string, limit: number): Promise<Key[]>;
  /** @throws DomainError "aborted" when `etag` is given and is not the key's current etag. */
  update(name: string, update: KeyUpdate, etag: string, within: WithinTransaction): Promise<Key>;
  rotate(name: string, within: WithinTransaction): Promise<KeyWithVersion>;
  enable(name: string, within: WithinTransaction): Promise<Key>;
  disable(name: string, within: WithinTransaction): Promise<Key>;
  scheduleDeletion(name: string, windowMs: number | undefined, within: WithinTransaction): Promise<Key>;
  cancelDeletion(name: string, within: WithinTransaction): Promise<Key>;
  enableVersion(name: string, version: number, within: WithinTransaction): Promise<{ key: Key; version: KeyVersion }>;
  disableVersion(name: string, version: number, within: WithinTransaction): Promise<{ key: Key; version: KeyVersion }>;
  /** The public key of a SIGN_VERIFY version (the primary when `version` is undefined). */
  publicKey(name: string, version: number | undefined): Promise<{ pem: string; key: Key; version: number }>;
  /**
   * Rotates or destroys one key if it is due now, deciding under the key's
   * row lock, so replicas racing on the same key do it once. `audit` gives
   * the hook that records what was done, in the same transaction.
   */
  runDue(name: string, audit: (outcome: Exclude<DueOutcome, "not-due">) => WithinTransaction): Promise<DueOutcome>;
}

const keyChange = (change: KeyChange): KeyMutation<Key> => ({
  write: change.changed ? { key: change.key } : undefined,
  result: change.key,
});

const versionChange = (key: Key, change: KeyVersionChange): KeyMutation<{ key: Key; version: KeyVersion }> => ({
  write: change.changed ? { versions: [change.version] } : undefined,
  result: { key, version: change.version },
});

/**
 * The stored row of `version`.
 *
 * Keyward never deletes a version's row (destroying one keeps it, without
 * material), and the primary is always the highest version: a version from
 * 1 to the primary without a row was deleted behind Keyward's back, and is
 * reported as such rather than as a version that never existed.
 *
 * @throws DomainError "not-found" for a version the key never had,
 *   "data-loss" for one missing from storage.
 */
export function findVersion(stored: StoredKey, version: number): KeyVersion {
  const found = stored.versions.find((v) => v.version === version);
  if (found === undefined) {
    if (Number.isSafeInteger(version) && version >= 1 && version <= stored.key.primaryVersion) {
      throw missingVersion(stored.key.name, version);
    }
    throw new DomainError("not-found", `${keyVersionName(stored.key.name, version)} not found`);
  }
  return found;
}

/** The DATA_LOSS of a version whose row is gone (see {@link findVersion}). */
export function missingVersion(keyName: string, version: number): DomainError {
  return new DomainError("data-loss", `version ${version} of ${keyName} is missing from the database: it was deleted outside Keyward`);
}

export function createKeyManager(deps: KeyManagerDeps): KeyManager {
  const { rootKey, clock } = deps;
  const repository: KeyRepository = {
    ...deps.repository,
    async mutate(name, decide, within) {
      try {
        return await deps.repository.mutate(name, decide, within);
      } finally {
        deps.onChanged?.(name);
      }
    },
  };

  const get = async (name: string): Promise<StoredKey> => {
    const stored = await repository.get(name);
    if (stored === undefined) {
      throw new DomainError("not-found", `${name} not found`);
    }
    return stored;
  };

  /**
   * Material for the version a rotation of `current` would create, made
   * before the key's row is locked: generating an RSA-4096 key takes a
   * second or more, and the lock would hold up every write that needs the
   * key meanwhile. Under the lock, {@link rotateWith} uses it only if the
   * rotation still creates that very version.
   */
  const mintFor = async (current: StoredKey) => {
    const planned = rotate(current.key, current.versions, clock.now());
    const minted = await mintMaterial(rootKey, planned.key.name, planned.version.version, planned.key.algorithm as KeyAlgorithm);
    return { version: planned.version.version, ...minted };
  };

  /** The rotation of the locked key with the minted material; undefined when another rotation came first. */
  const rotateWith = (locked: StoredKey, minted: Awaited<ReturnType<typeof mintFor>>): KeyMutation<KeyWithVersion> | undefined => {
    const rotated = rotate(locked.key, locked.versions, clock.now());
    if (rotated.version.version !== minted.version) {
      return undefined;
    }
    return {
      write: { key: rotated.key, newVersion: { version: rotated.version, wrapped: minted.wrapped, publicKeyPem: minted.publicKeyPem } },
      result: rotated,
    };
  };

  return {
    async create(spec, within) {
      const created = createKey(spec, clock.now());
      const minted = await mintMaterial(rootKey, created.key.name, 1, created.key.algorithm);
      await repository.create(created.key, { version: created.version, ...minted }, within);
      return created;
    },

    get,

    list: (filter, after, limit) => repository.list(filter, after, limit),

    update: async (name, update, etag, within) => {
      // Counted before the key's row is locked: counting takes a connection
      // from the pool, and transactions that wait for a second connection
      // while holding one deadlock the pool as soon as there are as many of
      // them as it has connections. The count can only fall meanwhile (new
      // values use the primary, at or above any allowed minimum).
      const raising = update.minDecryptionVersion;
      const waiting =
        deps.storedValuesBelow !== undefined && raising !== undefined && Number.isInteger(raising) && raising > 1 && raising <= MAX_VERSION
          ? await deps.storedValuesBelow(name, raising)
          : 0;
      return repository.mutate(
        name,
        async (current) => {
          if (etag !== "" && etag !== current.key.etag) {
            throw new DomainError("aborted", `the etag of ${name} is no longer "${etag}"; read the key again`);
          }
          const change = updateKey(current.key, current.versions, update, clock.now());
          const raisedTo = change.key.minDecryptionVersion;
          if (raisedTo > current.key.minDecryptionVersion && waiting > 0) {
            throw new DomainError(
              "failed-precondition",
              `cannot raise min_decryption_version of ${name} to ${raisedTo}: ${waiting} stored secret versions are still encrypted with older versions; wait for the rewrap (secret_versions_to_rewrap) to reach 0`,
            );
          }
          return keyChange(change);
        },
        within,
      );
    },

    async rotate(name, within) {
      for (;;) {
        const minted = await mintFor(await get(name));
        let applied = false;
        const outcome = await repository.mutate<KeyWithVersion | undefined>(
          name,
          (locked) => {
            const rotation = rotateWith(locked, minted);
            applied = rotation !== undefined;
            return rotation ?? { result: undefined };
          },
          // The call's event is written with the round that rotates, once.
          (tx) => (applied ? within(tx) : Promise.resolve()),
        );
        if (outcome !== undefined) {
          return outcome;
        }
        // Another rotation took the version number meanwhile: mint for the next one.
      }
    },

    enable: (name, within) => repository.mutate(name, (c) => keyChange(enableKey(c.key, clock.now())), within),

    disable: (name, within) => repository.mutate(name, (c) => keyChange(disableKey(c.key, clock.now())), within),

    scheduleDeletion: (name, windowMs, within) =>
      repository.mutate(
        name,
        (c) => keyChange(scheduleDeletion(c.key, windowMs, deps.minPendingWindowMs, clock.now())),
        within,
      ),

    cancelDeletion: (name, within) => repository.mutate(name, (c) => keyChange(cancelDeletion(c.key, clock.now())), within),

    enableVersion: (name, version, within) =>
      repository.mutate(name, (c) => versionChange(c.key, enableVersion(c.key, findVersion(c, version))), within),

    disableVersion: (name, version, within) =>
      repository.mutate(name, (c) => versionChange(c.key, disableVersion(c.key, findVersion(c, version))), within),

    async publicKey(name, version) {
      const stored = await get(name);
      const n = version ?? stored.key.primaryVersion;
      requireUsableFor(stored.key, findVersion(stored, n), "get-public-key");
      const material = await repository.material(name, n);
      if (material?.publicKeyPem == null || material.wrapped == null) {
        throw new DomainError("failed-precondition", `${keyVersionName(name, n)} has no public key`);
      }
      // The public key column is not covered by the material's binding: a
      // key written over it in the database would make verifiers outside
      // Keyward trust someone else's signatures. Serve it only when it is
      // the public half of the version's (authenticated) private key.
      let derived: string | undefined;
      try {
        const loaded = openMaterial(rootKey, name, n, stored.key.algorithm as KeyAlgorithm, material.wrapped);
        derived = loaded.purpose === "SIGN_VERIFY" ? loaded.publicKeyPem : undefined;
      } catch (err) {
        throw new DomainError("data-loss", `the stored material of version ${n} of ${name} does not open: it was altered or moved`, {
          cause: err,
        });
      }
      if (derived !== material.publicKeyPem) {
        throw new DomainError("data-loss", `the stored public key of version ${n} of ${name} does not match its private key: it was altered`);
      }
      return { pem: material.publicKeyPem, key: stored.key, version: n };
    },

    async runDue(name, audit) {
      // Material for a due rotation is minted before the lock (see mintFor).
      const before = await get(name);
      const minted = rotationDue(before.key, clock.now()) ? await mintFor(before) : undefined;
      let done: DueOutcome = "not-due";
      return repository.mutate(
        name,
        (current): KeyMutation<DueOutcome> => {
          const now = clock.now();
          if (rotationDue(current.key, now)) {
            // Rotated by another replica meanwhile, or due only now: the next run does it.
            const rotation = minted && rotateWith(current, minted);
            if (rotation === undefined) {
              return { result: done };
            }
            done = "rotated";
            return { write: rotation.write, result: done };
          }
          const due = destroyDue(current.key, current.versions, now);
          if (due.kind === "destroyed") {
            done = "destroyed";
            return { write: { key: due.key, versions: due.versions }, result: done };
          }
          return { result: done };
        },
        (tx) => (done === "not-due" ? Promise.resolve() : audit(done)(tx)),
      );
    },
  };
}
