import type { Clock } from "../../../../src/domain/keys/clock.js";
import type { Key, KeyState, KeyVersion } from "../../../../src/domain/keys/key.js";
import {
  createKey,
  destroyDue,
  disableKey,
  disableVersion,
  rotate,
  scheduleDeletion,
  type KeySpec,
} from "../../../../src/domain/keys/state-machine.js";

export const SECOND = 1000;
export const HOUR = 3600 * SECOND;
export const DAY = 24 * HOUR;

/** The instant every fixture starts from. */
export const T0 = new Date("2030-01-01T00:00:00.000Z");

/** `T0 + ms`. */
export const at = (ms: number): Date => new Date(T0.getTime() + ms);

/** A clock that moves only when told to. */
export interface ManualClock extends Clock {
  advance(ms: number): void;
  set(time: Date): void;
}

export function createManualClock(start: Date = T0): ManualClock {
  let current = start.getTime();
  return {
    now: () => new Date(current),
    advance: (ms) => {
      current += ms;
    },
    set: (time) => {
      current = time.getTime();
    },
  };
}

/** A CreateKey spec: `keys/x`, ENCRYPT_DECRYPT with AES-256-GCM unless overridden. */
export function aSpec(overrides: Partial<KeySpec> = {}): KeySpec {
  return { keyId: "x", purpose: "ENCRYPT_DECRYPT", algorithm: "AES_256_GCM", ...overrides };
}

/** A key with its versions, as a repository would hand them over. */
export interface Fixture {
  readonly key: Key;
  readonly versions: readonly KeyVersion[];
}

/** The version numbered `n` of a fixture. */
export function versionOf(fixture: Fixture, n: number): KeyVersion {
  const found = fixture.versions.find((v) => v.version === n);
  if (found === undefined) {
    throw new Error(`fixture has no version ${n}`);
  }
  return found;
}

function replace(versions: readonly KeyVersion[], next: KeyVersion): KeyVersion[] {
  return versions.map((v) => (v.version === next.version ? next : v));
}

/**
 * `keys/x` with versions 1..3, built only through the state machine: created
 * at T0, rotated at T0+1h and T0+2h (primary 3), version 1 DISABLED at T0+3h,
 * version 2 ENABLED, then moved to `state` at T0+4h (PENDING_DELETION with a
 * one-day window; DESTROYED one day later).
 */
export function keyIn(state: KeyState, spec: KeySpec = aSpec()): Fixture {
  const created = createKey(spec, T0);
  let key = created.key;
  let versions: KeyVersion[] = [created.version];
  for (const when of [at(HOUR), at(2 * HOUR)]) {
    const rotated = rotate(key, versions, when);
    key = rotated.key;
    versions = [...versions, rotated.version];
  }
  versions = replace(versions, disableVersion(key, versions[0]!).version);
  const when = at(4 * HOUR);
  switch (state) {
    case "ENABLED":
      return { key, versions };
    case "DISABLED":
      return { key: disableKey(key, when).key, versions };
    case "PENDING_DELETION":
      return { key: scheduleDeletion(key, DAY, DAY, when).key, versions };
    case "DESTROYED": {
      const pending = scheduleDeletion(key, DAY, DAY, when).key;
      const outcome = destroyDue(pending, versions, at(4 * HOUR + DAY));
      if (outcome.kind !== "destroyed") {
        throw new Error(outcome.reason);
      }
      return { key: outcome.key, versions: outcome.versions };
    }
  }
}
