/**
 * Failures sorted by what the caller can do about them. The edge maps each
 * kind to a gRPC code in one table (server/error-codes.ts); the domain never
 * speaks gRPC.
 */
export type DomainErrorKind =
  | "invalid-argument"
  | "not-found"
  | "already-exists"
  | "failed-precondition"
  | "aborted"
  | "out-of-range"
  | "permission-denied"
  | "unauthenticated"
  | "resource-exhausted"
  | "unavailable"
  | "data-loss";

/**
 * An expected failure with a message safe to show the caller: it says what
 * was wrong and never echoes plaintext, key bytes, secret values or SQL.
 * The underlying error, if any, goes in `cause` and is only logged.
 */
export class DomainError extends Error {
  override name = "DomainError";
  constructor(
    readonly kind: DomainErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
