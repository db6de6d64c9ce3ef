/** The order of a run's phases and how load is shared between processes. Pure. */
import { BASELINE } from "./cases.js";

/** One measured window: a case (or the baseline) at one concurrency. */
export interface Phase {
  readonly caseId: string;
  readonly concurrency: number;
}

/**
 * Concurrency levels in ascending order; at each, the baseline first, then
 * the cases with the baseline measured again after every `baselineEvery` of
 * them, and always last. So every case sits between two baselines measured at
 * the same concurrency shortly before and after it, and a drift of the
 * machine's speed over the run shows up as a spread between baselines rather
 * than as a difference between cases.
 */
export function planPhases(caseIds: readonly string[], concurrency: readonly number[], baselineEvery: number): Phase[] {
  if (!(baselineEvery >= 1)) {
    throw new RangeError("baselineEvery must be at least 1");
  }
  const phases: Phase[] = [];
  for (const c of concurrency) {
    phases.push({ caseId: BASELINE.id, concurrency: c });
    caseIds.forEach((caseId, i) => {
      phases.push({ caseId, concurrency: c });
      if ((i + 1) % baselineEvery === 0 || i === caseIds.length - 1) {
        phases.push({ caseId: BASELINE.id, concurrency: c });
      }
    });
  }
  return phases;
}

/**
 * The indexes of the baselines just before and just after phase `index`, at
 * the same concurrency (a planPhases plan always has both for a case).
 * Undefined for a baseline phase or when either is missing.
 */
export function bracketingBaselines(phases: readonly Phase[], index: number): { before: number; after: number } | undefined {
  const phase = phases[index];
  if (phase === undefined || phase.caseId === BASELINE.id) {
    return undefined;
  }
  const isBaselineHere = (p: Phase | undefined) => p !== undefined && p.caseId === BASELINE.id && p.concurrency === phase.concurrency;
  let before = index - 1;
  while (before >= 0 && !isBaselineHere(phases[before])) before--;
  let after = index + 1;
  while (after < phases.length && !isBaselineHere(phases[after])) after++;
  return before >= 0 && after < phases.length ? { before, after } : undefined;
}

/**
 * `concurrency` calls in flight shared as evenly as possible by `processes`
 * load processes, the larger shares first: (64, 2) → [32, 32],
 * (16, 3) → [6, 5, 5], (1, 2) → [1, 0].
 */
export function splitSlots(concurrency: number, processes: number): number[] {
  if (!Number.isInteger(concurrency) || concurrency < 0 || !Number.isInteger(processes) || processes < 1) {
    throw new RangeError(`cannot split ${concurrency} calls over ${processes} processes`);
  }
  const share = Math.floor(concurrency / processes);
  const extra = concurrency % processes;
  return Array.from({ length: processes }, (_, i) => share + (i < extra ? 1 : 0));
}
