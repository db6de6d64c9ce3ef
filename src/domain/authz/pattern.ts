/**
 * Glob patterns over slash-separated names, used for resources
 * (`keys/payments-*`, `secrets/shop/prod/**`) and identities
 * (`spiffe://prod.example/ns/payments/*`).
 *
 * - `**` as a whole segment matches zero or more segments;
 * - `*` matches any run of characters inside one segment (never `/`);
 *   a segment made of `*` alone matches exactly one non-empty segment;
 * - every other character matches itself.
 *
 * So `keys/**` matches `keys`, `keys/a` and `keys/a/versions/2`, while
 * `keys/*` matches `keys/a` only.
 */
export interface Pattern {
  readonly source: string;
  matches(name: string): boolean;
}

type Segment = { kind: "any-depth" } | { kind: "glob"; regex: RegExp } | { kind: "literal"; text: string };

/** Thrown by {@link compilePattern} for a pattern that cannot be used. */
export class PatternError extends Error {
  override name = "PatternError";
}

/**
 * Compiles a pattern once, so that matching on the request path does no parsing.
 *
 * @throws PatternError for an empty pattern, an empty segment (`a//b`), or `**`
 *   inside a segment (`a**b`), which would be ambiguous.
 */
export function compilePattern(source: string): Pattern {
  if (source.length === 0) {
    throw new PatternError("pattern is empty");
  }
  const segments = splitName(source).map((text): Segment => {
    if (text.length === 0) {
      throw new PatternError(`pattern "${source}" has an empty segment`);
    }
    if (text === "**") {
      return { kind: "any-depth" };
    }
    if (text.includes("**")) {
      throw new PatternError(`pattern "${source}": "**" must be a whole segment`);
    }
    if (!text.includes("*")) {
      return { kind: "literal", text };
    }
    const body = text
      .split("*")
      .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
      .join("[^/]*");
    return { kind: "glob", regex: new RegExp(text === "*" ? "^[^/]+$" : `^${body}$`) };
  });
  return {
    source,
    matches: (name) => name.length > 0 && matchSegments(segments, 0, splitName(name), 0),
  };
}

/** Splits a name into segments, keeping a URI scheme's `//` inside the first segment. */
function splitName(name: string): string[] {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(name);
  if (!scheme) {
    return name.split("/");
  }
  const rest = name.slice(scheme[0].length).split("/");
  rest[0] = scheme[0] + rest[0];
  return rest;
}

function matchSegments(pattern: readonly Segment[], p: number, name: readonly string[], n: number): boolean {
  if (p === pattern.length) {
    return n === name.length;
  }
  const segment = pattern[p]!;
  if (segment.kind === "any-depth") {
    for (let skip = n; skip <= name.length; skip++) {
      if (matchSegments(pattern, p + 1, name, skip)) {
        return true;
      }
    }
    return false;
  }
  if (n === name.length) {
    return false;
  }
  const text = name[n]!;
  const ok = segment.kind === "literal" ? segment.text === text : segment.regex.test(text);
  return ok && matchSegments(pattern, p + 1, name, n + 1);
}
