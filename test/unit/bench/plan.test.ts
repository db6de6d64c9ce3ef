import { describe, expect, it } from "vitest";
import { bracketingBaselines, planPhases, splitSlots, type Phase } from "../../bench/lib/plan.js";

const compact = (phases: readonly Phase[]) => phases.map((p) => `${p.caseId}@${p.concurrency}`);

describe("planPhases", () => {
  it("brackets every group of cases with baselines, at each concurrency in turn", () => {
    expect(compact(planPhases(["a", "b", "c"], [1, 64], 2))).toEqual([
      "baseline@1", "a@1", "b@1", "baseline@1", "c@1", "baseline@1",
      "baseline@64", "a@64", "b@64", "baseline@64", "c@64", "baseline@64",
    ]);
  });

  it("with baselineEvery at least the number of cases, measures the baseline only before and after", () => {
    expect(compact(planPhases(["a", "b"], [16], Number.MAX_SAFE_INTEGER))).toEqual(["baseline@16", "a@16", "b@16", "baseline@16"]);
  });

  it("never measures the baseline twice in a row when the cases divide evenly", () => {
    const phases = compact(planPhases(["a", "b", "c", "d"], [1], 2));
    expect(phases).toEqual(["baseline@1", "a@1", "b@1", "baseline@1", "c@1", "d@1", "baseline@1"]);
  });

  it("refuses a baseline interval below 1", () => {
    expect(() => planPhases(["a"], [1], 0)).toThrow(RangeError);
  });
});

describe("bracketingBaselines", () => {
  const phases = planPhases(["a", "b", "c"], [1, 64], 2);

  it("finds the baselines just before and after a case, at its concurrency", () => {
    expect(bracketingBaselines(phases, 1)).toEqual({ before: 0, after: 3 });
    expect(bracketingBaselines(phases, 4)).toEqual({ before: 3, after: 5 });
    expect(bracketingBaselines(phases, 7)).toEqual({ before: 6, after: 9 });
  });

  it("does not take a baseline of another concurrency", () => {
    const mixed: Phase[] = [
      { caseId: "baseline", concurrency: 1 },
      { caseId: "a", concurrency: 64 },
      { caseId: "baseline", concurrency: 64 },
    ];
    expect(bracketingBaselines(mixed, 1)).toBeUndefined();
  });

  it("is undefined for a baseline and out of range", () => {
    expect(bracketingBaselines(phases, 0)).toBeUndefined();
    expect(bracketingBaselines(phases, 99)).toBeUndefined();
  });
});

describe("splitSlots", () => {
  it.each([
    [64, 2, [32, 32]],
    [16, 3, [6, 5, 5]],
    [1, 2, [1, 0]],
    [0, 2, [0, 0]],
    [5, 1, [5]],
  ] as const)("%i over %i processes: %j", (concurrency, processes, expected) => {
    const slots = splitSlots(concurrency, processes);
    expect(slots).toEqual(expected);
    expect(slots.reduce((a, b) => a + b, 0)).toBe(concurrency);
  });

  it("refuses nonsense", () => {
    expect(() => splitSlots(4, 0)).toThrow(RangeError);
    expect(() => splitSlots(1.5, 2)).toThrow(RangeError);
  });
});
