import { createPrivateKey, timingSafeEqual, X509Certificate, type KeyObject } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import type { Writable } from "node:stream";
import { createSecureContext } from "node:tls";
import { parseArgs } from "node:util";
import * as x509 from "@peculiar/x509";
import type pg from "pg";
import { ConfigError, type Config, type TlsConfig } from "../config.js";
import { rootKeyCheck, RootKeyError } from "../crypto/root-key.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import { devPkiPaths } from "../dev/pki.js";
import { createLogger } from "../log.js";
import { createPolicyStore } from "../server/policy-store.js";
import { runningPostmaster } from "../storage/pg/embedded.js";
import { MIGRATIONS_DIR } from "../storage/pg/migrate.js";
import { UsageError, withOfflineDatabase } from "./offline-database.js";

/** The `doctor` lines of `keyward help`. */
export const DOCTOR_USAGE = `  doctor                        check the deployment without starting the server: configuration, TLS files,
                                policy, database, migrations, root key and clock, with the server's
                                environment; one line per check, "ok|warn|fail  <check>  <detail>";
                                exit 0 nothing failed (warnings allowed), 1 a check failed, 2 usage error.
                                With the embedded database it checks the database only while it is stopped
`;

/** Where the command writes; the process's streams by default. */
export interface DoctorCommandIo {
  readonly stdout: Writable;
  readonly stderr: Writable;
}

/** How a check came out: `fail` makes the command exit 1, `warn` does not. */
export type CheckStatus = "ok" | "warn" | "fail";

/** One line of the report. */
export interface CheckResult {
  readonly status: CheckStatus;
  /** One word (no spaces), so that the report is easy to filter with grep or awk. */
  readonly check: string;
  readonly detail: string;
}

const DAY_MS = 24 * 60 * 60 * 1000;
/** Certificates closer than this to expiry are reported as a warning. */
const EXPIRY_WARN_DAYS = 30;
/** Clock differences with the database above these are a warning, then a failure. */
const CLOCK_WARN_MS = 1000;
const CLOCK_FAIL_MS = 30_000;
/** Round trips timed for the latency figure; the median is reported. */
const LATENCY_SAMPLES = 5;

/** The width of the check column, from the longest check name. */
const CHECK_WIDTH = "tls-client-ca".length;

/**
 * `keyward doctor`: checks what a server would need to start and serve,
 * without starting one, and prints one line per check. Returns the exit
 * code: 0 when nothing failed (warnings allowed), 1 when a check failed, 2
 * for a usage error. A configuration that does not load is a failed check,
 * not a usage error: reporting it is the point of the command.
 *
 * Never prints secret material: the root key is only compared through its
 * check value, and the DATABASE_URL password is masked (and scrubbed from
 * every line, error messages included).
 */
export async function doctorCommand(
  args: readonly string[],
  config: () => Config,
  io: DoctorCommandIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  try {
    parseArgs({ args: [...args], strict: true, allowPositionals: false, options: {} });
  } catch (err) {
    if (isParseArgsError(err)) {
      io.stderr.write(`keyward: doctor takes no arguments: ${(err as Error).message}\nusage:\n${DOCTOR_USAGE}`);
      return 2;
    }
    throw err;
  }

  const results: CheckResult[] = [];
  let secrets: string[] = [];
  const report = (status: CheckStatus, check: string, detail: string) => {
    const clean = scrub(detail, secrets);
    results.push({ status, check, detail: clean });
    io.stdout.write(`${status.padEnd(4)}  ${check.padEnd(CHECK_WIDTH)}  ${clean}\n`);
  };

  let settings: Config;
  try {
    settings = config();
  } catch (err) {
    if (!(err instanceof ConfigError)) {
      throw err;
    }
    // ConfigError messages name the variable, never its value.
    report("fail", "configuration", `${err.message}; nothing else can be checked`);
    return finish(results, io);
  }
  secrets = databaseSecrets(settings.databaseUrl);
  checkConfiguration(settings, report);
  await checkTls(settings, report);
  await checkPolicy(settings, report);
  const rootKey = await resolveRootKeyForDoctor(settings);
  await checkDatabase(settings, rootKey, report);
  return finish(results, io);
}

type Report = (status: CheckStatus, check: string, detail: string) => void;

function finish(results: readonly CheckResult[], io: DoctorCommandIo): number {
  const count = (status: CheckStatus) => results.filter((result) => result.status === status).length;
  io.stderr.write(`doctor: ${count("ok")} ok, ${count("warn")} warn, ${count("fail")} fail\n`);
  return count("fail") > 0 ? 1 : 0;
}

function checkConfiguration(config: Config, report: Report): void {
  const dev = [
    ...(config.tls === undefined ? ["TLS certificates"] : []),
    ...(config.policyFile === undefined ? ["policy"] : []),
    ...(config.rootKey === undefined ? ["root key"] : []),
    ...(config.databaseUrl === undefined ? ["embedded PostgreSQL"] : []),
  ];
  const summary = `loaded; data dir ${config.dataDir}, database ${where(config)}`;
  // The same defaults make the server log a DEVELOPMENT warning at start.
  if (dev.length > 0) {
    report("warn", "configuration", `${summary}; DEVELOPMENT defaults in use (not for production): ${dev.join(", ")}`);
  } else {
    report("ok", "configuration", summary);
  }
}

/**
 * The TLS files the server would load: the configured ones, or the dev PKI
 * in `<data>/pki` (as the server resolves them). A missing dev PKI is only a
 * warning, since the server creates it at first start.
 */
async function checkTls(config: Config, report: Report): Promise<void> {
  let tls: TlsConfig | undefined = config.tls;
  if (tls === undefined) {
    const pki = devPkiPaths(join(config.dataDir, "pki"));
    if (!(await exists(pki.caCert))) {
      report("warn", "tls", `no dev PKI in ${pki.dir} yet: the server creates one at first start`);
      return;
    }
    tls = { certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: pki.caCert, crlFile: undefined };
  }
  const now = Date.now();

  const server = await readCertificates(tls.certFile);
  if (server.kind === "error") {
    report("fail", "tls-cert", server.detail);
  } else {
    const [leaf, ...chain] = server.certificates;
    const leafValidity = validity(leaf!, now);
    // An expired intermediate breaks the chain clients build just as an expired leaf does.
    const worstChain = worstValidity(chain, now);
    const status = worse(leafValidity.status, worstChain?.status ?? "ok");
    const chainNote =
      chain.length === 0
        ? ""
        : worstChain !== undefined && worstChain.status !== "ok"
          ? `; chain certificate ${subjectName(worstChain.certificate)} ${worstChain.text}`
          : `; ${plural(chain.length, "chain certificate")} valid`;
    report(status, "tls-cert", `${tls.certFile}: ${subjectName(leaf!)} ${leafValidity.text}${chainNote}`);
  }

  const key = await readPrivateKey(tls.keyFile);
  if (key.kind === "error") {
    report("fail", "tls-key", key.detail);
  } else if (server.kind === "error") {
    report("warn", "tls-key", `${tls.keyFile}: ${key.key.asymmetricKeyType} key parses; not matched (the certificate did not load)`);
  } else if (!server.certificates[0]!.checkPrivateKey(key.key)) {
    report("fail", "tls-key", `${tls.keyFile}: does not match the certificate in ${tls.certFile}`);
  } else {
    report("ok", "tls-key", `${tls.keyFile}: ${key.key.asymmetricKeyType} key matches the certificate`);
  }

  const ca = await readCertificates(tls.clientCaFile);
  if (ca.kind === "error") {
    report("fail", "tls-client-ca", ca.detail);
  } else {
    const worst = worstValidity(ca.certificates, now)!;
    const count = ca.certificates.length === 1 ? "" : `${ca.certificates.length} certificates, earliest to expire `;
    report(worst.status, "tls-client-ca", `${tls.clientCaFile}: ${count}${subjectName(worst.certificate)} ${worst.text}`);
  }

  if (tls.crlFile !== undefined) {
    await checkCrl(tls.crlFile, ca.kind === "error" ? [] : ca.pems, now, report);
  }
}

/**
 * The CRL as node:tls uses it, which is stricter than it looks: the server
 * reads only the first CRL in the file, and once a CRL is configured OpenSSL
 * refuses every client certificate whose issuer has no valid CRL there: an
 * expired or not yet valid CRL, or one from another CA, locks every client
 * out. Those are failures, not warnings.
 */
async function checkCrl(file: string, caPems: readonly string[], now: number, report: Report): Promise<void> {
  const text = await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => err);
  if (text instanceof Error) {
    report("fail", "tls-crl", `cannot read ${file} (${text.code ?? "error"})`);
    return;
  }
  const blocks = pemBlocks(text, "X509 CRL");
  if (blocks.length === 0) {
    report("fail", "tls-crl", `${file}: no "-----BEGIN X509 CRL-----" block (the only label OpenSSL reads)`);
    return;
  }
  try {
    createSecureContext({ crl: blocks[0]! });
  } catch (err) {
    report("fail", "tls-crl", `${file}: node:tls cannot load it (${(err as Error).message})`);
    return;
  }
  let crl: x509.X509Crl;
  try {
    crl = new x509.X509Crl(blocks[0]!);
  } catch (err) {
    report("fail", "tls-crl", `${file}: does not parse (${(err as Error).message})`);
    return;
  }
  const revoked = plural(crl.entries.length, "revoked certificate");
  if (crl.thisUpdate.getTime() > now) {
    report("fail", "tls-crl", `${file}: not valid before ${isoDate(crl.thisUpdate)}: the server refuses every client certificate until then`);
    return;
  }
  if (crl.nextUpdate !== undefined && crl.nextUpdate.getTime() <= now) {
    report(
      "fail",
      "tls-crl",
      `${file}: expired (nextUpdate ${isoDate(crl.nextUpdate)}): the server refuses every client certificate until it is replaced`,
    );
    return;
  }
  const cas = caPems.flatMap((pem) => {
    try {
      return [new x509.X509Certificate(pem)];
    } catch {
      // Already reported by the client CA check if node:crypto cannot read it either.
      return [];
    }
  });
  const issuers = cas.filter((ca) => ca.subject === crl.issuer);
  if (cas.length > 0 && issuers.length === 0) {
    report("fail", "tls-crl", `${file}: issued by ${crl.issuer}, which is no client CA: the server refuses every client certificate`);
    return;
  }
  if (issuers.length > 0) {
    const signed = await Promise.all(issuers.map((ca) => crl.verify({ publicKey: ca }).catch(() => false)));
    if (!signed.some(Boolean)) {
      report("fail", "tls-crl", `${file}: its signature does not verify with the client CA ${crl.issuer}: the server refuses every client certificate`);
      return;
    }
  }
  const notes: string[] = [];
  let status: CheckStatus = "ok";
  if (blocks.length > 1) {
    status = "warn";
    notes.push(`only the first of its ${blocks.length} CRLs is read`);
  }
  const uncovered = cas.filter((ca) => ca.subject !== crl.issuer);
  if (uncovered.length > 0) {
    status = "warn";
    notes.push(`client certificates issued by ${uncovered.map((ca) => ca.subject).join("; ")} are refused (no CRL from it)`);
  }
  const next =
    crl.nextUpdate === undefined
      ? "no nextUpdate"
      : `next update ${isoDate(crl.nextUpdate)} (in ${daysUntil(crl.nextUpdate.getTime(), now)} days)`;
  report(status, "tls-crl", `${file}: ${revoked}, ${next}${notes.length > 0 ? `; ${notes.join("; ")}` : ""}`);
}

/** The policy file as the server loads it, through the same loader; a missing dev policy is created at start. */
async function checkPolicy(config: Config, report: Report): Promise<void> {
  const file = config.policyFile ?? join(config.dataDir, "policy.yaml");
  if (config.policyFile === undefined && !(await exists(file))) {
    report("warn", "policy", `no dev policy ${file} yet: the server writes one at first start`);
    return;
  }
  try {
    const store = createPolicyStore(file, createLogger("silent"));
    const { policy } = store.current();
    store.close();
    report("ok", "policy", `${file}: ${plural(policy.rules.length, "rule")}, sha256 ${policy.digest}`);
  } catch (err) {
    // PolicyError messages already name the file and the line at fault.
    report("fail", "policy", (err as Error).message);
  }
}

/** What resolving the root key gave; the key itself stays in `key` and is only ever hashed. */
type RootKeyState =
  | { readonly kind: "resolved"; readonly key: SecretBytes; readonly source: string }
  | { readonly kind: "missing-dev"; readonly file: string }
  | { readonly kind: "error"; readonly detail: string };

async function resolveRootKeyForDoctor(config: Config): Promise<RootKeyState> {
  const source = describeRootKeySource(config);
  // Loaded here so that the other commands do not load the whole server.
  const { resolveRootKey } = await import("../main.js");
  try {
    const resolved = await resolveRootKey(config, { createDevKey: false });
    return { kind: "resolved", key: resolved.rootKey, source };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (config.rootKey === undefined && code === "ENOENT") {
      return { kind: "missing-dev", file: join(config.dataDir, "root.key") };
    }
    // RootKeyError messages give lengths only; for file errors only the code is shown.
    return {
      kind: "error",
      detail: err instanceof RootKeyError ? `${source}: ${err.message}` : `cannot read ${source} (${code ?? "error"})`,
    };
  }
}

/** What the database says about the root key; undefined when it was not reached. */
type DeploymentState =
  | { readonly kind: "none" }
  | { readonly kind: "row"; readonly deploymentId: string; readonly createdAt: Date; readonly rootKeyCheck: Buffer }
  | { readonly kind: "unreadable"; readonly detail: string };

/**
 * The database checks (reachability, migrations, clock) and the root key
 * check, which needs the deployment row. The embedded cluster is opened only
 * when it is stopped: starting it under a running server would stop that
 * server's database (withOfflineDatabase refuses that too).
 */
async function checkDatabase(config: Config, rootKey: RootKeyState, report: Report): Promise<void> {
  let deployment: DeploymentState | undefined;
  const skipped = "migrations, root key match and clock not checked";
  let reached = false;
  if (config.databaseUrl === undefined) {
    const dir = join(config.dataDir, "postgres");
    if (!(await exists(join(dir, "PG_VERSION")))) {
      report("warn", "database", `no embedded PostgreSQL in ${dir} yet: the server creates it at first start; ${skipped}`);
      reportRootKey(rootKey, undefined, config, report);
      return;
    }
    const pid = await runningPostmaster(dir);
    if (pid !== undefined) {
      report("warn", "database", `embedded PostgreSQL is running (server up?), pid ${pid}, in ${dir}; ${skipped}`);
      reportRootKey(rootKey, undefined, config, report);
      return;
    }
  }
  try {
    await withOfflineDatabase(config, "keyward-doctor", async (pool) => {
      const started = performance.now();
      const { rows } = await pool.query<{ server_version: string }>("SHOW server_version");
      reached = true;
      const connectMs = performance.now() - started;
      const latencies: number[] = [];
      for (let i = 0; i < LATENCY_SAMPLES; i++) {
        const before = performance.now();
        await pool.query("SELECT 1");
        latencies.push(performance.now() - before);
      }
      latencies.sort((a, b) => a - b);
      const median = latencies[Math.floor(latencies.length / 2)]!;
      report(
        "ok",
        "database",
        `${where(config)}: PostgreSQL ${rows[0]?.server_version ?? "?"}, round trip ${formatMs(median)} ` +
          `(median of ${LATENCY_SAMPLES}; connected in ${formatMs(connectMs)})`,
      );
      await checkMigrations(pool, config, report);
      deployment = await readDeployment(pool);
      reportRootKey(rootKey, deployment, config, report);
      await checkClock(pool, report);
    });
  } catch (err) {
    const message = describeError(err);
    if (!reached) {
      report("fail", "database", `${where(config)}: ${err instanceof UsageError ? message : `unreachable: ${message}`}; ${skipped}`);
      reportRootKey(rootKey, undefined, config, report);
    } else {
      report("fail", "database", `${where(config)}: error after connecting: ${message}`);
      if (deployment === undefined) {
        reportRootKey(rootKey, undefined, config, report);
      }
    }
  }
}

/**
 * Compares the migrations applied in the schema with the files this release
 * has, the way node-pg-migrate does at the server's start: applied ones must
 * be a prefix of the files in order, and the rest are applied then.
 */
async function checkMigrations(pool: pg.Pool, config: Config, report: Report): Promise<void> {
  let available: string[];
  try {
    available = await availableMigrations();
  } catch (err) {
    report("fail", "migrations", `cannot list ${MIGRATIONS_DIR}: ${describeError(err)}`);
    return;
  }
  const schema = config.databaseSchema ?? "public";
  const table = `${quoteIdentifier(schema)}.pgmigrations`;
  let applied: string[];
  try {
    const present = await pool.query<{ present: boolean }>("SELECT to_regclass($1) IS NOT NULL AS present", [table]);
    applied = present.rows[0]?.present
      ? (await pool.query<{ name: string }>(`SELECT name FROM ${table} ORDER BY run_on, id`)).rows.map((row) => row.name)
      : [];
  } catch (err) {
    report("fail", "migrations", `cannot read ${schema}.pgmigrations: ${describeError(err)}`);
    return;
  }
  for (let i = 0; i < Math.min(applied.length, available.length); i++) {
    if (applied[i] !== available[i]) {
      report(
        "fail",
        "migrations",
        `schema ${schema}: ${available[i]} is not applied but precedes the applied ${applied[i]}: the server's migration step would fail at start`,
      );
      return;
    }
  }
  const pending = available.slice(applied.length);
  const unknown = applied.slice(available.length);
  if (unknown.length > 0) {
    report(
      "warn",
      "migrations",
      `schema ${schema}: ${plural(unknown.length, "applied migration")} this release does not have (${unknown.join(", ")}): ` +
        "a newer release migrated this database",
    );
  } else if (applied.length === 0) {
    report("warn", "migrations", `schema ${schema}: no Keyward tables yet; the server applies all ${available.length} migrations at start`);
  } else if (pending.length > 0) {
    report(
      "warn",
      "migrations",
      `schema ${schema}: ${pending.length} of ${available.length} pending (${pending.join(", ")}); the server applies them at start`,
    );
  } else {
    report("ok", "migrations", `schema ${schema}: all ${available.length} applied (latest ${available.at(-1) ?? "none"})`);
  }
}

async function readDeployment(pool: pg.Pool): Promise<DeploymentState> {
  try {
    const table = await pool.query<{ present: boolean }>("SELECT to_regclass('deployment') IS NOT NULL AS present");
    if (!table.rows[0]?.present) {
      return { kind: "none" };
    }
    const { rows } = await pool.query<{ deployment_id: string; created_at: Date; root_key_check: Buffer }>(
      "SELECT deployment_id, created_at, root_key_check FROM deployment WHERE id",
    );
    const row = rows[0];
    return row === undefined
      ? { kind: "none" }
      : { kind: "row", deploymentId: row.deployment_id, createdAt: row.created_at, rootKeyCheck: row.root_key_check };
  } catch (err) {
    return { kind: "unreadable", detail: describeError(err) };
  }
}

/**
 * The root key line. The comparison is the server's own (the check value,
 * compared in constant time), so a mismatch here is exactly the refusal the
 * server would give at start.
 */
function reportRootKey(rootKey: RootKeyState, deployment: DeploymentState | undefined, config: Config, report: Report): void {
  if (rootKey.kind === "error") {
    report("fail", "root-key", rootKey.detail);
    return;
  }
  if (rootKey.kind === "missing-dev") {
    if (deployment?.kind === "row") {
      report(
        "fail",
        "root-key",
        `the dev root key ${rootKey.file} is missing but deployment ${deployment.deploymentId} exists: a server would ` +
          "create a new key and refuse to start; restore the key or configure KEYWARD_ROOT_KEY_FILE",
      );
    } else {
      report("warn", "root-key", `no dev root key ${rootKey.file} yet: the server creates one at first start`);
    }
    return;
  }
  switch (deployment?.kind) {
    case undefined:
      report("ok", "root-key", `${rootKey.source}: a valid 32-byte key; not compared with the database`);
      return;
    case "unreadable":
      report("fail", "root-key", `${rootKey.source}: cannot read the deployment row: ${deployment.detail}`);
      return;
    case "none":
      report("warn", "root-key", `${rootKey.source}: no deployment in ${where(config)} yet: the server binds it to this key at first start`);
      return;
    case "row": {
      const check = rootKeyCheck(rootKey.key);
      const matches = deployment.rootKeyCheck.length === check.length && timingSafeEqual(deployment.rootKeyCheck, check);
      if (matches) {
        report("ok", "root-key", `${rootKey.source}: matches deployment ${deployment.deploymentId}`);
      } else {
        report(
          "fail",
          "root-key",
          `${rootKey.source} does not match deployment ${deployment.deploymentId} (created ${deployment.createdAt.toISOString()}): ` +
            "the server would refuse to start; configure the root key this database was set up with",
        );
      }
    }
  }
}

/**
 * The database's clock against this host's. Key rotation and deletion
 * schedules, audit timestamps and certificate validity are judged by
 * different clocks, so a large skew makes them disagree. The difference is
 * taken against the midpoint of the round trip, within ± half of it.
 */
async function checkClock(pool: pg.Pool, report: Report): Promise<void> {
  try {
    const before = Date.now();
    // clock_timestamp(), not now(): now() is frozen at the start of the transaction.
    const { rows } = await pool.query<{ now: Date }>("SELECT clock_timestamp() AS now");
    const after = Date.now();
    const offset = rows[0]!.now.getTime() - (before + after) / 2;
    const margin = Math.ceil((after - before) / 2);
    const size = Math.abs(offset);
    const status: CheckStatus = size > CLOCK_FAIL_MS ? "fail" : size > CLOCK_WARN_MS ? "warn" : "ok";
    const direction = offset >= 0 ? "ahead of" : "behind";
    report(status, "clock", `the database's clock is ${formatMs(size)} ${direction} this host's (± ${margin} ms)`);
  } catch (err) {
    report("fail", "clock", `cannot read the database's clock: ${describeError(err)}`);
  }
}

/** The migrations this release ships, named and ordered as node-pg-migrate names them (file name without extension, dot files ignored). */
async function availableMigrations(): Promise<string[]> {
  const entries = await readdir(MIGRATIONS_DIR, { withFileTypes: true });
  return entries
    .filter((entry) => (entry.isFile() || entry.isSymbolicLink()) && !entry.name.startsWith("."))
    .map((entry) => entry.name.replace(/\.[^.]*$/, ""))
    // Names start with a fixed-width timestamp, so text order is time order.
    .sort();
}

type Certificates =
  | { readonly kind: "certificates"; readonly certificates: readonly X509Certificate[]; readonly pems: readonly string[] }
  | { readonly kind: "error"; readonly detail: string };

async function readCertificates(file: string): Promise<Certificates> {
  const text = await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => err);
  if (text instanceof Error) {
    return { kind: "error", detail: `cannot read ${file} (${text.code ?? "error"})` };
  }
  const pems = pemBlocks(text, "CERTIFICATE");
  if (pems.length === 0) {
    return { kind: "error", detail: `${file}: no PEM certificate` };
  }
  const certificates: X509Certificate[] = [];
  for (const [index, pem] of pems.entries()) {
    try {
      certificates.push(new X509Certificate(pem));
    } catch (err) {
      return { kind: "error", detail: `${file}: certificate ${index + 1} does not parse (${(err as Error).message})` };
    }
  }
  return { kind: "certificates", certificates, pems };
}

type PrivateKey = { readonly kind: "key"; readonly key: KeyObject } | { readonly kind: "error"; readonly detail: string };

async function readPrivateKey(file: string): Promise<PrivateKey> {
  const pem = await readFile(file).catch((err: NodeJS.ErrnoException) => err);
  if (pem instanceof Error) {
    return { kind: "error", detail: `cannot read ${file} (${pem.code ?? "error"})` };
  }
  try {
    return { kind: "key", key: createPrivateKey(pem) };
  } catch (err) {
    // node:crypto's parse errors describe the format, never the key.
    return { kind: "error", detail: `${file}: not a usable private key (${(err as Error).message})` };
  } finally {
    pem.fill(0);
  }
}

interface Validity {
  readonly status: CheckStatus;
  readonly text: string;
  readonly certificate: X509Certificate;
}

function validity(certificate: X509Certificate, now: number): Validity {
  const from = new Date(certificate.validFrom).getTime();
  const to = new Date(certificate.validTo).getTime();
  if (now < from) {
    return { status: "fail", text: `is not valid before ${isoDate(from)}`, certificate };
  }
  if (now >= to) {
    return { status: "fail", text: `expired ${isoDate(to)}`, certificate };
  }
  const days = daysUntil(to, now);
  return {
    status: days < EXPIRY_WARN_DAYS ? "warn" : "ok",
    text: `expires ${isoDate(to)} (in ${days} day${days === 1 ? "" : "s"})`,
    certificate,
  };
}

/** The certificate nearest to trouble: the worst status, then the earliest expiry. */
function worstValidity(certificates: readonly X509Certificate[], now: number): Validity | undefined {
  const rank = { ok: 0, warn: 1, fail: 2 } as const;
  return certificates
    .map((certificate) => validity(certificate, now))
    .sort(
      (a, b) =>
        rank[b.status] - rank[a.status] ||
        new Date(a.certificate.validTo).getTime() - new Date(b.certificate.validTo).getTime(),
    )[0];
}

function worse(a: CheckStatus, b: CheckStatus): CheckStatus {
  return a === "fail" || b === "fail" ? "fail" : a === "warn" || b === "warn" ? "warn" : "ok";
}

function subjectName(certificate: X509Certificate): string {
  const cn = /^CN=(.*)$/m.exec(certificate.subject)?.[1];
  return cn !== undefined ? `CN=${cn}` : certificate.subject.replaceAll("\n", ", ");
}

function pemBlocks(text: string, label: string): string[] {
  return text.match(new RegExp(`-----BEGIN ${label}-----[\\s\\S]*?-----END ${label}-----`, "g")) ?? [];
}

function describeRootKeySource(config: Config): string {
  if (config.rootKey === undefined) {
    return `dev root key ${join(config.dataDir, "root.key")}`;
  }
  return "file" in config.rootKey ? `KEYWARD_ROOT_KEY_FILE ${config.rootKey.file}` : "KEYWARD_ROOT_KEY";
}

function where(config: Config): string {
  const schema = `schema ${config.databaseSchema ?? "public"}`;
  return config.databaseUrl === undefined
    ? `embedded PostgreSQL in ${join(config.dataDir, "postgres")}, ${schema}`
    : `${maskDatabaseUrl(config.databaseUrl)}, ${schema}`;
}

/**
 * DATABASE_URL with its password (in the user part, or any query parameter
 * whose name mentions a password) replaced by `****`, for printing.
 */
export function maskDatabaseUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // Not parseable as a URL: keep only the scheme rather than risk printing a secret.
    return `${/^[a-z]+:/i.exec(text)?.[0] ?? ""}//(unparseable URL)`;
  }
  if (url.password !== "") {
    url.password = "****";
  }
  for (const name of [...url.searchParams.keys()]) {
    if (/pass/i.test(name)) {
      url.searchParams.set(name, "****");
    }
  }
  return url.toString();
}

/** Every form in which DATABASE_URL's secrets could show up in an error message. */
function databaseSecrets(databaseUrl: string | undefined): string[] {
  if (databaseUrl === undefined) {
    return [];
  }
  let url: URL;
  try {
    url = new URL(databaseUrl);
  } catch {
    return [];
  }
  const secrets = [url.password, ...[...url.searchParams].filter(([name]) => /pass/i.test(name)).map(([, value]) => value)];
  return [...new Set(secrets.flatMap((secret) => [secret, safeDecode(secret)]))].filter((secret) => secret !== "");
}

function scrub(text: string, secrets: readonly string[]): string {
  return secrets.reduce((result, secret) => result.split(secret).join("****"), text);
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function describeError(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) {
    return [...new Set(err.errors.map((inner) => (inner as Error).message))].join("; ");
  }
  const message = (err as Error).message || String((err as NodeJS.ErrnoException).code ?? err);
  return message.split("\n")[0]!;
}

function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

function isoDate(time: number | Date): string {
  return new Date(time).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function daysUntil(time: number, now: number): number {
  return Math.floor((time - now) / DAY_MS);
}

function formatMs(ms: number): string {
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;

function isParseArgsError(err: unknown): boolean {
  return err instanceof TypeError && String((err as NodeJS.ErrnoException).code ?? "").startsWith("ERR_PARSE_ARGS_");
}
