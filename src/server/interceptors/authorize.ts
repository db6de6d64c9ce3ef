import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { kAuthenticationRefusal, kDecision, kIdentity } from "../context.js";
import { PERMISSIONS } from "../permissions.js";
import type { PolicyStore } from "../policy-store.js";

const methodName = (req: { service: { typeName: string }; method: { name: string } }) =>
  `${req.service.typeName}/${req.method.name}`;

/**
 * First gate, before validation: the caller must have an identity, the
 * method must be in the permission table, and the caller must hold one of
 * its roles somewhere. A caller failing here learns nothing about the
 * request format, let alone about resources.
 */
export function createAuthenticateInterceptor(policy: PolicyStore): Interceptor {
  return (next) => (req) => {
    const identity = req.contextValues.get(kIdentity);
    if (identity === undefined) {
      throw new ConnectError(
        req.contextValues.get(kAuthenticationRefusal) || "a client certificate naming the caller is required",
        Code.Unauthenticated,
      );
    }
    const method = methodName(req);
    const permission = PERMISSIONS[method];
    if (permission === undefined) {
      throw new ConnectError(`${method} is not permitted to anyone`, Code.PermissionDenied);
    }
    if (permission.kind === "role" && !policy.current().mayCall(identity.name, permission.roles)) {
      throw new ConnectError(
        `${identity.name} may not call ${method}: it requires the ${permission.roles.join(" or ")} role`,
        Code.PermissionDenied,
      );
    }
    return next(req);
  };
}

/**
 * Second gate, after validation and before the handler looks anything up:
 * the caller's roles must cover every resource the request names.
 */
export function createAuthorizeResourceInterceptor(policy: PolicyStore): Interceptor {
  return (next) => (req) => {
    const permission = PERMISSIONS[methodName(req)];
    if (permission?.kind !== "role") {
      return next(req);
    }
    // Streaming calls are only made on fixed resources (the audit log), so
    // their resources never depend on a message not yet received.
    const resources = permission.resources(req.stream ? {} : (req.message as unknown as Record<string, unknown>));
    const identity = req.contextValues.get(kIdentity)!;
    const decision = policy.current().decide(identity.name, permission.roles, resources);
    req.contextValues.set(kDecision, decision);
    if (decision.kind === "deny") {
      throw new ConnectError(`permission denied: ${decision.reason}`, Code.PermissionDenied);
    }
    return next(req);
  };
}
