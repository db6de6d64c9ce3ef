import { describe, expect, it } from "vitest";
import {
  compareToBaseline,
  cpuMicrosPerCall,
  evaluateTargets,
  mergeLatencies,
  percentile,
  spreadOf,
  summarize,
  TARGETS,
  type MeasuredCase,
  type Summary,
} from "../../bench/lib/stats.js";

const ascending = (n: number) => Float64Array.from({ length: n }, (_, i) => i + 1);

describe("percentile (nearest rank)", () => {
  it.each([
    [50, 50],
    [95, 95],
    [99, 99],
    [100, 100],
    [0.5, 1],
  ] as const)("p%s of 1..100 is %s", (p, expected) => {
    expect(percentile(ascending(100), p)).toBe(expected);
  });

  it("rounds the rank up: p50 of four values is the second, p99 of ten the last", () => {
    expect(percentile([10, 20, 30, 40], 50)).toBe(20);
    expect(percentile(ascending(10), 99)).toBe(10);
  });

  it("of one value is that value, of none NaN", () => {
    expect(percentile([7], 50)).toBe(7);
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([], 50)).toBeNaN();
  });

  it("refuses a percentile outside (0, 100]", () => {
    expect(() => percentile([1], 0)).toThrow(RangeError);
    expect(() => percentile([1], 101)).toThrow(RangeError);
  });
});

describe("mergeLatencies", () => {
  it("merges the processes' arrays into one ascending array, numerically sorted", () => {
    const merged = mergeLatencies([Float64Array.of(1, 10, 100), Float64Array.of(2, 9), Float64Array.of()]);
    expect([...merged]).toEqual([1, 2, 9, 10, 100]);
  });
});

describe("summarize", () => {
  it("gives calls/s over the window, items/s for batches, and the percentiles", () => {
    const s = summarize({ calls: 1000, errors: 2, seconds: 4, latenciesMs: ascending(1000) }, 16);
    expect(s.callsPerSecond).toBe(250);
    expect(s.itemsPerSecond).toBe(4000);
    expect([s.p50Ms, s.p95Ms, s.p99Ms]).toEqual([500, 950, 990]);
    expect(s.errors).toBe(2);
  });

  it("with no answered call, has a rate of 0 and no percentiles", () => {
    const s = summarize({ calls: 0, errors: 5, seconds: 1, latenciesMs: new Float64Array() }, 1);
    expect(s.callsPerSecond).toBe(0);
    expect(s.p99Ms).toBeNaN();
  });
});

describe("spreadOf", () => {
  it("is (max - min) / mean", () => {
    expect(spreadOf([90, 110, 100])).toEqual({ mean: 100, min: 90, max: 110, spread: 0.2 });
  });

  it("is 0 for agreeing measurements, NaN for none", () => {
    expect(spreadOf([5, 5]).spread).toBe(0);
    expect(spreadOf([]).spread).toBeNaN();
  });
});

const summary = (callsPerSecond: number, p99Ms: number): Summary => ({
  calls: callsPerSecond,
  errors: 0,
  seconds: 1,
  callsPerSecond,
  itemsPerSecond: callsPerSecond,
  p50Ms: p99Ms / 2,
  p95Ms: p99Ms,
  p99Ms,
});

describe("compareToBaseline", () => {
  it("divides by the mean of the baselines before and after, for calls/s and for p99", () => {
    const c = compareToBaseline(summary(1800, 60), summary(1900, 40), summary(2100, 60));
    expect(c.baselineCallsPerSecond).toBe(2000);
    expect(c.ratio).toBeCloseTo(0.9, 12);
    expect(c.baselineP99Ms).toBe(50);
    expect(c.p99Ratio).toBeCloseTo(1.2, 12);
    expect(c.baselineSpread).toBeCloseTo(0.1, 12);
  });

  it("cancels a steady drift: a case exactly between a falling baseline compares as 1", () => {
    expect(compareToBaseline(summary(1500, 10), summary(2000, 10), summary(1000, 10)).ratio).toBe(1);
  });
});

describe("cpuMicrosPerCall", () => {
  it("is CPU seconds per call in µs, undefined without CPU figures or calls", () => {
    expect(cpuMicrosPerCall(0.5, 1000)).toBe(500);
    expect(cpuMicrosPerCall(undefined, 1000)).toBeUndefined();
    expect(cpuMicrosPerCall(0.5, 0)).toBeUndefined();
  });
});

describe("evaluateTargets", () => {
  const nearBaseline = (caseId: string, ratio: number, p99Ratio: number, errors = 0): MeasuredCase => ({
    caseId,
    concurrency: 64,
    summary: { ...summary(1000 * ratio, 10 * p99Ratio), errors },
    comparison: { baselineCallsPerSecond: 1000, baselineP99Ms: 10, ratio, p99Ratio, baselineSpread: 0.01 },
  });

  it("holds the four unary cases to 0.9 × the baseline's rate and 1.5 × its p99, and batches to 40,000 items/s, at 64", () => {
    expect(TARGETS.map((t) => `${t.caseId}@${t.concurrency}`)).toEqual([
      "encrypt-1k@64", "decrypt-1k@64", "sign-p256@64", "access-secret-1k@64", "batch-encrypt-256@64",
    ]);
  });

  it("meets a target at its bounds and misses it just past either", () => {
    const [encrypt] = TARGETS;
    expect(evaluateTargets([nearBaseline("encrypt-1k", 0.9, 1.5)], [encrypt!])[0]!.verdict).toBe("met");
    expect(evaluateTargets([nearBaseline("encrypt-1k", 0.89, 1.0)], [encrypt!])[0]!.verdict).toBe("missed");
    expect(evaluateTargets([nearBaseline("encrypt-1k", 1.2, 1.51)], [encrypt!])[0]!.verdict).toBe("missed");
  });

  it("says what it measured", () => {
    const [encrypt] = TARGETS;
    expect(evaluateTargets([nearBaseline("encrypt-1k", 0.934, 1.207)], [encrypt!])[0]!.measured).toBe("ratio 0.93, p99 ratio 1.21");
  });

  it("says when the bracketing baselines differ by more than the target's margin", () => {
    const [encrypt] = TARGETS;
    const noisy = nearBaseline("encrypt-1k", 0.95, 1);
    const outcome = evaluateTargets([{ ...noisy, comparison: { ...noisy.comparison!, baselineSpread: 0.25 } }], [encrypt!])[0]!;
    expect(outcome.verdict).toBe("met");
    expect(outcome.measured).toBe("ratio 0.95, p99 ratio 1.00; baselines 25 % apart, beyond the margin");
  });

  it("a case with errors misses its target however fast it was", () => {
    const [encrypt] = TARGETS;
    expect(evaluateTargets([nearBaseline("encrypt-1k", 1, 1, 3)], [encrypt!])[0]).toMatchObject({ verdict: "missed", measured: "3 errors" });
  });

  it("counts a batch's items per second", () => {
    const batch = TARGETS.find((t) => t.kind === "items-per-second")!;
    const measured = (itemsPerSecond: number): MeasuredCase => ({
      caseId: "batch-encrypt-256",
      concurrency: 64,
      summary: { ...summary(itemsPerSecond / 256, 100), itemsPerSecond },
      comparison: undefined,
    });
    expect(evaluateTargets([measured(40_000)], [batch])[0]).toMatchObject({ verdict: "met", measured: "40000 items/s" });
    expect(evaluateTargets([measured(39_999)], [batch])[0]!.verdict).toBe("missed");
  });

  it("reports a case the run left out, or measured at another concurrency, as not measured", () => {
    const other = { ...nearBaseline("encrypt-1k", 1, 1), concurrency: 16 };
    expect(evaluateTargets([other]).map((o) => o.verdict)).toEqual(Array(TARGETS.length).fill("not measured"));
  });
});
