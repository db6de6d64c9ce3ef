import fc from "fast-check";
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

/**
 * Grants must not reach further than they read: `*` stays inside its
 * segment, and a literal segment or prefix never matches a lookalike name
 * that merely starts the same (`newsbot` against `newsbot_other`).
 */
describe("patterns never overreach", () => {
  const cases: Array<{ pattern: string; matches: string[]; rejects: string[] }> = [
    // `*` never crosses a `/`, alone, as a prefix, a suffix or in the middle.
    { pattern: "*", matches: ["keys", "audit"], rejects: ["keys/a", "secrets/a/b/c"] },
    { pattern: "keys/*", matches: ["keys/newsbot"], rejects: ["keys/newsbot/versions/1", "keys/a/b"] },
    { pattern: "keys/news*", matches: ["keys/newsbot", "keys/news"], rejects: ["keys/news/bot", "keys/newsbot/versions/2"] },
    { pattern: "keys/*bot", matches: ["keys/newsbot"], rejects: ["keys/news/bot", "keys/a/newsbot"] },
    { pattern: "secrets/*/prod/db", matches: ["secrets/newsbot/prod/db"], rejects: ["secrets/newsbot/eu/prod/db", "secrets/prod/db"] },
    { pattern: "secrets/newsbot/*", matches: ["secrets/newsbot/prod"], rejects: ["secrets/newsbot/prod/db", "secrets/newsbot"] },
    {
      pattern: "spiffe://prod.example/ns/newsbot/*",
      matches: ["spiffe://prod.example/ns/newsbot/worker"],
      rejects: ["spiffe://prod.example/ns/newsbot/worker/extra", "spiffe://prod.example/ns/newsbot"],
    },
    // A literal segment matches that segment exactly: no prefix, no case folding.
    {
      pattern: "keys/newsbot",
      matches: ["keys/newsbot"],
      rejects: ["keys/newsbot-other", "keys/newsbot_other", "keys/newsbotx", "keys/Newsbot", "keys/newsbo", "keys/newsbot/versions/1"],
    },
    {
      pattern: "secrets/newsbot/**",
      matches: ["secrets/newsbot", "secrets/newsbot/prod", "secrets/newsbot/prod/db/password"],
      rejects: ["secrets/newsbot_other/prod/db", "secrets/newsbot-other/prod/db", "secrets/newsbotx", "secrets/news/bot/prod"],
    },
    {
      pattern: "secrets/newsbot/*/db",
      matches: ["secrets/newsbot/prod/db"],
      rejects: ["secrets/newsbot_other/prod/db", "secrets/newsbot/prod/db_other", "secrets/newsbot/prod/db/x"],
    },
    {
      pattern: "spiffe://prod.example/ns/newsbot/**",
      matches: ["spiffe://prod.example/ns/newsbot/sa/worker"],
      rejects: ["spiffe://prod.example/ns/newsbot_other/sa/worker", "spiffe://prod.example.evil/ns/newsbot/sa/worker", "spiffe://prod.examplex/ns/newsbot"],
    },
    // A prefix glob covers what starts with the prefix inside the segment: by
    // design, `newsbot*` covers `newsbot_other`; write `newsbot-*` to mean a family.
    { pattern: "keys/newsbot-*", matches: ["keys/newsbot-eu", "keys/newsbot-"], rejects: ["keys/newsbot", "keys/newsbotx", "keys/newsbot_eu"] },
    { pattern: "keys/newsbot*", matches: ["keys/newsbot", "keys/newsbot_other"], rejects: ["keys/newsbot/versions/1", "keys/xnewsbot"] },
    // Regular-expression characters are literal.
    { pattern: "secrets/news.bot/**", matches: ["secrets/news.bot/prod"], rejects: ["secrets/newsXbot/prod", "secrets/news/bot"] },
    { pattern: "keys/a+", matches: ["keys/a+"], rejects: ["keys/aa", "keys/a"] },
    { pattern: "keys/(a|b)", matches: ["keys/(a|b)"], rejects: ["keys/a", "keys/b"] },
    { pattern: "keys/[ab]*", matches: ["keys/[ab]x"], rejects: ["keys/a", "keys/bx"] },
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

  const segment = fc.stringMatching(/^[a-z0-9_.-]{1,12}$/);

  it("a `*` segment or a `<prefix>*` segment never matches a name with more segments than the pattern", () => {
    fc.assert(
      fc.property(segment, segment, fc.array(segment, { minLength: 1, maxLength: 4 }), (root, prefix, rest) => {
        const name = [root, ...rest].join("/");
        for (const pattern of [`${root}/*`, `${root}/${prefix}*`, `${root}/*${prefix}`]) {
          const expected = rest.length === 1 && compilePattern(pattern).matches(`${root}/${rest[0]}`);
          expect(compilePattern(pattern).matches(name), `${pattern} vs ${name}`).toBe(expected);
        }
        expect(compilePattern(`${root}/*`).matches(`${root}/${rest.join("/")}`)).toBe(rest.length === 1);
      }),
      { numRuns: 500 },
    );
  });

  it("a literal segment never matches a different segment that starts or ends like it", () => {
    fc.assert(
      fc.property(segment, segment, fc.constantFrom("prefix", "suffix"), fc.array(segment, { maxLength: 3 }), (word, extra, where, tail) => {
        const lookalike = where === "prefix" ? `${word}${extra}` : `${extra}${word}`;
        const name = ["secrets", lookalike, ...tail].join("/");
        expect(compilePattern(`secrets/${word}/**`).matches(name), name).toBe(false);
        expect(compilePattern(`secrets/${word}`).matches(name), name).toBe(false);
        expect(compilePattern(`secrets/${word}/**`).matches(["secrets", word, ...tail].join("/"))).toBe(true);
      }),
      { numRuns: 500 },
    );
  });
});
