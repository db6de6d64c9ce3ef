/** One rule of a Keyward policy file. */
export interface PolicyRule {
  readonly name: string;
  /** Omitted: the file says nothing, and the rule allows. */
  readonly effect?: "allow" | "deny";
  readonly identities: readonly string[];
  readonly roles: ReadonlyArray<"ADMIN" | "SERVICE" | "AUDITOR">;
  readonly resources: readonly string[];
}

/**
 * A policy file built from rules, as an operator would write it: one rule
 * per block, every field on a line of its own, lists in flow style with
 * quoted items. The layout is fixed, so a test may point at a line.
 */
export function policyText(rules: readonly PolicyRule[]): string {
  const list = (values: readonly string[]) => `[${values.map((v) => JSON.stringify(v)).join(", ")}]`;
  const body = rules
    .map(
      (rule) =>
        `  - name: ${rule.name}\n` +
        (rule.effect ? `    effect: ${rule.effect}\n` : "") +
        `    identities: ${list(rule.identities)}\n` +
        `    roles: ${list(rule.roles)}\n` +
        `    resources: ${list(rule.resources)}\n`,
    )
    .join("");
  return `apiVersion: keyward/v1\nkind: Policy\nrules:\n${body}`;
}
