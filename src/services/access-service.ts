import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  AccessService,
  GrantEffect,
  IdentitySource,
  Role as ProtoRole,
} from "../../gen/keyward/v1/access_pb.js";
import { ROLES, type Role } from "../domain/authz/roles.js";
import { kIdentity } from "../server/context.js";
import type { PolicyStore } from "../server/policy-store.js";

const toProtoRole: Record<Role, ProtoRole> = {
  ADMIN: ProtoRole.ADMIN,
  SERVICE: ProtoRole.SERVICE,
  AUDITOR: ProtoRole.AUDITOR,
};

/** AccessService: tells callers who the server thinks they are, from the same policy that authorizes them. */
export function createAccessService(deps: { policy: PolicyStore }): ServiceImpl<typeof AccessService> {
  return {
    getCallerIdentity(_request, context) {
      // The authentication interceptor has already refused callers without one.
      const identity = context.values.get(kIdentity)!;
      const authorizer = deps.policy.current();
      const held = authorizer.rolesOf(identity.name);
      return {
        identity: identity.name,
        identitySource: identity.source === "spiffe-id" ? IdentitySource.SPIFFE_ID : IdentitySource.COMMON_NAME,
        roles: ROLES.filter((role) => held.includes(role)).map((role) => toProtoRole[role]),
        grants: authorizer.rulesFor(identity.name).flatMap((rule) =>
          rule.roles.map((role) => ({
            role: toProtoRole[role],
            resourcePatterns: rule.resources.map((pattern) => pattern.source),
            effect: rule.effect === "allow" ? GrantEffect.ALLOW : GrantEffect.DENY,
          })),
        ),
        certificate: {
          subject: identity.certificate.subject,
          serialNumber: identity.certificate.serialNumber,
          notBefore: timestampFromDate(identity.certificate.notBefore),
          notAfter: timestampFromDate(identity.certificate.notAfter),
          sha256Fingerprint: identity.certificate.sha256Fingerprint,
        },
        policyDigest: authorizer.policy.digest,
      };
    },
  };
}
