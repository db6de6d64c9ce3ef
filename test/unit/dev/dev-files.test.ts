import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { devPolicyText, ensureDevPolicy } from "../../../src/dev/dev-files.js";

describe("dev files", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });

  it("is written by exactly one of many processes starting at once, and is never seen empty or partial", async () => {
    const dir = await mkdtemp(join(tmpdir(), "keyward-dev-files-"));
    dirs.push(dir);
    const file = join(dir, "policy.yaml");
    const seen = new Set<string>();
    let watching = true;
    // Reads the file whenever it exists while the writers race.
    const watcher = (async () => {
      while (watching) {
        if (existsSync(file)) seen.add(readFileSync(file, "utf8"));
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    const wrote = await Promise.all(Array.from({ length: 20 }, () => ensureDevPolicy(file)));
    watching = false;
    await watcher;
    seen.add(readFileSync(file, "utf8"));
    expect(wrote.filter(Boolean)).toHaveLength(1);
    expect([...seen]).toEqual([devPolicyText()]);
    // No staging file is left behind.
    expect(await readdir(dir)).toEqual(["policy.yaml"]);
  });
});
