import { describe, expect, it } from "vitest";
import { DomainError, type DomainErrorKind } from "../../../../src/domain/errors.js";
import {
  ALGORITHMS_BY_PURPOSE,
  KEY_PURPOSES,
  KEY_STATES,
  type Key,
  type KeyAlgorithm,
  type KeyPurpose,
  type KeyState,
  type KeyVersion,
  type KeyVersionState,
} from "../../../../src/domain/keys/key.js";
import {
  KEY_ACTIONS,
  KEY_TRANSITIONS,
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
  setMinDecryptionVersion,
  updateKey,
  usableFor,
  type KeyAction,
  type KeyOperation,
} from "../../../../src/domain/keys/state-machine.js";
import { DAY, HOUR, SECOND, aSpec, at, createManualClock, keyIn, versionOf, type Fixture, T0 } from "./builders.js";

/** Runs `fn`, expecting a DomainError of `kind`; returns its message. */
function refusalOf(fn: () => unknown, kind: DomainErrorKind = "failed-precondition"): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DomainError);
    expect((err as DomainError).kind).toBe(kind);
    return (err as DomainError).message;
  }
  throw new Error("expected a DomainError");
}

/** A deep, comparable snapshot (Dates as ISO strings), to prove inputs were not mutated. */
const snapshot = (value: unknown): unknown => JSON.parse(JSON.stringify(value));

const NOW = at(3 * DAY);
const WHEN_DUE = at(400 * DAY);

type Outcome =
  | { readonly key: KeyState }
  | { readonly version: KeyVersionState }
  | "no-op"
  | { readonly refused: string }
  | { readonly notDue: string };

/**
 * Runs one action on a fixture from builders.keyIn (versions 1 DISABLED,
 * 2 ENABLED, 3 primary ENABLED) and reports what happened.
 */
function run(action: KeyAction, { key, versions }: Fixture): Outcome {
  const before = snapshot({ key, versions });
  try {
    switch (action) {
      case "rotate":
        return { key: rotate(key, versions, NOW).key.state };
      case "enable":
        return keyOutcome(enableKey(key, NOW), key);
      case "disable":
        return keyOutcome(disableKey(key, NOW), key);
      case "schedule-deletion":
        return keyOutcome(scheduleDeletion(key, DAY, DAY, NOW), key);
      case "cancel-deletion":
        return keyOutcome(cancelDeletion(key, NOW), key);
      case "update":
        return keyOutcome(updateKey(key, versions, { description: "changed" }, NOW), key);
      case "destroy": {
        const outcome = destroyDue(key, versions, WHEN_DUE);
        return outcome.kind === "destroyed" ? { key: outcome.key.state } : { notDue: outcome.reason };
      }
      case "enable-version": {
        const change = enableVersion(key, versionOf({ key, versions }, 1));
        return change.changed ? { version: change.version.state } : "no-op";
      }
      case "disable-version": {
        const change = disableVersion(key, versionOf({ key, versions }, 2));
        return change.changed ? { version: change.version.state } : "no-op";
      }
    }
  } catch (err) {
    if (err instanceof DomainError && err.kind === "failed-precondition") {
      return { refused: err.message };
    }
    throw err;
  } finally {
    expect(snapshot({ key, versions })).toEqual(before);
  }
}

function keyOutcome(change: { key: Key; changed: boolean }, input: Key): Outcome {
  if (!change.changed) {
    expect(change.key).toBe(input);
    return "no-op";
  }
  expect(Object.isFrozen(change.key)).toBe(true);
  expect(change.key.etag).not.toBe(input.etag);
  expect(change.key.updateTime).toEqual(NOW);
  return { key: change.key.state };
}

const terminal = (what: string) => ({ refused: `cannot ${what} keys/x: key is DESTROYED; a destroyed key is terminal` });

/** The expected behaviour, written out independently of KEY_TRANSITIONS. */
const EXPECTED: Record<KeyState, Record<KeyAction, Outcome>> = {
  ENABLED: {
    rotate: { key: "ENABLED" },
    enable: "no-op",
    disable: { key: "DISABLED" },
    "schedule-deletion": { key: "PENDING_DELETION" },
    "cancel-deletion": { refused: "cannot cancel deletion of key keys/x: key is ENABLED; no deletion is scheduled" },
    destroy: { notDue: "cannot destroy key keys/x: key is ENABLED; only a key PENDING_DELETION is destroyed" },
    update: { key: "ENABLED" },
    "enable-version": { version: "ENABLED" },
    "disable-version": { version: "DISABLED" },
  },
  DISABLED: {
    rotate: { refused: "cannot rotate key keys/x: key is DISABLED; only an ENABLED key can be rotated" },
    enable: { key: "ENABLED" },
    disable: "no-op",
    "schedule-deletion": { key: "PENDING_DELETION" },
    "cancel-deletion": { refused: "cannot cancel deletion of key keys/x: key is DISABLED; no deletion is scheduled" },
    destroy: { notDue: "cannot destroy key keys/x: key is DISABLED; only a key PENDING_DELETION is destroyed" },
    update: { key: "DISABLED" },
    "enable-version": { version: "ENABLED" },
    "disable-version": { version: "DISABLED" },
  },
  PENDING_DELETION: {
    rotate: { refused: "cannot rotate key keys/x: key is PENDING_DELETION; only an ENABLED key can be rotated" },
    enable: { refused: "cannot enable key keys/x: key is PENDING_DELETION; call CancelKeyDeletion first" },
    disable: {
      refused: "cannot disable key keys/x: key is PENDING_DELETION; call CancelKeyDeletion, which leaves it DISABLED",
    },
    "schedule-deletion": {
      refused: "cannot schedule deletion of key keys/x: key is PENDING_DELETION; its deletion is already scheduled",
    },
    "cancel-deletion": { key: "DISABLED" },
    destroy: { key: "DESTROYED" },
    update: { key: "PENDING_DELETION" },
    "enable-version": {
      refused: "cannot enable version 1 of key keys/x: key is PENDING_DELETION; call CancelKeyDeletion first",
    },
    "disable-version": {
      refused: "cannot disable version 2 of key keys/x: key is PENDING_DELETION; call CancelKeyDeletion first",
    },
  },
  DESTROYED: {
    rotate: terminal("rotate key"),
    enable: terminal("enable key"),
    disable: terminal("disable key"),
    "schedule-deletion": terminal("schedule deletion of key"),
    "cancel-deletion": terminal("cancel deletion of key"),
    destroy: { notDue: "cannot destroy key keys/x: key is DESTROYED; it is already destroyed" },
    update: terminal("update key"),
    "enable-version": terminal("enable version 1 of key"),
    "disable-version": terminal("disable version 2 of key"),
  },
};

describe("the key transition table", () => {
  const cases = KEY_STATES.flatMap((state) =>
    KEY_ACTIONS.map((action) => [state, action, EXPECTED[state][action]] as const),
  );

  it("covers every state and action", () => {
    expect(cases).toHaveLength(4 * 9);
  });

  it.each(cases)("%s × %s", (state, action, expected) => {
    const fixture = keyIn(state);
    expect(fixture.key.state).toBe(state);
    expect(run(action, fixture)).toEqual(expected);
  });

  it.each(cases)("KEY_TRANSITIONS documents %s × %s as it behaves", (state, action, expected) => {
    const rule = KEY_TRANSITIONS[state][action];
    if (expected === "no-op") {
      expect(rule.kind).toBe("no-op");
    } else if ("refused" in expected || "notDue" in expected) {
      expect(rule.kind).toBe("refuse");
    } else if ("version" in expected || expected.key === state) {
      expect(rule.kind).toBe("stay");
    } else {
      expect(rule).toEqual({ kind: "to", state: expected.key });
    }
  });

  it("lets a cancelled deletion back to ENABLED only through EnableKey", () => {
    const { key } = keyIn("PENDING_DELETION");
    const cancelled = cancelDeletion(key, NOW).key;
    expect(cancelled.state).toBe("DISABLED");
    expect(cancelled.deletionTime).toBeNull();
    expect(enableKey(cancelled, NOW).key.state).toBe("ENABLED");
  });
});

describe("version transitions", () => {
  const enabledKey = keyIn("ENABLED");
  const destroyedVersion: KeyVersion = { ...versionOf(enabledKey, 2), state: "DESTROYED", destroyTime: T0 };

  it.each([
    ["enable an ENABLED version", () => enableVersion(enabledKey.key, versionOf(enabledKey, 2)), "no-op"],
    ["disable an ENABLED version", () => disableVersion(enabledKey.key, versionOf(enabledKey, 2)), "DISABLED"],
    ["enable a DISABLED version", () => enableVersion(enabledKey.key, versionOf(enabledKey, 1)), "ENABLED"],
    ["disable a DISABLED version", () => disableVersion(enabledKey.key, versionOf(enabledKey, 1)), "no-op"],
    ["enable the primary version", () => enableVersion(enabledKey.key, versionOf(enabledKey, 3)), "no-op"],
  ] as const)("%s", (_name, fn, expected) => {
    const change = fn();
    if (expected === "no-op") {
      expect(change.changed).toBe(false);
    } else {
      expect(change.changed).toBe(true);
      expect(change.version.state).toBe(expected);
      expect(Object.isFrozen(change.version)).toBe(true);
    }
  });

  it.each([
    [
      "disable the primary version",
      () => disableVersion(enabledKey.key, versionOf(enabledKey, 3)),
      "cannot disable version 3 of key keys/x: it is the primary version; rotate the key first",
    ],
    [
      "enable a DESTROYED version",
      () => enableVersion(enabledKey.key, destroyedVersion),
      "cannot enable version 2 of key keys/x: version is DESTROYED; its material is gone",
    ],
    [
      "disable a DESTROYED version",
      () => disableVersion(enabledKey.key, destroyedVersion),
      "cannot disable version 2 of key keys/x: version is DESTROYED; its material is gone",
    ],
  ] as const)("refuses to %s", (_name, fn, message) => {
    expect(refusalOf(fn)).toBe(message);
  });

  it("lets the old primary be disabled after a rotation", () => {
    const rotated = rotate(enabledKey.key, enabledKey.versions, NOW);
    expect(disableVersion(rotated.key, versionOf(enabledKey, 3)).version.state).toBe("DISABLED");
  });

  it("leaves the key alone (etag included)", () => {
    const before = snapshot(enabledKey.key);
    enableVersion(enabledKey.key, versionOf(enabledKey, 1));
    expect(snapshot(enabledKey.key)).toEqual(before);
  });

  it("refuses a version of another key as a bug, not a caller error", () => {
    const other = createKey(aSpec({ keyId: "other" }), T0).version;
    expect(() => enableVersion(enabledKey.key, other)).toThrow(TypeError);
  });
});

describe("createKey", () => {
  it("creates an ENABLED key whose version 1 is the ENABLED primary", () => {
    const { key, version } = createKey(aSpec({ description: "payments", labels: { team: "pay" } }), T0);
    expect(key).toEqual({
      name: "keys/x",
      purpose: "ENCRYPT_DECRYPT",
      algorithm: "AES_256_GCM",
      state: "ENABLED",
      primaryVersion: 1,
      minDecryptionVersion: 0,
      rotationPeriodMs: null,
      nextRotationTime: null,
      deletionTime: null,
      description: "payments",
      labels: { team: "pay" },
      createTime: T0,
      updateTime: T0,
      etag: "1",
    });
    expect(version).toEqual({
      keyName: "keys/x",
      version: 1,
      state: "ENABLED",
      createTime: T0,
      destroyTime: null,
      usage: { operationCount: 0, lastUsedTime: null },
    });
    expect(Object.isFrozen(key) && Object.isFrozen(key.labels) && Object.isFrozen(version)).toBe(true);
  });

  it("copies what it is given", () => {
    const labels: Record<string, string> = { team: "pay" };
    const now = new Date(T0);
    const { key } = createKey(aSpec({ labels }), now);
    labels.team = "other";
    now.setTime(0);
    expect(key.labels).toEqual({ team: "pay" });
    expect(key.createTime).toEqual(T0);
  });

  const pairs = KEY_PURPOSES.flatMap((purpose) =>
    Object.values(ALGORITHMS_BY_PURPOSE)
      .flat()
      .map((algorithm) => [purpose, algorithm, ALGORITHMS_BY_PURPOSE[purpose].includes(algorithm)] as const),
  );

  it("knows 10 algorithms, each of one purpose", () => {
    expect(pairs).toHaveLength(3 * 10);
    expect(pairs.filter(([, , ok]) => ok)).toHaveLength(10);
  });

  it.each(pairs)("purpose %s with algorithm %s: accepted %s", (purpose, algorithm, ok) => {
    const create = () => createKey(aSpec({ purpose, algorithm }), T0);
    if (ok) {
      expect(create().key.algorithm).toBe(algorithm);
    } else {
      expect(refusalOf(create, "invalid-argument")).toBe(
        `algorithm ${algorithm} does not belong to purpose ${purpose} (expected ${ALGORITHMS_BY_PURPOSE[purpose].join(", ")})`,
      );
    }
  });

  it("schedules the first rotation one period after creation", () => {
    const { key } = createKey(aSpec({ rotationPeriodMs: 90 * DAY }), T0);
    expect(key.rotationPeriodMs).toBe(90 * DAY);
    expect(key.nextRotationTime).toEqual(at(90 * DAY));
  });

  it.each([
    ["1 hour", HOUR],
    ["3650 days", 3650 * DAY],
  ])("accepts a rotation period of %s", (_name, ms) => {
    expect(createKey(aSpec({ rotationPeriodMs: ms }), T0).key.rotationPeriodMs).toBe(ms);
  });

  const outOfRange = "rotation_period must be whole seconds from 3600s to 315360000s";
  it.each([
    ["a rotation period under 1 hour", aSpec({ rotationPeriodMs: HOUR - SECOND }), outOfRange],
    ["a rotation period over 3650 days", aSpec({ rotationPeriodMs: 3650 * DAY + SECOND }), outOfRange],
    ["a rotation period in fractions of a second", aSpec({ rotationPeriodMs: HOUR + 1 }), outOfRange],
    [
      "a rotation period on a SIGN_VERIFY key",
      aSpec({ purpose: "SIGN_VERIFY", algorithm: "ED25519", rotationPeriodMs: DAY }),
      "rotation_period is only supported for purpose ENCRYPT_DECRYPT",
    ],
    [
      "a rotation period on a MAC key",
      aSpec({ purpose: "MAC", algorithm: "HMAC_SHA256", rotationPeriodMs: DAY }),
      "rotation_period is only supported for purpose ENCRYPT_DECRYPT",
    ],
    ["min_decryption_version 2", aSpec({ minDecryptionVersion: 2 }), "min_decryption_version must be 0 or 1 for a new key"],
    ["a malformed key id", aSpec({ keyId: "X_1" }), "key_id must match ^[a-z][a-z0-9-]{0,62}$"],
    ["a 64-character key id", aSpec({ keyId: `k${"a".repeat(63)}` }), "key_id must match ^[a-z][a-z0-9-]{0,62}$"],
    [
      "an unknown purpose",
      aSpec({ purpose: "WRAP" as KeyPurpose }),
      "unknown purpose WRAP (expected ENCRYPT_DECRYPT, SIGN_VERIFY, MAC)",
    ],
    [
      "an unknown algorithm",
      aSpec({ algorithm: "DES" as KeyAlgorithm }),
      "algorithm DES does not belong to purpose ENCRYPT_DECRYPT (expected AES_256_GCM, CHACHA20_POLY1305)",
    ],
  ])("refuses %s", (_name, spec, message) => {
    expect(refusalOf(() => createKey(spec, T0), "invalid-argument")).toBe(message);
  });

  it("accepts min_decryption_version 1", () => {
    expect(createKey(aSpec({ minDecryptionVersion: 1 }), T0).key.minDecryptionVersion).toBe(1);
  });
});

describe("rotate", () => {
  it("makes a new ENABLED primary and leaves earlier versions as they were", () => {
    const fixture = keyIn("ENABLED");
    const { key, version } = rotate(fixture.key, fixture.versions, NOW);
    expect(key.primaryVersion).toBe(4);
    expect(key.updateTime).toEqual(NOW);
    expect(version).toEqual({
      keyName: "keys/x",
      version: 4,
      state: "ENABLED",
      createTime: NOW,
      destroyTime: null,
      usage: { operationCount: 0, lastUsedTime: null },
    });
    expect(usableFor(key, version, "encrypt")).toEqual({ ok: true });
    expect(usableFor(key, versionOf(fixture, 3), "decrypt")).toEqual({ ok: true });
    // A named older version may still encrypt (the caller chose it).
    expect(usableFor(key, versionOf(fixture, 3), "encrypt")).toEqual({ ok: true });
  });

  it("numbers the new version above every version ever made, never reusing one", () => {
    const fixture = keyIn("ENABLED");
    const stray: KeyVersion = { ...versionOf(fixture, 3), version: 7 };
    expect(rotate(fixture.key, [...fixture.versions, stray], NOW).version.version).toBe(8);
  });

  it("gives each rotation a new etag", () => {
    const fixture = keyIn("ENABLED");
    const first = rotate(fixture.key, fixture.versions, NOW);
    const second = rotate(first.key, [...fixture.versions, first.version], NOW);
    expect(new Set([fixture.key.etag, first.key.etag, second.key.etag]).size).toBe(3);
  });

  it("moves the next automatic rotation one period past the rotation", () => {
    const { key, version } = createKey(aSpec({ rotationPeriodMs: 30 * DAY }), T0);
    const rotated = rotate(key, [version], at(5 * DAY)).key;
    expect(rotated.nextRotationTime).toEqual(at(35 * DAY));
  });

  it("refuses to go beyond version 999999999", () => {
    const fixture = keyIn("ENABLED");
    const last = { ...fixture.key, primaryVersion: 999_999_999 };
    expect(refusalOf(() => rotate(last, [], NOW))).toBe(
      "cannot rotate key keys/x: it has reached the highest version number 999999999",
    );
  });

  it("refuses versions of another key as a bug", () => {
    const fixture = keyIn("ENABLED");
    const other = createKey(aSpec({ keyId: "y" }), T0).version;
    expect(() => rotate(fixture.key, [other], NOW)).toThrow(TypeError);
  });
});

describe("rotationDue, with an injected clock", () => {
  it("is due exactly when the period has elapsed, and again one period after each rotation", () => {
    const clock = createManualClock();
    let { key, version } = createKey(aSpec({ rotationPeriodMs: DAY }), clock.now());
    clock.advance(DAY - 1);
    expect(rotationDue(key, clock.now())).toBe(false);
    clock.advance(1);
    expect(rotationDue(key, clock.now())).toBe(true);

    clock.advance(10 * SECOND);
    ({ key, version } = rotate(key, [version], clock.now()));
    expect(version.version).toBe(2);
    expect(rotationDue(key, clock.now())).toBe(false);
    clock.advance(DAY);
    expect(rotationDue(key, clock.now())).toBe(true);
  });

  it("is never due for a key that is not ENABLED, and at once when an overdue key is enabled again", () => {
    const clock = createManualClock();
    const { key } = createKey(aSpec({ rotationPeriodMs: DAY }), clock.now());
    const disabled = disableKey(key, clock.now()).key;
    clock.advance(10 * DAY);
    expect(rotationDue(disabled, clock.now())).toBe(false);
    expect(rotationDue(scheduleDeletion(disabled, DAY, DAY, clock.now()).key, clock.now())).toBe(false);
    expect(rotationDue(enableKey(disabled, clock.now()).key, clock.now())).toBe(true);
  });

  it("is never due without a rotation period", () => {
    const clock = createManualClock();
    const { key } = createKey(aSpec({ purpose: "MAC", algorithm: "HMAC_SHA512" }), clock.now());
    clock.advance(10_000 * DAY);
    expect(rotationDue(key, clock.now())).toBe(false);
  });

  it("stops once rotation is turned off", () => {
    const clock = createManualClock();
    const { key, version } = createKey(aSpec({ rotationPeriodMs: DAY }), clock.now());
    const off = updateKey(key, [version], { rotationPeriodMs: null }, clock.now()).key;
    clock.advance(2 * DAY);
    expect(off.nextRotationTime).toBeNull();
    expect(rotationDue(off, clock.now())).toBe(false);
  });
});

describe("scheduleDeletion", () => {
  it("sets the deletion time to now plus the window", () => {
    const { key } = keyIn("ENABLED");
    const pending = scheduleDeletion(key, 7 * DAY, DAY, NOW).key;
    expect(pending.state).toBe("PENDING_DELETION");
    expect(pending.deletionTime).toEqual(new Date(NOW.getTime() + 7 * DAY));
  });

  it("defaults to 30 days", () => {
    const { key } = keyIn("DISABLED");
    expect(scheduleDeletion(key, undefined, DAY, NOW).key.deletionTime).toEqual(new Date(NOW.getTime() + 30 * DAY));
  });

  it("defaults to the configured minimum when that is longer than 30 days", () => {
    const { key } = keyIn("ENABLED");
    expect(scheduleDeletion(key, undefined, 60 * DAY, NOW).key.deletionTime).toEqual(new Date(NOW.getTime() + 60 * DAY));
  });

  it.each([
    ["exactly the minimum", DAY, DAY],
    ["a minimum lowered to seconds for tests", 2 * SECOND, SECOND],
    ["365 days", 365 * DAY, DAY],
  ])("accepts %s", (_name, window, minimum) => {
    const { key } = keyIn("ENABLED");
    expect(scheduleDeletion(key, window, minimum, NOW).key.state).toBe("PENDING_DELETION");
  });

  it.each([
    ["a window under the minimum", DAY - SECOND, DAY, "pending_window 86399s is shorter than the minimum 86400s"],
    ["a window under a lowered minimum", 4 * SECOND, 5 * SECOND, "pending_window 4s is shorter than the minimum 5s"],
    ["a window over 365 days", 366 * DAY, DAY, "pending_window 31622400s is longer than the maximum 31536000s (365 days)"],
    ["a zero window", 0, DAY, "pending_window must be a positive whole number of seconds"],
    ["a negative window", -DAY, DAY, "pending_window must be a positive whole number of seconds"],
    ["a fractional second", DAY + 500, DAY, "pending_window must be a positive whole number of seconds"],
  ])("refuses %s", (_name, window, minimum, message) => {
    const { key } = keyIn("ENABLED");
    expect(refusalOf(() => scheduleDeletion(key, window, minimum, NOW), "invalid-argument")).toBe(message);
  });

  it("reports a malformed window before the key's state", () => {
    const { key } = keyIn("DESTROYED");
    expect(refusalOf(() => scheduleDeletion(key, SECOND, DAY, NOW), "invalid-argument")).toBe(
      "pending_window 1s is shorter than the minimum 86400s",
    );
  });

  it.each([0, -1, Number.NaN, 366 * DAY])("treats a configured minimum of %s as a bug", (minimum) => {
    const { key } = keyIn("ENABLED");
    expect(() => scheduleDeletion(key, DAY, minimum, NOW)).toThrow(RangeError);
  });
});

describe("destroyDue", () => {
  const pending = keyIn("PENDING_DELETION");
  const deletionTime = pending.key.deletionTime!;

  it("is not due before the deletion time", () => {
    const justBefore = new Date(deletionTime.getTime() - 1);
    expect(destroyDue(pending.key, pending.versions, justBefore)).toEqual({
      kind: "not-due",
      reason: `key keys/x is not due for destruction until ${deletionTime.toISOString()}`,
    });
  });

  it("destroys the key and every version at the deletion time", () => {
    const outcome = destroyDue(pending.key, pending.versions, deletionTime);
    expect(outcome.kind).toBe("destroyed");
    if (outcome.kind !== "destroyed") return;
    expect(outcome.key.state).toBe("DESTROYED");
    expect(outcome.key.deletionTime).toEqual(deletionTime);
    expect(outcome.key.nextRotationTime).toBeNull();
    expect(outcome.key.etag).not.toBe(pending.key.etag);
    expect(outcome.versions.map((v) => [v.version, v.state, v.destroyTime])).toEqual([
      [1, "DESTROYED", deletionTime],
      [2, "DESTROYED", deletionTime],
      [3, "DESTROYED", deletionTime],
    ]);
    expect(outcome.destroyedVersions).toEqual([1, 2, 3]);
    for (const version of outcome.versions) {
      expect(usableFor(outcome.key, version, "decrypt")).toMatchObject({
        ok: false,
        error: { kind: "failed-precondition", message: "key keys/x is DESTROYED" },
      });
    }
  });

  it("keeps the usage of destroyed versions", () => {
    const used: KeyVersion = { ...versionOf(pending, 2), usage: { operationCount: 5, lastUsedTime: T0 } };
    const outcome = destroyDue(pending.key, [used], WHEN_DUE);
    expect(outcome.kind === "destroyed" && outcome.versions[0]!.usage).toEqual({ operationCount: 5, lastUsedTime: T0 });
  });

  it("is not due once another replica cancelled the deletion", () => {
    const cancelled = cancelDeletion(pending.key, NOW).key;
    expect(destroyDue(cancelled, pending.versions, WHEN_DUE)).toEqual({
      kind: "not-due",
      reason: "cannot destroy key keys/x: key is DISABLED; only a key PENDING_DELETION is destroyed",
    });
  });

  it("treats a PENDING_DELETION key without a deletion time as corrupt", () => {
    expect(() => destroyDue({ ...pending.key, deletionTime: null }, pending.versions, WHEN_DUE)).toThrow(TypeError);
  });
});

describe("updateKey and setMinDecryptionVersion", () => {
  const enabled = keyIn("ENABLED");

  it.each([0, 1, 2, 3])("accepts min_decryption_version %s (at most the primary version 3)", (n) => {
    const change = setMinDecryptionVersion(enabled.key, n, NOW);
    expect(change.key.minDecryptionVersion).toBe(n);
    expect(change.changed).toBe(n !== 0);
  });

  it("lets min_decryption_version go down again", () => {
    const raised = setMinDecryptionVersion(enabled.key, 3, NOW).key;
    expect(setMinDecryptionVersion(raised, 2, NOW).key.minDecryptionVersion).toBe(2);
  });

  it.each([
    ["above the primary version", 4, "failed-precondition", "min_decryption_version 4 is greater than the primary version 3 of keys/x"],
    ["negative", -1, "invalid-argument", "min_decryption_version must be an integer in 0..999999999"],
    ["fractional", 1.5, "invalid-argument", "min_decryption_version must be an integer in 0..999999999"],
    ["above 999999999", 1_000_000_000, "invalid-argument", "min_decryption_version must be an integer in 0..999999999"],
  ] as const)("refuses min_decryption_version %s", (_name, n, kind, message) => {
    expect(refusalOf(() => setMinDecryptionVersion(enabled.key, n, NOW), kind)).toBe(message);
  });

  it("updates while PENDING_DELETION but not once DESTROYED", () => {
    expect(setMinDecryptionVersion(keyIn("PENDING_DELETION").key, 2, NOW).key.minDecryptionVersion).toBe(2);
    expect(refusalOf(() => setMinDecryptionVersion(keyIn("DESTROYED").key, 2, NOW))).toBe(
      "cannot update key keys/x: key is DESTROYED; a destroyed key is terminal",
    );
  });

  it("replaces description and labels, and is a no-op when nothing changes", () => {
    const change = updateKey(enabled.key, [], { description: "d", labels: { a: "1" } }, NOW);
    expect(change.key).toMatchObject({ description: "d", labels: { a: "1" }, updateTime: NOW });
    const again = updateKey(change.key, [], { description: "d", labels: { a: "1" } }, at(4 * DAY));
    expect(again.changed).toBe(false);
    expect(again.key).toBe(change.key);
  });

  it("dates a new rotation period from the last rotation, not from the update", () => {
    // The primary (version 3) was made at T0+2h.
    const change = updateKey(enabled.key, enabled.versions, { rotationPeriodMs: DAY }, NOW);
    expect(change.key.rotationPeriodMs).toBe(DAY);
    expect(change.key.nextRotationTime).toEqual(at(2 * HOUR + DAY));
    expect(rotationDue(change.key, NOW)).toBe(true);
  });

  it("refuses a rotation period on a key that is not ENCRYPT_DECRYPT", () => {
    const signing = keyIn("ENABLED", aSpec({ purpose: "SIGN_VERIFY", algorithm: "ECDSA_P256_SHA256" }));
    expect(refusalOf(() => updateKey(signing.key, signing.versions, { rotationPeriodMs: DAY }, NOW))).toBe(
      "rotation_period is only supported for purpose ENCRYPT_DECRYPT; keys/x has purpose SIGN_VERIFY",
    );
    expect(updateKey(signing.key, signing.versions, { rotationPeriodMs: null }, NOW).changed).toBe(false);
  });

  it("refuses an out-of-range rotation period", () => {
    expect(refusalOf(() => updateKey(enabled.key, enabled.versions, { rotationPeriodMs: 60 * SECOND }, NOW), "invalid-argument")).toBe(
      "rotation_period must be whole seconds from 3600s to 315360000s",
    );
  });
});

describe("usableFor", () => {
  /**
   * keys/x ENCRYPT_DECRYPT: version 1 DISABLED, 2 ENABLED, 3 ENABLED, 4 primary
   * ENABLED, min_decryption_version 3; plus a DESTROYED version 5 that cannot
   * arise through the state machine with an ENABLED key, to pin the order.
   */
  const fixture = keyIn("ENABLED");
  const rotated = rotate(fixture.key, fixture.versions, NOW);
  const key = setMinDecryptionVersion(rotated.key, 3, NOW).key;
  const v = (n: number): KeyVersion => (n === 4 ? rotated.version : versionOf(fixture, n));
  const destroyed = (n: number): KeyVersion => ({ ...v(n), state: "DESTROYED", destroyTime: NOW });
  const disabled = (n: number): KeyVersion => ({ ...v(n), state: "DISABLED" });

  const ok = null;
  type Case = readonly [string, Key, KeyVersion, KeyOperation, string | null];
  const cases: Case[] = [
    ["encrypt with the primary", key, v(4), "encrypt", ok],
    ["encrypt with an older version at the minimum", key, v(3), "encrypt", ok],
    ["encrypt below the minimum", key, v(2), "encrypt", "version 2 of keys/x is below min_decryption_version 3"],
    ["decrypt with the primary", key, v(4), "decrypt", ok],
    ["decrypt with a version at the minimum", key, v(3), "decrypt", ok],
    ["decrypt below the minimum", key, v(2), "decrypt", "version 2 of keys/x is below min_decryption_version 3"],
    ["decrypt with a DISABLED version below the minimum", key, v(1), "decrypt", "version 1 of keys/x is below min_decryption_version 3"],
    ["decrypt with a DISABLED version", key, disabled(3), "decrypt", "version 3 of keys/x is DISABLED"],
    ["decrypt with a DESTROYED version", key, destroyed(3), "decrypt", "version 3 of keys/x is DESTROYED"],
    ["decrypt with a DESTROYED version below the minimum", key, destroyed(2), "decrypt", "version 2 of keys/x is DESTROYED"],
    ["encrypt with a DESTROYED primary", key, destroyed(4), "encrypt", "version 4 of keys/x is DESTROYED"],
    ["encrypt with a DISABLED older version", key, disabled(3), "encrypt", "version 3 of keys/x is DISABLED"],
    ["decrypt with a DISABLED key", disableKey(key, NOW).key, v(4), "decrypt", "key keys/x is DISABLED"],
    ["encrypt with a key PENDING_DELETION", scheduleDeletion(key, DAY, DAY, NOW).key, v(4), "encrypt", "key keys/x is PENDING_DELETION"],
    ["sign with an ENCRYPT_DECRYPT key", key, v(4), "sign", "keys/x has purpose ENCRYPT_DECRYPT, not SIGN_VERIFY"],
    ["verify with an ENCRYPT_DECRYPT key", key, v(4), "verify", "keys/x has purpose ENCRYPT_DECRYPT, not SIGN_VERIFY"],
    ["mac with an ENCRYPT_DECRYPT key", key, v(4), "mac", "keys/x has purpose ENCRYPT_DECRYPT, not MAC"],
    ["verify-mac with an ENCRYPT_DECRYPT key", key, v(4), "verify-mac", "keys/x has purpose ENCRYPT_DECRYPT, not MAC"],
    ["get-public-key of an ENCRYPT_DECRYPT key", key, v(4), "get-public-key", "keys/x has purpose ENCRYPT_DECRYPT, not SIGN_VERIFY"],
    ["a wrong purpose on a DISABLED key", disableKey(key, NOW).key, v(4), "mac", "keys/x has purpose ENCRYPT_DECRYPT, not MAC"],
  ];

  const signing = keyIn("ENABLED", aSpec({ purpose: "SIGN_VERIFY", algorithm: "ED25519" }));
  const signingKey = setMinDecryptionVersion(signing.key, 2, NOW).key;
  const s = (n: number) => versionOf(signing, n);
  cases.push(
    ["sign with the primary", signingKey, s(3), "sign", ok],
    ["sign with an older version", signingKey, s(2), "sign", ok],
    ["sign below the minimum", signingKey, { ...s(1), state: "ENABLED" }, "sign", "version 1 of keys/x is below min_decryption_version 2"],
    ["verify with an older version", signingKey, s(2), "verify", ok],
    ["verify below the minimum", signingKey, s(1), "verify", "version 1 of keys/x is below min_decryption_version 2"],
    ["get-public-key of an older version", signingKey, s(2), "get-public-key", ok],
    ["get-public-key below the minimum", signingKey, { ...s(1), state: "ENABLED" }, "get-public-key", ok],
    ["get-public-key of a DISABLED version", signingKey, s(1), "get-public-key", "version 1 of keys/x is DISABLED"],
    ["get-public-key of a DISABLED key", disableKey(signingKey, NOW).key, s(3), "get-public-key", "key keys/x is DISABLED"],
    ["decrypt with a SIGN_VERIFY key", signingKey, s(3), "decrypt", "keys/x has purpose SIGN_VERIFY, not ENCRYPT_DECRYPT"],
    ["encrypt with a SIGN_VERIFY key", signingKey, s(3), "encrypt", "keys/x has purpose SIGN_VERIFY, not ENCRYPT_DECRYPT"],
  );

  const mac = keyIn("ENABLED", aSpec({ purpose: "MAC", algorithm: "HMAC_SHA256" }));
  const m = (n: number) => versionOf(mac, n);
  cases.push(
    ["mac with the primary", mac.key, m(3), "mac", ok],
    ["mac with an older version", mac.key, m(2), "mac", ok],
    ["verify-mac with an older version", mac.key, m(2), "verify-mac", ok],
    ["verify-mac with a DISABLED version", mac.key, m(1), "verify-mac", "version 1 of keys/x is DISABLED"],
    ["sign with a MAC key", mac.key, m(3), "sign", "keys/x has purpose MAC, not SIGN_VERIFY"],
    ["decrypt with a MAC key", mac.key, m(3), "decrypt", "keys/x has purpose MAC, not ENCRYPT_DECRYPT"],
  );

  it.each(cases)("%s", (_name, k, version, operation, message) => {
    const result = usableFor(k, version, operation);
    if (message === null) {
      expect(result).toEqual({ ok: true });
      expect(() => requireUsableFor(k, version, operation)).not.toThrow();
    } else {
      expect(result.ok).toBe(false);
      if (result.ok) return;
      expect(result.error).toBeInstanceOf(DomainError);
      expect(result.error.kind).toBe("failed-precondition");
      expect(result.error.message).toBe(message);
      expect(refusalOf(() => requireUsableFor(k, version, operation))).toBe(message);
    }
  });

  it.each([0, 1])("accepts every version when min_decryption_version is %s", (min) => {
    const k = setMinDecryptionVersion(rotated.key, min, NOW).key;
    expect(usableFor(k, v(2), "decrypt")).toEqual({ ok: true });
  });

  it("refuses a version of another key as a bug", () => {
    const other = createKey(aSpec({ keyId: "y" }), T0).version;
    expect(() => usableFor(key, other, "decrypt")).toThrow(TypeError);
  });
});
