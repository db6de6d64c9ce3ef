import { describe, expect, it } from "vitest";
import { createAuthorizer } from "../../../../src/domain/authz/decide.js";
import { parsePolicy, PolicyError } from "../../../../src/domain/authz/policy.js";
import { devPolicyText } from "../../../../src/dev/dev-files.js";

const header = "apiVersion: keyward/v1\nkind: Policy\n";

function errorOf(text: string): PolicyError {
  try {
    parsePolicy(text);
  } catch (err) {
    expect(err).toBeInstanceOf(PolicyError);
    return err as PolicyError;
  }
  throw new Error("expected the policy to be refused");
}

describe("parsePolicy", () => {
  it("accepts the dev policy and digests its exact bytes", () => {
    const policy = parsePolicy(devPolicyText());
    expect(policy.rules.map((r) => [r.name, r.roles])).toEqual([
      ["dev-admin", ["ADMIN"]],
      ["dev-service", ["SERVICE"]],
      ["dev-auditor", ["AUDITOR"]],
    ]);
    expect(policy.digest).toMatch(/^[0-9a-f]{64}$/);
    expect(parsePolicy(`${devPolicyText()}\n`).digest).not.toBe(policy.digest);
  });

  it("refuses bad YAML, naming the line", () => {
    const err = errorOf(`${header}rules:\n  - name: a\n    roles: [ADMIN\n`);
    expect(err.message).toMatch(/^line \d+: invalid YAML/);
    expect(err.line).toBeGreaterThanOrEqual(5);
  });

  it("refuses an unknown role, naming its line and the known roles", () => {
    const text = `${header}rules:\n  - name: a\n    identities: [x]\n    roles: [ADMIN, ROOT]\n    resources: ["**"]\n`;
    const err = errorOf(text);
    expect(err.message).toBe('line 6: rule 1: unknown role "ROOT" (expected ADMIN, SERVICE, AUDITOR)');
  });

  it("refuses an unknown field, so a typo cannot change access silently", () => {
    const text = `${header}rules:\n  - name: a\n    identity: [x]\n    roles: [ADMIN]\n    resources: ["**"]\n`;
    expect(errorOf(text).message).toBe(
      'line 5: rule 1: unknown field "identity" (expected name, effect, identities, roles, resources)',
    );
  });

  it.each([
    ["wrong apiVersion", "apiVersion: v2\nkind: Policy\nrules: []\n", 'line 1: apiVersion must be "keyward/v1"'],
    ["wrong kind", "apiVersion: keyward/v1\nkind: Role\nrules: []\n", 'line 2: kind must be "Policy"'],
    ["rules not a list", `${header}rules: {}\n`, "line 3: rules must be a list"],
    ["bad effect", `${header}rules:\n  - effect: maybe\n    identities: [x]\n    roles: [ADMIN]\n    resources: [a]\n`, 'line 4: rule 1: effect must be "allow" or "deny"'],
    ["missing identities", `${header}rules:\n  - roles: [ADMIN]\n    resources: [a]\n`, 'line 4: rule 1: "identities" is required'],
    ["allow without roles", `${header}rules:\n  - identities: [x]\n    resources: [a]\n`, 'line 4: rule 1: "roles" is required'],
    ["empty resources", `${header}rules:\n  - identities: [x]\n    roles: [ADMIN]\n    resources: []\n`, 'line 6: rule 1: "resources" must be a non-empty list'],
    ["bad pattern", `${header}rules:\n  - identities: [x]\n    roles: [ADMIN]\n    resources: ["keys/a**"]\n`, 'line 6: rule 1: pattern "keys/a**": "**" must be a whole segment'],
    ["duplicate name", `${header}rules:\n  - name: a\n    identities: [x]\n    roles: [ADMIN]\n    resources: [a]\n  - name: a\n    identities: [y]\n    roles: [ADMIN]\n    resources: [a]\n`, 'line 8: rule 2: duplicate rule name "a"'],
  ])("refuses %s", (_name, text, message) => {
    expect(errorOf(text).message).toBe(message);
  });

  it("decides overlapping allow and deny rules: deny wins, per role and resource", () => {
    const authorizer = createAuthorizer(
      parsePolicy(`${header}rules:
  - name: payments-all-keys
    identities: ["spiffe://prod/payments"]
    roles: [SERVICE]
    resources: ["keys/**"]
  - name: payments-not-hr
    effect: deny
    identities: ["spiffe://prod/*"]
    roles: [SERVICE]
    resources: ["keys/hr-*"]
  - name: payments-reads-metadata
    identities: ["spiffe://prod/payments"]
    roles: [AUDITOR]
    resources: ["keys/hr-salaries"]
  - name: nobody-touches-root
    effect: deny
    identities: ["**"]
    resources: ["keys/root"]
`),
    );
    const id = "spiffe://prod/payments";
    expect(authorizer.decide(id, ["SERVICE"], ["keys/orders"])).toEqual({ kind: "allow", role: "SERVICE", rule: "payments-all-keys" });
    expect(authorizer.decide(id, ["SERVICE"], ["keys/hr-salaries"])).toEqual({
      kind: "deny",
      reason: 'denied on "keys/hr-salaries" by rule "payments-not-hr"',
      rule: "payments-not-hr",
    });
    // The deny withdraws SERVICE only: AUDITOR still reads that key's metadata.
    expect(authorizer.decide(id, ["ADMIN", "SERVICE", "AUDITOR"], ["keys/hr-salaries"])).toMatchObject({ kind: "allow", role: "AUDITOR" });
    // A deny rule without roles withdraws every role.
    expect(authorizer.decide(id, ["SERVICE", "AUDITOR"], ["keys/root"]).kind).toBe("deny");
    // Every resource of a call must be allowed.
    expect(authorizer.decide(id, ["SERVICE"], ["keys/orders", "keys/hr-x"]).kind).toBe("deny");
    // Default deny.
    expect(authorizer.decide(id, ["SERVICE"], ["secrets/shop/prod/db"])).toEqual({
      kind: "deny",
      reason: 'no rule grants SERVICE on "secrets/shop/prod/db"',
    });
    expect(authorizer.decide("spiffe://prod/other", ["SERVICE"], ["keys/orders"]).kind).toBe("deny");
    expect([...authorizer.rolesOf(id)].sort()).toEqual(["AUDITOR", "SERVICE"]);
    expect(authorizer.mayCall(id, ["ADMIN"])).toBe(false);
    expect(authorizer.mayCall(id, ["ADMIN", "SERVICE"])).toBe(true);
    expect(authorizer.rulesFor(id).map((r) => r.name)).toEqual([
      "payments-all-keys",
      "payments-not-hr",
      "payments-reads-metadata",
      "nobody-touches-root",
    ]);
  });

  it("accepts a policy with no rules, which denies everything", () => {
    const authorizer = createAuthorizer(parsePolicy(`${header}rules: []\n`));
    expect(authorizer.mayCall("anyone", ["ADMIN", "SERVICE", "AUDITOR"])).toBe(false);
    expect(authorizer.decide("anyone", ["ADMIN"], ["keys/a"]).kind).toBe("deny");
  });
});
