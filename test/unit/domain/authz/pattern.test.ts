import { describe, expect, it } from "vitest";
import { compilePattern, PatternError } from "../../../../src/domain/authz/pattern.js";

describe("compilePattern", () => {
  const cases: Array<{ pattern: string; matches: string[]; rejects: string[] }> = [
    { pattern: "keys/payments", matches: ["keys/payments"], rejects: ["keys/payment", "keys/payments/x", "keys"] },
    { pattern: "keys/*", matches: ["keys/a", "keys/payments-1"], rejects: ["keys", "keys/a/b", "secrets/a"] },
    { pattern: "keys/payments-*", matches: ["keys/payments-", "keys/payments-eu"], rejects: ["keys/orders-eu", "keys/payments-eu/x"] },
    { pattern: "keys/**", matches: ["keys", "keys/a", "keys/a/versions/2"], rejects: ["key", "keysx/a", "secrets/keys"] },
    { pattern: "**", matches: ["keys", "secrets/a/b/c", "audit"], rejects: [""] },
    { pattern: "secrets/*/prod/**", matches: ["secrets/shop/prod", "secrets/shop/prod/db/password"], rejects: ["secrets/shop/dev/db", "secrets/prod"] },
    { pattern: "secrets/**/password", matches: ["secrets/password", "secrets/a/b/password"], rejects: ["secrets/a/password/x"] },
    { pattern: "a.b/c+d", matches: ["a.b/c+d"], rejects: ["aXb/c+d", "a.b/cd"] },
    {
      pattern: "spiffe://prod.example/ns/*/sa/payments",
      matches: ["spiffe://prod.example/ns/shop/sa/payments"],
      rejects: ["spiffe://prod.example/ns/shop/x/sa/payments", "spiffe://other.example/ns/shop/sa/payments"],
    },
    { pattern: "spiffe://keyward.local/**", matches: ["spiffe://keyward.local/admin", "spiffe://keyward.local/a/b"], rejects: ["spiffe://keyward.localx/admin"] },
  ];
  for (const { pattern, matches, rejects } of cases) {
    it(`"${pattern}" matches ${matches.join(", ")} and not ${rejects.map((r) => `"${r}"`).join(", ")}`, () => {
      const compiled = compilePattern(pattern);
      for (const name of matches) {
        expect(compiled.matches(name), name).toBe(true);
      }
      for (const name of rejects) {
        expect(compiled.matches(name), name).toBe(false);
      }
    });
  }

  it.each(["", "keys//a", "keys/a**", "keys/**x"])("refuses the malformed pattern %j", (pattern) => {
    expect(() => compilePattern(pattern)).toThrow(PatternError);
  });
});
