import { createHash } from "node:crypto";
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from "yaml";
import { compilePattern, PatternError, type Pattern } from "./pattern.js";
import { isRole, ROLES, type Role } from "./roles.js";

export type Effect = "allow" | "deny";

/** One rule of the policy file, compiled. */
export interface Rule {
  readonly name: string;
  readonly effect: Effect;
  readonly identities: readonly Pattern[];
  /** Roles the rule grants (allow) or withdraws (deny). */
  readonly roles: readonly Role[];
  readonly resources: readonly Pattern[];
  /** 1-based line of the rule in the file, for messages. */
  readonly line: number;
}

/** A parsed, validated policy; immutable. */
export interface Policy {
  readonly rules: readonly Rule[];
  /** Hex SHA-256 of the file's bytes: names the exact policy in force. */
  readonly digest: string;
}

export const POLICY_API_VERSION = "keyward/v1";
export const POLICY_KIND = "Policy";

/** Thrown by {@link parsePolicy}; the message names the line at fault. */
export class PolicyError extends Error {
  override name = "PolicyError";
  constructor(
    message: string,
    readonly line: number | undefined,
  ) {
    super(line === undefined ? message : `line ${line}: ${message}`);
  }
}

const RULE_KEYS = new Set(["name", "effect", "identities", "roles", "resources"]);
const TOP_KEYS = new Set(["apiVersion", "kind", "rules"]);

/**
 * Parses and validates a policy file.
 *
 * ```yaml
 * apiVersion: keyward/v1
 * kind: Policy
 * rules:
 *   - name: payments-use-keys
 *     effect: allow            # allow (default) or deny
 *     identities: ["spiffe://prod.example/payments"]
 *     roles: [SERVICE]          # a deny rule without roles withdraws every role
 *     resources: ["keys/payments-*", "secrets/payments/prod/**"]
 * ```
 *
 * Unknown keys are errors, so a typo cannot silently widen or narrow access.
 *
 * @throws PolicyError naming the line of the first problem found.
 */
export function parsePolicy(text: string): Policy {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  const lineOf = (node: Node | null | undefined): number | undefined =>
    node?.range ? lineCounter.linePos(node.range[0]).line : undefined;

  const [yamlError] = doc.errors;
  if (yamlError) {
    const line = yamlError.pos ? lineCounter.linePos(yamlError.pos[0]).line : undefined;
    throw new PolicyError(`invalid YAML: ${yamlError.message.split("\n")[0]}`, line);
  }
  const root = doc.contents;
  if (!isMap(root)) {
    throw new PolicyError("the policy must be a mapping with apiVersion, kind and rules", lineOf(root) ?? 1);
  }
  for (const pair of root.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    if (!TOP_KEYS.has(key)) {
      throw new PolicyError(`unknown field "${key}" (expected apiVersion, kind, rules)`, lineOf(pair.key as Node));
    }
  }
  const scalar = (name: string): unknown => {
    const node = root.get(name, true);
    return isScalar(node) ? node.value : node;
  };
  if (scalar("apiVersion") !== POLICY_API_VERSION) {
    throw new PolicyError(`apiVersion must be "${POLICY_API_VERSION}"`, lineOf(root.get("apiVersion", true) as Node) ?? 1);
  }
  if (scalar("kind") !== POLICY_KIND) {
    throw new PolicyError(`kind must be "${POLICY_KIND}"`, lineOf(root.get("kind", true) as Node) ?? 1);
  }
  const rulesNode = root.get("rules", true);
  if (rulesNode === undefined || (isScalar(rulesNode) && rulesNode.value === null)) {
    return { rules: [], digest: digestOf(text) };
  }
  if (!isSeq(rulesNode)) {
    throw new PolicyError("rules must be a list", lineOf(rulesNode as Node));
  }

  const names = new Set<string>();
  const rules = rulesNode.items.map((item, index): Rule => {
    const line = lineOf(item as Node);
    if (!isMap(item)) {
      throw new PolicyError(`rule ${index + 1} must be a mapping`, line);
    }
    for (const pair of item.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : "";
      if (!RULE_KEYS.has(key)) {
        throw new PolicyError(
          `rule ${index + 1}: unknown field "${key}" (expected name, effect, identities, roles, resources)`,
          lineOf(pair.key as Node),
        );
      }
    }
    const field = (key: string) => item.get(key, true) as Node | undefined;
    const strings = (key: string, required: boolean): { values: string[]; line: number | undefined } => {
      const node = field(key);
      if (node === undefined) {
        if (required) {
          throw new PolicyError(`rule ${index + 1}: "${key}" is required`, line);
        }
        return { values: [], line };
      }
      if (!isSeq(node) || node.items.length === 0) {
        throw new PolicyError(`rule ${index + 1}: "${key}" must be a non-empty list`, lineOf(node));
      }
      const values = node.items.map((entry) => {
        if (!isScalar(entry) || typeof entry.value !== "string" || entry.value.length === 0) {
          throw new PolicyError(`rule ${index + 1}: every entry of "${key}" must be a non-empty string`, lineOf(entry as Node));
        }
        return entry.value;
      });
      return { values, line: lineOf(node) };
    };
    const patterns = (key: string): Pattern[] => {
      const { values, line: at } = strings(key, true);
      return values.map((value) => {
        try {
          return compilePattern(value);
        } catch (err) {
          throw new PolicyError(`rule ${index + 1}: ${(err as PatternError).message}`, at);
        }
      });
    };

    const nameNode = field("name");
    const name = isScalar(nameNode) && typeof nameNode.value === "string" ? nameNode.value : `rule-${index + 1}`;
    if (names.has(name)) {
      throw new PolicyError(`rule ${index + 1}: duplicate rule name "${name}"`, lineOf(nameNode) ?? line);
    }
    names.add(name);

    const effectNode = field("effect");
    const effect = effectNode === undefined ? "allow" : isScalar(effectNode) ? effectNode.value : undefined;
    if (effect !== "allow" && effect !== "deny") {
      throw new PolicyError(`rule ${index + 1}: effect must be "allow" or "deny"`, lineOf(effectNode));
    }

    const declaredRoles = strings("roles", effect === "allow");
    const roles = declaredRoles.values.map((role) => {
      if (!isRole(role)) {
        throw new PolicyError(`rule ${index + 1}: unknown role "${role}" (expected ${ROLES.join(", ")})`, declaredRoles.line);
      }
      return role;
    });

    return {
      name,
      effect,
      identities: patterns("identities"),
      roles: roles.length > 0 ? roles : [...ROLES],
      resources: patterns("resources"),
      line: line ?? 1,
    };
  });

  return { rules, digest: digestOf(text) };
}

function digestOf(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
