import type { Policy, Rule } from "./policy.js";
import type { Role } from "./roles.js";

/** The outcome of an authorization check; `rule` names the deciding rule when there is one. */
export type Decision =
  | { readonly kind: "allow"; readonly role: Role; readonly rule: string }
  | { readonly kind: "deny"; readonly reason: string; readonly rule?: string };

/**
 * Answers authorization questions for one policy. Pure: no I/O, no clock.
 *
 * Semantics, for an identity asking to act with one of `roles` on each of
 * `resources`:
 * - default deny: a resource is allowed only when some allow rule matches
 *   the identity, one of the roles and the resource;
 * - deny wins: a deny rule matching the identity, a role and the resource
 *   withdraws that role on that resource, whatever allow rules say;
 * - every resource of a call must be allowed (ReEncrypt names two keys).
 */
export interface Authorizer {
  readonly policy: Policy;
  /** Rules whose identity patterns match, in file order. */
  rulesFor(identity: string): readonly Rule[];
  /** Roles granted to the identity by at least one allow rule, on any resource. */
  rolesOf(identity: string): readonly Role[];
  /**
   * Whether the identity holds one of `roles` anywhere. Checked before the
   * request is even validated, so a caller with no business calling a method
   * learns nothing from its validation errors.
   */
  mayCall(identity: string, roles: readonly Role[]): boolean;
  decide(identity: string, roles: readonly Role[], resources: readonly string[]): Decision;
}

const MAX_CACHED_IDENTITIES = 10_000;
const MAX_CACHED_DECISIONS = 10_000;

export function createAuthorizer(policy: Policy): Authorizer {
  const cache = new Map<string, readonly Rule[]>();
  const decisions = new Map<string, Decision>();

  const rulesFor = (identity: string): readonly Rule[] => {
    let rules = cache.get(identity);
    if (rules === undefined) {
      rules = policy.rules.filter((rule) => rule.identities.some((p) => p.matches(identity)));
      if (cache.size >= MAX_CACHED_IDENTITIES) {
        cache.clear();
      }
      cache.set(identity, rules);
    }
    return rules;
  };

  const rolesOf = (identity: string): Role[] => {
    const held = new Set<Role>();
    for (const rule of rulesFor(identity)) {
      if (rule.effect === "allow") {
        rule.roles.forEach((role) => held.add(role));
      }
    }
    return [...held];
  };

  const decideOne = (rules: readonly Rule[], roles: readonly Role[], resource: string): Decision => {
    let denial: Rule | undefined;
    for (const role of roles) {
      const applies = (rule: Rule) => rule.roles.includes(role) && rule.resources.some((p) => p.matches(resource));
      const deny = rules.find((rule) => rule.effect === "deny" && applies(rule));
      if (deny) {
        denial ??= deny;
        continue;
      }
      const allow = rules.find((rule) => rule.effect === "allow" && applies(rule));
      if (allow) {
        return { kind: "allow", role, rule: allow.name };
      }
    }
    return denial
      ? { kind: "deny", reason: `denied on "${resource}" by rule "${denial.name}"`, rule: denial.name }
      : { kind: "deny", reason: `no rule grants ${roles.join(" or ")} on "${resource}"` };
  };

  return {
    policy,
    rulesFor,
    rolesOf,
    mayCall: (identity, roles) => rolesOf(identity).some((role) => roles.includes(role)),
    decide(identity, roles, resources) {
      // The same caller asks about the same few resources call after call;
      // the answer only changes with the policy, which makes a new authorizer.
      const memo = `${identity}\u0000${roles.join(",")}\u0000${resources.join("\u0000")}`;
      const known = decisions.get(memo);
      if (known !== undefined) {
        return known;
      }
      const rules = rulesFor(identity);
      let decision: Decision = { kind: "deny", reason: "no resource named" };
      for (const resource of resources) {
        decision = decideOne(rules, roles, resource);
        if (decision.kind === "deny") {
          break;
        }
      }
      if (decisions.size >= MAX_CACHED_DECISIONS) {
        decisions.clear();
      }
      decisions.set(memo, decision);
      return decision;
    },
  };
}
