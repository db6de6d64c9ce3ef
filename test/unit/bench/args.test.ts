import { describe, expect, it } from "vitest";
import { defaultOutDir, parseBenchArgs, type BenchOptions } from "../../bench/lib/args.js";
import { CASES, QUICK_CASE_IDS } from "../../bench/lib/cases.js";

function options(argv: string[]): BenchOptions {
  const parsed = parseBenchArgs(argv);
  if (parsed.kind !== "run") throw new Error(`expected options, got ${JSON.stringify(parsed)}`);
  return parsed.options;
}

function invalid(argv: string[]): string {
  const parsed = parseBenchArgs(argv);
  if (parsed.kind !== "invalid") throw new Error(`expected a usage error, got ${parsed.kind}`);
  return parsed.message;
}

describe("parseBenchArgs defaults", () => {
  it("runs every case at 1, 16 and 64 in flight for 5 s, with the server's own worker count", () => {
    const o = options([]);
    expect(o.cases.map((c) => c.id)).toEqual(CASES.map((c) => c.id));
    expect(o.concurrency).toEqual([1, 16, 64]);
    expect(o.seconds).toBe(5);
    expect(o.warmUpSeconds).toBe(1);
    expect(o.workers).toEqual([undefined]);
    expect(o.quick).toBe(false);
    expect(o.outDir).toBeUndefined();
    expect(o.serverCpuProfDir).toBeUndefined();
    expect(o.loadProcesses).toBe(2);
    expect(o.baselineEvery).toBe(4);
  });

  it("--quick: the target cases at 1 and 64 in flight, 1 s each, baselines only around each level", () => {
    const o = options(["--quick"]);
    expect(o.cases.map((c) => c.id)).toEqual(QUICK_CASE_IDS);
    expect(o.concurrency).toEqual([1, 64]);
    expect(o.seconds).toBe(1);
    expect(o.warmUpSeconds).toBe(0.5);
    expect(o.baselineEvery).toBeGreaterThanOrEqual(CASES.length);
  });

  it("explicit options win over --quick's", () => {
    const o = options(["--quick", "--seconds", "3", "--concurrency", "16", "--cases", "mac-1k"]);
    expect(o.seconds).toBe(3);
    expect(o.concurrency).toEqual([16]);
    expect(o.cases.map((c) => c.id)).toEqual(["mac-1k"]);
  });
});

describe("parseBenchArgs values", () => {
  it("sorts and de-duplicates concurrency and worker lists", () => {
    const o = options(["--concurrency", "64, 1,16,16", "--workers", "2,1"]);
    expect(o.concurrency).toEqual([1, 16, 64]);
    expect(o.workers).toEqual([1, 2]);
  });

  it("accepts fractional seconds and keeps the warm-up no longer than the window", () => {
    const o = options(["--seconds", "0.25"]);
    expect(o.seconds).toBe(0.25);
    expect(o.warmUpSeconds).toBe(0.25);
  });

  it("selects cases by glob, in catalogue order", () => {
    const o = options(["--cases", "verify-*,encrypt-1k,sign-p256"]);
    expect(o.cases.map((c) => c.id)).toEqual(["encrypt-1k", "sign-p256", "verify-ed25519", "verify-p256", "verify-rsa2048"]);
  });

  it("keeps --out and --server-cpu-prof as given", () => {
    const o = options(["--out", "results/x", "--server-cpu-prof", "/tmp/prof"]);
    expect(o.outDir).toBe("results/x");
    expect(o.serverCpuProfDir).toBe("/tmp/prof");
  });

  it("--help asks for the usage text", () => {
    expect(parseBenchArgs(["--help"]).kind).toBe("help");
    expect(parseBenchArgs(["-h"]).kind).toBe("help");
  });
});

describe("parseBenchArgs usage errors name what is wrong", () => {
  it.each([
    [["--seconds", "0"], /--seconds must be a positive number, not "0"/],
    [["--seconds", "soon"], /--seconds must be a positive number/],
    [["--concurrency", "1,,64"], /--concurrency must be a comma-separated list/],
    [["--concurrency", "0"], /--concurrency must be an integer from 1/],
    [["--concurrency", "1.5"], /--concurrency must be an integer/],
    [["--workers", "65"], /--workers must be an integer from 1 to 64/],
    [["--load-processes", "0"], /--load-processes must be an integer from 1/],
    [["--cases", "encrypt-*,nope"], /"nope" matches no case; the cases are: encrypt-32b/],
    [["--cases", ","], /--cases needs at least one/],
    [["--out", ""], /--out needs a folder/],
    [["--bogus"], /Unknown option '--bogus'/],
    [["extra"], /Unexpected argument 'extra'/],
  ] as const)("%j", (argv, message) => {
    expect(invalid([...argv])).toMatch(message);
  });
});

describe("defaultOutDir", () => {
  it("is bench-results/<UTC time to the second>, without characters some file systems refuse", () => {
    expect(defaultOutDir(new Date("2026-12-01T04:40:47.123Z"))).toBe("bench-results/2026-12-01T04-40-47Z");
  });
});

describe("parseBenchArgs --peer", () => {
  it("is off by default", () => {
    expect(options([]).peer).toBeUndefined();
  });

  it("--peer kmip: the comparison, and the main run narrowed to the operations it compares", () => {
    const o = options(["--peer", "kmip"]);
    expect(o.peer).toBe("kmip");
    expect(o.cases.map((c) => c.id)).toEqual(["encrypt-1k", "decrypt-1k", "sign-rsa2048"]);
  });

  it("--cases still chooses the main run's cases", () => {
    expect(options(["--peer", "kmip", "--cases", "mac-1k"]).cases.map((c) => c.id)).toEqual(["mac-1k"]);
  });

  it("refuses a peer it does not know", () => {
    expect(invalid(["--peer", "vault"])).toBe('--peer must be one of kmip, not "vault"');
    expect(invalid(["--peer"])).toMatch(/--peer/);
  });
});
