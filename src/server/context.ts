import { createContextKey } from "@connectrpc/connect";
import type { Decision } from "../domain/authz/decide.js";
import type { Identity } from "./identity.js";

/** The verified caller; undefined when its certificate names nobody usable. */
export const kIdentity = createContextKey<Identity | undefined>(undefined, { description: "caller identity" });

/** Why the caller has no identity (certificate not for client authentication, naming nobody): the UNAUTHENTICATED message. */
export const kAuthenticationRefusal = createContextKey<string>("", { description: "authentication refusal" });

/** Correlates the access log, the audit event and the caller's own logs (header x-request-id). */
export const kRequestId = createContextKey<string>("", { description: "request id" });

/** The peer's address, for logs and audit. */
export const kPeerAddress = createContextKey<string>("", { description: "peer address" });

/** The authorization decision for this call, once made. */
export const kDecision = createContextKey<Decision | undefined>(undefined, { description: "authorization decision" });

/** Set by a handler that used a key version (`keys/{key}/versions/{n}`), for its audit event. */
export const kAuditKeyVersion = createContextKey<string>("", { description: "key version used" });

/**
 * Set by a handler when the audit log should say more than the caller is
 * told (which check a decryption failed), never anything secret.
 */
export const kAuditDetail = createContextKey<string>("", { description: "audit detail" });

/** Set by a handler that wrote the call's event in its own transaction, with its mutation. */
export const kAuditWritten = createContextKey<boolean>(false, { description: "audit event already written" });

/**
 * Writes the call's success event inside the handler's own transaction (a
 * mutation), so that the change and its event commit together. Set by the
 * audit interceptor; `tx` is the storage's transaction handle.
 */
export const kAuditWithin = createContextKey<(tx: unknown) => Promise<void>>(
  async () => {
    throw new Error("no audit interceptor on this call");
  },
  { description: "audit within a transaction" },
);
