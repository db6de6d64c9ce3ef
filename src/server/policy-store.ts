import { readFileSync, unwatchFile, watchFile } from "node:fs";
import type { Logger } from "pino";
import { createAuthorizer, type Authorizer } from "../domain/authz/decide.js";
import { parsePolicy, PolicyError } from "../domain/authz/policy.js";

/** Holds the policy in force and swaps it when its file changes. */
export interface PolicyStore {
  /** The authorizer of the policy in force; cheap, call it per request. */
  current(): Authorizer;
  /** Re-reads the file now; on error keeps the policy in force and rethrows. */
  reload(): Authorizer;
  close(): void;
}

/**
 * Loads the policy file and watches it (stat polling every `intervalMs`,
 * default 1000, which also sees atomic replaces and Kubernetes ConfigMap
 * symlink swaps that inotify-based watching misses).
 *
 * A file that fails to parse on reload leaves the previous policy in force
 * and logs the error: a typo must not open or shut everything.
 *
 * @throws PolicyError (message prefixed with the file path) when the initial load fails.
 */
export function createPolicyStore(file: string, log: Logger, options: { intervalMs?: number } = {}): PolicyStore {
  const load = (): Authorizer => {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw new PolicyError(`${file}: cannot read policy file (${(err as NodeJS.ErrnoException).code ?? "error"})`, undefined);
    }
    try {
      return createAuthorizer(parsePolicy(text));
    } catch (err) {
      if (err instanceof PolicyError) {
        throw new PolicyError(`${file}: ${err.message}`, undefined);
      }
      throw err;
    }
  };

  let authorizer = load();
  log.info({ policyFile: file, policyDigest: authorizer.policy.digest, rules: authorizer.policy.rules.length }, "policy loaded");

  const reload = (): Authorizer => {
    const next = load();
    if (next.policy.digest !== authorizer.policy.digest) {
      authorizer = next;
      log.info({ policyFile: file, policyDigest: next.policy.digest, rules: next.policy.rules.length }, "policy reloaded");
    }
    return authorizer;
  };

  const onChange = () => {
    try {
      reload();
    } catch (err) {
      log.error({ policyFile: file, error: (err as Error).message }, "policy reload failed; the previous policy stays in force");
    }
  };
  watchFile(file, { interval: options.intervalMs ?? 1000, persistent: false }, onChange);

  return {
    current: () => authorizer,
    reload,
    close: () => unwatchFile(file, onChange),
  };
}
