import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { KeyAlgorithm, KeyPurpose } from "../../gen/keyward/v1/keys_pb.js";
import { serviceClients, type ServiceClients } from "../helpers/clients.js";
import { devCredentials } from "../helpers/keyward.js";
import { cleanupAfterAll, serveKeyward, type ServerProcess } from "../helpers/keyward-process.js";
import { startPrivatePostgres, type PrivatePostgres } from "../helpers/private-postgres.js";
import { codeNames, pooled, timedCall, type TimedOutcome } from "../helpers/timed-calls.js";

/**
 * kill -9 of `keyward serve` under mixed load (RotateKey, AddSecretVersion,
 * Encrypt over mTLS), ROUNDS times, on one PostgreSQL of its own. After
 * every kill, through the process that replaces it and with SQL:
 * - every call that answered OK is there: its secret version reads back
 *   its value, its key version exists with material, its ciphertext
 *   decrypts, its audit event exists exactly once (matched by request id);
 * - nothing is half-written: no live version without material or value,
 *   no gap in version numbers, every key's primary version is live, every
 *   secret's current version exists;
 * - the audit chain verifies (VerifyAuditChain) from its first event.
 */

const ROUNDS = 20;
/**
 * Every COLD_EVERY-th replacement starts only after the kill (a restart);
 * the others start while the doomed process is under load, as a new pod
 * does in a rolling restart, so that the 2-4 s a process takes to load its
 * modules do not add up over the rounds. Either way the replacement serves
 * its first call after the kill.
 */
const COLD_EVERY = 4;
/**
 * Each round's load runs this long (± half, at random) before the kill, and
 * at least until MIN_ACKNOWLEDGED calls have answered OK (on a busy machine).
 */
const LOAD_MS = 1_200;
const MIN_ACKNOWLEDGED = 30;
const WORKERS = 16;
const SECRETS = 8;
const DEADLINE_MS = 10_000;
const KEY = "keys/data";

const cleanups = cleanupAfterAll();

/** What an acknowledged (OK) call promised. */
type Acknowledged =
  | { kind: "RotateKey"; requestId: string; version: number }
  | { kind: "AddSecretVersion"; requestId: string; name: string; version: bigint; value: string }
  | { kind: "Encrypt"; requestId: string; plaintext: string; ciphertext: Uint8Array };

const secretName = (i: number) => `secrets/faults/prod/s${i}`;

/** Calls until the server dies, adding what is acknowledged to `acknowledged`; returns every outcome. */
async function load(admin: ServiceClients, service: ServiceClients, round: number, killed: () => boolean, acknowledged: Acknowledged[]) {
  const outcomes: TimedOutcome[] = [];
  await Promise.all(
    Array.from({ length: WORKERS }, async (_, w) => {
      for (let i = 0; ; i++) {
        // 1 in 20 rotates the key the encryptions use, 8 in 20 add a secret version, the rest encrypt.
        const pick = (w * 7 + i) % 20;
        if (pick === 0) {
          const o = await timedCall("RotateKey", (opt) => admin.keys.rotateKey({ name: KEY }, opt), DEADLINE_MS);
          if (o.code === 0) acknowledged.push({ kind: "RotateKey", requestId: o.requestId, version: o.value!.keyVersion!.version });
          outcomes.push(o);
        } else if (pick <= 8) {
          const name = secretName((w + i) % SECRETS);
          const value = `r${round}-w${w}-i${i}-${Math.random().toString(36).slice(2)}`;
          const o = await timedCall(
            "AddSecretVersion",
            (opt) => service.secrets.addSecretVersion({ parent: name, payload: { data: Buffer.from(value) } }, opt),
            DEADLINE_MS,
          );
          if (o.code === 0) {
            acknowledged.push({ kind: "AddSecretVersion", requestId: o.requestId, name, version: o.value!.secretVersion!.version, value });
          }
          outcomes.push(o);
        } else {
          const plaintext = `r${round}-w${w}-i${i}`;
          const o = await timedCall(
            "Encrypt",
            (opt) => service.crypto.encrypt({ name: KEY, plaintext: Buffer.from(plaintext) }, opt),
            DEADLINE_MS,
          );
          if (o.code === 0) acknowledged.push({ kind: "Encrypt", requestId: o.requestId, plaintext, ciphertext: o.value!.ciphertext });
          outcomes.push(o);
        }
        const last = outcomes.at(-1)!;
        // The process is gone (or going): this worker's next call could not answer.
        if (last.code !== 0 && killed()) return;
        if (last.code !== 0 && !killed()) throw new Error(`${last.kind} failed before the kill: ${codeNames([last])} ${last.message}`);
      }
    }),
  );
  return outcomes;
}

/** Acknowledged values that do not read back through the running server; [] when every one does. */
async function unreadable(service: ServiceClients, acknowledged: readonly Acknowledged[]): Promise<string[]> {
  const problems: string[] = [];
  const checks = acknowledged.map((ack) => async () => {
    if (ack.kind === "AddSecretVersion") {
      try {
        const res = await service.secrets.accessSecretVersion({ name: `${ack.name}/versions/${ack.version}` }, { timeoutMs: DEADLINE_MS });
        if (Buffer.from(res.payload!.data).toString() !== ack.value) problems.push(`${ack.name} v${ack.version}: another value`);
      } catch (err) {
        problems.push(`${ack.name} v${ack.version}: ${(err as Error).message}`);
      }
    } else if (ack.kind === "Encrypt") {
      try {
        const res = await service.crypto.decrypt({ name: KEY, ciphertext: ack.ciphertext }, { timeoutMs: DEADLINE_MS });
        if (Buffer.from(res.plaintext).toString() !== ack.plaintext) problems.push(`ciphertext of ${ack.plaintext}: another plaintext`);
      } catch (err) {
        problems.push(`ciphertext of ${ack.plaintext}: ${(err as Error).message}`);
      }
    }
  });
  await pooled(checks, 32);
  return problems;
}

/** Acknowledged key versions, secret versions and audit events missing from the database; [] when none is. */
async function missing(db: PrivatePostgres, acknowledged: readonly Acknowledged[]): Promise<string[]> {
  const problems: string[] = [];
  const rotated = acknowledged.flatMap((a) => (a.kind === "RotateKey" ? [a.version] : []));
  const { rows: versions } = await db.query<{ version: number; live: boolean }>(
    "SELECT version, state <> 'DESTROYED' AND wrapped_material IS NOT NULL AS live FROM key_versions WHERE key_name = $1 AND version = ANY($2)",
    [KEY, rotated],
  );
  const live = new Set(versions.filter((v) => v.live).map((v) => v.version));
  problems.push(...rotated.filter((v) => !live.has(v)).map((v) => `${KEY} version ${v}: missing`));

  const ids = acknowledged.map((a) => a.requestId);
  const { rows: events } = await db.query<{ request_id: string; n: string }>(
    "SELECT request_id, count(*) AS n FROM audit_events WHERE request_id = ANY($1) GROUP BY request_id",
    [ids],
  );
  const counted = new Map(events.map((e) => [e.request_id, Number(e.n)]));
  problems.push(...ids.filter((id) => counted.get(id) !== 1).map((id) => `audit event of ${id}: ${counted.get(id) ?? 0}`));

  const added = acknowledged.flatMap((a) => (a.kind === "AddSecretVersion" ? [a] : []));
  const { rows: stored } = await db.query<{ secret_name: string; version: string }>(
    `SELECT secret_name, version FROM secret_versions
      WHERE ciphertext IS NOT NULL AND (secret_name, version) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))`,
    [added.map((a) => a.name), added.map((a) => a.version.toString())],
  );
  const found = new Set(stored.map((r) => `${r.secret_name} v${r.version}`));
  problems.push(...added.filter((a) => !found.has(`${a.name} v${a.version}`)).map((a) => `${a.name} v${a.version}: missing`));
  return problems;
}

/** Half-written state anywhere in the database; [] when there is none. */
async function halfWritten(db: PrivatePostgres): Promise<string[]> {
  const { rows } = await db.query<{ problem: string }>(`
    SELECT 'key version without material: ' || key_name || ' v' || version AS problem
      FROM key_versions WHERE state <> 'DESTROYED' AND wrapped_material IS NULL
    UNION ALL
    SELECT 'primary version not live: ' || k.name || ' v' || k.primary_version
      FROM keys k LEFT JOIN key_versions v ON v.key_name = k.name AND v.version = k.primary_version
      WHERE k.state <> 'DESTROYED' AND (v.version IS NULL OR v.state <> 'ENABLED' OR v.wrapped_material IS NULL)
    UNION ALL
    SELECT 'gap in key versions: ' || key_name
      FROM key_versions GROUP BY key_name HAVING max(version) <> count(*)
    UNION ALL
    SELECT 'key behind its versions: ' || k.name
      FROM keys k JOIN key_versions v ON v.key_name = k.name GROUP BY k.name, k.primary_version HAVING max(v.version) <> k.primary_version
    UNION ALL
    SELECT 'secret version without value: ' || secret_name || ' v' || version
      FROM secret_versions WHERE state <> 'DESTROYED' AND (ciphertext IS NULL OR key_version IS NULL)
    UNION ALL
    SELECT 'secret versions do not match current_version: ' || s.name
      FROM secrets s LEFT JOIN secret_versions v ON v.secret_name = s.name
      GROUP BY s.name, s.current_version HAVING coalesce(max(v.version), 0) <> s.current_version OR count(v.version) <> s.current_version
  `);
  return rows.map((r) => r.problem);
}

describe("kill -9 under load", () => {
  it(`${ROUNDS} rounds: every acknowledged call survives, nothing is half-written, the audit chain verifies`, async () => {
    const db = await startPrivatePostgres();
    cleanups.push(() => db.destroy());
    const dataDir = await mkdtemp(join(tmpdir(), "keyward-faults-kill-"));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    const env = { KEYWARD_DATA_DIR: dataDir, DATABASE_URL: db.connectionString };

    const all: Acknowledged[] = [];
    let previous: Acknowledged[] = [];
    const figures = {
      rounds: 0,
      coldRestarts: 0,
      acknowledged: 0,
      byKind: {} as Record<string, number>,
      failedAfterKill: 0,
      losses: 0,
      coldRestartMs: [] as number[],
      verifyMs: [] as number[],
    };
    let replacement: Promise<ServerProcess> | undefined;
    for (let round = 0; round <= ROUNDS; round++) {
      const restartStarted = performance.now();
      const cold = replacement === undefined;
      const server = await (replacement ?? serveKeyward(env));
      replacement = undefined;
      if (cold && round > 0) {
        figures.coldRestarts++;
        figures.coldRestartMs.push(Math.round(performance.now() - restartStarted));
      }
      const admin = serviceClients(server.url, await devCredentials(dataDir, "admin"));
      const service = serviceClients(server.url, await devCredentials(dataDir, "service"));
      const auditor = serviceClients(server.url, await devCredentials(dataDir, "auditor"));
      if (round === 0) {
        await admin.keys.createKey({ keyId: "data", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
        for (let i = 0; i < SECRETS; i++) {
          await admin.secrets.createSecret({ parent: "secrets/faults/prod", secretId: `s${i}`, secret: { maxVersions: 1000 } });
        }
      }

      const verifyStarted = performance.now();
      // What the previous process acknowledged before it was killed.
      const lost = [...(await missing(db, previous)), ...(await unreadable(service, previous))];
      figures.losses += lost.length;
      expect(lost.slice(0, 10), `round ${round}: acknowledged calls lost`).toEqual([]);
      expect(await halfWritten(db), `round ${round}: half-written state`).toEqual([]);
      const chain = await auditor.audit.verifyAuditChain({});
      expect({ intact: chain.intact, reason: chain.reason }, `round ${round}: audit chain`).toEqual({ intact: true, reason: "" });
      figures.verifyMs.push(Math.round(performance.now() - verifyStarted));
      if (round === ROUNDS) {
        // Everything from every round, once more: nothing acknowledged went away later.
        expect((await missing(db, all)).slice(0, 10), "acknowledged in earlier rounds").toEqual([]);
        server.child.kill("SIGTERM");
        expect(await server.exited).toEqual({ code: 0, signal: null });
        break;
      }

      let killedAt = 0;
      const acknowledged: Acknowledged[] = [];
      const running = load(admin, service, round, () => killedAt !== 0, acknowledged);
      let workerFailed = false;
      running.catch(() => (workerFailed = true));
      const loadStarted = performance.now();
      if ((round + 1) % COLD_EVERY !== 0) {
        replacement = serveKeyward(env);
        replacement.catch(() => {});
      }
      await sleep(LOAD_MS * (0.5 + Math.random()));
      while (acknowledged.length < MIN_ACKNOWLEDGED && !workerFailed && performance.now() - loadStarted < 20_000) {
        await sleep(10);
      }
      server.child.kill("SIGKILL");
      killedAt = performance.now();
      const outcomes = await running;
      expect(await server.exited).toEqual({ code: null, signal: "SIGKILL" });
      expect(acknowledged.length, `round ${round}: ${JSON.stringify(codeNames(outcomes))}`).toBeGreaterThanOrEqual(MIN_ACKNOWLEDGED);

      previous = acknowledged;
      all.push(...acknowledged);
      figures.rounds++;
      figures.acknowledged += acknowledged.length;
      figures.failedAfterKill += outcomes.filter((o) => o.code !== 0).length;
      for (const a of acknowledged) figures.byKind[a.kind] = (figures.byKind[a.kind] ?? 0) + 1;
    }
    const spread = (ms: number[]) => ({ median: [...ms].sort((a, b) => a - b)[ms.length >> 1], max: Math.max(...ms) });
    console.log(`[faults] kill -9: ${JSON.stringify({ ...figures, coldRestartMs: spread(figures.coldRestartMs), verifyMs: spread(figures.verifyMs) })}`);
    expect(figures.rounds).toBe(ROUNDS);
  }, 240_000);
});
