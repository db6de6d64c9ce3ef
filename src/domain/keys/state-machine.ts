/**
 * The key-lifecycle state machine, written down once and enforced here only.
 *
 * Everything in this file is pure: no I/O, no wall clock (callers pass `now`
 * from an injected Clock), no key material. Each transition takes the current
 * key (and versions) and returns new frozen objects, in the manner of
 * transit's `RotateInMemory`; writing them, in one pg transaction guarded by
 * the etag the caller read, is the persist step's job, not this file's.
 *
 * Refusals throw `DomainError("failed-precondition")` whose message names
 * the action, the key (and version) and the offending state, e.g.
 * `cannot rotate key keys/x: key is DISABLED; only an ENABLED key can be
 * rotated`. Malformed arguments throw `DomainError("invalid-argument")`, and
 * are checked before the state: they do not depend on the stored key, so the
 * caller learns about them whatever the key's state (as protovalidate does
 * for the proto's field rules). Inputs that can only come from a bug
 * (versions of another key, an invalid Date) throw a plain TypeError, which
 * the edge reports as INTERNAL.
 *
 * @module
 */
import { DomainError } from "../errors.js";
import {
  ALGORITHMS_BY_PURPOSE,
  DEFAULT_PENDING_WINDOW_MS,
  KEY_ID_PATTERN,
  KEY_PURPOSES,
  MAX_PENDING_WINDOW_MS,
  MAX_ROTATION_PERIOD_MS,
  MAX_VERSION,
  MIN_ROTATION_PERIOD_MS,
  type Key,
  type KeyAlgorithm,
  type KeyPurpose,
  type KeyState,
  type KeyVersion,
  type KeyVersionState,
} from "./key.js";

/** A lifecycle action on a key, one column of {@link KEY_TRANSITIONS}. */
export type KeyAction =
  | "rotate"
  | "enable"
  | "disable"
  | "schedule-deletion"
  | "cancel-deletion"
  | "destroy"
  | "update"
  | "enable-version"
  | "disable-version";

/** Every key action, in the column order of {@link KEY_TRANSITIONS}. */
export const KEY_ACTIONS: readonly KeyAction[] = Object.freeze([
  "rotate",
  "enable",
  "disable",
  "schedule-deletion",
  "cancel-deletion",
  "destroy",
  "update",
  "enable-version",
  "disable-version",
]);

/** A lifecycle action on one version, one column of {@link VERSION_TRANSITIONS}. */
export type KeyVersionAction = "enable-version" | "disable-version";

/**
 * One cell of a transition table:
 * - `to`: allowed, and the subject moves to `state`;
 * - `stay`: allowed, the subject changes but keeps its state (rotate,
 *   update), or the key merely lets a version action through;
 * - `no-op`: allowed and nothing changes (enabling an ENABLED key); the input
 *   is returned as it is, etag included;
 * - `refuse`: failed-precondition, with `hint` telling the caller what to do.
 */
export type TransitionRule =
  | { readonly kind: "to"; readonly state: KeyState | KeyVersionState }
  | { readonly kind: "stay" }
  | { readonly kind: "no-op" }
  | { readonly kind: "refuse"; readonly hint: string };

const to = (state: KeyState | KeyVersionState): TransitionRule => Object.freeze({ kind: "to", state });
const stay: TransitionRule = Object.freeze({ kind: "stay" });
const noOp: TransitionRule = Object.freeze({ kind: "no-op" });
const refuse = (hint: string): TransitionRule => Object.freeze({ kind: "refuse", hint });

const TERMINAL = "a destroyed key is terminal";
const CANCEL_FIRST = "call CancelKeyDeletion first";

/**
 * The key transition table. Rows: the key's current state; columns: the
 * action; cells: the resulting key state, `=` (allowed, state unchanged),
 * `no-op` (allowed, nothing changes) or `refused` (failed-precondition).
 *
 * | state            | rotate | enable  | disable  | schedule-deletion | cancel-deletion | destroy       | update | enable-/disable-version |
 * |------------------|--------|---------|----------|-------------------|-----------------|---------------|--------|-------------------------|
 * | ENABLED          | =      | no-op   | DISABLED | PENDING_DELETION  | refused         | refused       | =      | =                       |
 * | DISABLED         | refused| ENABLED | no-op    | PENDING_DELETION  | refused         | refused       | =      | =                       |
 * | PENDING_DELETION | refused| refused | refused  | refused           | DISABLED        | DESTROYED (1) | =      | refused                 |
 * | DESTROYED        | refused| refused | refused  | refused           | refused         | refused (2)   | refused| refused                 |
 *
 * (1) only once `deletionTime` has passed, and every version becomes
 *     DESTROYED with it ({@link destroyDue}).
 * (2) {@link destroyDue} reports "not due" rather than throwing, so that
 *     schedulers racing on several replicas stay quiet.
 *
 * Why these cells (after AWS KMS, GCP Cloud KMS and Vault transit):
 * - rotate needs ENABLED: a new primary of a key nobody may use is useless,
 *   and rotating a key scheduled for deletion would mint material that is
 *   about to be destroyed.
 * - enable, disable and version changes on PENDING_DELETION are refused:
 *   CancelKeyDeletion is the one way out, and it lands on DISABLED so that
 *   making the key usable again is a separate, deliberate step.
 * - update is allowed while PENDING_DELETION (the key can still be
 *   cancelled back to life, and its metadata stays editable) but not once
 *   DESTROYED.
 */
export const KEY_TRANSITIONS: Readonly<Record<KeyState, Readonly<Record<KeyAction, TransitionRule>>>> = Object.freeze({
  ENABLED: Object.freeze({
    rotate: stay,
    enable: noOp,
    disable: to("DISABLED"),
    "schedule-deletion": to("PENDING_DELETION"),
    "cancel-deletion": refuse("no deletion is scheduled"),
    destroy: refuse("only a key PENDING_DELETION is destroyed"),
    update: stay,
    "enable-version": stay,
    "disable-version": stay,
  }),
  DISABLED: Object.freeze({
    rotate: refuse("only an ENABLED key can be rotated"),
    enable: to("ENABLED"),
    disable: noOp,
    "schedule-deletion": to("PENDING_DELETION"),
    "cancel-deletion": refuse("no deletion is scheduled"),
    destroy: refuse("only a key PENDING_DELETION is destroyed"),
    update: stay,
    "enable-version": stay,
    "disable-version": stay,
  }),
  PENDING_DELETION: Object.freeze({
    rotate: refuse("only an ENABLED key can be rotated"),
    enable: refuse(CANCEL_FIRST),
    disable: refuse("call CancelKeyDeletion, which leaves it DISABLED"),
    "schedule-deletion": refuse("its deletion is already scheduled"),
    "cancel-deletion": to("DISABLED"),
    destroy: to("DESTROYED"),
    update: stay,
    "enable-version": refuse(CANCEL_FIRST),
    "disable-version": refuse(CANCEL_FIRST),
  }),
  DESTROYED: Object.freeze({
    rotate: refuse(TERMINAL),
    enable: refuse(TERMINAL),
    disable: refuse(TERMINAL),
    "schedule-deletion": refuse(TERMINAL),
    "cancel-deletion": refuse(TERMINAL),
    destroy: refuse("it is already destroyed"),
    update: refuse(TERMINAL),
    "enable-version": refuse(TERMINAL),
    "disable-version": refuse(TERMINAL),
  }),
});

/**
 * The version transition table, applied after the key's own cell (see
 * {@link KEY_TRANSITIONS}) has let the action through.
 *
 * | version state | enable-version | disable-version                |
 * |---------------|----------------|--------------------------------|
 * | ENABLED       | no-op          | DISABLED, refused for primary  |
 * | DISABLED      | ENABLED        | no-op                          |
 * | DESTROYED     | refused        | refused                        |
 *
 * The primary version cannot be disabled (as in GCP Cloud KMS, where the
 * primary must be enabled, and transit, where the latest version always
 * encrypts): a key whose primary were disabled could not encrypt, sign or
 * MAC while still claiming to be ENABLED. Rotate first, then disable the old
 * version. So the primary of a key that is not DESTROYED is always ENABLED.
 * A version becomes DESTROYED only with its key ({@link destroyDue}); there
 * is no way back, since its material is deleted.
 */
export const VERSION_TRANSITIONS: Readonly<Record<KeyVersionState, Readonly<Record<KeyVersionAction, TransitionRule>>>> =
  Object.freeze({
    ENABLED: Object.freeze({ "enable-version": noOp, "disable-version": to("DISABLED") }),
    DISABLED: Object.freeze({ "enable-version": to("ENABLED"), "disable-version": noOp }),
    DESTROYED: Object.freeze({
      "enable-version": refuse("its material is gone"),
      "disable-version": refuse("its material is gone"),
    }),
  });

/** What CreateKey asks for. Field formats (description length, label patterns) are checked by protovalidate, not here. */
export interface KeySpec {
  /** The `{key}` of `keys/{key}`: `^[a-z][a-z0-9-]{0,62}$`. Whether it was ever used before is storage's question. */
  readonly keyId: string;
  readonly purpose: KeyPurpose;
  /** Must belong to `purpose`. */
  readonly algorithm: KeyAlgorithm;
  /** Whole seconds, 1 hour..3650 days, ENCRYPT_DECRYPT only. Default: null, no automatic rotation. */
  readonly rotationPeriodMs?: number | null;
  /** 0 or 1 (equivalent: every version is accepted). Default: 0. */
  readonly minDecryptionVersion?: number;
  /** Default: empty. */
  readonly description?: string;
  /** Default: none. Copied. */
  readonly labels?: Readonly<Record<string, string>>;
}

/** A key with the versions it was created or rotated with. */
export interface KeyWithVersion {
  readonly key: Key;
  /** The new version, which is the key's primary. */
  readonly version: KeyVersion;
}

/** The outcome of a transition that may be a no-op. */
export interface KeyChange {
  /** The key after the transition; the very input object when `changed` is false. */
  readonly key: Key;
  /** False for a no-op: nothing to persist (the call still succeeds and is audited). */
  readonly changed: boolean;
}

/** The outcome of a version transition that may be a no-op. */
export interface KeyVersionChange {
  /** The version after the transition; the very input object when `changed` is false. */
  readonly version: KeyVersion;
  readonly changed: boolean;
}

/**
 * Outcome of {@link destroyDue}: destroyed, or not due (with the reason,
 * for the scheduler's debug log).
 */
export type DestroyOutcome =
  | {
      readonly kind: "destroyed";
      /** State DESTROYED; `deletionTime` kept as the time it was due. */
      readonly key: Key;
      /** Every version of the key, each DESTROYED. */
      readonly versions: readonly KeyVersion[];
      /** Versions that were destroyed now: the persist step deletes their wrapped material. */
      readonly destroyedVersions: readonly number[];
    }
  | { readonly kind: "not-due"; readonly reason: string };

/** Changes to a key's mutable metadata (UpdateKey); a field left out is not in the update mask. */
export interface KeyUpdate {
  readonly description?: string;
  /** Replaces the whole map. */
  readonly labels?: Readonly<Record<string, string>>;
  /** Whole seconds, 1 hour..3650 days, ENCRYPT_DECRYPT only; null turns automatic rotation off. */
  readonly rotationPeriodMs?: number | null;
  /** 0..primary version; 0 and 1 both accept every version. */
  readonly minDecryptionVersion?: number;
}

/** A cryptographic operation asked of a key version; see {@link usableFor}. */
export type KeyOperation = "encrypt" | "decrypt" | "sign" | "verify" | "mac" | "verify-mac" | "get-public-key";

/**
 * What each operation requires: the key's purpose, and which versions serve it.
 * - `from-min`: any ENABLED version at or above min_decryption_version.
 *   Checking old data (decrypt, verify, verify-mac) needs it; new data
 *   (encrypt, sign, mac) uses the primary unless the caller names a version,
 *   and the minimum keeps a named version from producing what could no
 *   longer be decrypted or verified.
 * - `any`: GetPublicKey serves any ENABLED version (keys.proto does not apply
 *   min_decryption_version to it; the public key is not secret).
 */
export const KEY_OPERATIONS: Readonly<
  Record<KeyOperation, { readonly purpose: KeyPurpose; readonly versions: "from-min" | "any" }>
> = Object.freeze({
  encrypt: Object.freeze({ purpose: "ENCRYPT_DECRYPT", versions: "from-min" }),
  decrypt: Object.freeze({ purpose: "ENCRYPT_DECRYPT", versions: "from-min" }),
  sign: Object.freeze({ purpose: "SIGN_VERIFY", versions: "from-min" }),
  verify: Object.freeze({ purpose: "SIGN_VERIFY", versions: "from-min" }),
  mac: Object.freeze({ purpose: "MAC", versions: "from-min" }),
  "verify-mac": Object.freeze({ purpose: "MAC", versions: "from-min" }),
  "get-public-key": Object.freeze({ purpose: "SIGN_VERIFY", versions: "any" }),
});

/** Outcome of {@link usableFor}: an expected result, not an exception, so batch calls can report it per item. */
export type Usability = { readonly ok: true } | { readonly ok: false; readonly error: DomainError };

/**
 * Creates a key in state ENABLED with version 1, ENABLED and primary.
 *
 * Defaults: no rotation period, min decryption version 0, empty
 * description and labels. With a rotation period, the first automatic
 * rotation is due at `now + rotationPeriodMs`.
 *
 * @throws DomainError "invalid-argument" when the key id is malformed, the
 *   purpose or algorithm is unknown, the algorithm does not belong to the
 *   purpose, a rotation period is given for a purpose other than
 *   ENCRYPT_DECRYPT or is out of range, or min decryption version is not 0 or 1.
 */
export function createKey(spec: KeySpec, now: Date): KeyWithVersion {
  const at = instant(now);
  if (!KEY_ID_PATTERN.test(spec.keyId)) {
    throw invalid(`key_id must match ${KEY_ID_PATTERN.source}`);
  }
  if (!KEY_PURPOSES.includes(spec.purpose)) {
    throw invalid(`unknown purpose ${String(spec.purpose)} (expected ${KEY_PURPOSES.join(", ")})`);
  }
  const admitted = ALGORITHMS_BY_PURPOSE[spec.purpose];
  if (!admitted.includes(spec.algorithm)) {
    throw invalid(`algorithm ${String(spec.algorithm)} does not belong to purpose ${spec.purpose} (expected ${admitted.join(", ")})`);
  }
  const rotationPeriodMs = spec.rotationPeriodMs ?? null;
  if (rotationPeriodMs !== null) {
    if (spec.purpose !== "ENCRYPT_DECRYPT") {
      throw invalid("rotation_period is only supported for purpose ENCRYPT_DECRYPT");
    }
    checkRotationPeriod(rotationPeriodMs);
  }
  const minDecryptionVersion = spec.minDecryptionVersion ?? 0;
  if (minDecryptionVersion !== 0 && minDecryptionVersion !== 1) {
    throw invalid("min_decryption_version must be 0 or 1 for a new key");
  }
  const name = `keys/${spec.keyId}`;
  const key = freezeKey({
    name,
    purpose: spec.purpose,
    algorithm: spec.algorithm,
    state: "ENABLED",
    primaryVersion: 1,
    minDecryptionVersion,
    rotationPeriodMs,
    nextRotationTime: rotationPeriodMs === null ? null : later(at, rotationPeriodMs),
    deletionTime: null,
    description: spec.description ?? "",
    labels: { ...spec.labels },
    createTime: copy(at),
    updateTime: copy(at),
    etag: FIRST_ETAG,
  });
  return Object.freeze({ key, version: newVersion(name, 1, at) });
}

/**
 * Creates the next version and makes it the primary (transit's
 * `RotateInMemory`). Earlier versions are not touched: they keep their state
 * and stay usable to decrypt and verify (down to min decryption version), so
 * data they protect stays readable. The new version's number is one above
 * the highest ever used, so numbers are never reused. With a rotation period,
 * the next automatic rotation is due at `now + rotationPeriodMs`, whether this
 * rotation was automatic or manual.
 *
 * @param versions the key's versions as stored (any order); used only to
 *   find the highest number.
 * @throws DomainError "failed-precondition" when the key is not ENABLED, or
 *   has reached version 999999999.
 */
export function rotate(key: Key, versions: readonly KeyVersion[], now: Date): KeyWithVersion {
  const at = instant(now);
  checkVersionsOf(key, versions);
  gate(key, "rotate");
  const highest = versions.reduce((max, v) => Math.max(max, v.version), key.primaryVersion);
  if (highest >= MAX_VERSION) {
    throw precondition(`cannot rotate key ${key.name}: it has reached the highest version number ${MAX_VERSION}`);
  }
  const number = highest + 1;
  return Object.freeze({
    key: changeKey(key, at, {
      primaryVersion: number,
      nextRotationTime: key.rotationPeriodMs === null ? null : later(at, key.rotationPeriodMs),
    }),
    version: newVersion(key.name, number, at),
  });
}

/**
 * Makes a DISABLED key ENABLED; an ENABLED key is returned unchanged. A
 * rotation that fell due while the key was disabled becomes due at once
 * (see {@link rotationDue}): the material aged all the same.
 *
 * @throws DomainError "failed-precondition" when the key is PENDING_DELETION
 *   (call CancelKeyDeletion first) or DESTROYED.
 */
export function enableKey(key: Key, now: Date): KeyChange {
  return simpleMove(key, "enable", now);
}

/**
 * Makes an ENABLED key DISABLED: no version can be used until it is enabled
 * again. A DISABLED key is returned unchanged.
 *
 * @throws DomainError "failed-precondition" when the key is PENDING_DELETION
 *   or DESTROYED.
 */
export function disableKey(key: Key, now: Date): KeyChange {
  return simpleMove(key, "disable", now);
}

/**
 * Moves an ENABLED or DISABLED key to PENDING_DELETION, to be destroyed at
 * `now + window` ({@link destroyDue}). No version is usable meanwhile.
 *
 * @param windowMs the pending window in milliseconds, whole seconds; at
 *   least `minWindowMs` and at most 365 days. Default (undefined): 30 days,
 *   or `minWindowMs` if the operator configured a longer minimum.
 * @param minWindowMs the server's configured minimum (normally 1 day; tests
 *   lower it to seconds). Must be positive and at most 365 days.
 * @throws DomainError "invalid-argument" when the window is not a positive
 *   whole number of seconds, is shorter than the minimum (the message names
 *   it) or longer than the maximum; "failed-precondition" when the key is
 *   already PENDING_DELETION or DESTROYED.
 * @throws RangeError when `minWindowMs` itself is out of range (a
 *   configuration bug).
 */
export function scheduleDeletion(key: Key, windowMs: number | undefined, minWindowMs: number, now: Date): KeyChange {
  const at = instant(now);
  if (!(Number.isFinite(minWindowMs) && minWindowMs > 0 && minWindowMs <= MAX_PENDING_WINDOW_MS)) {
    throw new RangeError(`the minimum pending window must be in (0, ${seconds(MAX_PENDING_WINDOW_MS)}]`);
  }
  const window = windowMs ?? Math.max(DEFAULT_PENDING_WINDOW_MS, minWindowMs);
  if (!(Number.isSafeInteger(window) && window > 0 && window % 1000 === 0)) {
    throw invalid("pending_window must be a positive whole number of seconds");
  }
  if (window < minWindowMs) {
    throw invalid(`pending_window ${seconds(window)} is shorter than the minimum ${seconds(minWindowMs)}`);
  }
  if (window > MAX_PENDING_WINDOW_MS) {
    throw invalid(`pending_window ${seconds(window)} is longer than the maximum ${seconds(MAX_PENDING_WINDOW_MS)} (365 days)`);
  }
  const rule = gate(key, "schedule-deletion");
  return changed(changeKey(key, at, { state: targetKeyState(rule, key), deletionTime: later(at, window) }));
}

/**
 * Cancels a scheduled deletion: PENDING_DELETION becomes DISABLED (never
 * ENABLED, so that re-enabling is a separate, deliberate step) and the
 * deletion time is cleared. Versions keep their states.
 *
 * @throws DomainError "failed-precondition" when the key is not
 *   PENDING_DELETION.
 */
export function cancelDeletion(key: Key, now: Date): KeyChange {
  const at = instant(now);
  const rule = gate(key, "cancel-deletion");
  return changed(changeKey(key, at, { state: targetKeyState(rule, key), deletionTime: null }));
}

/**
 * Destroys a key whose deletion time has come: the key becomes DESTROYED
 * (terminal; `deletionTime` stays as the time it was due, next rotation
 * time is cleared) and so does every version, with `destroyTime = now`.
 * The persist step must delete the wrapped material of `destroyedVersions`
 * in the same transaction.
 *
 * Not throwing when the key is not due is deliberate: the scheduler runs on
 * every replica, and a key that another replica already destroyed, or whose
 * deletion was cancelled since it was selected, is an ordinary outcome.
 *
 * @param versions every version of the key.
 * @throws TypeError when a version belongs to another key, or a
 *   PENDING_DELETION key has no deletion time (corrupt input).
 */
export function destroyDue(key: Key, versions: readonly KeyVersion[], now: Date): DestroyOutcome {
  const at = instant(now);
  checkVersionsOf(key, versions);
  const rule = KEY_TRANSITIONS[key.state].destroy;
  if (rule.kind === "refuse") {
    return Object.freeze({ kind: "not-due", reason: refusal(key, "destroy", rule.hint).message });
  }
  if (key.deletionTime === null) {
    throw new TypeError(`key ${key.name} is PENDING_DELETION without a deletion time`);
  }
  if (at.getTime() < key.deletionTime.getTime()) {
    return Object.freeze({
      kind: "not-due",
      reason: `key ${key.name} is not due for destruction until ${key.deletionTime.toISOString()}`,
    });
  }
  const destroyedVersions: number[] = [];
  const after = versions.map((v) => {
    if (v.state === "DESTROYED") {
      return v;
    }
    destroyedVersions.push(v.version);
    return freezeVersion({ ...v, state: "DESTROYED", destroyTime: copy(at) });
  });
  return Object.freeze({
    kind: "destroyed",
    key: changeKey(key, at, { state: targetKeyState(rule, key), nextRotationTime: null }),
    versions: Object.freeze(after),
    destroyedVersions: Object.freeze(destroyedVersions),
  });
}

/**
 * Updates a key's mutable metadata (UpdateKey): only the fields present in
 * `update` are read. Purpose and algorithm are immutable. Setting a rotation
 * period makes the next rotation due at the last rotation (the primary
 * version's creation) plus the period, which may be at once when the key is
 * older than the new period; null turns automatic rotation off. Lowering
 * min decryption version is allowed (older versions were never destroyed by
 * raising it). An update that changes nothing is a no-op.
 *
 * @param versions the key's versions; must include the primary when the
 *   rotation period changes.
 * @throws DomainError "invalid-argument" when min decryption version is not
 *   an integer in 0..999999999 or the rotation period is out of range;
 *   "failed-precondition" when the key is DESTROYED, min decryption version
 *   is greater than the primary version, or a rotation period is set on a
 *   key whose purpose is not ENCRYPT_DECRYPT.
 */
export function updateKey(key: Key, versions: readonly KeyVersion[], update: KeyUpdate, now: Date): KeyChange {
  const at = instant(now);
  checkVersionsOf(key, versions);
  const { minDecryptionVersion, rotationPeriodMs } = update;
  if (minDecryptionVersion !== undefined) {
    if (!(Number.isInteger(minDecryptionVersion) && minDecryptionVersion >= 0 && minDecryptionVersion <= MAX_VERSION)) {
      throw invalid(`min_decryption_version must be an integer in 0..${MAX_VERSION}`);
    }
  }
  if (rotationPeriodMs !== undefined && rotationPeriodMs !== null) {
    checkRotationPeriod(rotationPeriodMs);
  }
  gate(key, "update");
  if (rotationPeriodMs !== undefined && rotationPeriodMs !== null && key.purpose !== "ENCRYPT_DECRYPT") {
    throw precondition(`rotation_period is only supported for purpose ENCRYPT_DECRYPT; ${key.name} has purpose ${key.purpose}`);
  }
  if (minDecryptionVersion !== undefined && minDecryptionVersion > key.primaryVersion) {
    throw precondition(
      `min_decryption_version ${minDecryptionVersion} is greater than the primary version ${key.primaryVersion} of ${key.name}`,
    );
  }

  const fields: Partial<Mutable<Key>> = {};
  if (update.description !== undefined && update.description !== key.description) {
    fields.description = update.description;
  }
  if (update.labels !== undefined && !sameLabels(update.labels, key.labels)) {
    fields.labels = update.labels;
  }
  if (minDecryptionVersion !== undefined && minDecryptionVersion !== key.minDecryptionVersion) {
    fields.minDecryptionVersion = minDecryptionVersion;
  }
  if (rotationPeriodMs !== undefined && rotationPeriodMs !== key.rotationPeriodMs) {
    fields.rotationPeriodMs = rotationPeriodMs;
    if (rotationPeriodMs === null) {
      fields.nextRotationTime = null;
    } else {
      const primary = versions.find((v) => v.version === key.primaryVersion);
      if (primary === undefined) {
        throw new TypeError(`the versions given for ${key.name} do not include its primary version ${key.primaryVersion}`);
      }
      fields.nextRotationTime = later(primary.createTime, rotationPeriodMs);
    }
  }
  return Object.keys(fields).length === 0 ? unchanged(key) : changed(changeKey(key, at, fields));
}

/**
 * Sets min decryption version alone: {@link updateKey} with only that field.
 * 0 and 1 accept every version; at most the primary version.
 *
 * @throws DomainError as {@link updateKey}.
 */
export function setMinDecryptionVersion(key: Key, minDecryptionVersion: number, now: Date): KeyChange {
  return updateKey(key, [], { minDecryptionVersion }, now);
}

/**
 * Makes a DISABLED version ENABLED; an ENABLED version is returned
 * unchanged. Allowed while the key is ENABLED or DISABLED. The key itself is
 * not changed (nor its etag).
 *
 * @throws DomainError "failed-precondition" when the key is PENDING_DELETION
 *   or DESTROYED, or the version is DESTROYED.
 * @throws TypeError when the version belongs to another key.
 */
export function enableVersion(key: Key, version: KeyVersion): KeyVersionChange {
  return moveVersion(key, version, "enable-version");
}

/**
 * Makes an ENABLED version DISABLED: it can no longer decrypt or verify. A
 * DISABLED version is returned unchanged. Allowed while the key is ENABLED
 * or DISABLED. The primary version cannot be disabled (see
 * {@link VERSION_TRANSITIONS}); rotate the key first.
 *
 * @throws DomainError "failed-precondition" when the key is PENDING_DELETION
 *   or DESTROYED, or the version is DESTROYED or the primary version.
 * @throws TypeError when the version belongs to another key.
 */
export function disableVersion(key: Key, version: KeyVersion): KeyVersionChange {
  return moveVersion(key, version, "disable-version");
}

/**
 * Whether the key's automatic rotation is due at `now`: the key is ENABLED,
 * has a rotation period, and `now` is at or past its next rotation time. A
 * key that is not ENABLED is never due (rotate would refuse it); once it is
 * enabled again, an overdue rotation is due at once.
 */
export function rotationDue(key: Key, now: Date): boolean {
  const at = instant(now);
  return key.state === "ENABLED" && key.nextRotationTime !== null && at.getTime() >= key.nextRotationTime.getTime();
}

/**
 * Whether `version` of `key` may serve `operation`. Checked in this order,
 * first failure wins:
 * 1. the key's purpose fits the operation (`keys/x has purpose SIGN_VERIFY,
 *    not ENCRYPT_DECRYPT`);
 * 2. the key is ENABLED (`key keys/x is DISABLED`);
 * 3. the version is not DESTROYED (`version 3 of keys/x is DESTROYED`);
 * 4. except for get-public-key: the version is not below min decryption
 *    version (`version 2 of keys/x is below min_decryption_version 3`).
 *    Encrypt, sign and mac use the primary when the caller names only the
 *    key, but may be given an older version explicitly (as in Cloud KMS):
 *    the minimum keeps them from producing what could not be decrypted;
 * 5. the version is ENABLED (`version 2 of keys/x is DISABLED`).
 * Permanent reasons come before reversible ones, so the caller is not told
 * to enable a version that would still be refused.
 *
 * @returns `{ ok: true }`, or `{ ok: false, error }` with a DomainError
 *   "failed-precondition" whose message is one of the above.
 * @throws TypeError when the version belongs to another key.
 */
export function usableFor(key: Key, version: KeyVersion, operation: KeyOperation): Usability {
  checkVersionsOf(key, [version]);
  const needs = KEY_OPERATIONS[operation];
  const n = version.version;
  const refused = (message: string): Usability => Object.freeze({ ok: false, error: precondition(message) });
  if (key.purpose !== needs.purpose) {
    return refused(`${key.name} has purpose ${key.purpose}, not ${needs.purpose}`);
  }
  if (key.state !== "ENABLED") {
    return refused(`key ${key.name} is ${key.state}`);
  }
  if (version.state === "DESTROYED") {
    return refused(`version ${n} of ${key.name} is DESTROYED`);
  }
  if (needs.versions === "from-min" && n < key.minDecryptionVersion) {
    return refused(`version ${n} of ${key.name} is below min_decryption_version ${key.minDecryptionVersion}`);
  }
  if (version.state !== "ENABLED") {
    return refused(`version ${n} of ${key.name} is ${version.state}`);
  }
  return OK;
}

/**
 * {@link usableFor}, throwing instead of returning the refusal.
 *
 * @throws DomainError "failed-precondition" as described for {@link usableFor}.
 */
export function requireUsableFor(key: Key, version: KeyVersion, operation: KeyOperation): void {
  const result = usableFor(key, version, operation);
  if (!result.ok) {
    throw result.error;
  }
}

type Mutable<T> = { -readonly [P in keyof T]: T[P] };

const OK: Usability = Object.freeze({ ok: true });

/** The etag of a new key. Etags are decimal change counters; see `Key.etag`. */
const FIRST_ETAG = "1";

const ACTION_PHRASES: Readonly<Record<KeyAction, string>> = {
  rotate: "rotate key",
  enable: "enable key",
  disable: "disable key",
  "schedule-deletion": "schedule deletion of key",
  "cancel-deletion": "cancel deletion of key",
  destroy: "destroy key",
  update: "update key",
  "enable-version": "enable version {n} of key",
  "disable-version": "disable version {n} of key",
};

/** Looks the action up in {@link KEY_TRANSITIONS}; throws the refusal, returns any other rule. */
function gate(key: Key, action: KeyAction, version?: number): TransitionRule {
  const rule = KEY_TRANSITIONS[key.state][action];
  if (rule.kind === "refuse") {
    throw refusal(key, action, rule.hint, version);
  }
  return rule;
}

/** `cannot <action> key keys/x: key is <STATE>; <hint>`. */
function refusal(key: Key, action: KeyAction, hint: string, version?: number): DomainError {
  return precondition(`cannot ${phrase(key, action, version)}: key is ${key.state}; ${hint}`);
}

function phrase(key: Key, action: KeyAction, version?: number): string {
  return `${ACTION_PHRASES[action].replace("{n}", String(version))} ${key.name}`;
}

function targetKeyState(rule: TransitionRule, key: Key): KeyState {
  // The key table only ever moves keys to key states; the union type is shared with the version table.
  return rule.kind === "to" ? (rule.state as KeyState) : key.state;
}

function simpleMove(key: Key, action: "enable" | "disable", now: Date): KeyChange {
  const at = instant(now);
  const rule = gate(key, action);
  if (rule.kind === "no-op") {
    return unchanged(key);
  }
  return changed(changeKey(key, at, { state: targetKeyState(rule, key) }));
}

function moveVersion(key: Key, version: KeyVersion, action: KeyVersionAction): KeyVersionChange {
  checkVersionsOf(key, [version]);
  gate(key, action, version.version);
  const rule = VERSION_TRANSITIONS[version.state][action];
  if (rule.kind === "refuse") {
    throw precondition(`cannot ${phrase(key, action, version.version)}: version is ${version.state}; ${rule.hint}`);
  }
  if (action === "disable-version" && version.version === key.primaryVersion) {
    throw precondition(`cannot ${phrase(key, action, version.version)}: it is the primary version; rotate the key first`);
  }
  if (rule.kind !== "to") {
    return Object.freeze({ version, changed: false });
  }
  return Object.freeze({ version: freezeVersion({ ...version, state: rule.state as KeyVersionState }), changed: true });
}

/** A copy of `key` with `fields` applied, a new update time and the next etag. */
function changeKey(key: Key, at: Date, fields: Partial<Key>): Key {
  return freezeKey({ ...key, ...fields, updateTime: copy(at), etag: nextEtag(key) });
}

function nextEtag(key: Key): string {
  const count = Number(key.etag);
  if (!Number.isSafeInteger(count) || count < 1) {
    throw new TypeError(`key ${key.name} has an etag this domain did not issue`);
  }
  return String(count + 1);
}

function changed(key: Key): KeyChange {
  return Object.freeze({ key, changed: true });
}

function unchanged(key: Key): KeyChange {
  return Object.freeze({ key, changed: false });
}

function freezeKey(key: Key): Key {
  return Object.freeze({ ...key, labels: Object.freeze({ ...key.labels }) });
}

function freezeVersion(version: KeyVersion): KeyVersion {
  return Object.freeze({ ...version, usage: Object.freeze({ ...version.usage }) });
}

function newVersion(keyName: string, version: number, at: Date): KeyVersion {
  return freezeVersion({
    keyName,
    version,
    state: "ENABLED",
    createTime: copy(at),
    destroyTime: null,
    usage: { operationCount: 0, lastUsedTime: null },
  });
}

function checkVersionsOf(key: Key, versions: readonly KeyVersion[]): void {
  for (const v of versions) {
    if (v.keyName !== key.name) {
      throw new TypeError(`version ${v.version} of ${v.keyName} does not belong to ${key.name}`);
    }
  }
}

function checkRotationPeriod(ms: number): void {
  if (!(Number.isSafeInteger(ms) && ms % 1000 === 0 && ms >= MIN_ROTATION_PERIOD_MS && ms <= MAX_ROTATION_PERIOD_MS)) {
    throw invalid(
      `rotation_period must be whole seconds from ${seconds(MIN_ROTATION_PERIOD_MS)} to ${seconds(MAX_ROTATION_PERIOD_MS)}`,
    );
  }
}

function sameLabels(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

/** A duration in the proto JSON form, e.g. `86400s`. */
function seconds(ms: number): string {
  return `${ms / 1000}s`;
}

function instant(now: Date): Date {
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) {
    throw new TypeError("now must be a valid Date");
  }
  return now;
}

function copy(at: Date): Date {
  return new Date(at.getTime());
}

function later(at: Date, ms: number): Date {
  return new Date(at.getTime() + ms);
}

function invalid(message: string): DomainError {
  return new DomainError("invalid-argument", message);
}

function precondition(message: string): DomainError {
  return new DomainError("failed-precondition", message);
}
