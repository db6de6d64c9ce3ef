import { existsSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { link, mkdir, unlink, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { generateRootKeyFile } from "../crypto/root-key.js";
import { POLICY_API_VERSION, POLICY_KIND } from "../domain/authz/policy.js";
import { DEV_CLIENTS, devSpiffeId } from "./pki.js";

const ROLE_OF: Record<(typeof DEV_CLIENTS)[number], string> = {
  admin: "ADMIN",
  service: "SERVICE",
  auditor: "AUDITOR",
};

/** The dev policy: each dev client gets its role on every resource. */
export function devPolicyText(): string {
  const rules = DEV_CLIENTS.map(
    (name) => `  - name: dev-${name}
    effect: allow
    identities: ["${devSpiffeId(name)}"]
    roles: [${ROLE_OF[name]}]
    resources: ["**"]
`,
  ).join("");
  return `# Development policy written by \`keyward serve\` on first run. NOT FOR PRODUCTION.
# Each rule binds identities (certificate SPIFFE ID or subject CN; globs allowed)
# to roles on resources ("*" one segment, "**" any depth). Deny rules win;
# anything not allowed is denied. The server reloads this file when it changes.
apiVersion: ${POLICY_API_VERSION}
kind: ${POLICY_KIND}
rules:
${rules}`;
}

/**
 * Writes `file` with `content` unless it exists; returns whether it wrote.
 * The content goes to a private temporary file first and is linked into
 * place in one step, so a process starting beside this one on the same data
 * folder sees either no file or the whole of it, never an empty one.
 */
async function ensureFile(file: string, content: () => string | Buffer, mode: number): Promise<boolean> {
  if (existsSync(file)) {
    return false;
  }
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const staging = `${file}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  await writeFile(staging, content(), { mode, flag: "wx" });
  try {
    await link(staging, file);
    return true;
  } catch (err) {
    // Another process starting on the same data folder wrote it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === "EEXIST") {
      return false;
    }
    throw err;
  } finally {
    await unlink(staging);
  }
}

export const ensureDevPolicy = (file: string) => ensureFile(file, devPolicyText, 0o644);

export const ensureDevRootKey = (file: string) => ensureFile(file, generateRootKeyFile, 0o600);
