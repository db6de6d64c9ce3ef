import { randomBytes, sign } from "node:crypto";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { checkpointPayload } from "../../src/domain/audit/checkpoint.js";
import type { AuditEvent, AuditRecord } from "../../src/domain/audit/event.js";
import { createPgAuditRepository } from "../../src/storage/pg/audit-repository.js";
import { startEmbeddedPostgres } from "../../src/storage/pg/embedded.js";
import { migrate } from "../../src/storage/pg/migrate.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { exportAuditLogToFile } from "../../src/tools/audit-export.js";
import { createTestDatabase, uniqueSchemaName, type TestDatabase } from "../helpers/database.js";
import { keywardCli } from "../helpers/keyward-process.js";
import type {} from "../setup/global-database.js";
import { newCheckpointKey } from "../fixtures/audit.js";

const record = (i: number): AuditRecord => ({
  time: new Date(Date.UTC(2026, 10, 24, 7, 30, 0, 0) + i * 1_001),
  identity: i % 3 === 0 ? "spiffe://keyward.local/admin" : "spiffe://keyward.local/service",
  roles: i % 3 === 0 ? ["ADMIN"] : ["SERVICE"],
  method: "/keyward.v1.CryptoService/Encrypt",
  resources: [`keys/k${i % 4}`],
  keyVersion: `keys/k${i % 4}/versions/1`,
  resultCode: i % 7 === 0 ? 7 : 0,
  resultMessage: i % 7 === 0 ? "permission denied" : "",
  requestId: `req-${i}`,
  peerAddress: `127.0.0.1:${40_000 + i}`,
  policyDigest: "cd".repeat(32),
});

const KEY = newCheckpointKey();
const OTHER_KEY = newCheckpointKey();

/** 50 events appended in batches, the signing key, and a checkpoint at 40. */
async function populate(pool: pg.Pool): Promise<AuditEvent[]> {
  const repo = createPgAuditRepository(pool);
  const events: AuditEvent[] = [];
  for (let i = 1; i <= 50; i += 10) {
    events.push(...(await repo.append(Array.from({ length: 10 }, (_, j) => record(i + j)))));
  }
  await repo.saveSigningKey({ keyId: KEY.keyId, algorithm: "ED25519", publicKeyPem: KEY.pem, wrappedPrivateKey: randomBytes(80) });
  const time = new Date(Date.UTC(2026, 10, 24, 8, 0, 0, 0));
  const hash = events[39]!.hash;
  await repo.saveCheckpoint({ sequence: 40n, hash, time, keyId: KEY.keyId, signature: sign(null, checkpointPayload(40n, hash, time), KEY.privateKey) });
  return events;
}

const databases: TestDatabase[] = [];
let dir: string;
let keyFile: string;
let otherKeyFile: string;

async function populatedDatabase(): Promise<{ db: TestDatabase; env: Record<string, string> }> {
  const db = await createTestDatabase();
  databases.push(db);
  await populate(db.pool);
  const dataDir = await mkdtemp(join(dir, "data-"));
  return { db, env: { DATABASE_URL: inject("databaseUrl"), KEYWARD_DB_SCHEMA: db.schema, KEYWARD_DATA_DIR: dataDir } };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "keyward-audit-cli-"));
  // Embedded PostgreSQL runs as the postgres user when the tests run as root.
  await chmod(dir, 0o755);
  keyFile = join(dir, "audit-key.pem");
  otherKeyFile = join(dir, "other-key.pem");
  await writeFile(keyFile, KEY.pem);
  await writeFile(otherKeyFile, OTHER_KEY.pem);
});

afterAll(async () => {
  await Promise.all(databases.map((db) => db.drop()));
  if (dir) {
    await rm(dir, { recursive: true, force: true });
  }
});

const short = (keyId: string) => `${keyId.slice(0, 16)}…`;

describe("keyward audit verify and export, against the database", () => {
  let env: Record<string, string>;
  beforeAll(async () => {
    ({ env } = await populatedDatabase());
  });

  it("verify: exit 0 with a one-line summary, or with --json the result object on stdout", async () => {
    const [text, json] = await Promise.all([
      keywardCli(["audit", "verify", "--public-key", keyFile], env),
      keywardCli(["audit", "verify", "--public-key", keyFile, "--json"], env),
    ]);
    expect(text).toMatchObject({ code: 0, stderr: "" });
    expect(text.stdout).toBe(
      "intact: 50 events verified (sequences 1..50) from the database; 1 signed checkpoint verified, the last at sequence 40; " +
        `events after sequence 40 are covered by no signed checkpoint; public key pinned (key id ${short(KEY.keyId)})\n`,
    );
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({
      intact: true,
      verified_count: 50,
      first_broken_sequence: null,
      reason: null,
      checkpoints_verified: 1,
      failures: [],
      key_pinned: true,
      key_ids: [KEY.keyId],
      source: "database",
      last_verified_sequence: "50",
    });
    expect(json.stderr).toBe(text.stdout);
  });

  it("export: the same JSON lines to stdout and to --out; the file verifies with no database configured", async () => {
    const out = join(dir, "export.jsonl");
    const [toStdout, toFile] = await Promise.all([keywardCli(["audit", "export"], env), keywardCli(["audit", "export", "--out", out], env)]);
    expect(toStdout.code).toBe(0);
    expect(toFile).toMatchObject({ code: 0, stdout: "" });
    expect(toFile.stderr).toBe(`exported 50 events (sequences 1..50), 1 checkpoint and 1 signing key to ${out}\n`);
    const text = await readFile(out, "utf8");
    expect(toStdout.stdout).toBe(text);
    const lines = text.trimEnd().split("\n");
    expect(lines).toHaveLength(52);
    expect(JSON.parse(lines[0]!)).toMatchObject({ sequence: "1", time: "2026-11-24T07:30:01.001Z", previous_hash: "00".repeat(32) });
    expect(JSON.parse(lines[50]!)).toMatchObject({ checkpoint: { sequence: "40", key_id: KEY.keyId } });
    expect(JSON.parse(lines[51]!)).toEqual({ signing_key: { key_id: KEY.keyId, algorithm: "ED25519", public_key_pem: KEY.pem } });

    // No DATABASE_URL and an empty data folder: reading the database would fail (exit 2).
    const nowhere = await mkdtemp(join(dir, "nowhere-"));
    const offline = await keywardCli(["audit", "verify", "--file", out, "--public-key", keyFile, "--json"], { KEYWARD_DATA_DIR: nowhere });
    expect(offline.code).toBe(0);
    expect(JSON.parse(offline.stdout)).toMatchObject({ intact: true, verified_count: 50, checkpoints_verified: 1, source: `file ${out}` });
    expect(await readdir(nowhere)).toEqual([]);
  });

  it("usage errors exit 2 with the problem on stderr", async () => {
    // The rest of the usage errors are covered in process (test/integration/audit-offline.test.ts).
    const empty = await mkdtemp(join(dir, "empty-"));
    const runs = await Promise.all([
      keywardCli(["audit", "verify", "--fromm", "5"], env),
      keywardCli(["audit", "verify"], { ...env, KEYWARD_DB_SCHEMA: uniqueSchemaName() }),
      // Neither DATABASE_URL nor an embedded cluster: none is created (a new one would verify as an empty log).
      keywardCli(["audit", "verify"], { KEYWARD_DATA_DIR: empty }),
    ]);
    expect(runs.map((run) => [run.code, run.stdout, run.stderr.split("\n")[0]])).toEqual([
      [2, "", expect.stringMatching(/^keyward: Unknown option '--fromm'/)],
      [2, "", "keyward: no audit tables in this database schema (wrong KEYWARD_DB_SCHEMA, or not migrated?)"],
      [2, "", `keyward: no database: DATABASE_URL is not set and there is no embedded PostgreSQL in ${join(empty, "postgres")} (KEYWARD_DATA_DIR)`],
    ]);
    expect(await readdir(empty)).toEqual([]);
  });
});

describe("keyward audit verify on a tampered log", () => {
  it("exit 1 with the first broken sequence, from the database and from an export edited the same way; exit 1 for a key that did not sign", async () => {
    const { db, env } = await populatedDatabase();
    const out = join(dir, "before-tampering.jsonl");
    await exportAuditLogToFile(db.pool, out);

    const client = await db.pool.connect();
    try {
      await client.query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only");
      await client.query("UPDATE audit_events SET result_code = 0, result_message = '' WHERE sequence = 21");
    } finally {
      client.release();
    }
    const lines = (await readFile(out, "utf8")).trimEnd().split("\n");
    const edited = join(dir, "edited.jsonl");
    await writeFile(
      edited,
      `${lines.map((line, i) => (i === 20 ? line.replace('"result_code":7', '"result_code":0').replace('"permission denied"', '""') : line)).join("\n")}\n`,
    );

    const [fromDatabase, fromFile, otherKey] = await Promise.all([
      keywardCli(["audit", "verify", "--public-key", keyFile, "--json"], env),
      keywardCli(["audit", "verify", "--file", edited, "--public-key", keyFile, "--json"], {}),
      // The untampered export, but checked against a key that did not sign it.
      keywardCli(["audit", "verify", "--file", out, "--public-key", otherKeyFile], {}),
    ]);
    expect(otherKey.code).toBe(1);
    expect(otherKey.stdout).toMatch(
      new RegExp(`^BROKEN: checkpoint at sequence 40 is signed by key ${short(KEY.keyId)}, not by the pinned key ${short(OTHER_KEY.keyId)}; `),
    );
    for (const run of [fromDatabase, fromFile]) {
      expect(run.code).toBe(1);
      expect(JSON.parse(run.stdout)).toMatchObject({
        intact: false,
        verified_count: 20,
        first_broken_sequence: "21",
        reason: "hash mismatch",
        checkpoints_verified: 0,
      });
      expect(run.stderr).toMatch(/^BROKEN at sequence 21: hash mismatch; 20 events verified before it \(sequences 1\.\.20\)/);
    }
  });
});

describe("keyward audit with the embedded database (no DATABASE_URL)", () => {
  it("refuses while the cluster runs (it would stop it), verifies once it is stopped", async () => {
    const dataDir = join(dir, "embedded");
    await mkdir(dataDir);
    const env = { KEYWARD_DATA_DIR: dataDir };
    const embedded = await startEmbeddedPostgres({ dataDir: join(dataDir, "postgres"), log: () => {} });
    try {
      await migrate({ connectionString: embedded.connectionString });
      const pool = createPool({ connectionString: embedded.connectionString, max: 2 });
      try {
        await populate(pool);
        const busy = await keywardCli(["audit", "verify"], env);
        expect(busy.code).toBe(2);
        expect(busy.stderr).toMatch(/^keyward: the embedded PostgreSQL in .* is running \(pid \d+\)/);
        // Still up: the refusal left the running cluster alone.
        expect((await pool.query("SELECT count(*)::int AS n FROM audit_events")).rows[0]).toEqual({ n: 50 });
      } finally {
        await pool.end();
      }
    } finally {
      await embedded.stop();
    }

    const verified = await keywardCli(["audit", "verify", "--public-key", keyFile, "--json"], env);
    expect(verified.code).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({ intact: true, verified_count: 50, checkpoints_verified: 1 });
    // The command stopped the cluster it started.
    expect(await readdir(join(dataDir, "postgres"))).not.toContain("postmaster.pid");
  });
});
