/**
 * Secrets, wired to storage and to the keys that encrypt them. Every change
 * locks the secret's row, applies the rules of secret.ts, and writes the
 * result with the call's audit event in one transaction; values are
 * encrypted and decrypted with the crypto operations of the secret's key,
 * bound to the secret's uid, name and version.
 *
 * @module
 */
import { createHash, randomUUID } from "node:crypto";
import { DecryptionError } from "../../crypto/aead.js";
import { DomainError } from "../errors.js";
import type { Clock } from "../keys/clock.js";
import type { CryptoOperations } from "../keys/crypto-operations.js";
import type { KeyManager } from "../keys/key-manager.js";
import type { WithinTransaction } from "../keys/repository.js";
import { generateValue, type GenerateSpec } from "./generate.js";
import type { SecretCache } from "./secret-cache.js";
import type { LockedSecret, SecretFilter, SecretRepository, SecretWrite, StoredValue } from "./repository.js";
import {
  checkExpectedVersion,
  DEFAULT_MAX_VERSIONS,
  moveSecretVersion,
  requireReadable,
  secretNameParts,
  secretVersionName,
  valueBinding,
  versionsToPrune,
  type Secret,
  type SecretType,
  type SecretVersion,
  type SecretVersionAction,
  type SecretVersionOrigin,
} from "./secret.js";
import { checkValue } from "./value-check.js";

export interface SecretSpec {
  readonly name: string;
  readonly type: SecretType;
  readonly description: string;
  readonly labels: Readonly<Record<string, string>>;
  /** Empty: the project/environment's default key, created on first use. */
  readonly keyName: string;
  /** 0: {@link DEFAULT_MAX_VERSIONS}. */
  readonly maxVersions: number;
}

export interface SecretUpdate {
  readonly description?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly maxVersions?: number;
}

export interface NewValue {
  readonly data: Uint8Array;
  readonly clientSpecifiedCrc32c: boolean;
}

/** A secret changed between the encryption of a new value and the lock: the write is done again. */
class SecretMoved extends Error {}

/** The types GenerateSecret may write: their values are random text. */
const GENERATABLE: readonly SecretType[] = ["OPAQUE", "PASSWORD", "API_KEY"];

/**
 * The default key of a project and environment: `keys/secrets-` and a
 * digest of both (names of keys cannot hold every character project names
 * can, and a digest cannot collide across pairs that would print alike).
 */
export function defaultKeyName(project: string, environment: string): string {
  const digest = createHash("sha256").update(`${project}\u0000${environment}`).digest("hex").slice(0, 20);
  return `keys/secrets-${digest}`;
}

export interface SecretManager {
  create(spec: SecretSpec, caller: string, within: WithinTransaction): Promise<Secret>;
  /** @throws DomainError "not-found" */
  get(name: string): Promise<Secret>;
  list(prefix: string, filter: SecretFilter, after: string, limit: number): Promise<Secret[]>;
  listVersions(name: string, before: number, limit: number): Promise<SecretVersion[]>;
  update(name: string, update: SecretUpdate, etag: string, caller: string, within: WithinTransaction): Promise<Secret>;
  delete(name: string, etag: string, within: WithinTransaction): Promise<void>;
  addVersion(name: string, value: NewValue, expected: bigint | undefined, caller: string, within: WithinTransaction): Promise<SecretVersion>;
  generate(
    name: string,
    spec: GenerateSpec,
    expected: bigint | undefined,
    caller: string,
    within: WithinTransaction,
  ): Promise<{ version: SecretVersion; value: Buffer }>;
  rollback(name: string, from: number, expected: bigint | undefined, caller: string, within: WithinTransaction): Promise<SecretVersion>;
  access(name: string, version: number | "latest"): Promise<{ version: SecretVersion; value: Buffer }>;
  moveVersion(name: string, version: number, action: SecretVersionAction, within: WithinTransaction): Promise<SecretVersion>;
  /**
   * Re-encrypts stored values made with older key versions, in batches;
   * returns how many.
   *
   * @throws Error after trying every key, when some key's values could not
   *   all be re-encrypted; the message names those keys and the reasons.
   */
  rewrapStale(batch: number): Promise<number>;
  /** Stored values of `keyName` still made with a version below `version`. */
  countBelow(keyName: string, version: number): Promise<number>;
}

export function createSecretManager(deps: {
  repository: SecretRepository;
  keys: KeyManager;
  crypto: CryptoOperations;
  clock: Clock;
  /** Serves AccessSecretVersion's reads; told of this process's own changes at once. */
  cache?: SecretCache;
}): SecretManager {
  const { keys, crypto, clock, cache } = deps;
  const repository: SecretRepository = {
    ...deps.repository,
    async mutate(name, decide, within) {
      try {
        return await deps.repository.mutate(name, decide, within);
      } finally {
        cache?.invalidate(name);
      }
    },
    async replaceValue(secretName, version, expected, value) {
      try {
        return await deps.repository.replaceValue(secretName, version, expected, value);
      } finally {
        cache?.invalidate(secretName);
      }
    },
  };

  const get = async (name: string): Promise<Secret> => {
    const secret = await repository.get(name);
    if (secret === undefined) {
      throw new DomainError("not-found", `${name} not found`);
    }
    return secret;
  };

  /** `keyVersion` undefined: the key's primary version as the key cache knows it. */
  const encrypt = async (secret: Secret, version: number, data: Uint8Array, keyVersion?: number): Promise<StoredValue> => {
    const out = await crypto.sealValue(secret.keyName, keyVersion, data, valueBinding(secret, version));
    return { ciphertext: out.ciphertext, keyVersion: Number(out.keyVersion.slice(out.keyVersion.lastIndexOf("/") + 1)) };
  };

  const decrypt = async (secret: Pick<Secret, "name" | "uid" | "keyName">, version: number, value: StoredValue): Promise<Buffer> => {
    try {
      return (await crypto.openValue(secret.keyName, value.ciphertext, valueBinding(secret, version))).plaintext;
    } catch (err) {
      if (err instanceof DecryptionError) {
        // A stored value that does not open was altered, or moved from another row.
        throw new DomainError(
          "data-loss",
          `the stored value of ${secretVersionName(secret.name, version)} does not decrypt: it was altered or moved`,
          { cause: err },
        );
      }
      throw err;
    }
  };

  /** The key a new secret uses: the one named (ENABLED, ENCRYPT_DECRYPT) or the default, created on first use. */
  const keyFor = async (spec: SecretSpec): Promise<string> => {
    let name = spec.keyName;
    if (name === "") {
      const { project, environment } = secretNameParts(spec.name);
      name = defaultKeyName(project, environment);
      const exists = await keys.get(name).then(
        () => true,
        (err: unknown) => (err instanceof DomainError && err.kind === "not-found" ? false : Promise.reject(err)),
      );
      if (!exists) {
        await keys
          .create(
            {
              keyId: name.slice("keys/".length),
              purpose: "ENCRYPT_DECRYPT",
              algorithm: "AES_256_GCM",
              description: `default key of secrets/${project}/${environment}`.slice(0, 256),
              labels: { "keyward-use": "secrets" },
            },
            // Part of the CreateSecret call, whose event records it.
            async () => {},
          )
          .catch((err: unknown) => (err instanceof DomainError && err.kind === "already-exists" ? undefined : Promise.reject(err)));
      }
    }
    const { key } = await keys.get(name);
    if (key.purpose !== "ENCRYPT_DECRYPT") {
      throw new DomainError("failed-precondition", `${name} has purpose ${key.purpose}, not ENCRYPT_DECRYPT`);
    }
    if (key.state !== "ENABLED") {
      throw new DomainError("failed-precondition", `key ${name} is ${key.state}`);
    }
    return name;
  };

  /** Adds a version under the lock: check-and-set, the value encrypted for the new number, prune beyond max_versions. */
  const addLocked = (
    locked: LockedSecret,
    value: StoredValue,
    expected: bigint | undefined,
    meta: { caller: string; origin: SecretVersionOrigin; sourceVersion: number; clientSpecifiedCrc32c: boolean },
  ): { write: SecretWrite; result: SecretVersion } => {
    const { secret } = locked;
    checkExpectedVersion(secret, expected);
    const now = clock.now();
    const number = secret.currentVersion + 1;
    const version: SecretVersion = Object.freeze({
      secretName: secret.name,
      version: number,
      state: "ENABLED",
      createTime: now,
      creator: meta.caller,
      destroyTime: null,
      clientSpecifiedDataCrc32c: meta.clientSpecifiedCrc32c,
      origin: meta.origin,
      sourceVersion: meta.sourceVersion,
    });
    const pruned = versionsToPrune(secret.maxVersions, locked.live.map((v) => v.version));
    return {
      write: {
        secret: { ...secret, currentVersion: number, updateTime: now, updater: meta.caller, etag: String(Number(secret.etag) + 1) },
        newVersion: { version, value, keyName: secret.keyName },
        versions: locked.live
          .filter((v) => pruned.includes(v.version))
          .map((v) => ({ ...v, state: "DESTROYED" as const, destroyTime: now })),
      },
      result: version,
    };
  };

  /**
   * Adds a version holding the value `produce` makes for the secret as last
   * read. The value is made and encrypted before the secret's row is locked,
   * bound to the version number the write expects to create: encrypting may
   * load the key into the cache through the connection pool, and a
   * transaction waiting for a second connection while it holds one
   * deadlocks the pool as soon as as many writers as it has connections do
   * so at once. Under the lock the value is written only if the secret is
   * still the same incarnation at the same current version (and `stillValid`
   * agrees); otherwise a concurrent writer won that round and everything is
   * done again. Check-and-set failures stay ABORTED, never retried.
   */
  const addUnlockedValue = async (
    name: string,
    expected: bigint | undefined,
    meta: { caller: string; origin: SecretVersionOrigin; sourceVersion: number; clientSpecifiedCrc32c: boolean },
    within: WithinTransaction,
    produce: (secret: Secret) => Promise<{ data: Uint8Array; wipe: boolean }>,
    stillValid: (locked: LockedSecret) => Promise<boolean> = async () => true,
  ): Promise<{ version: SecretVersion; data: Uint8Array }> => {
    for (;;) {
      const secret = await get(name);
      const { data, wipe } = await produce(secret);
      let value: StoredValue;
      try {
        checkExpectedVersion(secret, expected);
        value = await encrypt(secret, secret.currentVersion + 1, data);
      } finally {
        if (wipe) data.fill(0);
      }
      try {
        const version = await repository.mutate(
          name,
          async (locked) => {
            // The value was encrypted before the lock: it is written only if
            // nothing it depends on moved meanwhile, the key's minimum
            // decryption version included (else it could never be read).
            if (
              locked.secret.uid !== secret.uid ||
              locked.secret.currentVersion !== secret.currentVersion ||
              value.keyVersion < (await locked.keyMinDecryptionVersion()) ||
              !(await stillValid(locked))
            ) {
              checkExpectedVersion(locked.secret, expected);
              // Rolls the transaction back: the call's audit event is
              // written with the round that succeeds, once.
              throw new SecretMoved();
            }
            return addLocked(locked, value, expected, meta);
          },
          within,
        );
        return { version, data };
      } catch (err) {
        if (!(err instanceof SecretMoved)) throw err;
      }
    }
  };

  const checkEtag = (secret: Secret, etag: string) => {
    if (etag !== "" && etag !== secret.etag) {
      throw new DomainError("aborted", `the etag of ${secret.name} is no longer "${etag}"; read the secret again`);
    }
  };

  /**
   * The refusal for a version without a row. Keyward never deletes a
   * version's row (destroying one keeps it, without its value) before the
   * secret itself: a version up to current_version without a row was
   * deleted behind its back, which is DATA_LOSS, not a version that never was.
   */
  const absent = (secret: Secret, version: number): DomainError =>
    version >= 1 && version <= secret.currentVersion
      ? new DomainError(
          "data-loss",
          `${secretVersionName(secret.name, version)} is missing from the database: it was deleted outside Keyward`,
        )
      : new DomainError("not-found", `${secretVersionName(secret.name, version)} not found`);

  /**
   * `latest` is the newest ENABLED version only if every version above it
   * still has its row (DISABLED or DESTROYED): with a newer row deleted,
   * an older value would be served as the latest without a word.
   */
  const requireNoneMissingAbove = (found: { secret: Secret; version: SecretVersion; newer: number }): void => {
    const expected = found.secret.currentVersion - found.version.version;
    if (found.newer !== expected) {
      throw new DomainError(
        "data-loss",
        `the versions of ${found.secret.name} above version ${found.version.version} do not add up to its current version ` +
          `${found.secret.currentVersion}: rows were deleted or altered outside Keyward`,
      );
    }
  };

  const versionOf = async (locked: LockedSecret, version: number): Promise<SecretVersion> => {
    const found = await locked.version(version);
    if (found === undefined) {
      throw absent(locked.secret, version);
    }
    return found;
  };

  return {
    async create(spec, caller, within) {
      const keyName = await keyFor(spec);
      const now = clock.now();
      const secret: Secret = Object.freeze({
        name: spec.name,
        uid: randomUUID(),
        type: spec.type,
        description: spec.description,
        labels: Object.freeze({ ...spec.labels }),
        keyName,
        maxVersions: spec.maxVersions === 0 ? DEFAULT_MAX_VERSIONS : spec.maxVersions,
        currentVersion: 0,
        createTime: now,
        updateTime: now,
        creator: caller,
        updater: caller,
        etag: "1",
      });
      await repository.create(secret, within);
      return secret;
    },

    get,

    list: (prefix, filter, after, limit) => repository.list(prefix, filter, after, limit),

    async listVersions(name, before, limit) {
      await get(name);
      return repository.listVersions(name, before, limit);
    },

    update: (name, update, etag, caller, within) =>
      repository.mutate(
        name,
        async ({ secret }) => {
          checkEtag(secret, etag);
          const next: Secret = {
            ...secret,
            description: update.description ?? secret.description,
            labels: update.labels ?? secret.labels,
            maxVersions: update.maxVersions === undefined ? secret.maxVersions : update.maxVersions || DEFAULT_MAX_VERSIONS,
            updateTime: clock.now(),
            updater: caller,
            etag: String(Number(secret.etag) + 1),
          };
          return { write: { secret: next }, result: next };
        },
        within,
      ),

    delete: (name, etag, within) =>
      repository.mutate(
        name,
        async ({ secret }) => {
          checkEtag(secret, etag);
          return { write: { remove: true }, result: undefined };
        },
        within,
      ),

    async addVersion(name, value, expected, caller, within) {
      const meta = { caller, origin: "ADDED" as const, sourceVersion: 0, clientSpecifiedCrc32c: value.clientSpecifiedCrc32c };
      const added = await addUnlockedValue(name, expected, meta, within, async (secret) => {
        // The type is immutable, so checking it unlocked is checking it.
        checkValue(secret.type, value.data);
        return { data: value.data, wipe: false };
      });
      return added.version;
    },

    async generate(name, spec, expected, caller, within) {
      // The value of the round that is written: a round done again draws a new one.
      let value: Buffer | undefined;
      const meta = { caller, origin: "GENERATED" as const, sourceVersion: 0, clientSpecifiedCrc32c: false };
      const added = await addUnlockedValue(name, expected, meta, within, async (secret) => {
        if (!GENERATABLE.includes(secret.type)) {
          throw new DomainError(
            "failed-precondition",
            `${name} has type ${secret.type}; only OPAQUE, PASSWORD and API_KEY secrets can be generated`,
          );
        }
        value = generateValue(spec);
        checkValue(secret.type, value);
        return { data: value, wipe: false };
      });
      return { version: added.version, value: value! };
    },

    async rollback(name, from, expected, caller, within) {
      // The stored value the copy was decrypted from, compared under the lock.
      let source: Buffer | undefined;
      const meta = { caller, origin: "ROLLBACK" as const, sourceVersion: from, clientSpecifiedCrc32c: false };
      const added = await addUnlockedValue(
        name,
        expected,
        meta,
        within,
        async () => {
          const found = await repository.read(name, from);
          if (found === undefined) {
            throw new DomainError("not-found", `${name} not found`);
          }
          if (found.version === undefined) {
            throw absent(found.secret, from);
          }
          requireReadable(found.version, "rollback");
          source = found.value!.ciphertext;
          return { data: await decrypt(found.secret, from, found.value!), wipe: true };
        },
        // Destroyed, or re-encrypted by the rewrap job, since it was read: read it again.
        async (locked) => {
          requireReadable(await versionOf(locked, from), "rollback");
          const stored = await locked.value(from);
          return stored !== null && stored.ciphertext.equals(source!);
        },
      );
      return added.version;
    },

    async access(name, version) {
      const found = await (cache ?? repository).read(name, version);
      if (found === undefined) {
        throw new DomainError("not-found", `${name} not found`);
      }
      if (found.version === undefined) {
        if (version === "latest") {
          throw new DomainError("not-found", `${name} has no ENABLED version`);
        }
        throw absent(found.secret, version);
      }
      if (version === "latest") {
        requireNoneMissingAbove(found);
      }
      requireReadable(found.version, "access");
      return { version: found.version, value: await decrypt(found.secret, found.version.version, found.value!) };
    },

    moveVersion: (name, version, action, within) =>
      repository.mutate(
        name,
        async (locked) => {
          const current = await versionOf(locked, version);
          const state = moveSecretVersion(current, action);
          if (state === null) {
            return { result: current };
          }
          const moved: SecretVersion = { ...current, state, destroyTime: state === "DESTROYED" ? clock.now() : current.destroyTime };
          return { write: { versions: [moved] }, result: moved };
        },
        within,
      ),

    async rewrapStale(batch) {
      let done = 0;
      const failed: string[] = [];
      for (const keyName of await repository.keysToRewrap()) {
        const { key } = await keys.get(keyName);
        let after: { secretName: string; version: number } | undefined;
        for (;;) {
          const stale = await repository.staleValues(keyName, key.primaryVersion, after, batch);
          for (const item of stale) {
            after = { secretName: item.secret.name, version: item.version };
            try {
              const secret = { ...item.secret, keyName } as Secret;
              const data = await decrypt(secret, item.version, item.value);
              let value: StoredValue;
              try {
                // The primary read from the database, named: a key cache that
                // has not yet heard of the rotation fails (retried next run)
                // instead of writing the old version back as new.
                value = await encrypt(secret, item.version, data, key.primaryVersion);
              } finally {
                data.fill(0);
              }
              // Written only over the value read: a concurrent write, destroy
              // or another replica's rewrap of the same row wins.
              if (await repository.replaceValue(item.secret.name, item.version, item.value.ciphertext, value)) {
                done++;
              }
            } catch (err) {
              // One value that cannot be re-encrypted for now (its version
              // disabled, the value altered) must not hold up the others.
              failed.push(`${secretVersionName(item.secret.name, item.version)}: ${(err as Error).message}`);
            }
          }
          if (stale.length < batch) break;
        }
      }
      if (failed.length > 0) {
        throw new Error(`re-encrypted ${done} secret versions; could not re-encrypt ${failed.length}: ${failed.slice(0, 5).join("; ")}`);
      }
      return done;
    },

    countBelow: (keyName, version) => repository.countBelow(keyName, version),
  };
}
