/** The bench's command line: parsed, defaulted and checked. Pure. */
import { parseArgs } from "node:util";
import { CASES, QUICK_CASE_IDS, selectCases, type BenchCase } from "./cases.js";
import { PEER_CASE_IDS, PEERS, type Peer } from "./peer-report.js";

export const USAGE = `usage: npm run bench -- [options]

  --cases LIST             comma-separated case ids or globs (e.g. 'encrypt-*,sign-p256'); default: all
  --seconds N              measured seconds per case and concurrency (default 5)
  --concurrency LIST       calls in flight, comma-separated (default 1,16,64)
  --workers LIST           server processes (KEYWARD_WORKERS), one full run each, e.g. 1,2
                           (default: the server's own default, KEYWARD_WORKERS unset)
  --quick                  a few cases at 1 and 64 in flight for 1 s each: a smoke run under a minute
  --out DIR                where to write results.json, results.md and chart.svg (default bench-results/<time>/)
  --server-cpu-prof DIR    run the server under node --cpu-prof, profiles and phase windows to DIR
  --load-processes N       processes generating the load (default 2)
  --connections N          connections per load process and service (default 4)
  --baseline-every N       measure the baseline again after every N cases (default 4)
  --peer kmip              then the same operations on a KMIP server (PyKMIP) and on Keyward, both
                           driven by one Python client; cases default to ${PEER_CASE_IDS.join(", ")}
  --help                   this text

cases: ${CASES.map((c) => c.id).join(", ")}
`;

/** Everything a run needs to know, defaults applied. */
export interface BenchOptions {
  readonly cases: readonly BenchCase[];
  /** Measured window per phase. */
  readonly seconds: number;
  /** Load before each measured window, on the same connections. */
  readonly warmUpSeconds: number;
  /** Every case in turn before the first phase, so the first baseline meets no colder server than the last. */
  readonly serverWarmUpSeconds: number;
  /** Ascending, no repeats. */
  readonly concurrency: readonly number[];
  /** One full run per entry; `undefined`: KEYWARD_WORKERS left unset. */
  readonly workers: readonly (number | undefined)[];
  readonly quick: boolean;
  /** As given (relative to the working directory) or undefined for the default. */
  readonly outDir: string | undefined;
  readonly serverCpuProfDir: string | undefined;
  readonly loadProcesses: number;
  readonly connections: number;
  readonly baselineEvery: number;
  /** Compare with this peer after the runs; undefined: no comparison. */
  readonly peer: Peer | undefined;
}

export type ParsedArgs =
  | { readonly kind: "run"; readonly options: BenchOptions }
  | { readonly kind: "help" }
  | { readonly kind: "invalid"; readonly message: string };

const DEFAULTS = {
  seconds: 5,
  warmUpSeconds: 1,
  serverWarmUpSeconds: 5,
  concurrency: [1, 16, 64],
  loadProcesses: 2,
  connections: 4,
  baselineEvery: 4,
} as const;

/** What `--quick` changes; options given explicitly still win. */
const QUICK = {
  seconds: 1,
  warmUpSeconds: 0.5,
  serverWarmUpSeconds: 1,
  concurrency: [1, 64],
  // Only before and after each concurrency's cases.
  baselineEvery: Number.MAX_SAFE_INTEGER,
} as const;

class UsageError extends Error {}

function positiveNumber(name: string, text: string): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value <= 0) {
    throw new UsageError(`--${name} must be a positive number, not "${text}"`);
  }
  return value;
}

function integerIn(name: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isInteger(value) || value < min || value > max) {
    throw new UsageError(`--${name} must be an integer from ${min} to ${max}, not "${text}"`);
  }
  return value;
}

/** "64,1,16,16" → [1, 16, 64]. */
function integerList(name: string, text: string, min: number, max: number): number[] {
  const parts = text.split(",").map((p) => p.trim());
  if (parts.some((p) => p === "")) {
    throw new UsageError(`--${name} must be a comma-separated list of integers, not "${text}"`);
  }
  return [...new Set(parts.map((p) => integerIn(name, p, min, max)))].sort((a, b) => a - b);
}

/** Parses the arguments after `npm run bench --`. Never throws, never exits. */
export function parseBenchArgs(argv: readonly string[]): ParsedArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        cases: { type: "string" },
        seconds: { type: "string" },
        concurrency: { type: "string" },
        workers: { type: "string" },
        quick: { type: "boolean", default: false },
        out: { type: "string" },
        "server-cpu-prof": { type: "string" },
        "load-processes": { type: "string" },
        connections: { type: "string" },
        "baseline-every": { type: "string" },
        peer: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (err) {
    return { kind: "invalid", message: (err as Error).message };
  }
  if (values.help) {
    return { kind: "help" };
  }
  try {
    const quick = values.quick === true;
    const peer = values.peer;
    if (peer !== undefined && !(PEERS as readonly string[]).includes(peer)) {
      throw new UsageError(`--peer must be one of ${PEERS.join(", ")}, not "${peer}"`);
    }
    const defaultCaseIds: readonly string[] | undefined = quick ? QUICK_CASE_IDS : peer !== undefined ? PEER_CASE_IDS : undefined;
    let cases: readonly BenchCase[] = defaultCaseIds ? CASES.filter((c) => defaultCaseIds.includes(c.id)) : CASES;
    if (values.cases !== undefined) {
      const selection = selectCases(values.cases);
      if (selection.kind === "invalid") {
        throw new UsageError(selection.message);
      }
      cases = selection.cases;
    }
    const base = quick ? { ...DEFAULTS, ...QUICK } : DEFAULTS;
    const seconds = values.seconds === undefined ? base.seconds : positiveNumber("seconds", values.seconds);
    for (const [name, text] of [
      ["out", values.out],
      ["server-cpu-prof", values["server-cpu-prof"]],
    ] as const) {
      if (text !== undefined && text.trim() === "") {
        throw new UsageError(`--${name} needs a folder`);
      }
    }
    return {
      kind: "run",
      options: {
        cases,
        seconds,
        // A short measured window gets a warm-up no longer than itself.
        warmUpSeconds: Math.min(base.warmUpSeconds, seconds),
        serverWarmUpSeconds: base.serverWarmUpSeconds,
        concurrency: values.concurrency === undefined ? base.concurrency : integerList("concurrency", values.concurrency, 1, 4096),
        workers: values.workers === undefined ? [undefined] : integerList("workers", values.workers, 1, 64),
        quick,
        outDir: values.out,
        serverCpuProfDir: values["server-cpu-prof"],
        loadProcesses:
          values["load-processes"] === undefined ? base.loadProcesses : integerIn("load-processes", values["load-processes"], 1, 64),
        connections: values.connections === undefined ? base.connections : integerIn("connections", values.connections, 1, 256),
        baselineEvery:
          values["baseline-every"] === undefined
            ? base.baselineEvery
            : integerIn("baseline-every", values["baseline-every"], 1, Number.MAX_SAFE_INTEGER),
        peer: peer as Peer | undefined,
      },
    };
  } catch (err) {
    if (err instanceof UsageError) {
      return { kind: "invalid", message: err.message };
    }
    throw err;
  }
}

/** `bench-results/2026-12-01T04-40-47Z`: sortable, and valid as a folder name everywhere. */
export function defaultOutDir(now: Date): string {
  return `bench-results/${now.toISOString().replace(/\.\d{3}Z$/, "Z").replaceAll(":", "-")}`;
}
