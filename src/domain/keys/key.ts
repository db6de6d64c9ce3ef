/**
 * The key-lifecycle domain types: a key, its versions and the vocabulary they
 * share with keys.proto (purpose, algorithm, states). These are the domain's
 * own types: services/convert.ts maps them to and from gen/, and nothing here
 * imports gen/. Values are plain, readonly and never hold key material: the
 * wrapped material of a version lives only in storage, keyed by
 * {@link keyVersionName}.
 *
 * @module
 */

/** What a key is for; fixed at creation (proto `KeyPurpose` without the prefix). */
export type KeyPurpose = "ENCRYPT_DECRYPT" | "SIGN_VERIFY" | "MAC";

/** Every purpose, in proto enum order. */
export const KEY_PURPOSES: readonly KeyPurpose[] = Object.freeze(["ENCRYPT_DECRYPT", "SIGN_VERIFY", "MAC"]);

/** The algorithm of every version of a key; fixed at creation (proto `KeyAlgorithm` without the prefix). */
export type KeyAlgorithm =
  | "AES_256_GCM"
  | "CHACHA20_POLY1305"
  | "ED25519"
  | "ECDSA_P256_SHA256"
  | "ECDSA_P384_SHA384"
  | "RSA_PSS_2048_SHA256"
  | "RSA_PSS_3072_SHA256"
  | "RSA_PSS_4096_SHA256"
  | "HMAC_SHA256"
  | "HMAC_SHA512";

/**
 * The algorithms each purpose admits, the same table as keys.proto's
 * `key.algorithm_purpose` rule. An algorithm belongs to exactly one purpose.
 */
export const ALGORITHMS_BY_PURPOSE: Readonly<Record<KeyPurpose, readonly KeyAlgorithm[]>> = Object.freeze({
  ENCRYPT_DECRYPT: Object.freeze(["AES_256_GCM", "CHACHA20_POLY1305"] as const),
  SIGN_VERIFY: Object.freeze([
    "ED25519",
    "ECDSA_P256_SHA256",
    "ECDSA_P384_SHA384",
    "RSA_PSS_2048_SHA256",
    "RSA_PSS_3072_SHA256",
    "RSA_PSS_4096_SHA256",
  ] as const),
  MAC: Object.freeze(["HMAC_SHA256", "HMAC_SHA512"] as const),
});

/**
 * State of a key as a whole. It gates every version: when the key is not
 * ENABLED no version is usable, whatever its own state. DESTROYED is
 * terminal. The allowed moves are in state-machine.ts, and only there.
 */
export type KeyState = "ENABLED" | "DISABLED" | "PENDING_DELETION" | "DESTROYED";

/** Every key state, in proto enum order. */
export const KEY_STATES: readonly KeyState[] = Object.freeze(["ENABLED", "DISABLED", "PENDING_DELETION", "DESTROYED"]);

/** State of one key version. DESTROYED is terminal: the version's material is gone. */
export type KeyVersionState = "ENABLED" | "DISABLED" | "DESTROYED";

/** Every key version state, in proto enum order. */
export const KEY_VERSION_STATES: readonly KeyVersionState[] = Object.freeze(["ENABLED", "DISABLED", "DESTROYED"]);

/** Highest version number (keys.proto: 1..999999999). */
export const MAX_VERSION = 999_999_999;

/** Shortest automatic rotation period: 1 hour, in milliseconds. */
export const MIN_ROTATION_PERIOD_MS = 3_600_000;

/** Longest automatic rotation period: 3650 days, in milliseconds. */
export const MAX_ROTATION_PERIOD_MS = 3650 * 86_400_000;

/** Pending window used when ScheduleKeyDeletion gives none: 30 days, in milliseconds. */
export const DEFAULT_PENDING_WINDOW_MS = 30 * 86_400_000;

/** Longest pending window: 365 days, in milliseconds. The shortest is configured. */
export const MAX_PENDING_WINDOW_MS = 365 * 86_400_000;

/** A key id, the `{key}` of `keys/{key}` (keys.proto). */
export const KEY_ID_PATTERN = /^[a-z][a-z0-9-]{0,62}$/;

/**
 * A key: metadata and state shared by its versions. Never carries key
 * material. Treat every value as immutable (the transitions in
 * state-machine.ts return new objects and never change their inputs); `Date`
 * fields are fresh copies owned by the key.
 */
export interface Key {
  /** Resource name, `keys/{key}`. Never reused, not even after destruction. */
  readonly name: string;
  /** Immutable. */
  readonly purpose: KeyPurpose;
  /** Immutable; belongs to `purpose` (see {@link ALGORITHMS_BY_PURPOSE}). */
  readonly algorithm: KeyAlgorithm;
  readonly state: KeyState;
  /**
   * Number of the version used for new data (encrypt, sign, MAC): always the
   * highest version number, and always ENABLED until the key is destroyed
   * (it cannot be disabled, see state-machine.ts).
   */
  readonly primaryVersion: number;
  /**
   * Versions below this number are refused for decrypt, verify and
   * verify-mac, whatever their state. 0 or 1 accept every version; never
   * above `primaryVersion`.
   */
  readonly minDecryptionVersion: number;
  /** Automatic rotation interval in milliseconds (whole seconds); null means no automatic rotation. Only for ENCRYPT_DECRYPT. */
  readonly rotationPeriodMs: number | null;
  /** Last rotation (or creation) plus `rotationPeriodMs`; null when there is no period or the key is DESTROYED. */
  readonly nextRotationTime: Date | null;
  /** When the key will be (PENDING_DELETION) or was (DESTROYED) destroyed; null in other states. */
  readonly deletionTime: Date | null;
  /** Free text for humans; never a secret (AUDITOR sees metadata). */
  readonly description: string;
  /** Frozen. */
  readonly labels: Readonly<Record<string, string>>;
  readonly createTime: Date;
  /** When metadata or state last changed, rotations included; version enable/disable does not count. */
  readonly updateTime: Date;
  /**
   * Opaque tag of the current metadata and state (AIP-154). Every transition
   * that changes the key gives it a new etag and a no-op keeps it, so the
   * persist step can write with `WHERE etag = <etag it read>` and detect a
   * concurrent change. Callers must not interpret it.
   */
  readonly etag: string;
}

/** How much a version has been used; maintained by storage and may lag by a few seconds. */
export interface KeyVersionUsage {
  /** Successful cryptographic operations with the version (a batch counts once per item); a safe integer ≥ 0. */
  readonly operationCount: number;
  /** When the version was last used successfully; null if never. */
  readonly lastUsedTime: Date | null;
}

/**
 * One version of a key: its state and usage. Its material (wrapped by the
 * root key) is stored separately and deleted when the version is DESTROYED.
 * Treat as immutable.
 */
export interface KeyVersion {
  /** Resource name of the key, `keys/{key}`. */
  readonly keyName: string;
  /** 1 for the version created with the key, then +1 per rotation; never reused. */
  readonly version: number;
  readonly state: KeyVersionState;
  /** When CreateKey or RotateKey made it. */
  readonly createTime: Date;
  /** When its material was destroyed; set exactly when `state` is DESTROYED. */
  readonly destroyTime: Date | null;
  readonly usage: KeyVersionUsage;
}

/**
 * Resource name of one version, `keys/{key}/versions/{n}`.
 *
 * @param keyName `keys/{key}`
 * @param version 1..{@link MAX_VERSION}
 */
export function keyVersionName(keyName: string, version: number): string {
  return `${keyName}/versions/${version}`;
}

/** The purpose `algorithm` belongs to. */
export function purposeOf(algorithm: KeyAlgorithm): KeyPurpose {
  for (const purpose of KEY_PURPOSES) {
    if (ALGORITHMS_BY_PURPOSE[purpose].includes(algorithm)) {
      return purpose;
    }
  }
  throw new TypeError(`unknown key algorithm ${String(algorithm)}`);
}
