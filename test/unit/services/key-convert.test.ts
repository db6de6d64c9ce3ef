import { describe, expect, it } from "vitest";
import { DomainError } from "../../../src/domain/errors.js";
import { createUsageRecorder } from "../../../src/domain/keys/crypto-operations.js";
import { durationToMs, parseKeyFilter, splitVersionName } from "../../../src/services/key-convert.js";
import { decodePageToken, encodePageToken, filterDigest, grantedPage } from "../../../src/services/page-token.js";

describe("ListKeys filter", () => {
  it("reads every term kind, joined by AND", () => {
    expect(parseKeyFilter("state=KEY_STATE_ENABLED AND purpose=KEY_PURPOSE_MAC AND algorithm=KEY_ALGORITHM_HMAC_SHA256 AND labels.team=payments")).toEqual({
      state: "ENABLED",
      purpose: "MAC",
      algorithm: "HMAC_SHA256",
      labels: { team: "payments" },
    });
    expect(parseKeyFilter("")).toEqual({});
  });

  it.each(["state=KEY_STATE_UNSPECIFIED", "state=KEY_STATE_GONE", "purpose=KEY_STATE_ENABLED", "algorithm=KEY_ALGORITHM_DES"])(
    "refuses %s with INVALID_ARGUMENT naming the value",
    (filter) => {
      const error = (() => {
        try {
          parseKeyFilter(filter);
        } catch (err) {
          return err;
        }
      })();
      expect(error).toBeInstanceOf(DomainError);
      expect((error as DomainError).kind).toBe("invalid-argument");
      expect((error as DomainError).message).toContain(filter.split("=")[1]);
    },
  );
});

describe("page tokens", () => {
  it("round-trip a cursor for the same filter and refuse another filter or garbage", () => {
    const digest = filterDigest(["keys", { state: "ENABLED" }]);
    const token = encodePageToken("keys/b", digest);
    expect(decodePageToken(token, digest)).toBe("keys/b");
    expect(decodePageToken("", digest)).toBe("");
    expect(() => decodePageToken(token, filterDigest(["keys", {}]))).toThrow("page_token was issued for a different filter");
    expect(() => decodePageToken("not-a-token", digest)).toThrow("page_token is malformed");
  });
});

describe("names and durations", () => {
  it("splits version names", () => {
    expect(splitVersionName("keys/a")).toEqual({ keyName: "keys/a", version: undefined });
    expect(splitVersionName("keys/a/versions/12")).toEqual({ keyName: "keys/a", version: 12 });
  });

  it("takes whole seconds only", () => {
    expect(durationToMs({ seconds: 3600n, nanos: 0 } as never, "rotation_period")).toBe(3_600_000);
    expect(() => durationToMs({ seconds: 1n, nanos: 5 } as never, "rotation_period")).toThrow("rotation_period must be a whole number of seconds");
  });
});

describe("usage recorder", () => {
  it("adds uses per version and starts again after a drain", () => {
    const at = new Date("2026-11-30T00:00:00Z");
    const usage = createUsageRecorder(() => at);
    usage.record("keys/a", 1, 1);
    usage.record("keys/a", 1, 16);
    usage.record("keys/a", 2, 1);
    expect(usage.drain()).toEqual([
      { keyName: "keys/a", version: 1, count: 17, lastUsedTime: at },
      { keyName: "keys/a", version: 2, count: 1, lastUsedTime: at },
    ]);
    expect(usage.drain()).toEqual([]);
  });

  it("puts back what could not be written, added to what came since, in key order", () => {
    const at = new Date("2026-11-30T00:00:00Z");
    const usage = createUsageRecorder(() => at);
    usage.record("keys/b", 1, 2);
    usage.record("keys/a", 3, 1);
    const failed = usage.drain();
    expect(failed.map((d) => d.keyName)).toEqual(["keys/a", "keys/b"]);
    usage.record("keys/b", 1, 5);
    usage.restore(failed);
    expect(usage.drain()).toEqual([
      { keyName: "keys/a", version: 3, count: 1, lastUsedTime: at },
      { keyName: "keys/b", version: 1, count: 7, lastUsedTime: at },
    ]);
  });
});

describe("granted pages", () => {
  const names = Array.from({ length: 12_000 }, (_, i) => ({ name: `keys/k${String(i).padStart(5, "0")}` }));
  const fetchOf = (calls: number[]) => async (after: string, limit: number) => {
    calls.push(limit);
    return names.filter((n) => n.name > after).slice(0, limit);
  };

  it("walks the whole list page by page, keeping only granted items, with no page past the end", async () => {
    const granted = (n: { name: string }) => Number(n.name.slice(6)) % 1000 === 7;
    const seen: string[] = [];
    let after = "";
    let pages = 0;
    for (;;) {
      const { page, next } = await grantedPage(fetchOf([]), granted, after, 3);
      seen.push(...page.map((n) => n.name));
      pages++;
      if (next === undefined) break;
      after = next;
    }
    expect(seen).toEqual(names.filter(granted).map((n) => n.name));
    expect(pages).toBeLessThan(10);
  });

  it("stops one call after a bounded number of rows, returning a short page and where to go on", async () => {
    const calls: number[] = [];
    const { page, next } = await grantedPage(fetchOf(calls), () => false, "", 1);
    expect(page).toEqual([]);
    expect(next).toBe(names[4_999]!.name);
    expect(calls.reduce((a, b) => a + b, 0)).toBe(5_000);
  });
});
