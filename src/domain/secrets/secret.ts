/**
 * Secrets: the domain's own types and the pure rules of their versions.
 * Nothing here does I/O or reads the clock; nothing here ever holds a value
 * except the functions that check or generate one.
 *
 * A secret `secrets/{project}/{environment}/{path}` has versions 1, 2, …
 * (never reused); each holds one value, encrypted with the secret's key.
 *
 * | version state | enable  | disable  | destroy   | access | rollback from |
 * |---------------|---------|----------|-----------|--------|---------------|
 * | ENABLED       | no-op   | DISABLED | DESTROYED | yes    | yes           |
 * | DISABLED      | ENABLED | no-op    | DESTROYED | refused| yes           |
 * | DESTROYED     | refused | refused  | no-op     | refused| refused       |
 *
 * @module
 */
import { DomainError } from "../errors.js";

export type SecretType = "OPAQUE" | "PASSWORD" | "API_KEY" | "JSON" | "YAML" | "PEM_CERTIFICATE" | "SSH_KEY";
export type SecretVersionState = "ENABLED" | "DISABLED" | "DESTROYED";
export type SecretVersionOrigin = "ADDED" | "GENERATED" | "ROLLBACK";

/** Versions kept when max_versions is 0 (the default). */
export const DEFAULT_MAX_VERSIONS = 100;

export interface Secret {
  /** `secrets/{project}/{environment}/{path}`. */
  readonly name: string;
  /** Identifies this incarnation of the name: a deleted secret's name used again gets a new uid. */
  readonly uid: string;
  readonly type: SecretType;
  readonly description: string;
  readonly labels: Readonly<Record<string, string>>;
  /** `keys/{key}`, ENCRYPT_DECRYPT; immutable. */
  readonly keyName: string;
  /** 1..1000. */
  readonly maxVersions: number;
  /** The most recently added version, whatever its state; 0 before the first. */
  readonly currentVersion: number;
  readonly createTime: Date;
  readonly updateTime: Date;
  readonly creator: string;
  readonly updater: string;
  /** Decimal change counter (AIP-154). */
  readonly etag: string;
}

export interface SecretVersion {
  readonly secretName: string;
  readonly version: number;
  readonly state: SecretVersionState;
  readonly createTime: Date;
  readonly creator: string;
  readonly destroyTime: Date | null;
  readonly clientSpecifiedDataCrc32c: boolean;
  readonly origin: SecretVersionOrigin;
  /** For ROLLBACK: the version copied; else 0. */
  readonly sourceVersion: number;
}

/** `…/versions/{n}`. */
export function secretVersionName(secretName: string, version: number): string {
  return `${secretName}/versions/${version}`;
}

/**
 * The associated data of a version's ciphertext: the secret's uid, name and
 * the version number. A value moved to another secret's row, to another
 * version, or into a new secret reusing a deleted one's name, fails to
 * decrypt instead of answering with the wrong value.
 */
export function valueBinding(secret: Pick<Secret, "uid" | "name">, version: number): Buffer {
  return Buffer.from(`keyward secret value v1\u0000${secret.uid}\u0000${secret.name}\u0000${version}`, "utf8");
}

/** The parts of a secret name, for the default key and for grants. */
export function secretNameParts(name: string): { project: string; environment: string; path: string } {
  const [, project, environment, ...path] = name.split("/");
  return { project: project!, environment: environment!, path: path.join("/") };
}

/**
 * Check-and-set on the current version (`expected` absent: no check; 0:
 * only if no version was ever added). `expected` is the request's int64 as
 * is: rounded to a JS number, a value beyond 2^53 would be misquoted in the
 * message.
 *
 * @throws DomainError "aborted" when it does not match.
 */
export function checkExpectedVersion(secret: Secret, expected: bigint | undefined): void {
  if (expected !== undefined && expected !== BigInt(secret.currentVersion)) {
    throw new DomainError(
      "aborted",
      `the current version of ${secret.name} is ${secret.currentVersion}, not ${expected}; read the secret again and retry`,
    );
  }
}

/**
 * Which versions a new version pushes out: with the new one counted, the
 * oldest not-yet-destroyed versions beyond max_versions.
 */
export function versionsToPrune(maxVersions: number, live: readonly number[]): number[] {
  const sorted = [...live].sort((a, b) => a - b);
  const excess = sorted.length + 1 - maxVersions;
  return excess > 0 ? sorted.slice(0, excess) : [];
}

export type SecretVersionAction = "enable" | "disable" | "destroy";

/**
 * The state a version moves to, or null for a no-op.
 *
 * @throws DomainError "failed-precondition" for a move out of DESTROYED.
 */
export function moveSecretVersion(version: SecretVersion, action: SecretVersionAction): SecretVersionState | null {
  const target: SecretVersionState = action === "enable" ? "ENABLED" : action === "disable" ? "DISABLED" : "DESTROYED";
  if (version.state === target) {
    return null;
  }
  if (version.state === "DESTROYED") {
    throw new DomainError(
      "failed-precondition",
      `cannot ${action} ${secretVersionName(version.secretName, version.version)}: it is DESTROYED; its value is gone`,
    );
  }
  return target;
}

/**
 * Whether a version's value may be read (AccessSecretVersion) or copied
 * (RollbackSecret: a DISABLED version may be rolled back to).
 *
 * @throws DomainError "failed-precondition" naming the state.
 */
export function requireReadable(version: SecretVersion, purpose: "access" | "rollback"): void {
  const name = secretVersionName(version.secretName, version.version);
  if (version.state === "DESTROYED") {
    throw new DomainError("failed-precondition", `${name} is DESTROYED; its value is gone`);
  }
  if (version.state === "DISABLED" && purpose === "access") {
    throw new DomainError("failed-precondition", `${name} is DISABLED; enable it to access its value`);
  }
}
