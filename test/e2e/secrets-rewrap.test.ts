import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { GenerateSecretFormat, SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { parseCiphertext } from "../../src/crypto/envelope.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { eventually } from "../helpers/expect.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";
import { killServerProcesses, serveKeyward } from "../helpers/keyward-process.js";

/**
 * The rewrap job after a key rotation (README "Rewrap after rotation"):
 * every stored value is re-encrypted with the key's new primary version,
 * exactly once, while GetKey's secret_versions_to_rewrap counts down and
 * raising min_decryption_version is refused until it reaches 0. Rows
 * another transaction holds are skipped and picked up later (what a replica
 * that dies mid-batch leaves behind), rows already moved stay moved, two
 * server processes racing on one schema move every row once, and a key
 * whose values cannot be re-encrypted for now does not hold up other keys.
 *
 * The job runs every 200 ms here (KEYWARD_SECRET_REWRAP_INTERVAL_MS), and
 * in the child process every 100 ms.
 */

const REWRAPPED = "secret versions re-encrypted with their key's primary version";
const databaseUrl = inject("databaseUrl");

interface StoredRow {
  secret_name: string;
  version: string;
  key_name: string;
  key_version: number | null;
  ciphertext: Buffer | null;
}

/** Polls `read` every 50 ms until `done` holds; fails after `ms`. */
const until = <T>(what: string, read: () => Promise<T>, done: (value: T) => boolean, ms = 10_000): Promise<T> =>
  eventually(read, done, ms, what, 50);

/** How many secret versions the rewrap log lines in `lines` say were re-encrypted. */
function rewrappedIn(lines: readonly string[]): number {
  return lines
    .filter((line) => line.includes(REWRAPPED))
    .map((line) => (JSON.parse(line) as { secretVersions: number }).secretVersions)
    .reduce((a, b) => a + b, 0);
}

describe("rewrapping stored secret values after RotateKey", () => {
  let keyward: TestKeyward;
  let sql: pg.Pool;
  let keys: Client<typeof KeysService>;
  let admin: Client<typeof SecretsService>;
  let service: Client<typeof SecretsService>;

  beforeAll(async () => {
    keyward = await startTestKeyward({ KEYWARD_SECRET_REWRAP_INTERVAL_MS: "200" });
    sql = createPool({ connectionString: databaseUrl, schema: keyward.schema, max: 4, applicationName: "keyward-test" });
    keys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    admin = connectClient(SecretsService, keyward.url, await keyward.credentials("admin"));
    service = connectClient(SecretsService, keyward.url, await keyward.credentials("service"));
  });
  afterAll(async () => {
    killServerProcesses();
    await sql?.end();
    await keyward?.close();
  });

  const createKey = (keyId: string) =>
    keys.createKey({ keyId, key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
  const toRewrap = async (name: string) => Number((await keys.getKey({ name })).key!.secretVersionsToRewrap);
  const raiseMinDecryption = (name: string, to: number) =>
    keys.updateKey({ key: { name, minDecryptionVersion: to }, updateMask: { paths: ["min_decryption_version"] } });

  /** Creates `count` secrets on `keyName` with `versions` versions each; returns every value by version name. */
  async function populate(prefix: string, keyName: string, count: number, versions: number): Promise<Map<string, string>> {
    const values = new Map<string, string>();
    await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        const secretId = `s${String(i).padStart(2, "0")}`;
        await admin.createSecret({ parent: prefix, secretId, secret: { key: keyName } });
        const name = `${prefix}/${secretId}`;
        for (let v = 1; v <= versions; v++) {
          const value = `${name} v${v} ${randomBytes(10).toString("hex")}`;
          const added = await service.addSecretVersion({ parent: name, payload: { data: Buffer.from(value) } });
          expect(added.secretVersion?.version).toBe(BigInt(v));
          values.set(`${name}/versions/${v}`, value);
        }
      }),
    );
    return values;
  }

  const rowsOf = async (keyName: string) =>
    (
      await sql.query<StoredRow>(
        "SELECT secret_name, version, key_name, key_version, ciphertext FROM secret_versions WHERE key_name = $1 ORDER BY secret_name, version",
        [keyName],
      )
    ).rows;

  /** Every stored value's key_version column agrees with the version its ciphertext names, and is `primary`. */
  function expectAllOn(rows: readonly StoredRow[], keyName: string, primary: number): void {
    for (const row of rows.filter((r) => r.ciphertext !== null)) {
      const header = parseCiphertext(row.ciphertext!);
      const where = `${row.secret_name}/versions/${row.version}`;
      expect({ keyName: header.keyName, keyVersion: header.keyVersion, column: row.key_version }, where).toEqual({
        keyName,
        keyVersion: primary,
        column: primary,
      });
    }
  }

  async function expectReadsBack(values: Map<string, string>, client: Client<typeof SecretsService> = service): Promise<void> {
    const wrong: string[] = [];
    await Promise.all(
      [...values].map(async ([versionName, value]) => {
        const read = await client.accessSecretVersion({ name: versionName });
        if (Buffer.from(read.payload!.data).toString() !== value) wrong.push(versionName);
      }),
    );
    expect(wrong).toEqual([]);
  }

  it("moves every stored value to the new primary, skipping rows another transaction holds until it lets go, and only then lets min_decryption_version rise", async () => {
    const keyName = "keys/newsbot-secrets";
    await createKey("newsbot-secrets");
    const values = await populate("secrets/newsbot/prod", keyName, 30, 4);
    // A destroyed version has no value to move; a disabled one still does.
    await admin.destroySecretVersion({ name: "secrets/newsbot/prod/s00/versions/1" });
    values.delete("secrets/newsbot/prod/s00/versions/1");
    await admin.disableSecretVersion({ name: "secrets/newsbot/prod/s01/versions/2" });
    const stored = 30 * 4 - 1;

    const before = await rowsOf(keyName);
    expect(before).toHaveLength(120);
    expect(before.filter((r) => r.ciphertext === null).map((r) => [r.secret_name, r.key_version])).toEqual([["secrets/newsbot/prod/s00", null]]);
    expectAllOn(before, keyName, 1);
    expect(await toRewrap(keyName)).toBe(0);
    const logsBefore = keyward.logs.length;

    // Another holder (a replica mid-batch) has the values of s20..s29 locked.
    const holder = await sql.connect();
    let held: string[];
    try {
      await holder.query("BEGIN");
      const locked = await holder.query<{ secret_name: string; version: string }>(
        `SELECT secret_name, version FROM secret_versions
          WHERE key_name = $1 AND secret_name >= 'secrets/newsbot/prod/s20' AND ciphertext IS NOT NULL
          FOR UPDATE`,
        [keyName],
      );
      held = locked.rows.map((r) => `${r.secret_name}/versions/${r.version}`);
      expect(held).toHaveLength(40);

      await keys.rotateKey({ name: keyName });
      const right = await toRewrap(keyName);
      expect(right).toBeGreaterThanOrEqual(40);
      expect(right).toBeLessThanOrEqual(stored);

      const refused = await raiseMinDecryption(keyName, 2).then(
        () => undefined,
        (err: unknown) => ConnectError.from(err),
      );
      expect(refused?.code).toBe(Code.FailedPrecondition);
      const waiting = Number(/: (\d+) stored secret versions are still encrypted with older versions/.exec(refused!.rawMessage)?.[1]);
      expect(waiting).toBeGreaterThanOrEqual(40);
      expect(waiting).toBeLessThanOrEqual(stored);

      // Everything not held moves; what is held waits, and the job keeps
      // running without failing on it.
      await until("secret_versions_to_rewrap", () => toRewrap(keyName), (n) => n === 40);
      await sleep(600);
      expect(await toRewrap(keyName)).toBe(40);
      const partial = await rowsOf(keyName);
      const onOld = partial.filter((r) => r.key_version === 1).map((r) => `${r.secret_name}/versions/${r.version}`);
      expect(onOld.sort()).toEqual([...held].sort());
      expectAllOn(partial.filter((r) => r.key_version !== 1), keyName, 2);
      await expect(raiseMinDecryption(keyName, 2)).rejects.toMatchObject({
        code: Code.FailedPrecondition,
        rawMessage: expect.stringContaining(": 40 stored secret versions are still encrypted with older versions"),
      });
      // The holder goes away without writing anything, as a crashed replica's transaction would.
      await holder.query("ROLLBACK");

      await until("secret_versions_to_rewrap", () => toRewrap(keyName), (n) => n === 0);
      const after = await rowsOf(keyName);
      expect(after.filter((r) => r.ciphertext !== null && r.key_version === 1)).toEqual([]);
      expectAllOn(after, keyName, 2);
      // Rows moved in the first pass stayed as they were: moved once, never again.
      const firstPass = new Map(partial.filter((r) => r.key_version === 2).map((r) => [`${r.secret_name}/${r.version}`, r.ciphertext!]));
      expect(firstPass.size).toBe(stored - 40);
      for (const row of after) {
        const earlier = firstPass.get(`${row.secret_name}/${row.version}`);
        if (earlier) expect(row.ciphertext!.equals(earlier), `${row.secret_name}/${row.version}`).toBe(true);
      }
      expect(rewrappedIn(keyward.logs.slice(logsBefore))).toBe(stored);
    } finally {
      await holder.query("ROLLBACK").catch(() => {});
      holder.release();
    }

    expect((await raiseMinDecryption(keyName, 2)).key?.minDecryptionVersion).toBe(2);
    // Version 1 of the key may no longer decrypt: every value that reads
    // back now was re-encrypted, and reads back exactly.
    await admin.enableSecretVersion({ name: "secrets/newsbot/prod/s01/versions/2" });
    await expectReadsBack(values);
    await expect(service.accessSecretVersion({ name: "secrets/newsbot/prod/s00/versions/1" })).rejects.toMatchObject({
      code: Code.FailedPrecondition,
    });
  });

  it("with two server processes racing on one schema, moves each value exactly once", async () => {
    const keyName = "keys/race";
    const starting = serveKeyward({
      KEYWARD_DATA_DIR: keyward.dataDir,
      DATABASE_URL: databaseUrl,
      KEYWARD_DB_SCHEMA: keyward.schema,
      KEYWARD_DB_POOL_MAX: "4",
      KEYWARD_SECRET_REWRAP_INTERVAL_MS: "100",
    });
    await createKey("race");
    // More than one batch (200 values per transaction), so both have work.
    const values = await populate("secrets/race/prod", keyName, 25, 10);
    const other = await starting;
    try {
      const otherKeys = connectClient(KeysService, other.url, await keyward.credentials("admin"));
      const otherService = connectClient(SecretsService, other.url, await keyward.credentials("service"));
      const logsBefore = keyward.logs.length;
      const otherBefore = other.lines().length;

      await otherKeys.rotateKey({ name: keyName });
      await until("secret_versions_to_rewrap", () => toRewrap(keyName), (n) => n === 0);
      // Both jobs keep running a few more rounds: nothing more to move.
      await sleep(500);

      const rows = await rowsOf(keyName);
      expect(rows).toHaveLength(250);
      expectAllOn(rows, keyName, 2);
      const here = rewrappedIn(keyward.logs.slice(logsBefore));
      const there = rewrappedIn(other.lines().slice(otherBefore));
      expect({ total: here + there }, `in-process ${here}, child ${there}`).toEqual({ total: 250 });

      await raiseMinDecryption(keyName, 2);
      const entries = [...values];
      await expectReadsBack(new Map(entries.filter((_, i) => i % 2 === 0)), service);
      await expectReadsBack(new Map(entries.filter((_, i) => i % 2 === 1)), otherService);
    } finally {
      other.child.kill("SIGTERM");
      await other.exited;
    }
  });

  it("takes writes racing right after a rotation, more than the pool has connections, without starving the pool", async () => {
    // The rotation drops the key from the cache, so each write's encryption
    // has to load it again through the pool (4 connections here). Done while
    // the write holds its row lock and a connection, four such writers
    // would wait for a fifth connection for ever.
    await createKey("burst");
    const values = await populate("secrets/burst/prod", "keys/burst", 12, 1);
    await keys.rotateKey({ name: "keys/burst" });
    const names = [...values.keys()].map((v) => v.slice(0, v.lastIndexOf("/versions/")));
    const hot = names[0]!;
    const written = new Map<string, string>();
    const rolledBack = new Map<string, string>();
    const work = Promise.all([
      ...names.map(async (name) => {
        const value = `${name} after rotation ${randomBytes(6).toString("hex")}`;
        const { secretVersion } = await service.addSecretVersion({ parent: name, payload: { data: Buffer.from(value) } });
        written.set(secretVersion!.name, value);
      }),
      ...names.slice(0, 6).map(async (name) => {
        const { secretVersion, payload } = await service.generateSecret({ parent: name, spec: { length: 16, format: GenerateSecretFormat.HEX } });
        written.set(secretVersion!.name, Buffer.from(payload!.data).toString());
      }),
      ...names.slice(6).map(async (name) => {
        const { secretVersion } = await admin.rollbackSecret({ name, version: 1n });
        rolledBack.set(secretVersion!.name, values.get(`${name}/versions/1`)!);
      }),
      // Writers of one secret, without check-and-set: every one lands, each on its own version.
      ...Array.from({ length: 8 }, async (_, i) => {
        const value = `${hot} writer ${i} ${randomBytes(6).toString("hex")}`;
        const { secretVersion } = await service.addSecretVersion({ parent: hot, payload: { data: Buffer.from(value) } });
        written.set(secretVersion!.name, value);
      }),
    ]);
    const outcome = await Promise.race([work.then(() => "done"), sleep(15_000).then(() => "stuck")]);
    expect(outcome).toBe("done");

    // 1 + 1 added + 1 generated + 8 concurrent writers.
    expect((await admin.getSecret({ name: hot })).secret?.currentVersion).toBe(11n);
    // Each rollback's version holds version 1's value (which of it and the
    // concurrent add came last is the race's business, not the test's).
    expect(rolledBack.size).toBe(6);
    await expectReadsBack(rolledBack);
    expect(written.size).toBe(12 + 6 + 8);
    await expectReadsBack(written);

    // Check-and-set under the same race: exactly one writer wins.
    const current = (await admin.getSecret({ name: hot })).secret!.currentVersion;
    const raced = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) =>
        service.addSecretVersion({ parent: hot, payload: { data: Buffer.from(`cas ${i}`) }, expectedCurrentVersion: current }),
      ),
    );
    expect(raced.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    for (const r of raced.filter((r): r is PromiseRejectedResult => r.status === "rejected")) {
      expect(ConnectError.from(r.reason).code).toBe(Code.Aborted);
    }
  });

  it("answers UpdateKey calls raising min_decryption_version at once, more than the pool has connections", async () => {
    // Each such call counts the stored values still below the new minimum;
    // counted while the key's row is locked, every call would hold one
    // connection and wait for another.
    const names = Array.from({ length: 8 }, (_, i) => `keys/raise-${i}`);
    for (const name of names) {
      await createKey(name.slice("keys/".length));
      await keys.rotateKey({ name });
    }
    const work = Promise.all(names.map((name) => raiseMinDecryption(name, 2)));
    const outcome = await Promise.race([work.then(() => "done"), sleep(10_000).then(() => "stuck")]);
    expect(outcome).toBe("done");
    for (const name of names) {
      expect((await keys.getKey({ name })).key?.minDecryptionVersion).toBe(2);
    }
  });

  it("re-encrypts all it can: a value it cannot open holds up neither its key's other values nor another key", async () => {
    await createKey("a-stuck");
    await createKey("b-moving");
    const stuck = await populate("secrets/stuck/prod", "keys/a-stuck", 3, 2);
    const moving = await populate("secrets/moving/prod", "keys/b-moving", 3, 2);

    // One stored value of a-stuck altered by hand: it can never be decrypted again.
    const bad = (await rowsOf("keys/a-stuck"))[0]!;
    const badName = `${bad.secret_name}/versions/${bad.version}`;
    await sql.query(
      `UPDATE secret_versions SET ciphertext = set_byte(ciphertext, length(ciphertext) - 1, get_byte(ciphertext, length(ciphertext) - 1) # 1)
        WHERE secret_name = $1 AND version = $2`,
      [bad.secret_name, bad.version],
    );
    stuck.delete(badName);
    const failedBefore = keyward.logs.filter((l) => l.includes("secret rewrap failed")).length;
    await keys.rotateKey({ name: "keys/a-stuck" });
    await keys.rotateKey({ name: "keys/b-moving" });

    await until("b-moving's secret_versions_to_rewrap", () => toRewrap("keys/b-moving"), (n) => n === 0, 5_000);
    await until("a-stuck's secret_versions_to_rewrap", () => toRewrap("keys/a-stuck"), (n) => n === 1, 5_000);
    const failures = await until(
      "a failed rewrap run",
      async () => keyward.logs.filter((l) => l.includes("secret rewrap failed")),
      (lines) => lines.length > failedBefore,
      5_000,
    );
    expect(failures.at(-1)).toContain(`${badName}: the stored value of ${badName} does not decrypt`);
    expectAllOn((await rowsOf("keys/b-moving")), "keys/b-moving", 2);
    expectAllOn((await rowsOf("keys/a-stuck")).filter((r) => `${r.secret_name}/versions/${r.version}` !== badName), "keys/a-stuck", 2);
    await expectReadsBack(moving);
    await expectReadsBack(stuck);
    // The altered value stays where it was, refused loudly, never re-encrypted into something readable.
    await expect(service.accessSecretVersion({ name: badName })).rejects.toMatchObject({ code: Code.DataLoss });
    // And it keeps min_decryption_version from rising until someone destroys it.
    await expect(keys.updateKey({ key: { name: "keys/a-stuck", minDecryptionVersion: 2 }, updateMask: { paths: ["min_decryption_version"] } })).rejects.toMatchObject({
      code: Code.FailedPrecondition,
    });
    await admin.destroySecretVersion({ name: badName });
    await keys.updateKey({ key: { name: "keys/a-stuck", minDecryptionVersion: 2 }, updateMask: { paths: ["min_decryption_version"] } });
  });
});
