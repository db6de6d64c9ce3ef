import { randomBytes, verify as verifySignature } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Code } from "@connectrpc/connect";
import pino from "pino";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { loadConfig } from "../../src/config.js";
import { parseRootKey, rootKeyCheck } from "../../src/crypto/root-key.js";
import { startKeyward, type RunningKeyward } from "../../src/main.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { verifyAuditDatabase } from "../../src/tools/audit-verify.js";
import { rootKeyCommand } from "../../src/tools/root-key-command.js";
import { connectClient } from "../helpers/clients.js";
import { createTestDatabase, dropSchema, type TestDatabase } from "../helpers/database.js";
import { devCredentials, startTestKeyward, testKeywardEnv } from "../helpers/keyward.js";
import { keywardCli, type CliRun } from "../helpers/keyward-process.js";
import type {} from "../setup/global-database.js";

/** The command without a process of its own, for the cases that need no separate process to be meaningful. */
async function inProcess(args: string[], env: Record<string, string>): Promise<CliRun> {
  let stdout = "";
  let stderr = "";
  const sink = (append: (text: string) => void) =>
    new Writable({
      write(chunk, _encoding, done) {
        append(String(chunk));
        done();
      },
    });
  const code = await rootKeyCommand(args, () => loadConfig(env), {
    stdout: sink((text) => (stdout += text)),
    stderr: sink((text) => (stderr += text)),
  });
  return { code, stdout, stderr };
}

/** Everything the rotation may touch, as stored. */
interface Stored {
  versions: Map<string, Buffer>;
  signingKeys: Array<{ key_id: string; algorithm: string; public_key_pem: string; wrapped_private_key: Buffer; created_at: Date }>;
  rootKeyCheck: Buffer;
  auditHead: string;
}

async function stored(pool: pg.Pool): Promise<Stored> {
  const versions = await pool.query<{ key_name: string; version: number; wrapped_material: Buffer }>(
    "SELECT key_name, version, wrapped_material FROM key_versions ORDER BY key_name, version",
  );
  const signingKeys = await pool.query<Stored["signingKeys"][number]>(
    "SELECT key_id, algorithm, public_key_pem, wrapped_private_key, created_at FROM audit_signing_keys ORDER BY key_id",
  );
  const deployment = await pool.query<{ root_key_check: Buffer }>("SELECT root_key_check FROM deployment");
  const head = await pool.query<{ sequence: string }>("SELECT sequence FROM audit_head");
  return {
    versions: new Map(versions.rows.map((r) => [`${r.key_name}/versions/${r.version}`, r.wrapped_material])),
    signingKeys: signingKeys.rows,
    rootKeyCheck: deployment.rows[0]!.root_key_check,
    auditHead: head.rows[0]!.sequence,
  };
}

describe("keyward root-key rotate", () => {
  const databaseUrl = inject("databaseUrl");
  let dataDir: string;
  let schema: string;
  let keyDir: string;
  let pool: pg.Pool;
  let env: Record<string, string>;
  /** The dev root key file's bytes (base64 text), the key the first server ran with. */
  let oldKeyFile: Buffer;
  /** The new root key, written as 32 raw bytes. */
  let newKey: Buffer;
  let newKeyFile: string;
  let before: Stored;
  const servers: RunningKeyward[] = [];

  // What the first server produced, checked against the server on the new key.
  const plaintexts = [Buffer.from("sealed under version 1"), Buffer.from("sealed under version 2")];
  const ciphertexts: Uint8Array[] = [];
  const message = Buffer.from("signed before the rotation");
  let signature: Uint8Array;
  let signingPublicKeyPem: string;
  let mac: Uint8Array;
  let checkpoint: { keyId: string; publicKeyPem: string };

  /** A server on the same data folder and schema: the dev root key, or `KEYWARD_ROOT_KEY_FILE` when given. */
  async function start(rootKeyFile?: string): Promise<RunningKeyward> {
    const config = loadConfig({
      ...testKeywardEnv(dataDir, schema),
      ...(rootKeyFile !== undefined ? { KEYWARD_ROOT_KEY_FILE: rootKeyFile } : {}),
    });
    const running = await startKeyward(config, pino({ level: "silent" }));
    servers.push(running);
    return running;
  }

  beforeAll(async () => {
    const first = await startTestKeyward();
    dataDir = first.dataDir;
    schema = first.schema;
    env = { DATABASE_URL: databaseUrl, KEYWARD_DB_SCHEMA: schema, KEYWARD_DATA_DIR: dataDir };
    pool = createPool({ connectionString: databaseUrl, schema, max: 2, applicationName: "keyward-test" });
    keyDir = await mkdtemp(join(tmpdir(), "keyward-root-key-"));
    try {
      const admin = connectClient(KeysService, first.url, await first.credentials("admin"));
      const service = connectClient(CryptoService, first.url, await first.credentials("service"));
      const auditor = connectClient(AuditService, first.url, await first.credentials("auditor"));
      await admin.createKey({ keyId: "enc", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
      await admin.createKey({ keyId: "sig", key: { purpose: KeyPurpose.SIGN_VERIFY, algorithm: KeyAlgorithm.ED25519 } });
      await admin.createKey({ keyId: "mac", key: { purpose: KeyPurpose.MAC, algorithm: KeyAlgorithm.HMAC_SHA256 } });
      ciphertexts.push((await service.encrypt({ name: "keys/enc", plaintext: plaintexts[0] })).ciphertext);
      await admin.rotateKey({ name: "keys/enc" });
      const second = await service.encrypt({ name: "keys/enc", plaintext: plaintexts[1] });
      expect(second.keyVersion).toBe("keys/enc/versions/2");
      ciphertexts.push(second.ciphertext);
      signature = (await service.sign({ name: "keys/sig", input: { case: "message", value: message } })).signature;
      signingPublicKeyPem = (await admin.getPublicKey({ name: "keys/sig" })).pem;
      mac = (await service.mac({ name: "keys/mac", data: message })).mac;
      const { checkpoint: signed } = await auditor.getAuditCheckpoint({});
      checkpoint = { keyId: signed!.keyId, publicKeyPem: signed!.publicKeyPem };
    } finally {
      // Stops the server but keeps its schema and data folder, unlike first.close().
      await first.running.close();
    }

    oldKeyFile = await readFile(join(dataDir, "root.key"));
    newKey = randomBytes(32);
    newKeyFile = join(keyDir, "new-root.key");
    await writeFile(newKeyFile, newKey, { mode: 0o600 });
    before = await stored(pool);
    expect(before.versions.size).toBe(4);
    expect(before.signingKeys).toHaveLength(1);
    expect(before.rootKeyCheck.equals(rootKeyCheck(parseRootKey(oldKeyFile)))).toBe(true);
  }, 120_000);

  afterAll(async () => {
    for (const running of servers) {
      await running.close().catch(() => {});
    }
    await pool?.end();
    if (schema !== undefined) {
      await dropSchema(databaseUrl, schema);
    }
    await Promise.all([dataDir, keyDir].filter(Boolean).map((dir) => rm(dir, { recursive: true, force: true })));
  });

  it("refuses a current root key that does not match the database, changing nothing (exit 2)", async () => {
    const wrong = await keywardCli(["root-key", "rotate", "--new-key-file", newKeyFile], {
      ...env,
      KEYWARD_ROOT_KEY: randomBytes(32).toString("base64"),
    });
    expect(wrong.code, wrong.stderr).toBe(2);
    expect(wrong.stderr).toMatch(/the current root key \(KEYWARD_ROOT_KEY\) does not match deployment [0-9a-f-]{36}/);
    expect(wrong.stderr).toContain("nothing was changed");
    expect(wrong.stdout).toBe("");
    expect(await stored(pool)).toEqual(before);
  });

  it("refuses usage errors, changing nothing (exit 2)", async () => {
    const shortKey = join(keyDir, "short.key");
    await writeFile(shortKey, randomBytes(16));
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [["rotate"], env, /root-key rotate needs --new-key-file <file>/],
      [["spin", "--new-key-file", newKeyFile], env, /unknown root-key command "spin"/],
      [["rotate", "--new-key-file", newKeyFile, "--force"], env, /Unknown option '--force'/],
      [["rotate", "--new-key-file", join(keyDir, "missing.key")], env, /cannot read --new-key-file .*missing\.key/],
      [["rotate", "--new-key-file", shortKey], env, /--new-key-file .*short\.key: root key must be 32 raw bytes or their base64 encoding \(got 16 bytes\)/],
      [["rotate", "--new-key-file", join(dataDir, "root.key")], env, /holds the current root key \(the dev root key .*root\.key, as KEYWARD_ROOT_KEY_FILE is unset\): nothing to rotate/],
      [
        ["rotate", "--new-key-file", newKeyFile],
        { ...env, KEYWARD_ROOT_KEY_FILE: join(keyDir, "absent.key") },
        /cannot read the current root key \(KEYWARD_ROOT_KEY_FILE .*absent\.key\)/,
      ],
      [
        ["rotate", "--new-key-file", newKeyFile],
        { ...env, KEYWARD_DB_SCHEMA: "no_such_schema_here" },
        /no Keyward tables in DATABASE_URL, schema no_such_schema_here/,
      ],
    ];
    for (const [args, runEnv, message] of cases) {
      const run = await inProcess(args, runEnv);
      expect(run.code, run.stderr).toBe(2);
      expect(run.stderr).toMatch(message);
      expect(run.stdout).toBe("");
    }
    expect(await stored(pool)).toEqual(before);
  });

  it("fails as a whole when anything does not unwrap: the versions already re-wrapped are rolled back (exit 1)", async () => {
    // The signing key is re-wrapped after every version, so its failure
    // comes after the versions' UPDATEs have run in the transaction.
    const original = before.signingKeys[0]!.wrapped_private_key;
    const corrupt = Buffer.from(original);
    corrupt[corrupt.length - 1]! ^= 1;
    await pool.query("UPDATE audit_signing_keys SET wrapped_private_key = $1", [corrupt]);
    try {
      const run = await inProcess(["rotate", "--new-key-file", newKeyFile], env);
      expect(run.code, run.stderr).toBe(1);
      expect(run.stderr).toContain(
        `root key rotation failed, nothing was changed: audit signing key ${before.signingKeys[0]!.key_id} does not unwrap with the current root key`,
      );
      expect(run.stdout).toBe("");
      const after = await stored(pool);
      expect(after.versions).toEqual(before.versions);
      expect(after.rootKeyCheck).toEqual(before.rootKeyCheck);
      expect(after.auditHead).toBe(before.auditHead);
    } finally {
      await pool.query("UPDATE audit_signing_keys SET wrapped_private_key = $1", [original]);
    }
    expect(await stored(pool)).toEqual(before);
  });

  it("re-wraps every version and the audit signing key in one go, stores the new check, prints no key bytes", async () => {
    const run = await keywardCli(["root-key", "rotate", "--new-key-file", newKeyFile], env);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^root key rotated for deployment [0-9a-f-]{36}: re-wrapped 4 key versions and 1 audit signing key;/);
    // The dev key file stays as it was; the operator is told to point the servers at the new file.
    expect(run.stdout).toContain(`KEYWARD_ROOT_KEY_FILE=${newKeyFile}`);
    expect(run.stdout).toContain(`dev root key ${join(dataDir, "root.key")}; it was left unchanged`);
    expect(await readFile(join(dataDir, "root.key"))).toEqual(oldKeyFile);

    const oldKey = parseRootKey(oldKeyFile).expose();
    const output = run.stdout + run.stderr;
    for (const key of [oldKey, newKey]) {
      for (const encoding of ["base64", "hex", "base64url"] as const) {
        expect(output).not.toContain(key.toString(encoding).slice(0, 16));
      }
    }

    const after = await stored(pool);
    expect([...after.versions.keys()]).toEqual([...before.versions.keys()]);
    for (const [name, wrapped] of after.versions) {
      expect(wrapped.equals(before.versions.get(name)!), `${name} was not re-wrapped`).toBe(false);
    }
    expect(after.signingKeys).toHaveLength(1);
    const [signingBefore, signingAfter] = [before.signingKeys[0]!, after.signingKeys[0]!];
    expect(signingAfter.wrapped_private_key.equals(signingBefore.wrapped_private_key)).toBe(false);
    expect({ ...signingAfter, wrapped_private_key: null }).toEqual({ ...signingBefore, wrapped_private_key: null });
    expect(after.rootKeyCheck.equals(rootKeyCheck(parseRootKey(newKey)))).toBe(true);

    // The rotation is in the audit log, chained like any event.
    expect(BigInt(after.auditHead)).toBe(BigInt(before.auditHead) + 1n);
    const { rows } = await pool.query("SELECT identity, method, result_code, result_message FROM audit_events WHERE sequence = $1", [after.auditHead]);
    expect(rows).toEqual([
      {
        identity: "keyward/cli",
        method: "keyward/cli/RotateRootKey",
        result_code: 0,
        result_message: "root key rotated: 4 key versions and 1 audit signing key re-wrapped",
      },
    ]);
  });

  it("a server on the new root key opens everything made under the old one", async () => {
    const running = await start(newKeyFile);
    const url = `https://127.0.0.1:${running.address.port}`;
    const admin = connectClient(KeysService, url, await devCredentials(dataDir, "admin"));
    const service = connectClient(CryptoService, url, await devCredentials(dataDir, "service"));
    const auditor = connectClient(AuditService, url, await devCredentials(dataDir, "auditor"));

    for (const [i, ciphertext] of ciphertexts.entries()) {
      const opened = await service.decrypt({ name: "keys/enc", ciphertext });
      expect(Buffer.from(opened.plaintext)).toEqual(plaintexts[i]);
      expect(opened.keyVersion).toBe(`keys/enc/versions/${i + 1}`);
    }
    expect(await service.verify({ name: "keys/sig", input: { case: "message", value: message }, signature })).toMatchObject({ valid: true });
    // A new signature verifies under the public key published before: the same private key.
    const fresh = await service.sign({ name: "keys/sig", input: { case: "message", value: Buffer.from("after") } });
    expect(verifySignature(null, Buffer.from("after"), signingPublicKeyPem, fresh.signature)).toBe(true);
    expect(await service.verifyMac({ name: "keys/mac", data: message, mac })).toMatchObject({ valid: true });
    // HMAC is deterministic: the same tag proves the same key.
    expect(Buffer.from((await service.mac({ name: "keys/mac", data: message })).mac)).toEqual(Buffer.from(mac));
    // New keys work too, wrapped under the new root key.
    await admin.createKey({ keyId: "after", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
    const sealed = await service.encrypt({ name: "keys/after", plaintext: message });
    expect(Buffer.from((await service.decrypt({ name: "keys/after", ciphertext: sealed.ciphertext })).plaintext)).toEqual(message);

    // The checkpoint key survived the rotation: same key, still signing.
    const { checkpoint: signed } = await auditor.getAuditCheckpoint({});
    expect(signed!.keyId).toBe(checkpoint.keyId);
    expect(signed!.publicKeyPem).toBe(checkpoint.publicKeyPem);
    expect(verifySignature(null, signed!.signedPayload, checkpoint.publicKeyPem, signed!.signature)).toBe(true);
    await running.close();

    const verification = await verifyAuditDatabase(pool, { publicKeyPem: checkpoint.publicKeyPem });
    expect(verification).toMatchObject({ intact: true, failures: [] });
    expect(verification.checkpointsVerified).toBeGreaterThanOrEqual(2);
  });

  it("material from before the rotation written back over a version (a replayed row) answers DATA_LOSS; the current row serves again", async () => {
    const running = await start(newKeyFile);
    const url = `https://127.0.0.1:${running.address.port}`;
    const service = connectClient(CryptoService, url, await devCredentials(dataDir, "service"));
    const current = (await stored(pool)).versions.get("keys/enc/versions/1")!;
    const replayed = before.versions.get("keys/enc/versions/1")!;
    expect(replayed.equals(current)).toBe(false);
    const write = (bytes: Buffer) =>
      pool.query("UPDATE key_versions SET wrapped_material = $1 WHERE key_name = 'keys/enc' AND version = 1", [bytes]);
    try {
      // Genuine bytes, bound to the right key, version and algorithm, but
      // wrapped by the root key this deployment no longer uses.
      await write(replayed);
      const refused = await service.decrypt({ name: "keys/enc", ciphertext: ciphertexts[0]! }).then(
        () => undefined,
        (err: unknown) => err as { code: number; rawMessage: string },
      );
      expect(refused).toMatchObject({
        code: Code.DataLoss,
        rawMessage: "the stored material of version 1 of keys/enc does not open: it was altered or moved",
      });
    } finally {
      await write(current);
    }
    await expect
      .poll(async () => Buffer.from((await service.decrypt({ name: "keys/enc", ciphertext: ciphertexts[0]! })).plaintext), { timeout: 5000 })
      .toEqual(plaintexts[0]);
    await running.close();
  });

  it("a server on the old root key now refuses to start", async () => {
    await expect(start()).rejects.toThrow(/root key does not match this database/);
  });
});

describe("audit_signing_keys after the root key rewrap migration", () => {
  let db: TestDatabase;
  const wrapped = randomBytes(80);
  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query(
      "INSERT INTO audit_signing_keys (key_id, algorithm, public_key_pem, wrapped_private_key) VALUES ('k', 'ED25519', 'pem', $1)",
      [wrapped],
    );
  });
  afterAll(() => db?.drop());

  it("allows an UPDATE of wrapped_private_key alone", async () => {
    const rewrapped = randomBytes(80);
    const { rowCount } = await db.pool.query("UPDATE audit_signing_keys SET wrapped_private_key = $1 WHERE key_id = 'k'", [rewrapped]);
    expect(rowCount).toBe(1);
    const { rows } = await db.pool.query("SELECT key_id, algorithm, public_key_pem, wrapped_private_key FROM audit_signing_keys");
    expect(rows).toEqual([{ key_id: "k", algorithm: "ED25519", public_key_pem: "pem", wrapped_private_key: rewrapped }]);
  });

  it.each([
    ["the public key", "UPDATE audit_signing_keys SET public_key_pem = 'other'"],
    ["the algorithm with the wrapped key", "UPDATE audit_signing_keys SET algorithm = 'X', wrapped_private_key = wrapped_private_key || '\\x00'::bytea"],
    ["the key id", "UPDATE audit_signing_keys SET key_id = 'k2'"],
    ["the creation time", "UPDATE audit_signing_keys SET created_at = created_at + interval '1 second'"],
  ])("refuses an UPDATE of %s", async (_, sql) => {
    const before = await db.pool.query("SELECT * FROM audit_signing_keys");
    await expect(db.pool.query(sql)).rejects.toThrow(
      /audit_signing_keys is append-only: an UPDATE may change only wrapped_private_key \(root key rotation\)/,
    );
    expect((await db.pool.query("SELECT * FROM audit_signing_keys")).rows).toEqual(before.rows);
  });

  it("still refuses DELETE and TRUNCATE", async () => {
    await expect(db.pool.query("DELETE FROM audit_signing_keys")).rejects.toThrow(/audit_signing_keys is append-only/);
    await expect(db.pool.query("TRUNCATE audit_signing_keys CASCADE")).rejects.toThrow(/audit_signing_keys is append-only/);
    expect((await db.pool.query("SELECT count(*)::int AS n FROM audit_signing_keys")).rows).toEqual([{ n: 1 }]);
  });

  it("keeps the guard's name: disabling audit_signing_keys_append_only lifts it, as before", async () => {
    const client = await db.pool.connect();
    try {
      await client.query("BEGIN");
      await client.query("ALTER TABLE audit_signing_keys DISABLE TRIGGER audit_signing_keys_append_only");
      await client.query("UPDATE audit_signing_keys SET public_key_pem = 'other'");
      expect((await client.query("DELETE FROM audit_signing_keys")).rowCount).toBe(1);
    } finally {
      await client.query("ROLLBACK");
      client.release();
    }
    expect((await db.pool.query("SELECT public_key_pem FROM audit_signing_keys")).rows).toEqual([{ public_key_pem: "pem" }]);
  });
});
