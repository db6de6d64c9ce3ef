import { readFileSync } from "node:fs";
import { join } from "node:path";
import { inject } from "vitest";
import { devPkiPaths, ensureDevPki } from "../../src/dev/pki.js";
import type { Scratch } from "./database.js";
import { devCredentials, issueDevClient, policyFileEnv, type ClientCredentials } from "./keyward.js";
import { serveKeyward, type ServerProcess } from "./keyward-process.js";
import { policyText, type PolicyRule } from "./policy.js";

/** `keyward serve` as a child process with clients of its own, for tests that attack or overload it. */
export interface IdentitiesServer {
  readonly server: ServerProcess;
  readonly dataDir: string;
  /** `host:port`, for clients that take no URL. */
  readonly address: string;
  credentials(name: string): Promise<ClientCredentials>;
  /** The server process's resident memory, in bytes (Linux /proc). */
  rssBytes(): number;
  /** CPU time the server process has used so far, user and system, in seconds (Linux /proc). */
  cpuSeconds(): number;
}

/**
 * Starts `keyward serve` on the test PostgreSQL (a fresh schema from
 * `scratch`), after creating the dev PKI, a client certificate for each of
 * `clients` (SPIFFE ID `spiffe://keyward.local/<name>`) and a policy of
 * `rules`. `env` adds or overrides server variables.
 */
export async function serveWithIdentities(
  scratch: Scratch,
  clients: readonly string[],
  rules: readonly PolicyRule[],
  env: Record<string, string> = {},
): Promise<IdentitiesServer> {
  const dataDir = await scratch.tempDir();
  await ensureDevPki(devPkiPaths(join(dataDir, "pki")).dir);
  for (const name of clients) {
    await issueDevClient(dataDir, name, `spiffe://keyward.local/${name}`);
  }
  const server = await serveKeyward({
    KEYWARD_DATA_DIR: dataDir,
    DATABASE_URL: inject("databaseUrl"),
    KEYWARD_DB_SCHEMA: scratch.freshSchema(),
    ...(await policyFileEnv(dataDir, "policy.yaml", policyText(rules))),
    ...env,
  });
  return {
    server,
    dataDir,
    address: new URL(server.url).host,
    credentials: (name) => devCredentials(dataDir, name),
    rssBytes() {
      const status = readFileSync(`/proc/${server.child.pid}/status`, "utf8");
      return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) * 1024;
    },
    cpuSeconds() {
      // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
      const stat = readFileSync(`/proc/${server.child.pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return (Number(fields[11]) + Number(fields[12])) / 100;
    },
  };
}
