/** A run's results as data (written as JSON) and as markdown tables. Pure. */
import { BASELINE, caseById } from "./cases.js";
import type { ChartSpec, Series } from "./chart.js";
import { bracketingBaselines, type Phase } from "./plan.js";
import {
  compareToBaseline,
  cpuMicrosPerCall,
  spreadOf,
  summarize,
  type BaselineComparison,
  type PhaseSample,
  type Spread,
  type Summary,
  type TargetOutcome,
} from "./stats.js";

/** CPU used during a window, in cores (1 = one core busy throughout). */
export interface Cores {
  readonly server: number | undefined;
  readonly load: number | undefined;
  /** Every process on the machine: what is neither server nor load went to PostgreSQL or to other work. */
  readonly machine: number | undefined;
}

/** What was measured in one phase, before it is compared with anything. */
export interface MeasuredPhase extends Phase {
  readonly sample: PhaseSample;
  /** Server CPU seconds (all its processes) during the window; undefined off Linux. */
  readonly serverCpuSeconds: number | undefined;
  readonly cores: Cores;
  /** Resident memory of every server process at the window's end, MB; undefined off Linux. */
  readonly serverRssMb: number | undefined;
  /** gRPC code name → count. */
  readonly errorCodes: Readonly<Record<string, number>>;
  readonly firstError: string | undefined;
}

/** One phase, with its figures and, for a case, its comparison with the bracketing baselines. */
export interface PhaseResult {
  readonly caseId: string;
  readonly label: string;
  readonly concurrency: number;
  readonly itemsPerCall: number;
  readonly summary: Summary;
  readonly comparison: BaselineComparison | undefined;
  readonly serverCpuMicrosPerCall: number | undefined;
  /**
   * Server CPU per call over the bracketing baselines' mean: steadier than
   * the calls/s ratio when other work takes cores, since a stolen core lowers
   * the rate far more than it raises what each call costs.
   */
  readonly serverCpuRatio: number | undefined;
  readonly cores: Cores;
  readonly serverRssMb: number | undefined;
  readonly errorCodes: Readonly<Record<string, number>>;
  readonly firstError: string | undefined;
}

/** The baseline's repeated measurements at one concurrency. */
export interface BaselineSeries {
  readonly concurrency: number;
  /** calls/s of each measurement, in the order measured. */
  readonly callsPerSecond: readonly number[];
  readonly p99Ms: readonly number[];
  readonly rate: Spread;
}

/** One server configuration's whole run. */
export interface WorkersRun {
  /** KEYWARD_WORKERS as passed to the server; undefined when left unset. */
  readonly workers: number | undefined;
  /** Processes seen in the server's process tree once it listened. */
  readonly serverProcesses: number;
  /** Resident memory of the server processes once the fixtures were made, before any load; MB. */
  readonly idleRssMb: number | undefined;
  /** In the order measured. */
  readonly phases: readonly PhaseResult[];
  readonly baselines: readonly BaselineSeries[];
}

/** Turns measured phases (in plan order) into results: summaries, and each case against its bracketing baselines. */
export function analysePhases(measured: readonly MeasuredPhase[]): { phases: PhaseResult[]; baselines: BaselineSeries[] } {
  const summaries = measured.map((m) => summarize(m.sample, caseById(m.caseId)?.itemsPerCall ?? 1));
  const cpu = measured.map((m) => cpuMicrosPerCall(m.serverCpuSeconds, m.sample.calls));
  const phases = measured.map((m, i): PhaseResult => {
    const bench = caseById(m.caseId);
    const bracket = bracketingBaselines(measured, i);
    const [own, before, after] = [cpu[i], bracket && cpu[bracket.before], bracket && cpu[bracket.after]];
    return {
      caseId: m.caseId,
      label: bench?.label ?? m.caseId,
      concurrency: m.concurrency,
      itemsPerCall: bench?.itemsPerCall ?? 1,
      summary: summaries[i]!,
      comparison: bracket ? compareToBaseline(summaries[i]!, summaries[bracket.before]!, summaries[bracket.after]!) : undefined,
      serverCpuMicrosPerCall: own,
      serverCpuRatio: own !== undefined && before !== undefined && after !== undefined ? own / ((before + after) / 2) : undefined,
      cores: m.cores,
      serverRssMb: m.serverRssMb,
      errorCodes: m.errorCodes,
      firstError: m.firstError,
    };
  });
  const levels = [...new Set(measured.map((m) => m.concurrency))];
  const baselines = levels.map((concurrency): BaselineSeries => {
    const own = phases.filter((p) => p.caseId === BASELINE.id && p.concurrency === concurrency);
    const callsPerSecond = own.map((p) => p.summary.callsPerSecond);
    return { concurrency, callsPerSecond, p99Ms: own.map((p) => p.summary.p99Ms), rate: spreadOf(callsPerSecond) };
  });
  return { phases, baselines };
}

/** Errors in a run, every phase counted: the run fails when this is not 0. */
export function totalErrors(run: WorkersRun): number {
  return run.phases.reduce((n, p) => n + p.summary.errors, 0);
}

// ---------------------------------------------------------------------------
// Formatting

/** 1523.4 → "1,523"; NaN → "–". */
export function formatCount(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString("en-US") : "–";
}

/** Milliseconds: two decimals below 10, one below 100, none above. */
export function formatMs(value: number): string {
  if (!Number.isFinite(value)) return "–";
  return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0);
}

const formatRatio = (value: number | undefined) => (value === undefined || !Number.isFinite(value) ? "–" : value.toFixed(2));
const formatPercent = (value: number) => (Number.isFinite(value) ? `${(value * 100).toFixed(1)} %` : "–");

export function table(header: readonly string[], align: readonly ("l" | "r")[], rows: readonly (readonly string[])[]): string {
  const escape = (cell: string) => cell.replaceAll("|", "\\|");
  return [
    `| ${header.map(escape).join(" | ")} |`,
    `|${align.map((a) => (a === "r" ? "---:" : "---")).join("|")}|`,
    ...rows.map((row) => `| ${row.map(escape).join(" | ")} |`),
  ].join("\n");
}

/**
 * Every case at every concurrency (cases in catalogue order, then by
 * concurrency), the baseline first as the mean of its measurements.
 */
export function resultsTable(run: WorkersRun): string {
  const rows: string[][] = [];
  for (const b of run.baselines) {
    const own = run.phases.filter((p) => p.caseId === BASELINE.id && p.concurrency === b.concurrency);
    const mean = (f: (s: Summary) => number) => own.reduce((n, p) => n + f(p.summary), 0) / own.length;
    const cpu = own.map((p) => p.serverCpuMicrosPerCall).filter((v): v is number => v !== undefined);
    rows.push([
      `${BASELINE.label}, mean of ${own.length}`,
      String(b.concurrency),
      formatCount(b.rate.mean),
      "",
      formatMs(mean((s) => s.p50Ms)),
      formatMs(mean((s) => s.p95Ms)),
      formatMs(mean((s) => s.p99Ms)),
      String(own.reduce((n, p) => n + p.summary.errors, 0)),
      "1.00",
      "1.00",
      formatPercent(b.rate.spread),
      cpu.length > 0 ? formatCount(cpu.reduce((a, c) => a + c, 0) / cpu.length) : "–",
      "1.00",
    ]);
  }
  const cases = run.phases.filter((p) => p.caseId !== BASELINE.id);
  const order = [...new Set(cases.map((p) => p.caseId))];
  for (const caseId of order) {
    for (const p of cases.filter((c) => c.caseId === caseId).sort((a, b) => a.concurrency - b.concurrency)) {
      rows.push([
        p.label,
        String(p.concurrency),
        formatCount(p.summary.callsPerSecond),
        p.itemsPerCall > 1 ? formatCount(p.summary.itemsPerSecond) : "",
        formatMs(p.summary.p50Ms),
        formatMs(p.summary.p95Ms),
        formatMs(p.summary.p99Ms),
        String(p.summary.errors),
        formatRatio(p.comparison?.ratio),
        formatRatio(p.comparison?.p99Ratio),
        p.comparison ? formatPercent(p.comparison.baselineSpread) : "–",
        p.serverCpuMicrosPerCall === undefined ? "–" : formatCount(p.serverCpuMicrosPerCall),
        formatRatio(p.serverCpuRatio),
      ]);
    }
  }
  return table(
    [
      "case",
      "in flight",
      "calls/s",
      "items/s",
      "p50 ms",
      "p95 ms",
      "p99 ms",
      "errors",
      "× baseline calls/s",
      "× baseline p99",
      "baselines apart",
      "server µs/call",
      "× baseline µs/call",
    ],
    ["l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r"],
    rows,
  );
}

/** Each concurrency's baseline measurements in the order taken: the machine's drift over the run. */
export function baselineTable(run: WorkersRun): string {
  return table(
    ["in flight", "baseline calls/s, in order measured", "mean", "spread (max − min) / mean", "p99 ms, in order"],
    ["r", "l", "r", "r", "l"],
    run.baselines.map((b) => [
      String(b.concurrency),
      b.callsPerSecond.map(formatCount).join(", "),
      formatCount(b.rate.mean),
      formatPercent(b.rate.spread),
      b.p99Ms.map(formatMs).join(", "),
    ]),
  );
}

export function targetsTable(outcomes: readonly TargetOutcome[]): string {
  return table(
    ["target", "measured", "verdict"],
    ["l", "l", "l"],
    outcomes.map(({ target, verdict, measured }) => {
      const label = caseById(target.caseId)?.label ?? target.caseId;
      const goal =
        target.kind === "near-baseline"
          ? `${label} at ${target.concurrency}: ≥ ${target.minRatio} × baseline calls/s, p99 ≤ ${target.maxP99Ratio} × baseline p99`
          : `${label} at ${target.concurrency}: ≥ ${formatCount(target.minItemsPerSecond)} items/s`;
      return [goal, measured || "–", verdict];
    }),
  );
}

/** Calls/s of every phase for each worker count, and the last over the first. */
export function workersTable(runs: readonly WorkersRun[]): string {
  const name = (w: number | undefined) => (w === undefined ? "default" : String(w));
  const key = (p: PhaseResult) => `${p.caseId}@${p.concurrency}`;
  const rowsOf = (run: WorkersRun) => {
    const out = new Map<string, { label: string; concurrency: number; rate: number; items: number }>();
    for (const b of run.baselines) {
      out.set(`${BASELINE.id}@${b.concurrency}`, { label: BASELINE.label, concurrency: b.concurrency, rate: b.rate.mean, items: 1 });
    }
    const cases = run.phases.filter((p) => p.caseId !== BASELINE.id);
    // Grouped by case in the order first measured, then by concurrency, as in resultsTable.
    const order = [...new Set(cases.map((p) => p.caseId))];
    cases.sort((a, b) => order.indexOf(a.caseId) - order.indexOf(b.caseId) || a.concurrency - b.concurrency);
    for (const p of cases) {
      out.set(key(p), { label: p.label, concurrency: p.concurrency, rate: p.summary.callsPerSecond, items: p.itemsPerCall });
    }
    return out;
  };
  const perRun = runs.map(rowsOf);
  const keys = [...perRun[0]!.keys()];
  const first = runs[0]!;
  const last = runs.at(-1)!;
  return table(
    ["case", "in flight", ...runs.map((r) => `calls/s, ${name(r.workers)} worker(s)`), `${name(last.workers)} ÷ ${name(first.workers)}`],
    ["l", "r", ...runs.map(() => "r" as const), "r"],
    keys.map((k) => {
      const row = perRun[0]!.get(k)!;
      const rates = perRun.map((m) => m.get(k)?.rate ?? NaN);
      return [row.label, String(row.concurrency), ...rates.map(formatCount), formatRatio(rates.at(-1)! / rates[0]!)];
    }),
  );
}

/** Throughput and p99 against concurrency, one line per case and the baseline's mean. */
export function chartSpec(run: WorkersRun, title: string, subtitle: string): ChartSpec {
  const caseIds = [BASELINE.id, ...new Set(run.phases.filter((p) => p.caseId !== BASELINE.id).map((p) => p.caseId))];
  const seriesOf = (value: (p: PhaseResult) => number): Series[] =>
    caseIds.map((caseId) => {
      const own = run.phases.filter((p) => p.caseId === caseId);
      const levels = [...new Set(own.map((p) => p.concurrency))];
      return {
        name: caseById(caseId)?.label ?? caseId,
        emphasis: caseId === BASELINE.id,
        points: levels.map((x) => {
          const at = own.filter((p) => p.concurrency === x);
          return { x, y: at.reduce((n, p) => n + value(p), 0) / at.length };
        }),
      };
    });
  return {
    title,
    subtitle,
    xLabel: "calls in flight",
    panels: [
      { title: "Throughput", yLabel: "calls/s (log)", series: seriesOf((p) => p.summary.callsPerSecond) },
      { title: "p99 latency", yLabel: "ms (log)", series: seriesOf((p) => p.summary.p99Ms) },
    ],
  };
}
