import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { REPO_ROOT } from "../helpers/keyward-process.js";

/**
 * Runs `script` (an ES module, with `createLogger` and `flushLog` of
 * src/log.ts in scope) in a new process whose stdout is read only after
 * `readAfterMs`, so that its writes back up in the pipe as they do when a
 * busy parent reads late.
 */
function runWithLateReader(script: string, readAfterMs: number): Promise<{ code: number | null; stdout: string }> {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "--input-type=module",
      "-e",
      `const { createLogger, flushLog } = await import(${JSON.stringify(join(REPO_ROOT, "src/log.ts"))});\n${script}`,
    ],
    { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "inherit"] },
  );
  child.stdout.pause();
  setTimeout(() => child.stdout.resume(), readAfterMs);
  let stdout = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  return new Promise((resolve) => child.once("close", (code) => resolve({ code, stdout })));
}

describe("flushLog", () => {
  it("writes every line, in order, before the process exits, even with a write still in flight", async () => {
    // 1 MiB does not fit in a pipe: the first line is still being written
    // when the last one is logged and the process exits.
    const { code, stdout } = await runWithLateReader(
      `const log = createLogger("info");
       log.info({ filler: "x".repeat(1 << 20) }, "first");
       log.info("last");
       await flushLog();
       process.exit(0);`,
      300,
    );
    expect(code).toBe(0);
    const lines = stdout.split("\n").filter(Boolean);
    expect(lines.map((line) => (JSON.parse(line) as { msg: string }).msg)).toEqual(["first", "last"]);
  });

  it("gives up after its timeout when nobody reads stdout, so that the exit is not held", async () => {
    const started = performance.now();
    const { code } = await runWithLateReader(
      `const log = createLogger("info");
       log.info({ filler: "x".repeat(1 << 20) }, "first");
       await flushLog(200);
       process.exit(3);`,
      5_000,
    );
    expect(code).toBe(3);
    expect(performance.now() - started).toBeLessThan(4_000);
  });
});
