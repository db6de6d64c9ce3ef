/**
 * Longest input matched: every field of Keyward's protos that has a pattern
 * also has a max_len well below it (a test checks this), so a longer input
 * is invalid anyway, and never reaches the RegExp engine.
 */
export const MAX_MATCHED_LENGTH = 4096;

/**
 * protovalidate's matcher for the `pattern` rules and CEL `matches()` of
 * Keyward's protos, on the platform's RegExp rather than the default RE2
 * engine written in JavaScript, which cost 10–20 µs on every request that
 * names a resource. Safe here because the patterns are only those of
 * Keyward's own protos — without backreferences or lookaround — and inputs
 * are bounded by {@link MAX_MATCHED_LENGTH}, so even the one unanchored
 * `.*` stays cheap; a test checks that every pattern compiles and matches as
 * RE2 does.
 */
export function createRegexMatch(): (pattern: string, against: string) => boolean {
  const compiled = new Map<string, RegExp>();
  return (pattern, against) => {
    if (against.length > MAX_MATCHED_LENGTH) {
      return false;
    }
    let re = compiled.get(pattern);
    if (re === undefined) {
      re = new RegExp(pattern);
      compiled.set(pattern, re);
    }
    return re.test(against);
  };
}
