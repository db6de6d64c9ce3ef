/** Figures from measured windows: rates, percentiles, ratios to the baseline, targets. Pure. */

/** What the load processes saw in one measured window, merged. */
export interface PhaseSample {
  /** Calls answered without error that ended inside the window. */
  readonly calls: number;
  /** Calls that failed (or answered wrongly) and ended inside the window. */
  readonly errors: number;
  /** Length of the window. */
  readonly seconds: number;
  /** One per answered call, ascending. */
  readonly latenciesMs: Float64Array;
}

/** One phase's figures. */
export interface Summary {
  readonly calls: number;
  readonly errors: number;
  readonly seconds: number;
  readonly callsPerSecond: number;
  /** callsPerSecond × items per call (batches); equal to callsPerSecond otherwise. */
  readonly itemsPerSecond: number;
  readonly p50Ms: number;
  readonly p95Ms: number;
  readonly p99Ms: number;
}

/**
 * The nearest-rank percentile (the smallest value with at least p % of the
 * values at or below it) of ascending `sorted`; NaN when it is empty.
 */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (!(p > 0 && p <= 100)) {
    throw new RangeError(`percentile must be in (0, 100], not ${p}`);
  }
  if (sorted.length === 0) {
    return NaN;
  }
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** The latencies of several load processes as one ascending array. */
export function mergeLatencies(parts: readonly ArrayLike<number>[]): Float64Array {
  const merged = new Float64Array(parts.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    merged.set(part, offset);
    offset += part.length;
  }
  // A typed array sorts numerically.
  return merged.sort();
}

export function summarize(sample: PhaseSample, itemsPerCall: number): Summary {
  const callsPerSecond = sample.seconds > 0 ? sample.calls / sample.seconds : NaN;
  return {
    calls: sample.calls,
    errors: sample.errors,
    seconds: sample.seconds,
    callsPerSecond,
    itemsPerSecond: callsPerSecond * itemsPerCall,
    p50Ms: percentile(sample.latenciesMs, 50),
    p95Ms: percentile(sample.latenciesMs, 95),
    p99Ms: percentile(sample.latenciesMs, 99),
  };
}

/** Mean, extremes and spread ((max − min) / mean) of repeated measurements of one thing. */
export interface Spread {
  readonly mean: number;
  readonly min: number;
  readonly max: number;
  /** 0 when every measurement agrees; 0.1 when they are 10 % of the mean apart. */
  readonly spread: number;
}

export function spreadOf(values: readonly number[]): Spread {
  if (values.length === 0) {
    return { mean: NaN, min: NaN, max: NaN, spread: NaN };
  }
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const min = Math.min(...values);
  const max = Math.max(...values);
  return { mean, min, max, spread: mean > 0 ? (max - min) / mean : NaN };
}

/** A case against the baselines measured just before and after it at the same concurrency. */
export interface BaselineComparison {
  /** Mean of the two baselines' calls/s. */
  readonly baselineCallsPerSecond: number;
  /** Mean of the two baselines' p99. */
  readonly baselineP99Ms: number;
  /** The case's calls/s over the baselines' mean: 1 = as fast as the transport alone. */
  readonly ratio: number;
  /** The case's p99 over the baselines' mean p99: 1 = no longer tail than the transport alone. */
  readonly p99Ratio: number;
  /** How far apart the two baselines were: the noise floor of `ratio`. */
  readonly baselineSpread: number;
}

/**
 * Compares by the mean of the bracketing baselines, which cancels a steady
 * drift of the machine's speed between them (not a burst during the case).
 */
export function compareToBaseline(subject: Summary, before: Summary, after: Summary): BaselineComparison {
  const rate = spreadOf([before.callsPerSecond, after.callsPerSecond]);
  const baselineP99Ms = (before.p99Ms + after.p99Ms) / 2;
  return {
    baselineCallsPerSecond: rate.mean,
    baselineP99Ms,
    ratio: subject.callsPerSecond / rate.mean,
    p99Ratio: subject.p99Ms / baselineP99Ms,
    baselineSpread: rate.spread,
  };
}

/** Server CPU per answered call, in µs; undefined when it is unknown or nothing was answered. */
export function cpuMicrosPerCall(cpuSeconds: number | undefined, calls: number): number | undefined {
  return cpuSeconds === undefined || calls === 0 ? undefined : (cpuSeconds * 1e6) / calls;
}

/** A goal the service is held to. */
export type Target =
  | {
      readonly kind: "near-baseline";
      readonly caseId: string;
      readonly concurrency: number;
      /** Smallest acceptable calls/s ratio to the baseline. */
      readonly minRatio: number;
      /** Largest acceptable p99 ratio to the baseline. */
      readonly maxP99Ratio: number;
    }
  | {
      readonly kind: "items-per-second";
      readonly caseId: string;
      readonly concurrency: number;
      readonly minItemsPerSecond: number;
    };

/** Crypto and audit add almost nothing to the transport; batches go past its ceiling. */
export const TARGETS: readonly Target[] = [
  ...["encrypt-1k", "decrypt-1k", "sign-p256", "access-secret-1k"].map(
    (caseId): Target => ({ kind: "near-baseline", caseId, concurrency: 64, minRatio: 0.9, maxP99Ratio: 1.5 }),
  ),
  { kind: "items-per-second", caseId: "batch-encrypt-256", concurrency: 64, minItemsPerSecond: 40_000 },
];

/** A target against what a run measured. */
export interface TargetOutcome {
  readonly target: Target;
  /** "not measured" when the run did not include the case at that concurrency. */
  readonly verdict: "met" | "missed" | "not measured";
  /** What was measured, in words: "ratio 0.93, p99 ratio 1.21". */
  readonly measured: string;
}

/** The figures evaluateTargets needs from one case phase. */
export interface MeasuredCase {
  readonly caseId: string;
  readonly concurrency: number;
  readonly summary: Summary;
  readonly comparison: BaselineComparison | undefined;
}

export function evaluateTargets(results: readonly MeasuredCase[], targets: readonly Target[] = TARGETS): TargetOutcome[] {
  return targets.map((target) => {
    const result = results.find((r) => r.caseId === target.caseId && r.concurrency === target.concurrency);
    if (result === undefined || result.summary.errors > 0) {
      return { target, verdict: result === undefined ? "not measured" : "missed", measured: result ? `${result.summary.errors} errors` : "" };
    }
    if (target.kind === "items-per-second") {
      const items = result.summary.itemsPerSecond;
      return {
        target,
        verdict: items >= target.minItemsPerSecond ? "met" : "missed",
        measured: `${Math.round(items)} items/s`,
      };
    }
    const comparison = result.comparison;
    if (comparison === undefined) {
      return { target, verdict: "not measured", measured: "no baseline" };
    }
    const met = comparison.ratio >= target.minRatio && comparison.p99Ratio <= target.maxP99Ratio;
    // Two baselines further apart than the target's margin make its verdict a coin toss: say so.
    const noisy = comparison.baselineSpread > 1 - target.minRatio;
    return {
      target,
      verdict: met ? "met" : "missed",
      measured:
        `ratio ${comparison.ratio.toFixed(2)}, p99 ratio ${comparison.p99Ratio.toFixed(2)}` +
        (noisy ? `; baselines ${(comparison.baselineSpread * 100).toFixed(0)} % apart, beyond the margin` : ""),
    };
  });
}
