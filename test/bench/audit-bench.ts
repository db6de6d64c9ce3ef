/**
 * Audit throughput benchmark (`npm run bench:audit [-- --seconds N]`); not a test.
 *
 * Drives the real append path — createGroupCommitter → createPgAuditRepository
 * → a dedicated audit pool of 2 connections with client-side timeouts, as
 * src/main.ts wires it, with the defaults of src/config.ts — from 64
 * concurrent producers for a fixed time, and reports chained events per second
 * and the wait of each append (p50/p95/p99). A baseline measured in the same run
 * and on the same database inserts one row per transaction (INSERT … COMMIT)
 * from 64 producers. Afterwards the whole chain is verified and the schema dropped.
 *
 * Database: DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test (or
 * KEYWARD_TEST_PROBE_URL) if it answers, else an embedded PostgreSQL in a
 * temporary folder, removed afterwards.
 *
 * Options: --seconds N (per phase, default 10), --producers N (default 64),
 * --skip-baseline.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import pg from "pg";
import { ENV_VARS } from "../../src/config.js";
import { createChainVerifier, GENESIS_HASH } from "../../src/domain/audit/chain.js";
import type { AuditRecord } from "../../src/domain/audit/event.js";
import { createGroupCommitter } from "../../src/domain/audit/group-commit.js";
import { createPgAuditRepository } from "../../src/storage/pg/audit-repository.js";
import { migrate } from "../../src/storage/pg/migrate.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { chooseDatabase, describeDatabase } from "../helpers/choose-database.js";


const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "10" },
    producers: { type: "string", default: "64" },
    "skip-baseline": { type: "boolean", default: false },
  },
});
const SECONDS = Number(args.seconds);
const PRODUCERS = Number(args.producers);
if (!(SECONDS > 0) || !Number.isInteger(PRODUCERS) || PRODUCERS < 1) {
  process.stderr.write("usage: audit-bench [--seconds N] [--producers N] [--skip-baseline]\n");
  process.exit(2);
}

const BATCH_MAX = Number(ENV_VARS.KEYWARD_AUDIT_BATCH_MAX);
const QUEUE_MAX = Number(ENV_VARS.KEYWARD_AUDIT_QUEUE_MAX);
const TIMEOUT_MS = Number(ENV_VARS.KEYWARD_AUDIT_TIMEOUT_MS);

const POLICY_DIGEST = randomBytes(32).toString("hex");
const METHODS = [
  "/keyward.v1.CryptoService/Encrypt",
  "/keyward.v1.CryptoService/Decrypt",
  "/keyward.v1.SecretsService/AccessSecretVersion",
  "/keyward.v1.AccessService/GetCallerIdentity",
];

/** A record shaped like what the interceptor writes for a busy service. */
function realisticRecord(i: number): AuditRecord {
  const key = `keys/payments-${i % 37}`;
  const denied = i % 50 === 0;
  return {
    time: new Date(),
    identity: `spiffe://keyward.local/service-${i % 11}`,
    roles: denied ? [] : ["SERVICE"],
    method: METHODS[i % METHODS.length]!,
    resources: [key],
    keyVersion: denied ? "" : `${key}/versions/${1 + (i % 5)}`,
    resultCode: denied ? 7 : 0,
    resultMessage: denied ? `permission denied: no rule grants SERVICE on ${key}` : "",
    requestId: randomUUID(),
    peerAddress: `127.0.0.1:${40000 + (i % 20000)}`,
    policyDigest: POLICY_DIGEST,
  };
}

interface PhaseResult {
  readonly events: number;
  readonly failures: number;
  readonly seconds: number;
  readonly waitsMs: Float64Array;
}

/** Runs `producers` loops of `op` for `seconds`; each loop records the wait of every op. */
async function runPhase(seconds: number, producers: number, op: (i: number) => Promise<void>): Promise<PhaseResult> {
  const waits: number[] = [];
  let failures = 0;
  let counter = 0;
  const firstError: unknown[] = [];
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: producers }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        try {
          await op(counter++);
          waits.push(performance.now() - t0);
        } catch (err) {
          failures++;
          if (firstError.length === 0) firstError.push(err);
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  if (firstError.length > 0) {
    process.stdout.write(`  first failure: ${(firstError[0] as Error).message}\n`);
  }
  return { events: waits.length, failures, seconds: elapsed, waitsMs: Float64Array.from(waits).sort() };
}

const percentile = (sorted: Float64Array, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

function describePhase(name: string, result: PhaseResult): string {
  const rate = result.events / result.seconds;
  return (
    `${name.padEnd(34)} ${Math.round(rate).toString().padStart(7)} events/s  ` +
    `(${result.events} in ${result.seconds.toFixed(1)} s, ${result.failures} failed)  ` +
    `wait ms p50 ${percentile(result.waitsMs, 50).toFixed(2)}  p95 ${percentile(result.waitsMs, 95).toFixed(2)}  ` +
    `p99 ${percentile(result.waitsMs, 99).toFixed(2)}  max ${percentile(result.waitsMs, 100).toFixed(2)}`
  );
}

async function main(): Promise<number> {
  const database = await chooseDatabase(process.env.DATABASE_URL);
  const schema = `bench_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: database.url });
  admin.on("error", () => {});
  await admin.connect();
  let pool: pg.Pool | undefined;
  let auditPool: pg.Pool | undefined;
  let baselinePool: pg.Pool | undefined;
  let ok = true;
  try {
    const settings = await admin.query<{ name: string; setting: string }>(
      "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'wal_sync_method', 'server_version')",
    );
    process.stdout.write(
      `database: ${describeDatabase(database)}; ${settings.rows.map((r) => `${r.name}=${r.setting}`).join(", ")}\n` +
        `group commit: batch ${BATCH_MAX}, queue ${QUEUE_MAX}, timeout ${TIMEOUT_MS} ms, audit pool 2; ` +
        `${PRODUCERS} producers, ${SECONDS} s per phase\n`,
    );
    await migrate({ connectionString: database.url, schema });
    pool = createPool({ connectionString: database.url, schema, max: 4, applicationName: "keyward-bench" });
    // As src/main.ts builds it.
    auditPool = createPool({
      connectionString: database.url,
      schema,
      max: 2,
      applicationName: "keyward-audit",
      connectTimeoutMs: TIMEOUT_MS,
      queryTimeoutMs: TIMEOUT_MS + 1000,
    });
    const repository = createPgAuditRepository(auditPool);
    let writeErrors = 0;
    const batchSizes: number[] = [];
    const committer = createGroupCommitter({
      writeBatch: (records) => {
        batchSizes.push(records.length);
        return repository.append(records);
      },
      maxBatch: BATCH_MAX,
      maxPending: QUEUE_MAX,
      timeoutMs: TIMEOUT_MS,
      onWriteError: () => void writeErrors++,
    });

    // Warm-up: connections open, statements prepared, JIT warm.
    await runPhase(Math.min(1, SECONDS), PRODUCERS, async (i) => void (await committer.append(realisticRecord(i))));
    batchSizes.length = 0;
    const startHead = await repository.head();

    const chained = await runPhase(SECONDS, PRODUCERS, async (i) => void (await committer.append(realisticRecord(i))));
    await committer.close();
    const meanBatch = batchSizes.reduce((a, b) => a + b, 0) / Math.max(1, batchSizes.length);
    process.stdout.write(`${describePhase("chained (group commit)", chained)}\n`);
    process.stdout.write(
      `  batches: ${batchSizes.length} (${Math.round(batchSizes.length / chained.seconds)}/s), mean ${meanBatch.toFixed(1)} events, ` +
        `max ${Math.max(0, ...batchSizes)}; write errors ${writeErrors}\n`,
    );

    let baseline: PhaseResult | undefined;
    if (!args["skip-baseline"]) {
      await pool.query("CREATE TABLE baseline_events (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)");
      await pool.query("ALTER TABLE baseline_events ADD PRIMARY KEY (sequence)");
      await pool.query("CREATE SEQUENCE baseline_seq");
      baselinePool = createPool({ connectionString: database.url, schema, max: PRODUCERS, applicationName: "keyward-bench-baseline" });
      const zero = Buffer.alloc(32);
      const insertOne = async (i: number) => {
        const r = realisticRecord(i);
        // One event, one transaction (autocommit): a row per commit, not chained.
        await baselinePool!.query({
          name: "baseline-insert",
          text: `INSERT INTO baseline_events (sequence, time, identity, roles, method, resources, key_version, result_code,
                   result_message, request_id, peer_address, policy_digest, previous_hash, hash)
                 VALUES (nextval('baseline_seq'), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)`,
          values: [r.time, r.identity, r.roles, r.method, r.resources, r.keyVersion, r.resultCode, r.resultMessage, r.requestId, r.peerAddress, r.policyDigest, zero],
        });
      };
      await runPhase(Math.min(1, SECONDS), PRODUCERS, insertOne);
      baseline = await runPhase(SECONDS, PRODUCERS, insertOne);
      process.stdout.write(`${describePhase("baseline (1 row per commit)", baseline)}\n`);
    }

    // Verify the whole chain, page by page.
    const head = await repository.head();
    const verifier = createChainVerifier({ sequence: 1n, previousHash: GENESIS_HASH, end: head.sequence });
    const verifyStarted = performance.now();
    let brokenAt: string | undefined;
    for (let from = 1n; from <= head.sequence && brokenAt === undefined; from += 10_000n) {
      for (const event of await repository.range(from, from + 9_999n, 10_000)) {
        const broken = verifier.add(event);
        if (broken) {
          brokenAt = `${broken.sequence}: ${broken.reason}`;
          break;
        }
      }
    }
    const finish = brokenAt === undefined ? verifier.finish() : undefined;
    if (finish) brokenAt = `${finish.sequence}: ${finish.reason}`;
    const measured = head.sequence - startHead.sequence;
    process.stdout.write(
      `chain: ${head.sequence} events, ${brokenAt ? `BROKEN at ${brokenAt}` : "verifies"} ` +
        `(${((performance.now() - verifyStarted) / 1000).toFixed(1)} s); measured phase appended ${measured}, acknowledged ${chained.events}\n`,
    );
    if (brokenAt || measured !== BigInt(chained.events) || chained.failures > 0) ok = false;

    const rate = chained.events / chained.seconds;
    const p99 = percentile(chained.waitsMs, 99);
    if (baseline) {
      process.stdout.write(`ratio chained / baseline: ${(rate / (baseline.events / baseline.seconds)).toFixed(1)}x\n`);
    }
    const meets = rate >= 20_000 && p99 < 20;
    process.stdout.write(
      `target (>= 20000 events/s, p99 < 20 ms): ${meets ? "MET" : "MISSED"} — ${Math.round(rate)} events/s, p99 ${p99.toFixed(2)} ms\n`,
    );
  } finally {
    await Promise.all([pool?.end(), auditPool?.end(), baselinePool?.end()].map((p) => p?.catch(() => {})));
    await admin.query(`DROP SCHEMA IF EXISTS ${admin.escapeIdentifier(schema)} CASCADE`).catch((err: Error) => {
      process.stderr.write(`could not drop schema ${schema}: ${err.message}\n`);
    });
    await admin.end().catch(() => {});
    await database.release();
  }
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`audit bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
