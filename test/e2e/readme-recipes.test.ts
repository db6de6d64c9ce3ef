import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../helpers/keyward-process.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/**
 * README's shell recipes, run as written so they cannot rot: every ```sh block
 * that calls `curl` or `buf curl` (directly or through a variable an earlier
 * recipe defined, like `$K`), in README order, against one server with the
 * dev PKI. Each runs with bash in a folder laid out like a checkout where
 * `npm start` has run (`.keyward` is the test server's data folder;
 * node_modules, package.json and src are the repository's), with one change:
 * the port of `127.0.0.1:8443`. `npx` runs the tool from node_modules/.bin,
 * as npx does for a dependency, without npm's second of start-up per command
 * (and never downloads anything).
 *
 * - Every command must exit 0.
 * - A ```json block right after a recipe is the answer of its last command:
 *   the real answer must have every field shown, with the value shown, where
 *   `…` stands for any text.
 * - A recipe may write `"field":"<from Method>"`, meaning the field of that
 *   name in the answer of the latest Method call (a human pastes it); the
 *   test does the same.
 * - Variable assignments (`NAME=value` lines) carry over to later recipes, as
 *   in one terminal.
 */

const README = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
const README_PORT = "127.0.0.1:8443";

interface Command {
  readonly line: number;
  readonly text: string;
}

interface Recipe {
  /** 1-based line of the opening fence. */
  readonly line: number;
  readonly assignments: readonly string[];
  readonly commands: readonly Command[];
  /** The ```json block right after the recipe, parsed. */
  readonly answer?: unknown;
}

interface Fence {
  readonly lang: string;
  readonly line: number;
  readonly endLine: number;
  readonly body: string[];
}

function fences(markdown: string): Fence[] {
  const lines = markdown.split("\n");
  const found: Fence[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\w*)\s*$/.exec(lines[i]!);
    if (!open) {
      continue;
    }
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]!); i++) {
      body.push(lines[i]!);
    }
    found.push({ lang: open[1]!, line: start + 1, endLine: i + 1, body });
  }
  return found;
}

const ASSIGNMENT = /^([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|'[^']*'|\S+)\s*$/;

function recipes(markdown: string): Recipe[] {
  const all = fences(markdown);
  const lines = markdown.split("\n");
  /** Variables whose value runs curl (e.g. K="npx buf curl ..."): a block using one is a recipe too. */
  const curlVariables: string[] = [];
  const found: Recipe[] = [];
  all.forEach((fence, index) => {
    const text = fence.body.join("\n");
    const usesCurlVariable = curlVariables.some((name) => new RegExp(`\\$\\{?${name}\\b`).test(text));
    if (fence.lang !== "sh" || !(/\bcurl\b/.test(text) || usesCurlVariable)) {
      return;
    }
    const assignments: string[] = [];
    const commands: Command[] = [];
    for (let i = 0; i < fence.body.length; i++) {
      const first = i;
      let command = fence.body[i]!;
      while (command.endsWith("\\") && i + 1 < fence.body.length) {
        command = `${command.slice(0, -1)} ${fence.body[++i]!.trim()}`;
      }
      if (command.trim() === "" || command.trimStart().startsWith("#")) {
        continue;
      }
      const assignment = ASSIGNMENT.exec(command);
      if (assignment) {
        assignments.push(command);
        if (/\bcurl\b/.test(assignment[2]!)) {
          curlVariables.push(assignment[1]!);
        }
      } else {
        commands.push({ line: fence.line + 1 + first, text: command });
      }
    }
    const next = all[index + 1];
    const between = next ? lines.slice(fence.endLine, next.line - 1).join("\n") : "x";
    const answer = next?.lang === "json" && between.trim() === "" ? (JSON.parse(next.body.join("\n")) as unknown) : undefined;
    found.push({ line: fence.line, assignments, commands, answer });
  });
  return found;
}

/** `Service/Method` a command calls, if it calls one. */
function calledMethod(command: string): string | undefined {
  return /(\w+Service)\/(\w+)/.exec(command)?.[2];
}

/**
 * The answer has every field `shown` has, with the value shown; in strings
 * `…` stands for any text, and a lone `"…"` for any value.
 */
function expectShown(actual: unknown, shown: unknown, path = "answer"): void {
  if (typeof shown === "string" && shown.includes("…")) {
    expect(actual, path).toBeDefined();
    if (shown !== "…") {
      const pattern = shown.split("…").map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".*");
      expect(String(actual), path).toMatch(new RegExp(`^${pattern}$`));
    }
  } else if (Array.isArray(shown)) {
    expect(Array.isArray(actual) ? actual.length : actual, `${path}.length`).toBe(shown.length);
    shown.forEach((item, i) => expectShown((actual as unknown[])[i], item, `${path}[${i}]`));
  } else if (shown !== null && typeof shown === "object") {
    expect(actual, path).toBeTypeOf("object");
    for (const [key, value] of Object.entries(shown)) {
      expect(actual as object, path).toHaveProperty([key]);
      expectShown((actual as Record<string, unknown>)[key], value, `${path}.${key}`);
    }
  } else {
    expect(actual, path).toEqual(shown);
  }
}

/** Runs the named tool from the repository's node_modules/.bin, as `npx <tool>` does for a dependency. */
const NPX = `#!/bin/sh
tool="$1"
shift
[ -x "${REPO_ROOT}/node_modules/.bin/$tool" ] || { echo "npx: $tool is not a dependency of the repository" >&2; exit 127; }
exec "${REPO_ROOT}/node_modules/.bin/$tool" "$@"
`;

function bash(
  script: string,
  cwd: string,
  path: string,
  url: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      "bash",
      ["-c", script],
      // A terminal's environment, nothing of the test runner's (no DATABASE_URL, no KEYWARD_*)
      // but where the examples find the server: their default names port 8443.
      { cwd, env: { PATH: path, HOME: process.env.HOME ?? cwd, KEYWARD_URL: url }, timeout: 60_000, maxBuffer: 4 * 1024 * 1024 },
      (error, stdout, stderr) => {
        resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr });
      },
    );
  });
}

const RECIPES = recipes(README);

describe("README recipes", () => {
  let keyward: TestKeyward;
  let checkout: string;
  /** PATH for the recipes: the npx above, then the runner's. */
  let path: string;
  /** Every assignment so far, as in one terminal session. */
  const session: string[] = [];
  /** The latest answer of each method, for `<from Method>`. */
  const answers = new Map<string, Record<string, unknown>>();

  beforeAll(async () => {
    keyward = await startTestKeyward();
    checkout = await mkdtemp(join(tmpdir(), "keyward-readme-"));
    await symlink(keyward.dataDir, join(checkout, ".keyward"));
    for (const entry of ["node_modules", "package.json", "src", "gen", "tsconfig.json", "examples"]) {
      await symlink(join(REPO_ROOT, entry), join(checkout, entry));
    }
    const bin = join(checkout, ".test-bin");
    await mkdir(bin);
    await writeFile(join(bin, "npx"), NPX, { mode: 0o755 });
    path = `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}`;
  });
  afterAll(async () => {
    await keyward?.close();
    if (checkout !== undefined) {
      await rm(checkout, { recursive: true, force: true });
    }
  });

  it("finds the recipes: identity, keys, crypto and secrets, with the dev PKI, on port 8443", () => {
    const methods = new Set(RECIPES.flatMap((recipe) => recipe.commands.map((command) => calledMethod(command.text))));
    for (const method of ["GetCallerIdentity", "CreateKey", "Encrypt", "Decrypt", "Sign", "Verify", "CreateSecret", "AddSecretVersion", "AccessSecretVersion"]) {
      expect(methods, method).toContain(method);
    }
    expect(RECIPES.filter((recipe) => recipe.answer !== undefined).length).toBeGreaterThanOrEqual(2);
    const everything = RECIPES.flatMap((recipe) => [...recipe.assignments, ...recipe.commands.map((command) => command.text)]).join("\n");
    expect(everything).toContain(`https://${README_PORT}`);
    expect(everything).toContain(".keyward/pki/ca.crt");
  });

  for (const recipe of RECIPES) {
    const summary = recipe.commands.map((command) => calledMethod(command.text) ?? command.text.split(/\s+/).slice(0, 4).join(" ")).join(", ");
    it(`README.md:${recipe.line}: ${summary}`, async () => {
      const port = (text: string) => text.replaceAll(README_PORT, `127.0.0.1:${keyward.port}`);
      session.push(...recipe.assignments.map(port));
      let last: unknown;
      for (const command of recipe.commands) {
        const text = port(command.text).replace(/"(\w+)":\s*"<from (\w+)>"/g, (_, field: string, method: string) => {
          const value = answers.get(method)?.[field];
          expect(value, `README.md:${command.line}: no ${field} in an earlier ${method} answer`).toBeTypeOf("string");
          return `"${field}":"${value as string}"`;
        });
        const result = await bash(["set -euo pipefail", ...session, text].join("\n"), checkout, path, keyward.url);
        expect(result.code, `README.md:${command.line}: ${text}\n${result.stdout}\n${result.stderr}`).toBe(0);
        try {
          last = JSON.parse(result.stdout);
        } catch {
          last = result.stdout;
        }
        const method = calledMethod(command.text);
        if (method !== undefined && last !== null && typeof last === "object") {
          answers.set(method, last as Record<string, unknown>);
        }
      }
      if (recipe.answer !== undefined) {
        expectShown(last, recipe.answer);
      }
    });
  }
});
