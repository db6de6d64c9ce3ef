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
  if (
    !parsed ||
    typeof parsed !== "object" ||
    parsed.v !== VERSION ||
    typeof parsed.c !== "string" ||
    typeof parsed.f !== "string" ||
    // Cursors are resource names or numbers: anything else was not issued here.
    !/^[A-Za-z0-9/_.-]{0,512}$/.test(parsed.c)
  ) {
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

/** Rows read per query by {@link grantedPage}, and at most per call: a caller granted on few items cannot make one call scan everything. */
const GRANTED_BATCH = 200;
const GRANTED_SCAN_LIMIT = 5_000;

/**
 * One page of what the caller may see, from a source listed in ascending
 * name order: reads batches after `after`, keeps the items `granted`
 * allows. `next` is the cursor of the next page, undefined at the end; a
 * page may come back short (even empty) with a `next` when the call has
 * read its share of rows, as AIP-158 allows.
 */
export async function grantedPage<T extends { readonly name: string }>(
  fetch: (after: string, limit: number) => Promise<T[]>,
  granted: (item: T) => boolean,
  after: string,
  pageSize: number,
): Promise<{ page: T[]; next: string | undefined }> {
  const page: T[] = [];
  const batchSize = Math.max(pageSize + 1, GRANTED_BATCH);
  let scanned = 0;
  for (;;) {
    const batch = await fetch(after, batchSize);
    for (const item of batch) {
      if (!granted(item)) {
        after = item.name;
        continue;
      }
      if (page.length === pageSize) {
        return { page, next: page.at(-1)!.name };
      }
      page.push(item);
      after = item.name;
    }
    scanned += batch.length;
    if (batch.length < batchSize) {
      return { page, next: undefined };
    }
    if (scanned >= GRANTED_SCAN_LIMIT) {
      return { page, next: after };
    }
  }
}
