import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import pino from "pino";
import { inject } from "vitest";
import { loadConfig } from "../../src/config.js";
import { devPkiPaths, ensureDevPki, issueCertificate, loadDevCertificateAuthority } from "../../src/dev/pki.js";
import { REDACT_PATHS } from "../../src/log.js";
import { startKeyward, type RunningKeyward } from "../../src/main.js";
import { dropSchema, uniqueSchemaName } from "./database.js";
import type {} from "../setup/global-database.js";

/** Client credentials as PEM buffers, ready for any TLS client. */
export interface ClientCredentials {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** A Keyward started in-process on a free port, with its own data folder and schema. */
export interface TestKeyward {
  readonly url: string;
  readonly port: number;
  readonly dataDir: string;
  readonly schema: string;
  readonly running: RunningKeyward;
  /** Every JSON log line written so far, as text. */
  readonly logs: string[];
  readonly pki: ReturnType<typeof devPkiPaths>;
  /** Credentials of a dev client (`admin`, `service`, `auditor`) or any `<name>.crt` in the PKI folder. */
  credentials(name: string): Promise<ClientCredentials>;
  close(): Promise<void>;
}

/**
 * Starts Keyward as `npm start` would, but on port 0, on the run's test
 * PostgreSQL in a schema of its own, logging at debug level into memory.
 * `env` adds or overrides variables (e.g. KEYWARD_POLICY_FILE); as a function
 * it is called with the data folder, whose dev PKI already exists.
 */
export async function startTestKeyward(
  env: Record<string, string> | ((dataDir: string) => Record<string, string> | Promise<Record<string, string>>) = {},
): Promise<TestKeyward> {
  const dataDir = await mkdtemp(join(tmpdir(), "keyward-test-"));
  const schema = uniqueSchemaName();
  const databaseUrl = inject("databaseUrl");
  const pki = devPkiPaths(join(dataDir, "pki"));
  await ensureDevPki(pki.dir);
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      logs.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  const log = pino(
    { level: "debug", redact: { paths: REDACT_PATHS, censor: "[redacted]" } },
    sink,
  );
  const config = loadConfig({
    ...testKeywardEnv(dataDir, schema),
    ...(typeof env === "function" ? await env(dataDir) : env),
  });
  const running = await startKeyward(config, log);
  let closing: Promise<void> | undefined;
  return {
    url: `https://127.0.0.1:${running.address.port}`,
    port: running.address.port,
    dataDir,
    schema,
    running,
    logs,
    pki,
    credentials: (name) => devCredentials(dataDir, name),
    close: () =>
      (closing ??= (async () => {
        await running.close();
        await dropSchema(databaseUrl, schema);
        await rm(dataDir, { recursive: true, force: true });
      })()),
  };
}

/**
 * The environment startTestKeyward starts Keyward with: loopback port 0, the
 * run's test PostgreSQL in `schema`, a pool of 4 and a 2 s shutdown grace.
 * A second server on the same data folder and schema (a replica) starts from
 * it, overriding what it needs to differ.
 */
export function testKeywardEnv(dataDir: string, schema: string): Record<string, string> {
  return {
    KEYWARD_LISTEN: "127.0.0.1:0",
    KEYWARD_DATA_DIR: dataDir,
    DATABASE_URL: inject("databaseUrl"),
    KEYWARD_DB_SCHEMA: schema,
    KEYWARD_DB_POOL_MAX: "4",
    KEYWARD_SHUTDOWN_GRACE_MS: "2000",
  };
}

/** Credentials of a client whose certificate and key are in the dev PKI of `dataDir` (`<dataDir>/pki/<name>.crt`, `.key`). */
export async function devCredentials(dataDir: string, name: string): Promise<ClientCredentials> {
  const pki = devPkiPaths(join(dataDir, "pki"));
  const client = pki.client(name);
  const [ca, cert, key] = await Promise.all([readFile(pki.caCert), readFile(client.cert), readFile(client.key)]);
  return { ca, cert, key };
}

/**
 * Issues a client certificate for `spiffeId` from the dev CA of `dataDir`
 * and stores it in that PKI folder as `<name>.crt` and `<name>.key`, where
 * `devCredentials` and TestKeyward's `credentials(name)` find it.
 */
export async function issueDevClient(dataDir: string, name: string, spiffeId: string): Promise<void> {
  const pki = devPkiPaths(join(dataDir, "pki"));
  const issued = await issueCertificate(await loadDevCertificateAuthority(pki.dir), {
    commonName: name,
    usage: "client",
    spiffeId,
  });
  await writeFile(pki.client(name).cert, issued.certPem);
  await writeFile(pki.client(name).key, issued.keyPem, { mode: 0o600 });
}

/** Writes `policy` to `<dataDir>/<fileName>` and returns the variable that points Keyward at it. */
export async function policyFileEnv(dataDir: string, fileName: string, policy: string): Promise<{ KEYWARD_POLICY_FILE: string }> {
  const policyFile = join(dataDir, fileName);
  await writeFile(policyFile, policy);
  return { KEYWARD_POLICY_FILE: policyFile };
}
