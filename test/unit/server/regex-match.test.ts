import { getOption, type DescMessage } from "@bufbuild/protobuf";
import { RE2JS } from "@bufbuild/re2";
import { field as fieldRules, message as messageRules } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { KEYWARD_SERVICES } from "../../../src/main.js";
import { createRegexMatch, MAX_MATCHED_LENGTH } from "../../../src/server/regex-match.js";

/** Every pattern the validator can be asked to match for Keyward's requests, with the field's max_len. */
function patternsOfTheProtos(): Array<{ where: string; pattern: string; maxLen: bigint | undefined }> {
  const found: Array<{ where: string; pattern: string; maxLen: bigint | undefined }> = [];
  const seen = new Set<string>();
  const fromCel = (where: string, expression: string, maxLen: bigint | undefined) => {
    for (const m of expression.matchAll(/matches\('((?:[^'\\]|\\.)*)'\)/g)) {
      found.push({ where: `${where} (CEL)`, pattern: m[1]!.replace(/\\\\/g, "\\"), maxLen });
    }
  };
  const visit = (message: DescMessage) => {
    if (seen.has(message.typeName)) return;
    seen.add(message.typeName);
    for (const rule of getOption(message, messageRules).cel) {
      fromCel(message.typeName, rule.expression, undefined);
    }
    for (const f of message.fields) {
      const rules = getOption(f, fieldRules);
      const where = `${message.typeName}.${f.name}`;
      const maxLen = rules.type.case === "string" ? rules.type.value.maxLen : undefined;
      if (rules.type.case === "string" && rules.type.value.pattern !== undefined) {
        found.push({ where, pattern: rules.type.value.pattern, maxLen });
      }
      if (rules.type.case === "map") {
        for (const side of [rules.type.value.keys, rules.type.value.values]) {
          const inner = side?.type;
          if (inner?.case === "string" && inner.value.pattern !== undefined) {
            found.push({ where: `${where} (map)`, pattern: inner.value.pattern, maxLen: inner.value.maxLen ?? 63n });
          }
        }
      }
      for (const rule of rules.cel) fromCel(where, rule.expression, maxLen);
      if (f.message) visit(f.message);
    }
  };
  for (const service of KEYWARD_SERVICES) {
    for (const method of service.methods) visit(method.input);
  }
  return found;
}

describe("the validator's native regex matcher", () => {
  const patterns = patternsOfTheProtos();

  it("finds the protos' patterns", () => {
    expect(patterns.length).toBeGreaterThan(20);
  });

  it("sees only fields bounded well below the length it matches", () => {
    // Map keys and values are bounded by their patterns' own counted repeats.
    const unbounded = patterns.filter((p) => !p.where.endsWith("(map)") && !p.where.includes("(CEL)") && (p.maxLen === undefined || p.maxLen === 0n || p.maxLen > BigInt(MAX_MATCHED_LENGTH)));
    expect(unbounded).toEqual([]);
  });

  it("matches as RE2 does, for every pattern, on names and near-names", () => {
    const native = createRegexMatch();
    const compiled = patterns.map((p) => ({ ...p, re2: RE2JS.compile(p.pattern) }));
    const pieces = ["keys/", "secrets/", "/versions/", "latest", "a", "z", "0", "9", "-", "_", ".", "/", "A", " AND ", "state=KEY_STATE_ENABLED", "labels.team=x", "type=SECRET_TYPE_JSON", "!", "~", " ", "\n", "é"];
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...pieces), { maxLength: 30 }), fc.integer({ min: 0, max: compiled.length - 1 }), (parts, i) => {
        const { pattern, re2 } = compiled[i]!;
        const input = parts.join("");
        expect(native(pattern, input), `${pattern} on ${JSON.stringify(input)}`).toBe(re2.test(input));
      }),
      { numRuns: 5000 },
    );
  });

  it("never matches past its bound, so a huge input costs nothing", () => {
    const native = createRegexMatch();
    const huge = "/versions/x".repeat(100_000);
    const started = performance.now();
    expect(native("/versions/(.*/)?versions/", huge)).toBe(false);
    expect(performance.now() - started).toBeLessThan(50);
  });
});
