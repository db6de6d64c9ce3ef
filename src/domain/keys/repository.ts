import type { Key, KeyVersion } from "./key.js";

/** A key with every version, as stored; never any material. */
export interface StoredKey {
  readonly key: Key;
  /** Ascending by version number. */
  readonly versions: readonly KeyVersion[];
}

/** A version's material as stored: wrapped by the root key (key-wrap.ts); null once DESTROYED. */
export interface StoredMaterial {
  readonly wrapped: Buffer | null;
  /** SPKI PEM of a SIGN_VERIFY version; not secret. */
  readonly publicKeyPem: string | null;
}

/** A version created with its key or by a rotation, with its wrapped material. */
export interface NewKeyVersion {
  readonly version: KeyVersion;
  readonly wrapped: Buffer;
  readonly publicKeyPem: string | null;
}

/** What one mutation writes, in one transaction. */
export interface KeyWrite {
  /** The key after the transition (written only when it differs from what was read). */
  readonly key?: Key;
  readonly newVersion?: NewKeyVersion;
  /** Versions whose state changed; a DESTROYED one has its material deleted. */
  readonly versions?: readonly KeyVersion[];
}

/** What a mutation's pure step decides: what to write (nothing for a no-op) and what to answer. */
export interface KeyMutation<T> {
  readonly write?: KeyWrite;
  readonly result: T;
}

/**
 * Runs inside the mutation's transaction, after its writes: the call's
 * audit event commits (or vanishes) with the mutation. `tx` is the
 * storage's transaction handle, passed through untouched.
 */
export type WithinTransaction = (tx: unknown) => Promise<void>;

/** Which keys ListKeys returns; every field optional, combined with AND. */
export interface KeyFilter {
  readonly state?: string;
  readonly purpose?: string;
  readonly algorithm?: string;
  readonly labels?: Readonly<Record<string, string>>;
}

/** One key version's uses since the last flush. */
export interface UsageDelta {
  readonly keyName: string;
  readonly version: number;
  readonly count: number;
  readonly lastUsedTime: Date;
}

/** Where keys live. One repository per aggregate: a key and its versions. */
export interface KeyRepository {
  /** The key and its versions, or undefined when it never existed. */
  get(name: string): Promise<StoredKey | undefined>;
  material(name: string, version: number): Promise<StoredMaterial | undefined>;
  /**
   * Stores a new key and its first version, then runs `within`.
   *
   * @throws DomainError "already-exists" when the name is or was taken.
   */
  create(key: Key, version: NewKeyVersion, within: WithinTransaction): Promise<void>;
  /**
   * Locks the key, hands it to `decide`, writes what it returns, runs
   * `within` and commits; tells every replica to drop what it cached of it.
   *
   * @throws DomainError "not-found" when the key does not exist.
   */
  mutate<T>(
    name: string,
    decide: (current: StoredKey) => KeyMutation<T> | Promise<KeyMutation<T>>,
    within: WithinTransaction,
  ): Promise<T>;
  /** Keys by ascending name after `after`, at most `limit`. */
  list(filter: KeyFilter, after: string, limit: number): Promise<Key[]>;
  /** Names of keys whose automatic rotation or destruction is due at `now`, at most `limit`. */
  due(now: Date, limit: number): Promise<string[]>;
  /** Adds uses to the versions' counters. */
  recordUsage(deltas: readonly UsageDelta[]): Promise<void>;
}
