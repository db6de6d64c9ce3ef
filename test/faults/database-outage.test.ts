import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, type Client } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { KeyAlgorithm, KeyPurpose } from "../../gen/keyward/v1/keys_pb.js";
import { serviceClients, type ServiceClients } from "../helpers/clients.js";
import { devCredentials } from "../helpers/keyward.js";
import { cleanupAfterAll, serveKeyward, type ServerProcess } from "../helpers/keyward-process.js";
import { startPrivatePostgres, type PrivatePostgres } from "../helpers/private-postgres.js";
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js";
import { codeNames, residentKiB, timedCall, type CallOptions, type TimedOutcome } from "../helpers/timed-calls.js";

/**
 * PostgreSQL goes away for OUTAGE_MS under steady mixed load, then comes
 * back; the same `keyward serve` process must ride it out:
 * - every call fails UNAVAILABLE before its deadline (none hangs, none
 *   answers INTERNAL or anything else);
 * - the process never exits and its memory stays bounded;
 * - health says NOT_SERVING meanwhile, SERVING after;
 * - calls succeed again within RECOVERY_MS of the database's return, with
 *   no restart, and the audit chain is intact.
 * Two ways to lose it, run side by side, each on a PostgreSQL of its own:
 * the database stopped (connections refused), and the network to it cut by
 * a proxy that stops forwarding but keeps every connection open (queries
 * and connection attempts hang: only client-side timeouts can end them).
 */

const OUTAGE_MS = 30_000;
/** The server's bound on waiting for the database (KEYWARD_DB_TIMEOUT_MS) and for an audit event (KEYWARD_AUDIT_TIMEOUT_MS). */
const DB_TIMEOUT_MS = 2_000;
const AUDIT_TIMEOUT_MS = 2_000;
/**
 * The longest a call may take while the database is away: waiting for a
 * connection, then for a query (each up to DB_TIMEOUT_MS), then for its
 * audit event (AUDIT_TIMEOUT_MS); plus slack for a loaded machine.
 */
const ANSWER_BOUND_MS = 2 * DB_TIMEOUT_MS + AUDIT_TIMEOUT_MS + 2_000;
/** The deadline every call is made with: above the bound, so that a hang shows as DEADLINE_EXCEEDED. */
const DEADLINE_MS = 10_000;
/** The promise: calls succeed again this soon after the database is back. */
const RECOVERY_MS = 2_000;
/** Two workers start at each kind of call, so that every kind is made during the outage even when each call takes seconds. */
const WORKERS = 18;
/** Pause between one worker's calls: steady load without saturating two cores shared by two servers. */
const PAUSE_MS = 40;

const cleanups = cleanupAfterAll();

/** The calls the load is made of; each worker cycles through them from its own offset. */
function callKinds(admin: ServiceClients, service: ServiceClients, worker: number, ciphertext: Uint8Array) {
  const secret = `secrets/faults/prod/s${worker}`;
  const kinds: Array<[string, (o: CallOptions) => Promise<unknown>]> = [
    ["Encrypt", (o) => service.crypto.encrypt({ name: "keys/data", plaintext: Buffer.from(`w${worker}`) }, o)],
    ["AddSecretVersion", (o) => service.secrets.addSecretVersion({ parent: secret, payload: { data: Buffer.from(`v-${Date.now()}`) } }, o)],
    ["Decrypt", (o) => service.crypto.decrypt({ name: "keys/data", ciphertext }, o)],
    ["AccessSecretVersion", (o) => service.secrets.accessSecretVersion({ name: `${secret}/versions/latest` }, o)],
    ["GetCallerIdentity", (o) => service.access.getCallerIdentity({}, o)],
    ["Encrypt", (o) => service.crypto.encrypt({ name: "keys/data", plaintext: Buffer.from(`x${worker}`) }, o)],
    ["GetKey", (o) => admin.keys.getKey({ name: "keys/data" }, o)],
    ["RotateKey", (o) => admin.keys.rotateKey({ name: "keys/rotated" }, o)],
    // Audited like any call: during the outage it fails UNAVAILABLE (only a Watch opened before sees NOT_SERVING).
    ["HealthCheck", (o) => service.health.check({ service: "" }, o)],
  ];
  return kinds;
}

/** A Health.Watch stream's statuses with the time each arrived. */
function watchHealth(health: Client<typeof Health>) {
  const seen: Array<{ status: ServingStatus; at: number }> = [];
  const abort = new AbortController();
  const done = (async () => {
    for await (const res of health.watch({ service: "" }, { signal: abort.signal })) {
      seen.push({ status: res.status, at: performance.now() });
    }
  })().catch(() => {});
  return { seen, stop: () => (abort.abort(), done) };
}

interface Scenario {
  /** How the server reaches PostgreSQL. */
  databaseUrl(db: PrivatePostgres): Promise<string>;
  cut(db: PrivatePostgres): Promise<void>;
  restore(db: PrivatePostgres): Promise<void>;
}

interface Report {
  outcomes: TimedOutcome[];
  /** When the cut began, and when it was complete (the postmaster gone; at once for the proxy). */
  cutAt: number;
  cutDoneAt: number;
  /** When the database's return began: it may serve before `restore` resolves. */
  restoreAt: number;
  restoredAt: number;
  rssBeforeKiB: number;
  rssAfterKiB: number;
  /** RSS sampled every second from the baseline on, KiB. */
  rssSamplesKiB: number[];
  server: ServerProcess;
  pid: number;
  health: Array<{ status: ServingStatus; at: number }>;
  verified: { intact: boolean; verifiedCount: bigint };
}

async function runOutage(scenario: Scenario): Promise<Report> {
  const db = await startPrivatePostgres();
  cleanups.push(() => db.destroy());
  const dataDir = await mkdtemp(join(tmpdir(), "keyward-faults-"));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  const server = await serveKeyward({
    KEYWARD_DATA_DIR: dataDir,
    DATABASE_URL: await scenario.databaseUrl(db),
    KEYWARD_DB_TIMEOUT_MS: String(DB_TIMEOUT_MS),
    KEYWARD_AUDIT_TIMEOUT_MS: String(AUDIT_TIMEOUT_MS),
  });
  const pid = server.child.pid!;
  const admin = serviceClients(server.url, await devCredentials(dataDir, "admin"));
  const service = serviceClients(server.url, await devCredentials(dataDir, "service"));
  const auditor = serviceClients(server.url, await devCredentials(dataDir, "auditor"));

  const aes = { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM };
  await admin.keys.createKey({ keyId: "data", key: aes });
  await admin.keys.createKey({ keyId: "rotated", key: aes });
  for (let w = 0; w < WORKERS; w++) {
    await admin.secrets.createSecret({ parent: "secrets/faults/prod", secretId: `s${w}`, secret: { maxVersions: 1000 } });
    await service.secrets.addSecretVersion({ parent: `secrets/faults/prod/s${w}`, payload: { data: Buffer.from("first") } });
  }
  const { ciphertext } = await service.crypto.encrypt({ name: "keys/data", plaintext: Buffer.from("kept") });
  const health = watchHealth(auditor.health);

  const outcomes: TimedOutcome[] = [];
  let loading = true;
  const workers = Array.from({ length: WORKERS }, async (_, w) => {
    const kinds = callKinds(admin, service, w, ciphertext);
    for (let i = w; loading; i++) {
      const [kind, call] = kinds[i % kinds.length]!;
      outcomes.push(await timedCall(kind, call, DEADLINE_MS));
      await sleep(PAUSE_MS);
    }
  });

  // Steady state first, then the memory baseline.
  await sleep(3_000);
  const rssBeforeKiB = await residentKiB(pid);
  const rssSamplesKiB: number[] = [];
  const sampler = setInterval(() => void residentKiB(pid).then((kib) => rssSamplesKiB.push(kib), () => {}), 1_000);
  const cutAt = performance.now();
  await scenario.cut(db);
  const cutDoneAt = performance.now();
  await sleep(OUTAGE_MS);
  const restoreAt = performance.now();
  await scenario.restore(db);
  const restoredAt = performance.now();
  await sleep(RECOVERY_MS + 4_000);
  loading = false;
  await Promise.all(workers);
  const rssAfterKiB = await residentKiB(pid);
  clearInterval(sampler);
  await health.stop();
  const verified = await auditor.audit.verifyAuditChain({});
  return { outcomes, cutAt, cutDoneAt, restoreAt, restoredAt, rssBeforeKiB, rssAfterKiB, rssSamplesKiB, server, pid, health: health.seen, verified };
}

function expectRodeItOut(report: Report, label: string) {
  const { outcomes, cutAt, cutDoneAt, restoreAt, restoredAt } = report;
  const ms = (o: TimedOutcome) => Math.round(o.endedAt - o.startedAt);
  // Calls wholly inside the outage: a restarting PostgreSQL accepts
  // connections before its start command returns, so calls ending after the
  // restart began may already be served.
  const during = outcomes.filter((o) => o.startedAt > cutDoneAt && o.endedAt < restoreAt);
  const after = outcomes.filter((o) => o.startedAt > restoredAt + RECOVERY_MS);
  const firstFailure = outcomes.filter((o) => o.startedAt >= cutAt && o.code !== 0).sort((a, b) => a.endedAt - b.endedAt)[0];
  const firstOkAfter = outcomes.filter((o) => o.startedAt >= restoredAt && o.code === 0).sort((a, b) => a.endedAt - b.endedAt)[0];
  const summary = {
    calls: outcomes.length,
    cutTookMs: Math.round(cutDoneAt - cutAt),
    codes: codeNames(outcomes),
    duringOutage: codeNames(during),
    afterRecovery: codeNames(after),
    slowestMs: Math.max(...outcomes.map(ms)),
    slowestDuringOutageMs: Math.max(...during.map(ms)),
    firstUnavailableAfterCutMs: firstFailure && Math.round(firstFailure.endedAt - cutAt),
    firstOkAfterRestoreMs: firstOkAfter && Math.round(firstOkAfter.endedAt - restoredAt),
    rssBeforeMiB: Math.round(report.rssBeforeKiB / 1024),
    rssAfterMiB: Math.round(report.rssAfterKiB / 1024),
    rssSamplesMiB: report.rssSamplesKiB.map((kib) => Math.round(kib / 1024)),
    health: report.health.map((h) => `${ServingStatus[h.status]}@${Math.round(h.at - cutAt)}`),
  };
  console.log(`[faults] ${label}: ${JSON.stringify(summary)}`);

  // Nothing but OK and UNAVAILABLE, ever; nothing near its deadline.
  const wrong = outcomes.filter((o) => o.code !== 0 && o.code !== Code.Unavailable);
  expect(wrong.slice(0, 5).map((o) => `${o.kind} ${Code[o.code]} ${o.message} after ${ms(o)} ms`), label).toEqual([]);
  expect(summary.slowestMs, `${label}: slowest call`).toBeLessThan(ANSWER_BOUND_MS);
  // The outage was felt by every kind of call (each worker cycles through
  // them from its own offset), and only as UNAVAILABLE.
  expect(during.length).toBeGreaterThan(3 * WORKERS);
  expect(codeNames(during), label).toEqual({ Unavailable: during.length });
  expect(new Set(during.map((o) => o.kind)).size).toBe(new Set(outcomes.map((o) => o.kind)).size);
  // Back without a restart: everything made RECOVERY_MS after the return succeeds, every kind of call.
  expect(after.length).toBeGreaterThanOrEqual(WORKERS);
  expect(codeNames(after), label).toEqual({ OK: after.length });
  expect(new Set(after.map((o) => o.kind)).size).toBe(new Set(outcomes.map((o) => o.kind)).size);
  expect(report.server.child.exitCode).toBeNull();
  expect(report.server.child.signalCode).toBeNull();
  // No unclassified error reached the error interceptor meanwhile.
  const unexpected = report.server.lines().filter((line) => line.includes('"msg":"unexpected error"'));
  expect(unexpected.slice(0, 2), label).toEqual([]);
  // Memory: bounded (a generous bound; a leak of held calls, queued events
  // or connection attempts over OUTAGE_MS would be far above it).
  expect(report.rssAfterKiB, `${label}: RSS after, KiB`).toBeLessThan(report.rssBeforeKiB * 1.5 + 64 * 1024);
  // Health followed: NOT_SERVING during the outage, SERVING again after.
  const statuses = report.health.map((h) => h.status);
  expect(statuses[0]).toBe(ServingStatus.SERVING);
  expect(statuses).toContain(ServingStatus.NOT_SERVING);
  expect(statuses.at(-1)).toBe(ServingStatus.SERVING);
  expect(report.verified.intact, `${label}: audit chain`).toBe(true);
}

describe.concurrent("PostgreSQL lost under load", () => {
  it("stopped for 30 s, then started: UNAVAILABLE before every deadline, no crash, bounded memory, serving again within 2 s", async () => {
    const report = await runOutage({
      databaseUrl: async (db) => db.connectionString,
      cut: (db) => db.stop(),
      restore: (db) => db.start(),
    });
    expectRodeItOut(report, "stopped");
  }, 120_000);

  it("network cut for 30 s (connections held open, nothing forwarded), then restored: the same", async () => {
    let proxy: TcpProxy | undefined;
    const report = await runOutage({
      async databaseUrl(db) {
        proxy = await startTcpProxy(db.port);
        cleanups.push(() => proxy!.close());
        return proxy.rewrite(db.connectionString);
      },
      cut: async () => proxy!.freeze(),
      restore: async () => proxy!.thaw(),
    });
    expectRodeItOut(report, "network cut");
  }, 120_000);
});
