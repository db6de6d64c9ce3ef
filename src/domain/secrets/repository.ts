import type { WithinTransaction } from "../keys/repository.js";
import type { Secret, SecretVersion } from "./secret.js";

/** A secret locked for a change: its metadata and its versions that still hold a value. */
export interface LockedSecret {
  readonly secret: Secret;
  /** ENABLED and DISABLED versions, ascending. */
  readonly live: readonly SecretVersion[];
  /** Any version's metadata, DESTROYED ones included; undefined when it never existed. */
  version(version: number): Promise<SecretVersion | undefined>;
  /** A version's stored value; null once DESTROYED. */
  value(version: number): Promise<StoredValue | null>;
  /**
   * The min_decryption_version of the secret's key, read with a share lock
   * held until commit: a concurrent UpdateKey raising it waits for this
   * write, or this write sees the new minimum.
   */
  keyMinDecryptionVersion(): Promise<number>;
}

/** A value as stored: envelope ciphertext and the key version that made it. */
export interface StoredValue {
  readonly ciphertext: Buffer;
  readonly keyVersion: number;
}

/** What one change writes, in one transaction. */
export interface SecretWrite {
  readonly secret?: Secret;
  readonly newVersion?: { readonly version: SecretVersion; readonly value: StoredValue; readonly keyName: string };
  /** Versions whose state changed; a DESTROYED one loses its value. */
  readonly versions?: readonly SecretVersion[];
  /** Deletes the secret and every version with it. */
  readonly remove?: boolean;
}

export interface SecretFilter {
  readonly type?: string;
  readonly labels?: Readonly<Record<string, string>>;
}

/** A stored version to re-encrypt with the key's primary version. */
export interface StaleValue {
  readonly secret: Pick<Secret, "name" | "uid">;
  readonly version: number;
  readonly value: StoredValue;
}

export interface SecretRepository {
  /** @throws DomainError "already-exists" */
  create(secret: Secret, within: WithinTransaction): Promise<void>;
  get(name: string): Promise<Secret | undefined>;
  /**
   * A version's metadata and value with its secret, in one read. `latest`:
   * the newest ENABLED version. Undefined when the secret does not exist;
   * only `secret` when the version does not (read in the same snapshot, so
   * that telling a missing row from a version that never was cannot mix two
   * incarnations of a name). `newer` counts the rows of versions above the
   * one read: Keyward never deletes a version's row, so anything but
   * `current_version - version` means rows were deleted behind its back.
   */
  read(name: string, version: number | "latest"): Promise<SecretRead | undefined>;
  /** Secrets whose name starts with `prefix/` (or equals it), ascending by name after `after`. */
  list(prefix: string, filter: SecretFilter, after: string, limit: number): Promise<Secret[]>;
  /** Versions below `before`, newest first. */
  listVersions(name: string, before: number, limit: number): Promise<SecretVersion[]>;
  /**
   * Locks the secret, hands it to `decide`, writes what it returns, runs
   * `within`, commits.
   *
   * @throws DomainError "not-found" when the secret does not exist.
   */
  mutate<T>(
    name: string,
    decide: (locked: LockedSecret) => Promise<{ write?: SecretWrite; result: T }>,
    within: WithinTransaction,
  ): Promise<T>;
  /** How many stored values of `keyName` were made with a version below `version`. */
  countBelow(keyName: string, version: number): Promise<number>;
  /** Keys that have stored values made with a version below their primary. */
  keysToRewrap(): Promise<string[]>;
  /**
   * Up to `limit` stored values of `keyName` made with a version below
   * `primary`, in (secret name, version) order after `after`. Nothing is
   * locked: re-encrypting happens outside any transaction, and
   * {@link replaceValue} writes only over the value that was read.
   */
  staleValues(keyName: string, primary: number, after: { secretName: string; version: number } | undefined, limit: number): Promise<StaleValue[]>;
  /** Writes `value` over a version's stored value if it is still `expected` (byte for byte); false otherwise. */
  replaceValue(secretName: string, version: number, expected: Buffer, value: StoredValue): Promise<boolean>;
}

/** What {@link SecretRepository.read} finds: the secret, and the version when it exists. */
export type SecretRead =
  | { readonly secret: Secret; readonly version: SecretVersion; readonly value: StoredValue | null; readonly newer: number }
  | { readonly secret: Secret; readonly version: undefined };
