import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createChainVerifier, GENESIS_HASH } from "../../../src/domain/audit/chain.js";
import { createPgAuditRepository, type AuditRepository } from "../../../src/storage/pg/audit-repository.js";
import { createPool } from "../../../src/storage/pg/pool.js";
import { createTestDatabase, type TestDatabase } from "../../helpers/database.js";
import { auditRecord } from "../../fixtures/audit.js";


describe("audit repository", () => {
  let db: TestDatabase;
  let repo: AuditRepository;

  beforeAll(async () => {
    db = await createTestDatabase();
    repo = createPgAuditRepository(db.pool);
  });
  afterAll(() => db?.drop());

  it("appends a chain that reads back identical and verifies", async () => {
    const written = await repo.append([
      auditRecord(),
      auditRecord({ roles: [], resources: ["keys/a", "keys/b"], resultCode: 7, resultMessage: "permission denied: é ✓", keyVersion: "" }),
    ]);
    expect(written.map((e) => e.sequence)).toEqual([1n, 2n]);
    expect(written[0]!.previousHash).toEqual(GENESIS_HASH);
    const read = await repo.range(1n, 10n, 100);
    expect(read).toEqual(written);
    const verifier = createChainVerifier({ sequence: 1n, previousHash: GENESIS_HASH });
    for (const event of read) {
      expect(verifier.add(event)).toBeUndefined();
    }
    expect(verifier.finish()).toBeUndefined();
    expect(await repo.head()).toEqual({ sequence: 2n, hash: written[1]!.hash });
  });

  it("refuses to update or delete events", async () => {
    await expect(db.pool.query("UPDATE audit_events SET identity = 'x'")).rejects.toThrow(/append-only/);
    await expect(db.pool.query("DELETE FROM audit_events")).rejects.toThrow(/append-only/);
    await expect(db.pool.query("TRUNCATE audit_events")).rejects.toThrow(/append-only/);
    await expect(db.pool.query("DELETE FROM audit_checkpoints")).rejects.toThrow(/audit_checkpoints is append-only/);
    // Signing keys are checked row by row (a root key rotation may re-wrap the private key and nothing else).
    await repo.saveSigningKey({ keyId: "k", algorithm: "ED25519", publicKeyPem: "pem", wrappedPrivateKey: Buffer.alloc(8) });
    await expect(db.pool.query("UPDATE audit_signing_keys SET algorithm = 'x'")).rejects.toThrow(/audit_signing_keys is append-only/);
    await expect(db.pool.query("DELETE FROM audit_signing_keys")).rejects.toThrow(/audit_signing_keys is append-only/);
    // Whole milliseconds only: the chain hashes milliseconds.
    await expect(
      db.pool.query(
        `INSERT INTO audit_events (sequence, time, identity, roles, method, resources, key_version, result_code, result_message,
           request_id, peer_address, policy_digest, previous_hash, hash)
         VALUES (999, '2026-11-24T07:30:00.123456Z', '', '{}', '', '{}', '', 0, '', '', '', '', $1, $1)`,
        [Buffer.alloc(32)],
      ),
    ).rejects.toThrow(/audit_events_time_ms/);
  });

  it("keeps one unbroken chain under concurrent appends from several pools", async () => {
    const pools = [1, 2, 3].map(() => createPool({ connectionString: db.connectionString, schema: db.schema, max: 4 }));
    try {
      const repos = pools.map(createPgAuditRepository);
      const before = (await repo.head()).sequence;
      await Promise.all(
        Array.from({ length: 60 }, (_, i) => repos[i % 3]!.append([auditRecord({ requestId: `c-${i}` }), auditRecord({ requestId: `d-${i}` })])),
      );
      const head = await repo.head();
      expect(head.sequence).toBe(before + 120n);
      const events = await repo.range(1n, head.sequence, 10_000);
      const verifier = createChainVerifier({ sequence: 1n, previousHash: GENESIS_HASH, end: head.sequence });
      expect(events.map((e) => verifier.add(e)).filter(Boolean)).toEqual([]);
      expect(verifier.finish()).toBeUndefined();
    } finally {
      await Promise.all(pools.map((pool) => pool.end()));
    }
  });

  it("filters events", async () => {
    const denied = await repo.list({ resultCode: 7 }, { newestFirst: false, limit: 10 });
    expect(denied.map((e) => e.sequence)).toEqual([2n]);
    expect((await repo.list({ resource: "keys/b" }, { newestFirst: false, limit: 10 })).map((e) => e.sequence)).toEqual([2n]);
    expect(await repo.list({ resource: "keys/pay" }, { newestFirst: false, limit: 10 })).toEqual([]);
    expect((await repo.list({ method: "/keyward.v1.CryptoService/" }, { newestFirst: true, limit: 2 })).map((e) => e.sequence)).toEqual([
      122n,
      121n,
    ]);
  });
});
