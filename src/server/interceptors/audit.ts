import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { AuditRecord } from "../../domain/audit/event.js";
import type { Decision } from "../../domain/authz/decide.js";
import type { Role } from "../../domain/authz/roles.js";
import type { GroupCommitter } from "../../domain/audit/group-commit.js";
import { DomainError } from "../../domain/errors.js";
import { kAuditDetail, kAuditKeyVersion, kAuditWithin, kAuditWritten, kDecision, kIdentity, kPeerAddress, kRequestId } from "../context.js";
import { PERMISSIONS } from "../permissions.js";
import type { PolicyStore } from "../policy-store.js";

// Bounds on what a caller can make the log hold: names come from requests,
// and a refused request may carry anything.
const MAX_RESOURCES = 8;
const MAX_RESOURCE_LENGTH = 512;
const MAX_MESSAGE_LENGTH = 1024;

/**
 * Bounded, and with control characters written as `\uXXXX`: fields come
 * from requests (names, a ciphertext's claimed key name), and PostgreSQL
 * cannot store a NUL; unescaped, one crafted request would fail its own
 * event and every other event of the same group commit.
 */
const clip = (text: string, max: number) => {
  const printable = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return printable.length > max ? `${printable.slice(0, max)}…` : printable;
};

/**
 * Records every call, allowed or denied, succeeded or failed, and answers
 * only once its event is durable: if the event cannot be written in time the
 * caller gets UNAVAILABLE instead of the result. A handler that wrote its
 * event in its own transaction (a mutation) sets kAuditWritten, and only a
 * failure is then recorded here.
 *
 * Streaming calls are recorded when the stream opens, before any data
 * flows, and again if the stream later fails.
 *
 * Sits outside error mapping, so it sees the codes callers see, and inside
 * the access log, whose request id it records.
 */
export function createAuditInterceptor(deps: {
  audit: GroupCommitter;
  policy: PolicyStore;
  /** Appends records inside the given transaction (the audit repository's `appendWithin`). */
  appendWithin: (tx: unknown, records: readonly AuditRecord[]) => Promise<unknown>;
}): Interceptor {
  return (next) => async (req) => {
    const time = new Date();
    const method = `/${req.service.typeName}/${req.method.name}`;
    const permission = PERMISSIONS[`${req.service.typeName}/${req.method.name}`];

    // The roles the call went through with: the resource decision's; or, for
    // a request refused by validation (which runs after the role gate and
    // before the resource decision, so no decision exists), the method's
    // roles that the caller holds — it passed the gate with them.
    const rolesOf = (code: Code | 0, decision: Decision | undefined): Role[] => {
      if (decision !== undefined) {
        return decision.kind === "allow" ? [decision.role] : [];
      }
      const identity = req.contextValues.get(kIdentity);
      if (code !== Code.InvalidArgument || identity === undefined || permission?.kind !== "role") {
        return [];
      }
      const held = deps.policy.current().rolesOf(identity.name);
      return permission.roles.filter((role) => held.includes(role));
    };

    const build = (code: Code | 0, message: string): AuditRecord => {
      const decision = req.contextValues.get(kDecision);
      const resources =
        permission?.kind === "role" && !req.stream
          ? permission.resources(req.message as unknown as Record<string, unknown>).filter((name) => name !== "")
          : [];
      const detail = req.contextValues.get(kAuditDetail);
      return {
        time,
        identity: clip(req.contextValues.get(kIdentity)?.name ?? "", MAX_RESOURCE_LENGTH),
        roles: rolesOf(code, decision),
        method,
        resources: resources.slice(0, MAX_RESOURCES).map((name) => clip(name, MAX_RESOURCE_LENGTH)),
        keyVersion: clip(req.contextValues.get(kAuditKeyVersion), MAX_RESOURCE_LENGTH),
        resultCode: code,
        resultMessage: clip(detail === "" ? message : `${message} (${detail})`, MAX_MESSAGE_LENGTH),
        requestId: clip(req.contextValues.get(kRequestId), MAX_RESOURCE_LENGTH),
        peerAddress: req.contextValues.get(kPeerAddress),
        policyDigest: deps.policy.current().policy.digest,
      };
    };
    const record = async (code: Code | 0, message: string, signal: AbortSignal | null = req.signal) => {
      const event = build(code, message);
      try {
        await deps.audit.append(event, signal ?? undefined);
      } catch (err) {
        if (err instanceof DomainError) {
          throw new ConnectError(err.message, Code.Unavailable, undefined, undefined, err);
        }
        throw err;
      }
    };

    req.contextValues.set(kAuditWithin, async (tx) => {
      await deps.appendWithin(tx, [build(0, "")]);
      req.contextValues.set(kAuditWritten, true);
    });

    let res;
    try {
      res = await next(req);
    } catch (err) {
      const error = ConnectError.from(err);
      // Not bound to the call's signal: a streaming request that fails to
      // decode has already aborted it (Connect closes the request body), and
      // its refusal must still be recorded and answered as such. The audit
      // timeout bounds the wait.
      await record(error.code, error.rawMessage, null);
      throw err;
    }
    if (!req.contextValues.get(kAuditWritten)) {
      await record(0, "");
    }
    if (!res.stream) {
      return res;
    }
    // A stream that fails after it opened gets a second event with its
    // final code (a client cancelling is not a failure worth recording).
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } catch (err) {
          const error = ConnectError.from(err);
          if (error.code !== Code.Canceled) {
            await record(error.code, error.rawMessage).catch(() => {});
          }
          throw err;
        }
      })(),
    };
  };
}
