import type { Role } from "../authz/roles.js";

/**
 * What happened in one call, before it has a place in the chain. Never holds
 * plaintext, secret values, key bytes, tokens or associated data: only names,
 * codes and identifiers.
 */
export interface AuditRecord {
  /** When the call was received, whole milliseconds. */
  readonly time: Date;
  /** The caller's identity; empty when it could not be identified. */
  readonly identity: string;
  /** The roles the call was authorized under; empty when denied. */
  readonly roles: readonly Role[];
  /** gRPC path, e.g. `/keyward.v1.CryptoService/Encrypt`. */
  readonly method: string;
  readonly resources: readonly string[];
  /** `keys/{key}/versions/{n}` when a key version was used; else empty. */
  readonly keyVersion: string;
  /** gRPC status code, 0 (OK) to 16. */
  readonly resultCode: number;
  readonly resultMessage: string;
  readonly requestId: string;
  readonly peerAddress: string;
  readonly policyDigest: string;
}

/** A record with its place in the chain. */
export interface AuditEvent extends AuditRecord {
  /** 1 for the first event of the deployment, then +1 without gaps. */
  readonly sequence: bigint;
  /** `hash` of the event at `sequence - 1`; 32 zero bytes for sequence 1. */
  readonly previousHash: Buffer;
  /** See chain.ts for how it is computed. */
  readonly hash: Buffer;
}

/** Which events to read back; every field optional, combined with AND. */
export interface AuditFilter {
  readonly startTime?: Date;
  readonly endTime?: Date;
  readonly identity?: string;
  /** A full gRPC path, or a service prefix ending in `/`. */
  readonly method?: string;
  /** This resource or any below it, by whole segments. */
  readonly resource?: string;
  readonly resultCode?: number;
}
