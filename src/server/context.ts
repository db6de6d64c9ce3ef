import { createContextKey } from "@connectrpc/connect";
import type { Decision } from "../domain/authz/decide.js";
import type { Identity } from "./identity.js";

/** The verified caller; undefined when its certificate names nobody usable. */
export const kIdentity = createContextKey<Identity | undefined>(undefined, { description: "caller identity" });

/** Correlates the access log, the audit event and the caller's own logs (header x-request-id). */
export const kRequestId = createContextKey<string>("", { description: "request id" });

/** The peer's address, for logs and audit. */
export const kPeerAddress = createContextKey<string>("", { description: "peer address" });

/** The authorization decision for this call, once made. */
export const kDecision = createContextKey<Decision | undefined>(undefined, { description: "authorization decision" });
