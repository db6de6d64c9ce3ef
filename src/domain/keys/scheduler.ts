import type { Clock } from "./clock.js";
import type { DueOutcome, KeyManager } from "./key-manager.js";
import type { KeyRepository, WithinTransaction } from "./repository.js";

/** How many due keys one run handles; the next run takes the rest. */
const BATCH = 100;

export interface KeyScheduler {
  /** Handles the keys due now; resolves with what was done to each. Run it periodically (main.ts). */
  runOnce(): Promise<Map<string, DueOutcome>>;
}

/**
 * Automatic rotation and scheduled destruction. Every replica runs it: each
 * key is decided under its row lock (KeyManager.runDue), so a key due on
 * several replicas at once is rotated or destroyed exactly once.
 */
export function createKeyScheduler(deps: {
  keys: KeyManager;
  repository: Pick<KeyRepository, "due">;
  clock: Clock;
  /** The audit hook recording what the scheduler did to `name`. */
  audit: (name: string, outcome: Exclude<DueOutcome, "not-due">) => WithinTransaction;
  onError: (err: unknown, name?: string) => void;
}): KeyScheduler {
  const runOnce = async () => {
    const done = new Map<string, DueOutcome>();
    for (const name of await deps.repository.due(deps.clock.now(), BATCH)) {
      try {
        done.set(name, await deps.keys.runDue(name, (outcome) => deps.audit(name, outcome)));
      } catch (err) {
        deps.onError(err, name);
      }
    }
    return done;
  };

  return { runOnce };
}
