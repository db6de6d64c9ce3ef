import { describe, expect, it } from "vitest";
import { BASELINE, CASES, QUICK_CASE_IDS, caseById, globToRegExp, selectCases } from "../../bench/lib/cases.js";

describe("the case catalogue", () => {
  it("has unique ids, none of them the baseline's", () => {
    const ids = CASES.map((c) => c.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).not.toContain(BASELINE.id);
  });

  it("covers every size, algorithm and batch the bench promises", () => {
    expect(CASES.map((c) => c.id)).toEqual(
      expect.arrayContaining([
        "encrypt-32b", "encrypt-1k", "encrypt-64k", "decrypt-32b", "decrypt-1k", "decrypt-64k",
        "reencrypt-1k", "generate-data-key", "sign-ed25519", "sign-p256", "sign-rsa2048",
        "verify-ed25519", "verify-p256", "verify-rsa2048", "mac-1k", "access-secret-1k",
        "add-secret-version-1k", "batch-encrypt-1", "batch-encrypt-16", "batch-encrypt-256",
      ]),
    );
  });

  it("counts a batch's items per call", () => {
    expect(caseById("batch-encrypt-256")?.itemsPerCall).toBe(256);
    expect(caseById("batch-encrypt-16")?.itemsPerCall).toBe(16);
    expect(caseById("encrypt-1k")?.itemsPerCall).toBe(1);
  });

  it("the quick subset is made of known cases", () => {
    for (const id of QUICK_CASE_IDS) expect(caseById(id), id).toBeDefined();
  });

  it("finds the baseline by its id, and nothing for an unknown id", () => {
    expect(caseById("baseline")).toBe(BASELINE);
    expect(caseById("encrypt")).toBeUndefined();
  });
});

describe("globToRegExp", () => {
  it.each([
    ["encrypt-*", "encrypt-1k", true],
    ["encrypt-*", "reencrypt-1k", false],
    ["*encrypt-1k", "reencrypt-1k", true],
    ["sign-p???", "sign-p256", true],
    ["sign-p??", "sign-p256", false],
    ["batch-encrypt-1", "batch-encrypt-16", false],
    ["a.b", "axb", false],
    ["(x)|y", "(x)|y", true],
  ] as const)("%s on %s: %s", (glob, id, matches) => {
    expect(globToRegExp(glob).test(id)).toBe(matches);
  });
});

describe("selectCases", () => {
  it("takes the union of the patterns in catalogue order, each case once", () => {
    const selection = selectCases("sign-*, *-p256");
    expect(selection.kind).toBe("selected");
    if (selection.kind === "selected") {
      expect(selection.cases.map((c) => c.id)).toEqual(["sign-ed25519", "sign-p256", "sign-rsa2048", "verify-p256"]);
    }
  });

  it("refuses a pattern that matches nothing, naming it", () => {
    expect(selectCases("encrypt-1k,baseline")).toEqual({ kind: "invalid", message: expect.stringContaining('"baseline" matches no case') });
  });
});
