import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createCrl, issueCertificate, loadDevCertificateAuthority } from "../../src/dev/pki.js";
import { createTestDatabase, type TestDatabase } from "../helpers/database.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";
import { keywardCli, type CliRun } from "../helpers/keyward-process.js";
import type {} from "../setup/global-database.js";

const DAY_MS = 24 * 60 * 60 * 1000;

interface Run extends CliRun {
  /** stdout's check lines by check name: `[status, detail]`. */
  lines: Map<string, { status: string; detail: string }>;
}

/** `node --import tsx src/cli.ts doctor <args>` with exactly `env` (plus PATH); resolves when it exits. */
async function doctor(env: Record<string, string>, args: string[] = []): Promise<Run> {
  const run = await keywardCli(["doctor", ...args], env);
  const lines = new Map<string, { status: string; detail: string }>();
  for (const line of run.stdout.split("\n").filter(Boolean)) {
    const match = /^(ok|warn|fail) +(\S+) {2,}(\S.*)$/.exec(line);
    if (!match) {
      throw new Error(`not a check line: ${JSON.stringify(line)}\n${run.stdout}${run.stderr}`);
    }
    lines.set(match[2]!, { status: match[1]!, detail: match[3]! });
  }
  return { ...run, lines };
}

/** Statuses by check, for one readable assertion. */
const statuses = (run: Run) => Object.fromEntries([...run.lines].map(([check, { status }]) => [check, status]));

/** A TCP port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("keyward doctor", () => {
  let keyward: TestKeyward;
  let scratch: string;
  /** The run's database URL with a password in it; the local test database trusts any. */
  let databaseUrl: string;
  let password: string;
  let rootKeyText: string;

  /** The running server's configuration, every file named explicitly (no development defaults). */
  const configured = (): Record<string, string> => ({
    KEYWARD_DATA_DIR: keyward.dataDir,
    DATABASE_URL: databaseUrl,
    KEYWARD_DB_SCHEMA: keyward.schema,
    KEYWARD_TLS_CERT: keyward.pki.serverCert,
    KEYWARD_TLS_KEY: keyward.pki.serverKey,
    KEYWARD_TLS_CLIENT_CA: keyward.pki.caCert,
    KEYWARD_POLICY_FILE: join(keyward.dataDir, "policy.yaml"),
    KEYWARD_ROOT_KEY_FILE: join(keyward.dataDir, "root.key"),
  });

  /** Nothing secret in anything the command wrote. */
  const expectNoSecrets = (run: Run, ...more: string[]) => {
    const output = run.stdout + run.stderr;
    for (const secret of [password, encodeURIComponent(password), rootKeyText, ...more]) {
      expect(output).not.toContain(secret);
    }
    const rootKeyBytes = Buffer.from(rootKeyText, "base64");
    expect(output).not.toContain(rootKeyBytes.toString("hex"));
  };

  beforeAll(async () => {
    keyward = await startTestKeyward();
    scratch = await mkdtemp(join(tmpdir(), "keyward-doctor-"));
    const url = new URL(inject("databaseUrl"));
    // An embedded test database needs its own password; the local one trusts any.
    if (url.password === "") {
      url.password = `doctor-pw-${randomBytes(8).toString("hex")}`;
    }
    password = decodeURIComponent(url.password);
    databaseUrl = url.toString();
    rootKeyText = (await readFile(join(keyward.dataDir, "root.key"), "utf8")).trim();
  });

  afterAll(async () => {
    await keyward?.close();
    if (scratch) {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  it("reports every check ok for the running server's configuration, and exits 0", async () => {
    const run = await doctor(configured());
    expect(statuses(run), run.stdout).toEqual({
      configuration: "ok",
      "tls-cert": "ok",
      "tls-key": "ok",
      "tls-client-ca": "ok",
      policy: "ok",
      database: "ok",
      migrations: "ok",
      "root-key": "ok",
      clock: "ok",
    });
    expect(run.code).toBe(0);
    const policyText = await readFile(join(keyward.dataDir, "policy.yaml"));
    const digest = createHash("sha256").update(policyText).digest("hex");
    expect(run.lines.get("policy")!.detail).toContain(`3 rules, sha256 ${digest}`);
    expect(run.lines.get("tls-cert")!.detail).toMatch(/CN=localhost expires \S+ \(in 8\d\d days\)/);
    expect(run.lines.get("tls-key")!.detail).toContain("key matches the certificate");
    expect(run.lines.get("database")!.detail).toMatch(/PostgreSQL \d+.*round trip/);
    expect(run.lines.get("migrations")!.detail).toMatch(/all \d+ applied/);
    expect(run.lines.get("root-key")!.detail).toMatch(/^KEYWARD_ROOT_KEY_FILE \S+: matches deployment [0-9a-f-]{36}$/);
    expect(run.lines.get("clock")!.detail).toMatch(/^the database's clock is [\d.]+ ms (ahead of|behind) this host's/);
    // The URL is printed with the password masked.
    expect(run.lines.get("database")!.detail).toContain(":****@");
    expect(run.stderr).toBe("doctor: 9 ok, 0 warn, 0 fail\n");
    expectNoSecrets(run);
  });

  it("checks the development defaults the server uses when nothing is configured, with a warning", async () => {
    const run = await doctor({ KEYWARD_DATA_DIR: keyward.dataDir, DATABASE_URL: databaseUrl, KEYWARD_DB_SCHEMA: keyward.schema });
    expect(statuses(run), run.stdout).toMatchObject({
      configuration: "warn",
      "tls-cert": "ok",
      "tls-key": "ok",
      "tls-client-ca": "ok",
      policy: "ok",
      "root-key": "ok",
    });
    expect(run.lines.get("configuration")!.detail).toContain("DEVELOPMENT defaults in use (not for production): TLS certificates, policy, root key");
    expect(run.lines.get("tls-cert")!.detail).toContain(keyward.pki.serverCert);
    expect(run.lines.get("root-key")!.detail).toMatch(/^dev root key \S+root\.key: matches deployment/);
    expect(run.code).toBe(0);
    expectNoSecrets(run);
  });

  it("fails the root key check for a key the database was not set up with, without printing either key", async () => {
    const wrongKey = randomBytes(32).toString("base64");
    const { KEYWARD_ROOT_KEY_FILE: _, ...env } = configured();
    const run = await doctor({ ...env, KEYWARD_ROOT_KEY: wrongKey });
    expect(run.lines.get("root-key")).toEqual({
      status: "fail",
      detail: expect.stringMatching(/^KEYWARD_ROOT_KEY does not match deployment [0-9a-f-]{36} \(created .*\): the server would refuse to start/),
    });
    expect(run.lines.get("database")!.status).toBe("ok");
    expect(run.code).toBe(1);
    expectNoSecrets(run, wrongKey, Buffer.from(wrongKey, "base64").toString("hex"));
  });

  it("fails an expired server certificate and warns about one expiring within 30 days", async () => {
    const ca = await loadDevCertificateAuthority(keyward.pki.dir);
    const now = Date.now();
    const expired = await issueCertificate(ca, {
      commonName: "localhost",
      usage: "server",
      notBefore: new Date(now - 100 * DAY_MS),
      notAfter: new Date(now - DAY_MS),
    });
    const soon = await issueCertificate(ca, { commonName: "localhost", usage: "server", days: 10 });
    for (const [name, issued] of [["expired", expired], ["soon", soon]] as const) {
      await writeFile(join(scratch, `${name}.crt`), issued.certPem);
      await writeFile(join(scratch, `${name}.key`), issued.keyPem, { mode: 0o600 });
    }
    const tlsFiles = (name: string) => ({ KEYWARD_TLS_CERT: join(scratch, `${name}.crt`), KEYWARD_TLS_KEY: join(scratch, `${name}.key`) });

    const expiredRun = await doctor({ ...configured(), ...tlsFiles("expired") });
    expect(expiredRun.lines.get("tls-cert")).toEqual({ status: "fail", detail: expect.stringMatching(/CN=localhost expired \d{4}-\d\d-\d\d/) });
    expect(expiredRun.lines.get("tls-key")!.status).toBe("ok");
    expect(expiredRun.code).toBe(1);

    const soonRun = await doctor({ ...configured(), ...tlsFiles("soon") });
    expect(soonRun.lines.get("tls-cert")).toEqual({ status: "warn", detail: expect.stringMatching(/CN=localhost expires \S+ \(in (9|10) days\)/) });
    expect(soonRun.code).toBe(0);
  });

  it("fails a private key that does not belong to the certificate", async () => {
    const run = await doctor({ ...configured(), KEYWARD_TLS_KEY: keyward.pki.client("admin").key });
    expect(run.lines.get("tls-key")).toEqual({
      status: "fail",
      detail: `${keyward.pki.client("admin").key}: does not match the certificate in ${keyward.pki.serverCert}`,
    });
    expect(run.code).toBe(1);
  });

  it("checks a CRL: ok while current, a failure once expired (the server would refuse every client)", async () => {
    const ca = await loadDevCertificateAuthority(keyward.pki.dir);
    await writeFile(join(scratch, "current.crl"), await createCrl(ca, ["0badc0de"], 30));
    await writeFile(join(scratch, "expired.crl"), await createCrl(ca, [], -1));

    const current = await doctor({ ...configured(), KEYWARD_TLS_CRL: join(scratch, "current.crl") });
    expect(current.lines.get("tls-crl")).toEqual({ status: "ok", detail: expect.stringMatching(/1 revoked certificate, next update \S+ \(in (29|30) days\)$/) });
    expect(current.code).toBe(0);

    const expired = await doctor({ ...configured(), KEYWARD_TLS_CRL: join(scratch, "expired.crl") });
    expect(expired.lines.get("tls-crl")).toEqual({ status: "fail", detail: expect.stringContaining("expired (nextUpdate") });
    expect(expired.code).toBe(1);
  });

  it("fails a policy file the server would not load, naming the line", async () => {
    const file = join(scratch, "bad-policy.yaml");
    await writeFile(file, "apiVersion: keyward/v1\nkind: Policy\nrules:\n  - name: typo\n    identitys: [\"*\"]\n");
    const run = await doctor({ ...configured(), KEYWARD_POLICY_FILE: file });
    expect(run.lines.get("policy")).toEqual({ status: "fail", detail: expect.stringMatching(new RegExp(`^${file}: line 5: rule 1: unknown field "identitys"`)) });
    expect(run.code).toBe(1);
  });

  it("fails an unreachable database without printing its password, and skips what needs it", async () => {
    const port = await closedPort();
    const unreachable = `postgres://keyward:${encodeURIComponent(password)}@127.0.0.1:${port}/keyward`;
    const run = await doctor({ ...configured(), DATABASE_URL: unreachable });
    expect(run.lines.get("database")).toEqual({
      status: "fail",
      detail: expect.stringMatching(new RegExp(`^postgres://keyward:\\*\\*\\*\\*@127\\.0\\.0\\.1:${port}/keyward, schema \\S+: unreachable: .*ECONNREFUSED`)),
    });
    expect(run.lines.has("migrations")).toBe(false);
    expect(run.lines.has("clock")).toBe(false);
    expect(run.lines.get("root-key")!.detail).toContain("not compared with the database");
    expect(run.code).toBe(1);
    expectNoSecrets(run);
  });

  it("warns about pending migrations and a deployment not created yet", async () => {
    let database: TestDatabase | undefined;
    try {
      database = await createTestDatabase();
      const { rows } = await database.pool.query<{ name: string }>("DELETE FROM pgmigrations WHERE id = (SELECT max(id) FROM pgmigrations) RETURNING name");
      const run = await doctor({ ...configured(), KEYWARD_DB_SCHEMA: database.schema });
      expect(run.lines.get("migrations")).toEqual({
        status: "warn",
        detail: expect.stringMatching(new RegExp(`1 of \\d+ pending \\(${rows[0]!.name}\\); the server applies them at start$`)),
      });
      expect(run.lines.get("root-key")).toEqual({ status: "warn", detail: expect.stringContaining("no deployment in") });
      expect(run.code).toBe(0);
    } finally {
      await database?.drop();
    }
  });

  it("does not touch a running embedded PostgreSQL: a warning, and the database checks skipped", async () => {
    const dataDir = join(scratch, "embedded-running");
    await mkdir(join(dataDir, "postgres"), { recursive: true });
    await writeFile(join(dataDir, "postgres", "PG_VERSION"), "15\n");
    // This test process stands in for the postmaster: alive, so "running".
    await writeFile(join(dataDir, "postgres", "postmaster.pid"), `${process.pid}\n${join(dataDir, "postgres")}\n`);
    const run = await doctor({ KEYWARD_DATA_DIR: dataDir });
    expect(run.lines.get("database")).toEqual({
      status: "warn",
      detail: expect.stringContaining(`embedded PostgreSQL is running (server up?), pid ${process.pid}`),
    });
    expect(run.lines.has("migrations")).toBe(false);
    expect(run.code).toBe(0);
    // Read-only: the pid file is the one written above, no cluster was started or created.
    expect(await readFile(join(dataDir, "postgres", "postmaster.pid"), "utf8")).toContain(`${process.pid}\n`);
  });

  it("fails a configuration that does not load, naming the variable, and exits 2 for arguments", async () => {
    const run = await doctor({ ...configured(), KEYWARD_DB_POOL_MAX: "0" });
    expect([...run.lines]).toEqual([
      ["configuration", { status: "fail", detail: "KEYWARD_DB_POOL_MAX must be an integer from 1 to 500; nothing else can be checked" }],
    ]);
    expect(run.code).toBe(1);

    const usage = await doctor(configured(), ["--fix"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("keyward: doctor takes no arguments");
  });
});
