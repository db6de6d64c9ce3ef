import { createHash } from "node:crypto";
import { DomainError } from "../domain/errors.js";

/**
 * Page tokens (AIP-158): base64url of `{"v":1,"c":"<cursor>","f":"<filter digest>"}`.
 * Not secret and not signed: a caller who edits one can only reach what the
 * same call could list anyway. The digest binds a token to the filter it was
 * issued for; page_size may change between pages.
 */
const VERSION = 1;

export function filterDigest(filter: unknown): string {
  return createHash("sha256").update(JSON.stringify(filter)).digest("base64url").slice(0, 22);
}

export function encodePageToken(cursor: string, digest: string): string {
  return Buffer.from(JSON.stringify({ v: VERSION, c: cursor, f: digest })).toString("base64url");
}

/** The cursor of a token issued for `digest`; "" for the empty token (first page). */
export function decodePageToken(token: string, digest: string): string {
  if (token === "") {
    return "";
  }
  let parsed: { v?: unknown; c?: unknown; f?: unknown } | undefined;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    parsed = undefined;
  }
  if (!parsed || typeof parsed !== "object" || parsed.v !== VERSION || typeof parsed.c !== "string" || typeof parsed.f !== "string") {
    throw new DomainError("invalid-argument", "page_token is malformed");
  }
  if (parsed.f !== digest) {
    throw new DomainError("invalid-argument", "page_token was issued for a different filter");
  }
  return parsed.c;
}

/** page_size 0 means the default; the proto caps it. */
export function pageSizeOf(requested: number, fallback = 100): number {
  return requested > 0 ? requested : fallback;
}

/**
 * One page of what the caller may see, from a source listed in ascending
 * name order: reads batches after `after`, keeps the items `granted`
 * allows, and says whether another granted item follows the page.
 */
export async function grantedPage<T extends { readonly name: string }>(
  fetch: (after: string, limit: number) => Promise<T[]>,
  granted: (item: T) => boolean,
  after: string,
  pageSize: number,
): Promise<{ page: T[]; more: boolean }> {
  const page: T[] = [];
  for (;;) {
    const batch = await fetch(after, pageSize + 1);
    for (const item of batch) {
      if (!granted(item)) continue;
      if (page.length === pageSize) {
        return { page, more: true };
      }
      page.push(item);
    }
    if (batch.length <= pageSize) {
      return { page, more: false };
    }
    after = batch.at(-1)!.name;
  }
}
