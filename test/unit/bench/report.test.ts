import { describe, expect, it } from "vitest";
import {
  analysePhases,
  baselineTable,
  chartSpec,
  formatCount,
  formatMs,
  resultsTable,
  targetsTable,
  totalErrors,
  workersTable,
  type MeasuredPhase,
  type WorkersRun,
} from "../../bench/lib/report.js";
import { evaluateTargets } from "../../bench/lib/stats.js";

/** A phase of `rate` calls/s over 2 s, latencies 1..n ms scaled so that p99 is `p99`. */
function measured(caseId: string, concurrency: number, rate: number, p99: number, errors = 0): MeasuredPhase {
  const calls = rate * 2;
  return {
    caseId,
    concurrency,
    sample: { calls, errors, seconds: 2, latenciesMs: Float64Array.from({ length: calls }, (_, i) => ((i + 1) / (0.99 * calls)) * p99) },
    serverCpuSeconds: calls * 0.0005,
    cores: { server: 0.9, load: 0.4, machine: 1.8 },
    serverRssMb: 300,
    errorCodes: errors > 0 ? { UNAVAILABLE: errors } : {},
    firstError: errors > 0 ? "UNAVAILABLE: audit log unavailable" : undefined,
  };
}

const phases: MeasuredPhase[] = [
  measured("baseline", 1, 500, 4),
  measured("encrypt-1k", 1, 480, 4),
  measured("batch-encrypt-256", 1, 50, 20),
  measured("baseline", 1, 520, 4),
  measured("baseline", 64, 2000, 60),
  measured("encrypt-1k", 64, 1900, 66),
  measured("batch-encrypt-256", 64, 200, 400),
  measured("baseline", 64, 2200, 60),
];

describe("analysePhases", () => {
  const { phases: results, baselines } = analysePhases(phases);

  it("compares each case with the baselines around it at its concurrency", () => {
    const encrypt64 = results.find((p) => p.caseId === "encrypt-1k" && p.concurrency === 64)!;
    expect(encrypt64.comparison?.baselineCallsPerSecond).toBe(2100);
    expect(encrypt64.comparison?.ratio).toBeCloseTo(1900 / 2100, 12);
    expect(encrypt64.comparison?.baselineSpread).toBeCloseTo(200 / 2100, 12);
    const encrypt1 = results.find((p) => p.caseId === "encrypt-1k" && p.concurrency === 1)!;
    expect(encrypt1.comparison?.ratio).toBeCloseTo(480 / 510, 12);
  });

  it("gives a batch its items per second and the baseline no comparison", () => {
    const batch = results.find((p) => p.caseId === "batch-encrypt-256" && p.concurrency === 64)!;
    expect(batch.summary.itemsPerSecond).toBe(200 * 256);
    expect(batch.label).toBe("BatchEncrypt 256 × 1 KiB");
    expect(results[0]!.comparison).toBeUndefined();
  });

  it("gathers each concurrency's baselines in the order measured, with their spread", () => {
    expect(baselines.map((b) => [b.concurrency, b.callsPerSecond])).toEqual([
      [1, [500, 520]],
      [64, [2000, 2200]],
    ]);
    expect(baselines[1]!.rate.spread).toBeCloseTo(200 / 2100, 12);
  });

  it("turns server CPU seconds into µs per call, and compares a case's with its bracketing baselines'", () => {
    expect(results[0]!.serverCpuMicrosPerCall).toBeCloseTo(500, 9);
    const costly = analysePhases([
      { ...measured("baseline", 16, 100, 4), serverCpuSeconds: 0.2 },
      { ...measured("mac-1k", 16, 100, 4), serverCpuSeconds: 0.3 },
      { ...measured("baseline", 16, 100, 4), serverCpuSeconds: 0.2 },
    ]).phases[1]!;
    expect(costly.serverCpuMicrosPerCall).toBeCloseTo(1500, 9);
    expect(costly.serverCpuRatio).toBeCloseTo(1.5, 12);
    expect(results[0]!.serverCpuRatio).toBeUndefined();
  });
});

function run(workers: number | undefined, scale = 1, errors = 0): WorkersRun {
  const scaled = phases.map((p) => ({ ...measured(p.caseId, p.concurrency, (p.sample.calls / 2) * scale, 10, p.caseId === "encrypt-1k" ? errors : 0) }));
  return { workers, serverProcesses: workers ?? 1, idleRssMb: 150, ...analysePhases(scaled) };
}

describe("resultsTable", () => {
  const table = resultsTable(run(undefined));
  const rows = table.split("\n");

  it("is a markdown table with a row per baseline level and per case and concurrency", () => {
    expect(rows[0]).toMatch(/^\| case \| in flight \| calls\/s \| items\/s \| p50 ms \| p95 ms \| p99 ms \| errors \|/);
    expect(rows[1]).toMatch(/^\|---\|---:\|/);
    expect(rows).toHaveLength(2 + 2 + 4);
    for (const row of rows) expect(row.split("|").length).toBe(rows[0]!.split("|").length);
  });

  it("lists the baseline first, then each case by concurrency", () => {
    expect(rows.slice(2).map((r) => r.split(" | ").slice(0, 2).join(" @ "))).toEqual([
      "| Health/Check (baseline), mean of 2 @ 1",
      "| Health/Check (baseline), mean of 2 @ 64",
      "| Encrypt 1 KiB @ 1",
      "| Encrypt 1 KiB @ 64",
      "| BatchEncrypt 256 × 1 KiB @ 1",
      "| BatchEncrypt 256 × 1 KiB @ 64",
    ]);
  });

  it("shows the ratio to the baseline and items/s only for batches", () => {
    expect(rows[5]).toContain("| 1,900 |  |");
    expect(rows[5]).toContain("| 0.90 |");
    expect(rows[7]).toContain("| 200 | 51,200 |");
  });
});

describe("baselineTable", () => {
  it("lists each level's measurements in order with mean and spread", () => {
    const table = baselineTable(run(undefined));
    expect(table).toContain("| 64 | 2,000, 2,200 | 2,100 | 9.5 % | 10.0, 10.0 |");
  });
});

describe("targetsTable", () => {
  it("states each target, what was measured and the verdict", () => {
    const r = run(undefined);
    const table = targetsTable(evaluateTargets(r.phases));
    expect(table).toContain("| Encrypt 1 KiB at 64: ≥ 0.9 × baseline calls/s, p99 ≤ 1.5 × baseline p99 | ratio 0.90, p99 ratio 1.00 | met |");
    expect(table).toContain("| BatchEncrypt 256 × 1 KiB at 64: ≥ 40,000 items/s | 51200 items/s | met |");
    expect(table).toContain("| Decrypt 1 KiB at 64: ≥ 0.9 × baseline calls/s, p99 ≤ 1.5 × baseline p99 | – | not measured |");
  });
});

describe("workersTable", () => {
  it("puts each worker count's calls/s side by side with the last over the first", () => {
    const table = workersTable([run(1), run(2, 1.5)]);
    expect(table.split("\n")[0]).toBe("| case | in flight | calls/s, 1 worker(s) | calls/s, 2 worker(s) | 2 ÷ 1 |");
    expect(table).toContain("| Health/Check (baseline) | 64 | 2,100 | 3,150 | 1.50 |");
    expect(table).toContain("| Encrypt 1 KiB | 64 | 1,900 | 2,850 | 1.50 |");
    expect(table.split("\n").slice(2).map((row) => row.split(" | ").slice(0, 2).join(" @ "))).toEqual([
      "| Health/Check (baseline) @ 1",
      "| Health/Check (baseline) @ 64",
      "| Encrypt 1 KiB @ 1",
      "| Encrypt 1 KiB @ 64",
      "| BatchEncrypt 256 × 1 KiB @ 1",
      "| BatchEncrypt 256 × 1 KiB @ 64",
    ]);
  });
});

describe("totalErrors", () => {
  it("adds every phase's errors", () => {
    expect(totalErrors(run(undefined))).toBe(0);
    expect(totalErrors(run(undefined, 1, 3))).toBe(6);
  });
});

describe("chartSpec", () => {
  it("has a throughput and a p99 panel, the baseline first and emphasised, one point per concurrency", () => {
    const spec = chartSpec(run(undefined), "t", "s");
    expect(spec.panels.map((p) => p.title)).toEqual(["Throughput", "p99 latency"]);
    const [baseline, encrypt, batch] = spec.panels[0]!.series;
    expect(baseline).toMatchObject({ name: "Health/Check (baseline)", emphasis: true });
    expect(baseline!.points).toEqual([{ x: 1, y: 510 }, { x: 64, y: 2100 }]);
    expect(encrypt!.points).toEqual([{ x: 1, y: 480 }, { x: 64, y: 1900 }]);
    expect(batch!.points).toEqual([{ x: 1, y: 50 }, { x: 64, y: 200 }]);
  });
});

describe("formatting", () => {
  it.each([
    [1523.4, "1,523"],
    [0.4, "0"],
    [NaN, "–"],
  ] as const)("formatCount(%s) = %s", (v, text) => expect(formatCount(v)).toBe(text));

  it.each([
    [1.234, "1.23"],
    [12.34, "12.3"],
    [123.4, "123"],
    [NaN, "–"],
  ] as const)("formatMs(%s) = %s", (v, text) => expect(formatMs(v)).toBe(text));
});
