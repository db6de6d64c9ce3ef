import { createHash, createPublicKey, generateKeyPairSync, randomBytes, sign, verify } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashEvent } from "../../src/domain/audit/chain.js";
import { checkpointPayload } from "../../src/domain/audit/checkpoint.js";
import type { AuditEvent, AuditRecord } from "../../src/domain/audit/event.js";
import { loadConfig } from "../../src/config.js";
import { createPgAuditRepository } from "../../src/storage/pg/audit-repository.js";
import { auditCommand } from "../../src/tools/audit-command.js";
import { formatEventLine } from "../../src/tools/audit-export-format.js";
import { exportAuditLog, exportAuditLogToFile } from "../../src/tools/audit-export.js";
import {
  summarizeVerification,
  verificationJson,
  verifyAuditDatabase,
  verifyAuditFile,
  type AuditVerification,
} from "../../src/tools/audit-verify.js";
import { createTestDatabase, type TestDatabase } from "../helpers/database.js";
import { newCheckpointKey, type CheckpointKey } from "../fixtures/audit.js";

const EVENTS = 50;
const CHECKPOINTS = [20n, 40n] as const;
/** Small pages, so that every read crosses page boundaries. */
const PAGE = 7;
const BASE_TIME = Date.UTC(2026, 10, 24, 7, 30, 0, 0);

/** Event i (1-based) of the fixture chain: varied, deterministic. */
function record(i: number): AuditRecord {
  const denied = i % 7 === 0;
  return {
    time: new Date(BASE_TIME + i * 1_001),
    identity: i % 3 === 0 ? "spiffe://keyward.local/admin" : "spiffe://keyward.local/service",
    roles: denied ? [] : i % 3 === 0 ? ["ADMIN"] : ["SERVICE"],
    method: i % 2 === 0 ? "/keyward.v1.CryptoService/Encrypt" : "/keyward.v1.KeysService/GetKey",
    resources: i % 5 === 0 ? ["keys/a", "keys/b"] : [`keys/k${i % 4}`],
    keyVersion: i % 2 === 0 && !denied ? `keys/k${i % 4}/versions/1` : "",
    resultCode: denied ? 7 : 0,
    resultMessage: denied ? "permission denied: é ✓" : "",
    requestId: `req-${i}`,
    peerAddress: `127.0.0.1:${40_000 + i}`,
    policyDigest: "ab".repeat(32),
  };
}

const checkpointTime = (sequence: bigint) => new Date(BASE_TIME + Number(sequence) * 1_001 + 500);
const signCheckpoint = (key: CheckpointKey, sequence: bigint, hash: Buffer) =>
  sign(null, checkpointPayload(sequence, hash, checkpointTime(sequence)), key.privateKey);

const KEY = newCheckpointKey();
const OTHER_KEY = newCheckpointKey();

/** Re-hashes events from index `from` on, as an attacker who knows the (public) algorithm would. */
function rechain(events: AuditEvent[], from: number): AuditEvent[] {
  const out = events.slice(0, from);
  for (const event of events.slice(from)) {
    const previousHash = out.at(-1)?.hash ?? Buffer.alloc(32);
    out.push({ ...event, previousHash, hash: hashEvent(previousHash, event.sequence, event) });
  }
  return out;
}

const databases: TestDatabase[] = [];
let dir: string;

/** A fresh schema holding the fixture chain, the signing key and checkpoints at 20 and 40: identical every time. */
async function populated(): Promise<{ db: TestDatabase; events: AuditEvent[] }> {
  const db = await createTestDatabase();
  databases.push(db);
  const repo = createPgAuditRepository(db.pool);
  const events: AuditEvent[] = [];
  let i = 1;
  for (const size of [1, 7, 13, 29]) {
    events.push(...(await repo.append(Array.from({ length: size }, () => record(i++)))));
  }
  expect(events).toHaveLength(EVENTS);
  await repo.saveSigningKey({ keyId: KEY.keyId, algorithm: "ED25519", publicKeyPem: KEY.pem, wrappedPrivateKey: randomBytes(80) });
  for (const sequence of CHECKPOINTS) {
    const hash = events[Number(sequence) - 1]!.hash;
    await repo.saveCheckpoint({ sequence, hash, time: checkpointTime(sequence), keyId: KEY.keyId, signature: signCheckpoint(KEY, sequence, hash) });
  }
  return { db, events };
}

/** Runs SQL as an attacker with rights on the tables: the append-only triggers are switched off around it. */
const APPEND_ONLY_TABLES = ["audit_events", "audit_checkpoints", "audit_signing_keys"];

async function tamper(db: TestDatabase, statements: Array<[string, unknown[]?]>): Promise<void> {
  const client = await db.pool.connect();
  try {
    await client.query("BEGIN");
    for (const table of APPEND_ONLY_TABLES) {
      await client.query(`ALTER TABLE ${table} DISABLE TRIGGER ${table}_append_only`);
    }
    for (const [text, values] of statements) {
      await client.query(text, values);
    }
    for (const table of APPEND_ONLY_TABLES) {
      await client.query(`ALTER TABLE ${table} ENABLE TRIGGER ${table}_append_only`);
    }
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }
}

async function exportText(db: TestDatabase, options: Parameters<typeof exportAuditLog>[2] = {}): Promise<string> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on("data", (chunk: Buffer) => chunks.push(chunk));
  await exportAuditLog(db.pool, out, { pageSize: PAGE, ...options });
  out.end();
  return Buffer.concat(chunks).toString("utf8");
}

let fileCount = 0;
async function fileWith(lines: readonly string[]): Promise<string> {
  const path = join(dir, `edited-${++fileCount}.jsonl`);
  await writeFile(path, lines.map((line) => `${line}\n`).join(""));
  return path;
}

/** The fields a tamper case asserts, so a mismatch shows them all at once. */
const verdict = (result: AuditVerification) => ({
  intact: result.intact,
  firstBrokenSequence: result.firstBrokenSequence,
  reason: result.reason,
  verifiedCount: result.verifiedCount,
});

const swapSequences = (events: AuditEvent[], a: number, b: number) =>
  events
    .map((event) =>
      event.sequence === BigInt(a) ? { ...event, sequence: BigInt(b) } : event.sequence === BigInt(b) ? { ...event, sequence: BigInt(a) } : event,
    )
    .sort((x, y) => (x.sequence < y.sequence ? -1 : 1));

let intact: { db: TestDatabase; events: AuditEvent[] };
/** The export of the untampered chain, split into lines (without "\n"). */
let exported: string[];
let exportedFile: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "keyward-audit-offline-"));
  intact = await populated();
  exportedFile = join(dir, "audit.jsonl");
  const summary = await exportAuditLogToFile(intact.db.pool, exportedFile, { pageSize: PAGE });
  expect(summary).toEqual({ events: 50n, firstSequence: 1n, lastSequence: 50n, checkpoints: 2, signingKeys: 1 });
  exported = (await readFile(exportedFile, "utf8")).split("\n");
  expect(exported.pop()).toBe("");
});

afterAll(async () => {
  await Promise.all(databases.map((db) => db.drop()));
  if (dir) {
    await rm(dir, { recursive: true, force: true });
  }
});

describe("audit export", () => {
  it("writes the documented format: events, then checkpoints, then the public signing key", async () => {
    expect(exported).toHaveLength(EVENTS + CHECKPOINTS.length + 1);
    const first = intact.events[0]!;
    expect(JSON.parse(exported[0]!)).toEqual({
      sequence: "1",
      time: "2026-11-24T07:30:01.001Z",
      identity: "spiffe://keyward.local/service",
      roles: ["SERVICE"],
      method: "/keyward.v1.KeysService/GetKey",
      resources: ["keys/k1"],
      key_version: "",
      result_code: 0,
      result_message: "",
      request_id: "req-1",
      peer_address: "127.0.0.1:40001",
      policy_digest: "ab".repeat(32),
      previous_hash: "00".repeat(32),
      hash: first.hash.toString("hex"),
    });
    expect(JSON.parse(exported[6]!)).toMatchObject({ sequence: "7", roles: [], result_code: 7, result_message: "permission denied: é ✓" });
    expect(exported.slice(0, EVENTS).map((line) => JSON.parse(line).sequence)).toEqual(intact.events.map((e) => e.sequence.toString()));
    expect(JSON.parse(exported[EVENTS]!)).toEqual({
      checkpoint: {
        sequence: "20",
        hash: intact.events[19]!.hash.toString("hex"),
        time: "2026-11-24T07:30:20.520Z",
        key_id: KEY.keyId,
        signature: signCheckpoint(KEY, 20n, intact.events[19]!.hash).toString("hex"),
      },
    });
    expect(JSON.parse(exported[EVENTS + 1]!).checkpoint.sequence).toBe("40");
    // The private half, even wrapped, never leaves the database.
    expect(JSON.parse(exported.at(-1)!)).toEqual({ signing_key: { key_id: KEY.keyId, algorithm: "ED25519", public_key_pem: KEY.pem } });
    expect((await stat(exportedFile)).mode & 0o777).toBe(0o600);
    expect((await readdir(dir)).filter((name) => name.includes("partial"))).toEqual([]);
  });

  it("is the same whatever the page size, and the same as what the repository stored", async () => {
    const text = await exportText(intact.db, { pageSize: 1000 });
    expect(text).toBe(`${exported.join("\n")}\n`);
    expect(text.split("\n").slice(0, EVENTS)).toEqual(intact.events.map((event) => formatEventLine(event).trimEnd()));
  });

  it("lets an auditor verify it from the documentation alone (independent re-implementation)", () => {
    // Written from the JSDoc of audit-export-format.ts and chain.ts, with no Keyward code.
    const field = (value: string) => {
      const bytes = Buffer.from(value, "utf8");
      const length = Buffer.alloc(4);
      length.writeUInt32BE(bytes.length);
      return [length, bytes];
    };
    const list = (values: string[]) => {
      const count = Buffer.alloc(4);
      count.writeUInt32BE(values.length);
      return [count, ...values.flatMap(field)];
    };
    let previous = "00".repeat(32);
    const hashes = new Map<string, string>();
    for (const line of exported.slice(0, EVENTS)) {
      const e = JSON.parse(line);
      expect(e.previous_hash).toBe(previous);
      const encoding = Buffer.concat([
        ...field("keyward-audit-event-v1"),
        ...field(e.sequence),
        ...field(String(Date.parse(e.time))),
        ...field(e.identity),
        ...list(e.roles),
        ...field(e.method),
        ...list(e.resources),
        ...field(e.key_version),
        ...field(String(e.result_code)),
        ...field(e.result_message),
        ...field(e.request_id),
        ...field(e.peer_address),
        ...field(e.policy_digest),
      ]);
      const hash = createHash("sha256").update(Buffer.from(previous, "hex")).update(encoding).digest("hex");
      expect(e.hash).toBe(hash);
      hashes.set(e.sequence, hash);
      previous = hash;
    }
    const trusted = createPublicKey(KEY.pem);
    const keyId = createHash("sha256").update(trusted.export({ type: "spki", format: "der" })).digest("hex");
    for (const line of exported.slice(EVENTS, EVENTS + 2)) {
      const { checkpoint: c } = JSON.parse(line);
      expect(c.key_id).toBe(keyId);
      expect(c.hash).toBe(hashes.get(c.sequence));
      const payload = Buffer.from(`keyward-audit-checkpoint-v1\n${c.sequence}\n${c.hash}\n${Date.parse(c.time)}\n`, "utf8");
      expect(verify(null, payload, trusted, Buffer.from(c.signature, "hex"))).toBe(true);
    }
  });

  it("exports a range with the checkpoint before it, and verifies only when told the range", async () => {
    const path = join(dir, "range.jsonl");
    const summary = await exportAuditLogToFile(intact.db.pool, path, { from: 21n, to: 45n, pageSize: PAGE });
    expect(summary).toEqual({ events: 25n, firstSequence: 21n, lastSequence: 45n, checkpoints: 2, signingKeys: 1 });
    const lines = (await readFile(path, "utf8")).trimEnd().split("\n");
    expect(lines.slice(0, 25)).toEqual(exported.slice(20, 45));
    expect(lines.slice(25)).toEqual(exported.slice(EVENTS));

    const ranged = await verifyAuditFile(path, { from: 21n, to: 45n, publicKeyPem: KEY.pem });
    expect(ranged).toMatchObject({ intact: true, verifiedCount: 25n, checkpointsVerified: 2, lastCheckpointSequence: 40n });
    const database = await verifyAuditDatabase(intact.db.pool, { from: 21n, to: 45n, publicKeyPem: KEY.pem, pageSize: PAGE });
    expect(database).toMatchObject({ intact: true, verifiedCount: 25n, checkpointsVerified: 2, lastCheckpointSequence: 40n });
    // Read as a whole log, the file lacks its beginning.
    expect(verdict(await verifyAuditFile(path, { publicKeyPem: KEY.pem }))).toEqual({
      intact: false,
      firstBrokenSequence: 1n,
      reason: "missing sequence 1",
      verifiedCount: 0n,
    });
  });

  it("holds a range's first link to the checkpoint before it", async () => {
    // The range re-linked to another history and re-chained: consistent in
    // itself, but the checkpoint at 20 vouches for the link it replaced.
    const range = intact.events.slice(20, 45);
    const first = { ...range[0]!, previousHash: randomBytes(32) };
    const relinked = rechain([{ ...first, hash: hashEvent(first.previousHash, first.sequence, first) }, ...range.slice(1)], 1);
    const path = await fileWith([...relinked.map((e) => formatEventLine(e).trimEnd()), ...exported.slice(EVENTS)]);
    expect(verdict(await verifyAuditFile(path, { from: 21n, to: 45n, publicKeyPem: KEY.pem }))).toEqual({
      intact: false,
      firstBrokenSequence: 21n,
      reason: "previous_hash differs from the signed checkpoint at sequence 20",
      verifiedCount: 0n,
    });
  });
});

describe("audit verify on the intact log", () => {
  it.each([
    ["database", () => verifyAuditDatabase(intact.db.pool, { publicKeyPem: KEY.pem, pageSize: PAGE })],
    ["export file", () => verifyAuditFile(exportedFile, { publicKeyPem: KEY.pem })],
  ])("%s: intact, every event and both checkpoints verified with the pinned key", async (_, run) => {
    const result = await run();
    expect(result).toMatchObject({
      intact: true,
      verifiedCount: 50n,
      lastVerifiedSequence: 50n,
      firstBrokenSequence: undefined,
      reason: undefined,
      checkpointsVerified: 2,
      lastCheckpointSequence: 40n,
      failures: [],
      keyPinned: true,
      keyIds: [KEY.keyId],
    });
    expect(verificationJson(result)).toMatchObject({
      intact: true,
      verified_count: 50,
      first_broken_sequence: null,
      reason: null,
      checkpoints_verified: 2,
    });
    const summary = summarizeVerification(result);
    expect(summary).toMatch(/^intact: 50 events verified \(sequences 1\.\.50\) from the (database|file \S+); 2 signed checkpoints verified, the last at sequence 40; /);
    expect(summary).toContain("events after sequence 40 are covered by no signed checkpoint");
    expect(summary).toContain(`public key pinned (key id ${KEY.keyId.slice(0, 16)}…)`);
    expect(summary).not.toContain("\n");
  });

  it.each([
    ["database", () => verifyAuditDatabase(intact.db.pool, { pageSize: PAGE })],
    ["export file", () => verifyAuditFile(exportedFile)],
  ])("%s: without --public-key the key in the source is used and the result says it was NOT pinned", async (_, run) => {
    const result = await run();
    expect(result).toMatchObject({ intact: true, verifiedCount: 50n, checkpointsVerified: 2, keyPinned: false, keyIds: [KEY.keyId] });
    expect(summarizeVerification(result)).toContain("public key NOT pinned");
    expect(verificationJson(result)).toMatchObject({ key_pinned: false });
  });

  it.each([
    ["database", () => verifyAuditDatabase(intact.db.pool, { publicKeyPem: OTHER_KEY.pem, pageSize: PAGE })],
    ["export file", () => verifyAuditFile(exportedFile, { publicKeyPem: OTHER_KEY.pem })],
  ])("%s: a different pinned key fails every checkpoint, naming it", async (_, run) => {
    const result = await run();
    const failure = (sequence: number) =>
      `checkpoint at sequence ${sequence} is signed by key ${KEY.keyId.slice(0, 16)}…, not by the pinned key ${OTHER_KEY.keyId.slice(0, 16)}…`;
    expect(result).toMatchObject({
      intact: false,
      firstBrokenSequence: undefined,
      reason: failure(20),
      verifiedCount: 50n,
      checkpointsVerified: 0,
      failures: [failure(20), failure(40)],
    });
    expect(summarizeVerification(result)).toMatch(/^BROKEN: checkpoint at sequence 20 is signed by key .*; checkpoint at sequence 40 /);
    expect(summarizeVerification(result)).toContain("; no event is covered by a signed checkpoint; public key pinned");
  });
});

/**
 * Each way to tamper, done to the database with SQL (as someone with write
 * access would, trigger switched off) and to the export of the untampered
 * chain (the same edit on the events, written back as lines).
 */
interface TamperCase {
  readonly name: string;
  readonly sql: (events: AuditEvent[]) => Array<[string, unknown[]?]>;
  readonly edit: (events: AuditEvent[]) => AuditEvent[];
  readonly expected: { firstBrokenSequence: bigint; reason: string | RegExp; verifiedCount: bigint };
}

const forged = (sequence: bigint, previousHash: Buffer, hash?: Buffer): AuditEvent => {
  const base = { ...record(99), sequence, requestId: "forged", previousHash };
  return { ...base, hash: hash ?? hashEvent(previousHash, sequence, base) };
};
const INSERT = `INSERT INTO audit_events (sequence, time, identity, roles, method, resources, key_version, result_code,
  result_message, request_id, peer_address, policy_digest, previous_hash, hash)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`;
const insertValues = (e: AuditEvent) => [
  e.sequence.toString(),
  e.time,
  e.identity,
  e.roles,
  e.method,
  e.resources,
  e.keyVersion,
  e.resultCode,
  e.resultMessage,
  e.requestId,
  e.peerAddress,
  e.policyDigest,
  e.previousHash,
  e.hash,
];
const MALLORY = "spiffe://keyward.local/mallory";

const TAMPER_CASES: TamperCase[] = [
  {
    name: "update a field of event 17",
    sql: () => [["UPDATE audit_events SET identity = $1 WHERE sequence = 17", [MALLORY]]],
    edit: (events) => events.map((e) => (e.sequence === 17n ? { ...e, identity: MALLORY } : e)),
    expected: { firstBrokenSequence: 17n, reason: "hash mismatch", verifiedCount: 16n },
  },
  {
    name: "update event 17 and re-chain every later event: caught by the checkpoint at 20",
    sql: (events) =>
      rechain(events.map((e) => (e.sequence === 17n ? { ...e, identity: MALLORY } : e)), 16)
        .slice(16)
        .map((e) => ["UPDATE audit_events SET identity = $2, previous_hash = $3, hash = $4 WHERE sequence = $1", [e.sequence.toString(), e.identity, e.previousHash, e.hash]]),
    edit: (events) => rechain(events.map((e) => (e.sequence === 17n ? { ...e, identity: MALLORY } : e)), 16),
    expected: { firstBrokenSequence: 20n, reason: "hash differs from the signed checkpoint", verifiedCount: 19n },
  },
  {
    name: "delete event 23",
    sql: () => [["DELETE FROM audit_events WHERE sequence = 23"]],
    edit: (events) => events.filter((e) => e.sequence !== 23n),
    expected: { firstBrokenSequence: 23n, reason: "missing sequence 23", verifiedCount: 22n },
  },
  {
    name: "insert a forged event at the tail (previous_hash plausible, hash wrong) and move the head to it",
    sql: (events) => [
      [INSERT, insertValues(forged(51n, events[49]!.hash, randomBytes(32)))],
      ["UPDATE audit_head SET sequence = 51, hash = $1", [randomBytes(32)]],
    ],
    edit: (events) => [...events, forged(51n, events[49]!.hash, randomBytes(32))],
    expected: { firstBrokenSequence: 51n, reason: "hash mismatch", verifiedCount: 50n },
  },
  {
    name: "insert a forged event (correctly hashed) at 12 and renumber the later events",
    sql: (events) => [
      // Two steps, so the primary key never sees two rows with one sequence.
      ["UPDATE audit_events SET sequence = sequence + 1000 WHERE sequence >= 12"],
      ["UPDATE audit_events SET sequence = sequence - 999 WHERE sequence >= 1012"],
      [INSERT, insertValues(forged(12n, events[10]!.hash))],
      ["UPDATE audit_head SET sequence = 51"],
    ],
    edit: (events) => [
      ...events.slice(0, 11),
      forged(12n, events[10]!.hash),
      ...events.slice(11).map((e) => ({ ...e, sequence: e.sequence + 1n })),
    ],
    expected: { firstBrokenSequence: 13n, reason: "previous_hash mismatch", verifiedCount: 12n },
  },
  {
    name: "reorder events 8 and 14 (exchange their sequences)",
    sql: () => [
      ["UPDATE audit_events SET sequence = 1008 WHERE sequence = 8"],
      ["UPDATE audit_events SET sequence = 8 WHERE sequence = 14"],
      ["UPDATE audit_events SET sequence = 14 WHERE sequence = 1008"],
    ],
    edit: (events) => swapSequences(events, 8, 14),
    expected: { firstBrokenSequence: 8n, reason: "previous_hash mismatch", verifiedCount: 7n },
  },
  {
    name: "truncate the tail after 35, below the checkpoint at 40, and move the head back",
    sql: (events) => [
      ["DELETE FROM audit_events WHERE sequence > 35"],
      ["UPDATE audit_head SET sequence = 35, hash = $1", [events[34]!.hash]],
    ],
    edit: (events) => events.slice(0, 35),
    expected: { firstBrokenSequence: 36n, reason: "missing sequence 36: a signed checkpoint covers sequence 40", verifiedCount: 35n },
  },
];

describe("audit verify reports the first broken sequence of a tampered log", () => {
  it.each(TAMPER_CASES)("database: $name", async ({ sql, expected }) => {
    const { db, events } = await populated();
    expect((await verifyAuditDatabase(db.pool, { publicKeyPem: KEY.pem, pageSize: PAGE })).intact).toBe(true);
    await tamper(db, sql(events));
    const result = await verifyAuditDatabase(db.pool, { publicKeyPem: KEY.pem, pageSize: PAGE });
    expect(verdict(result)).toEqual({ intact: false, ...expected });
    expect(result.failures).toEqual([]);
    expect(summarizeVerification(result)).toMatch(new RegExp(`^BROKEN at sequence ${expected.firstBrokenSequence}: `));
    expect(verificationJson(result)).toMatchObject({ intact: false, first_broken_sequence: expected.firstBrokenSequence.toString() });
  });

  it.each(TAMPER_CASES)("export file: $name", async ({ edit, expected }) => {
    const lines = [...edit(intact.events).map((e) => formatEventLine(e).trimEnd()), ...exported.slice(EVENTS)];
    const result = await verifyAuditFile(await fileWith(lines), { publicKeyPem: KEY.pem });
    expect(verdict(result)).toEqual({ intact: false, ...expected });
    expect(result.failures).toEqual([]);
  });

  it("the file edits are the database tampering: exporting the tampered database gives the edited file", async () => {
    // Checked for the cases whose SQL leaves nothing random behind.
    for (const { name, sql, edit } of TAMPER_CASES.filter((c) => !c.name.includes("hash wrong"))) {
      const { db, events } = await populated();
      await tamper(db, sql(events));
      const expected = [...edit(events).map((e) => formatEventLine(e).trimEnd()), ...exported.slice(EVENTS)];
      expect((await exportText(db)).trimEnd().split("\n"), name).toEqual(expected);
    }
  });

  it("database: an event past audit_head (correctly hashed, head left alone) is reported at head + 1", async () => {
    const { db, events } = await populated();
    await tamper(db, [[INSERT, insertValues(forged(51n, events[49]!.hash))]]);
    expect(verdict(await verifyAuditDatabase(db.pool, { publicKeyPem: KEY.pem, pageSize: PAGE }))).toEqual({
      intact: false,
      firstBrokenSequence: 51n,
      reason: "sequence 51 lies beyond the chain head (audit_head is at 50): not appended through Keyward",
      verifiedCount: 50n,
    });
  });

  it("export file: swapping two lines, a malformed line and an event after the checkpoints each break the chain there", async () => {
    const swapped = [...exported];
    [swapped[7], swapped[13]] = [swapped[13]!, swapped[7]!];
    const malformed = exported.map((line, i) => (i === 29 ? line.slice(0, 40) : line));
    const late = [...exported, formatEventLine(forged(51n, intact.events[49]!.hash)).trimEnd()];
    const cases: Array<[string[], ReturnType<typeof verdict>]> = [
      [swapped, { intact: false, firstBrokenSequence: 8n, reason: "missing sequence 8", verifiedCount: 7n }],
      [malformed, { intact: false, firstBrokenSequence: 30n, reason: "line 30: not valid JSON", verifiedCount: 29n }],
      [late, { intact: false, firstBrokenSequence: 51n, reason: "line 54: event line after the signing_key lines", verifiedCount: 50n }],
    ];
    for (const [lines, expected] of cases) {
      expect(verdict(await verifyAuditFile(await fileWith(lines), { publicKeyPem: KEY.pem }))).toEqual(expected);
    }
  });
});

describe("audit verify checks the checkpoints' signatures", () => {
  it("export file: a malformed checkpoint line and two signed checkpoints that disagree are failures naming them", async () => {
    const forkHash = randomBytes(32);
    const fork = JSON.stringify({
      checkpoint: {
        sequence: "40",
        hash: forkHash.toString("hex"),
        time: checkpointTime(40n).toISOString(),
        key_id: KEY.keyId,
        signature: signCheckpoint(KEY, 40n, forkHash).toString("hex"),
      },
    });
    const lines = [...exported.slice(0, EVENTS + 2), fork, exported[EVENTS]!.slice(0, 30), ...exported.slice(EVENTS + 2)];
    const result = await verifyAuditFile(await fileWith(lines), { publicKeyPem: KEY.pem });
    expect(result).toMatchObject({
      intact: false,
      firstBrokenSequence: undefined,
      verifiedCount: 50n,
      checkpointsVerified: 2,
      failures: ["checkpoint at sequence 40: signed checkpoints claim two different hashes for it (a fork)", "line 54: not valid JSON"],
    });
  });

  it("a forged signature on the checkpoint at 40 is a failure naming it, in the database and in the file", async () => {
    const { db } = await populated();
    const badSignature = randomBytes(64);
    await tamper(db, [["UPDATE audit_checkpoints SET signature = $1 WHERE sequence = 40", [badSignature]]]);
    const lines = exported.map((line) => {
      const parsed = JSON.parse(line);
      if (parsed.checkpoint?.sequence === "40") parsed.checkpoint.signature = badSignature.toString("hex");
      return JSON.stringify(parsed);
    });
    for (const result of [
      await verifyAuditDatabase(db.pool, { publicKeyPem: KEY.pem, pageSize: PAGE }),
      await verifyAuditFile(await fileWith(lines), { publicKeyPem: KEY.pem }),
      // Even unpinned: the key in the source does not vouch for it either.
      await verifyAuditDatabase(db.pool, { pageSize: PAGE }),
    ]) {
      expect(result).toMatchObject({
        intact: false,
        firstBrokenSequence: undefined,
        reason: `checkpoint at sequence 40: its signature does not verify with key ${KEY.keyId.slice(0, 16)}…`,
        verifiedCount: 50n,
        checkpointsVerified: 1,
        lastCheckpointSequence: 20n,
      });
      expect(result.failures).toHaveLength(1);
    }
  });

  it("history rewritten and re-signed with a substituted key: caught with the pinned key, consistent without it", async () => {
    const { db, events } = await populated();
    const rewritten = rechain(events.map((e) => (e.sequence === 5n ? { ...e, identity: MALLORY } : e)), 4);
    const statements: Array<[string, unknown[]?]> = rewritten
      .slice(4)
      .map((e) => ["UPDATE audit_events SET identity = $2, previous_hash = $3, hash = $4 WHERE sequence = $1", [e.sequence.toString(), e.identity, e.previousHash, e.hash]]);
    statements.push(
      ["UPDATE audit_head SET hash = $1", [rewritten[49]!.hash]],
      ["INSERT INTO audit_signing_keys (key_id, algorithm, public_key_pem, wrapped_private_key, created_at) VALUES ($1, 'ED25519', $2, $3, '2000-01-01')", [OTHER_KEY.keyId, OTHER_KEY.pem, randomBytes(80)]],
      ...CHECKPOINTS.map((sequence): [string, unknown[]] => {
        const hash = rewritten[Number(sequence) - 1]!.hash;
        return ["UPDATE audit_checkpoints SET key_id = $2, hash = $3, signature = $4 WHERE sequence = $1", [sequence.toString(), OTHER_KEY.keyId, hash, signCheckpoint(OTHER_KEY, sequence, hash)]];
      }),
      ["DELETE FROM audit_signing_keys WHERE key_id = $1", [KEY.keyId]],
    );
    await tamper(db, statements);

    const pinned = await verifyAuditDatabase(db.pool, { publicKeyPem: KEY.pem, pageSize: PAGE });
    expect(pinned).toMatchObject({ intact: false, firstBrokenSequence: undefined, checkpointsVerified: 0, keyPinned: true });
    expect(pinned.failures).toEqual([20, 40].map((s) => `checkpoint at sequence ${s} is signed by key ${OTHER_KEY.keyId.slice(0, 16)}…, not by the pinned key ${KEY.keyId.slice(0, 16)}…`));

    const unpinned = await verifyAuditDatabase(db.pool, { pageSize: PAGE });
    expect(unpinned).toMatchObject({ intact: true, checkpointsVerified: 2, keyPinned: false, keyIds: [OTHER_KEY.keyId] });
    expect(summarizeVerification(unpinned)).toContain("public key NOT pinned (taken from the database itself)");

    // The same through an export of it.
    const path = join(dir, "resigned.jsonl");
    await exportAuditLogToFile(db.pool, path);
    expect((await verifyAuditFile(path, { publicKeyPem: KEY.pem })).failures).toEqual(pinned.failures);
    expect(await verifyAuditFile(path)).toMatchObject({ intact: true, keyPinned: false });
  });
});

describe("keyward audit command, in process", () => {
  /** Runs `keyward audit <args>` against the intact database, capturing its output. */
  async function command(args: string[], env: Record<string, string> = {}) {
    const capture = () => {
      const stream = new PassThrough();
      let text = "";
      stream.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")));
      return { stream, text: () => text };
    };
    const stdout = capture();
    const stderr = capture();
    const databaseEnv = { DATABASE_URL: intact.db.connectionString, KEYWARD_DB_SCHEMA: intact.db.schema, KEYWARD_DATA_DIR: join(dir, "data"), ...env };
    const code = await auditCommand(args, () => loadConfig(databaseEnv), { stdout: stdout.stream, stderr: stderr.stream });
    return { code, stdout: stdout.text(), stderr: stderr.text() };
  }

  it("exports and verifies through the command: exit 0 intact, 1 broken", async () => {
    const out = join(dir, "command.jsonl");
    expect(await command(["export", "--out", out])).toEqual({
      code: 0,
      stdout: "",
      stderr: `exported 50 events (sequences 1..50), 2 checkpoints and 1 signing key to ${out}\n`,
    });
    expect(await readFile(out, "utf8")).toBe(`${exported.join("\n")}\n`);
    const keyFile = join(dir, "key.pem");
    await writeFile(keyFile, KEY.pem);
    const verified = await command(["verify", "--file", out, "--public-key", keyFile, "--from", "3", "--to", "44", "--json"]);
    expect(verified.code).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({ intact: true, verified_count: 42, checkpoints_verified: 2 });
    expect(verified.stderr).toMatch(/^intact: 42 events verified \(sequences 3\.\.44\)/);

    const edited = await fileWith(exported.filter((_, i) => i !== 44));
    const broken = await command(["verify", "--file", edited, "--public-key", keyFile]);
    expect(broken).toMatchObject({ code: 1, stderr: "" });
    expect(broken.stdout).toMatch(/^BROKEN at sequence 45: missing sequence 45; 44 events verified before it \(sequences 1\.\.44\)/);
  });

  it.each([
    [[], /^keyward: audit needs export or verify\nusage:\n {2}audit export/],
    [["verify", "--from", "0"], /^keyward: --from must be a sequence number from 1 to 9223372036854775807\n/],
    [["verify", "--to", "9223372036854775808"], /^keyward: --to must be a sequence number from 1 to 9223372036854775807\n/],
    [["verify", "--from", "5", "--to", "3"], /^keyward: --to must not be below --from\n/],
    [["export", "extra"], /^keyward: Unexpected argument 'extra'/],
    [["export", "--json"], /^keyward: Unknown option '--json'/],
    [["verify", "--public-key", "/nonexistent/key.pem"], /^keyward: cannot read the --public-key file \/nonexistent\/key\.pem\n/],
  ])("%j: exit 2", async (args, message) => {
    const run = await command(args);
    expect(run).toMatchObject({ code: 2, stdout: "" });
    expect(run.stderr).toMatch(message);
  });

  it("a --public-key that is not an Ed25519 public key: exit 2", async () => {
    const rsa = join(dir, "rsa.pem");
    await writeFile(rsa, generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey.export({ type: "spki", format: "pem" }).toString());
    const garbage = join(dir, "garbage.pem");
    await writeFile(garbage, "not a key");
    expect((await command(["verify", "--file", exportedFile, "--public-key", rsa])).stderr).toMatch(/^keyward: the public key is rsa, not Ed25519\n/);
    expect(await command(["verify", "--file", exportedFile, "--public-key", garbage])).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/^keyward: the public key is not a PEM public key\n/),
    });
  });
});
