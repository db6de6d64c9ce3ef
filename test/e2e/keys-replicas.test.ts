import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { CHANGES_CHANNEL } from "../../src/storage/pg/change-feed.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { createScratch } from "../helpers/database.js";
import { outcome, type Outcome } from "../helpers/expect.js";
import { devCredentials, type ClientCredentials } from "../helpers/keyward.js";
import { killServerProcesses, serveKeyward, type ServerProcess } from "../helpers/keyward-process.js";

/**
 * Two `keyward serve` processes on one database schema, the way replicas
 * run behind a load balancer. Each caches keys (metadata and opened
 * material); a lifecycle change made through one must hold on the other
 * within one second (keys.proto, DisableKey: "Takes effect on all server
 * replicas within one second"). Each case warms B's cache first, changes
 * the key through A, then polls B and measures how long B kept serving the
 * old state.
 */

const INVALIDATION_BOUND_MS = 1000;

const databaseUrl = inject("databaseUrl");
const scratch = createScratch("keyward-keys-replicas-");

interface Replica {
  readonly keys: Client<typeof KeysService>;
  readonly crypto: Client<typeof CryptoService>;
}

function replica(url: string, admin: ClientCredentials, service: ClientCredentials): Replica {
  return {
    keys: createClient(KeysService, createGrpcTransport({ baseUrl: url, nodeOptions: admin })),
    crypto: createClient(CryptoService, createGrpcTransport({ baseUrl: url, nodeOptions: service })),
  };
}

// ---------------------------------------------------------------------------
// Outcomes and timing

const describeOutcome = (o: Outcome<unknown>) => `${o.code === 0 ? "OK" : Code[o.code]} ${o.message}`;

/**
 * Polls `probe` (a call on replica B) until `done` holds, and returns how
 * long after `since` (the moment A answered) the first such answer arrived.
 * Gives up after a few times the bound, so a failure reports what B kept
 * answering instead of timing out the test.
 */
async function timeUntil<T>(
  since: number,
  probe: () => Promise<Outcome<T>>,
  done: (o: Outcome<T>) => boolean,
): Promise<{ ms: number; last: Outcome<T>; stale: number }> {
  let stale = 0;
  for (;;) {
    const last = await probe();
    const ms = performance.now() - since;
    if (done(last) || ms > 3 * INVALIDATION_BOUND_MS) {
      return { ms, last, stale };
    }
    stale++;
    await sleep(2);
  }
}

/** Per case: the delay, and how many stale answers B gave before the first fresh one. */
const measured: Record<string, { ms: number; staleAnswers: number }> = {};

function report(name: string, result: { ms: number; last: Outcome<unknown>; stale: number }): void {
  measured[name] = { ms: Math.round(result.ms * 10) / 10, staleAnswers: result.stale };
  expect(result.ms, `${name}: B still answered ${describeOutcome(result.last)} after ${Math.round(result.ms)} ms`).toBeLessThan(
    INVALIDATION_BOUND_MS,
  );
}

const keyId = (prefix: string) => `${prefix}-${randomBytes(4).toString("hex")}`;
const plaintext = new TextEncoder().encode("replicated");

// ---------------------------------------------------------------------------

describe("key cache invalidation across two server processes", () => {
  let a: ServerProcess;
  let b: ServerProcess;
  let onA: Replica;
  let onB: Replica;
  let sql: pg.Pool;

  beforeAll(async () => {
    const dataDir = await scratch.tempDir();
    const schema = scratch.freshSchema();
    const env = { KEYWARD_DATA_DIR: dataDir, DATABASE_URL: databaseUrl, KEYWARD_DB_SCHEMA: schema, KEYWARD_DB_POOL_MAX: "4" };
    // The first creates the dev PKI and root key in the shared data folder; the second uses them.
    a = await serveKeyward(env);
    b = await serveKeyward(env);
    const admin = await devCredentials(dataDir, "admin");
    const service = await devCredentials(dataDir, "service");
    onA = replica(a.url, admin, service);
    onB = replica(b.url, admin, service);
    sql = createPool({ connectionString: databaseUrl, schema, max: 2, applicationName: "keyward-test" });
  }, 60_000);

  afterAll(async () => {
    killServerProcesses();
    await sql?.end();
    await scratch.cleanup();
    // Shown with the test output, so a run records the delays it measured.
    console.info(`keys-replicas: invalidation delays on replica B (ms after A answered): ${JSON.stringify(measured)}`);
  });

  /** Creates a key through A, then uses it through both processes so both have it cached. */
  async function warmKey(prefix: string, purpose: KeyPurpose, algorithm: KeyAlgorithm): Promise<string> {
    const { key } = await onA.keys.createKey({ keyId: keyId(prefix), key: { purpose, algorithm } });
    const name = key!.name;
    for (const r of [onA, onB]) {
      if (purpose === KeyPurpose.ENCRYPT_DECRYPT) {
        expect((await r.crypto.encrypt({ name, plaintext })).keyVersion).toBe(`${name}/versions/1`);
      } else {
        expect((await r.crypto.sign({ name, input: { case: "message", value: plaintext } })).keyVersion).toBe(`${name}/versions/1`);
      }
    }
    return name;
  }

  it("replica B serves keys from its cache: a change written behind its back is seen only once notified", async () => {
    // Without this, a replica that never cached would pass every case below
    // trivially; this pins that those cases exercise invalidation.
    //
    // The cache conservatively drops a load during which any change
    // notification of its schema arrived: a few attempts, each on a fresh
    // key, keep that from being mistaken for "no cache".
    let name = "";
    const staleAnswers: string[] = [];
    for (let attempt = 0; attempt < 5 && !staleAnswers.includes("OK "); attempt++) {
      name = await warmKey("cached", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
      // Triggers announce every change to the keys table, hand edits too;
      // with them off for this session, the edit is silent.
      const silent = await sql.connect();
      try {
        await silent.query("SET session_replication_role = replica");
        await silent.query("UPDATE keys SET state = 'DISABLED' WHERE name = $1", [name]);
      } finally {
        await silent.query("RESET session_replication_role");
        silent.release();
      }
      await sleep(300);
      staleAnswers.push(describeOutcome(await outcome(onB.crypto.encrypt({ name, plaintext }))));
    }
    expect(staleAnswers).toContain("OK ");

    // The notice the triggers send: the schema, a space, the key's name.
    await sql.query("SELECT pg_notify($1, current_schema() || ' ' || $2)", [CHANGES_CHANNEL, name]);
    const since = performance.now();
    const seen = await timeUntil(since, () => outcome(onB.crypto.encrypt({ name, plaintext })), (o) => o.code === Code.FailedPrecondition);
    report("manual NOTIFY", seen);
    expect(seen.last.message).toContain("DISABLED");
  });

  it("a hand edit of a key's row reaches B's cache by itself, through the table's trigger", async () => {
    const name = await warmKey("hand-edit", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    expect(describeOutcome(await outcome(onB.crypto.encrypt({ name, plaintext })))).toBe("OK ");
    await sql.query("UPDATE keys SET state = 'DISABLED' WHERE name = $1", [name]);
    const since = performance.now();
    const seen = await timeUntil(since, () => outcome(onB.crypto.encrypt({ name, plaintext })), (o) => o.code === Code.FailedPrecondition);
    report("hand edit", seen);
    expect(seen.last.message).toContain("DISABLED");
  });

  it("(a) DisableKey through A: B refuses Encrypt with FAILED_PRECONDITION within 1 s", async () => {
    const name = await warmKey("disable", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    expect(describeOutcome(await outcome(onB.crypto.encrypt({ name, plaintext })))).toBe("OK ");

    await onA.keys.disableKey({ name });
    const since = performance.now();
    const refused = await timeUntil(since, () => outcome(onB.crypto.encrypt({ name, plaintext })), (o) => o.code !== 0);
    report("(a) DisableKey -> Encrypt refused", refused);
    expect(refused.last.code).toBe(Code.FailedPrecondition);
    expect(refused.last.message).toBe(`key ${name} is DISABLED`);
    // And it stays refused: no later answer from a stale entry.
    for (let i = 0; i < 5; i++) {
      expect((await outcome(onB.crypto.encrypt({ name, plaintext }))).code).toBe(Code.FailedPrecondition);
    }
  });

  it("(b) RotateKey through A: Encrypt on B reports the new key_version within 1 s", async () => {
    const name = await warmKey("rotate", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const { key } = await onA.keys.rotateKey({ name });
    const since = performance.now();
    expect(key?.primaryVersion).toBe(2);
    const rotated = await timeUntil(
      since,
      () => outcome(onB.crypto.encrypt({ name, plaintext })),
      (o) => o.value?.keyVersion === `${name}/versions/2`,
    );
    report("(b) RotateKey -> Encrypt on new version", rotated);
    // What B encrypted with the new version decrypts on A, and the other way round.
    const onNew = rotated.last.value!;
    expect((await onA.crypto.decrypt({ name, ciphertext: onNew.ciphertext })).keyVersion).toBe(`${name}/versions/2`);
  });

  it("(c) DisableKeyVersion of an old version through A: Decrypt of its ciphertext on B fails within 1 s", async () => {
    const name = await warmKey("version", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const old = await onB.crypto.encrypt({ name, plaintext });
    expect(old.keyVersion).toBe(`${name}/versions/1`);
    await onA.keys.rotateKey({ name });
    // B decrypts the old ciphertext (and so has version 1 open again) before the change.
    await expect
      .poll(async () => (await onB.crypto.encrypt({ name, plaintext })).keyVersion, { timeout: 3000, interval: 10 })
      .toBe(`${name}/versions/2`);
    const before = await onB.crypto.decrypt({ name, ciphertext: old.ciphertext });
    expect(Buffer.from(before.plaintext)).toEqual(Buffer.from(plaintext));

    await onA.keys.disableKeyVersion({ name: `${name}/versions/1` });
    const since = performance.now();
    const refused = await timeUntil(since, () => outcome(onB.crypto.decrypt({ name, ciphertext: old.ciphertext })), (o) => o.code !== 0);
    report("(c) DisableKeyVersion -> Decrypt refused", refused);
    expect(refused.last.code).toBe(Code.FailedPrecondition);
    expect(refused.last.message).toContain("version 1");
    // The primary version is untouched.
    const fresh = await onB.crypto.encrypt({ name, plaintext });
    expect((await onB.crypto.decrypt({ name, ciphertext: fresh.ciphertext })).keyVersion).toBe(`${name}/versions/2`);
  });

  it("(d) ScheduleKeyDeletion through A: B refuses Sign within 1 s", async () => {
    const name = await warmKey("deletion", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);
    const signature = await onB.crypto.sign({ name, input: { case: "message", value: plaintext } });

    const { key } = await onA.keys.scheduleKeyDeletion({ name });
    const since = performance.now();
    expect(key?.deletionTime).toBeDefined();
    const refused = await timeUntil(
      since,
      () => outcome(onB.crypto.sign({ name, input: { case: "message", value: plaintext } })),
      (o) => o.code !== 0,
    );
    report("(d) ScheduleKeyDeletion -> Sign refused", refused);
    expect(refused.last.code).toBe(Code.FailedPrecondition);
    expect(refused.last.message).toBe(`key ${name} is PENDING_DELETION`);
    // Verify, which an enabled key allows for old versions, is refused too.
    const verify = await outcome(
      onB.crypto.verify({ name: signature.keyVersion, input: { case: "message", value: plaintext }, signature: signature.signature }),
    );
    expect(verify.code).toBe(Code.FailedPrecondition);
  });

  it("both processes stayed up", () => {
    expect(a.child.exitCode, a.output()).toBeNull();
    expect(b.child.exitCode, b.output()).toBeNull();
  });
});
