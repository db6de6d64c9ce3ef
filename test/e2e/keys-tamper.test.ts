import { createHmac, createPublicKey, generateKeyPairSync, randomBytes, verify } from "node:crypto";
import { Code, type Client } from "@connectrpc/connect";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { outcome, type Outcome } from "../helpers/expect.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/**
 * Someone with write access to the database, but not the root key, edits
 * `key_versions.wrapped_material` while the server runs. The material is
 * AES-256-GCM under the root key with associated data binding key name,
 * version and algorithm (src/domain/keys/material.ts), so a row whose bytes
 * were moved or altered must refuse to serve — DATA_LOSS naming the version,
 * never any bytes — instead of silently acting as some other key.
 *
 * The server caches opened material and hears of edits made behind its
 * back only through the change feed, a moment later; so every tampered
 * version here is one this process has not opened yet (never used, or used
 * before a rotation made the server drop its cache entry for the key), or
 * the test polls until the edit is seen. Deleting a version's row is
 * tampering too: Keyward never deletes one.
 */

const WRAP_OVERHEAD = 1 + 12 + 16; // format byte, nonce, GCM tag (src/crypto/key-wrap.ts)
/** The DER prefix of every Ed25519 PKCS#8 PrivateKeyInfo (RFC 8410): what raw signing material would start with. */
const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

const message = new TextEncoder().encode("tamper-evident");
const signInput = { case: "message" as const, value: message };

/** Every wrapped value this file read, to prove none of it reaches an answer, the audit log or the logs. */
const seenMaterial: Buffer[] = [];

/** Hex and base64 of every 6-byte window of `bytes`, at every alignment. */
function encodedWindows(bytes: Buffer): string[] {
  const out: string[] = [];
  for (let i = 0; i + 6 <= bytes.length; i++) {
    const window = bytes.subarray(i, i + 6);
    out.push(window.toString("hex"), window.toString("base64"));
  }
  return out;
}

/** Fails when `text` holds any encoded fragment of material seen, or a long run that looks like encoded bytes. */
function expectNoBytes(text: string, what: string): void {
  expect(text, what).not.toMatch(/[0-9a-fA-F]{16}/);
  expect(text, what).not.toMatch(/[A-Za-z0-9+/]{24}/);
  for (const bytes of seenMaterial) {
    for (const fragment of encodedWindows(bytes)) {
      if (text.includes(fragment)) {
        throw new Error(`${what} contains "${fragment}", an encoding of stored key material`);
      }
    }
  }
}

/** How many calls answered DATA_LOSS: each must have its audit event. */
let dataLossCalls = 0;

/** DATA_LOSS whose message names exactly the version and key, and carries no bytes. */
function expectDataLoss(result: Outcome<unknown>, keyName: string, version: number): void {
  dataLossCalls++;
  expect({ code: Code[result.code] ?? "OK", message: result.message }).toMatchObject({
    code: "DataLoss",
    message: expect.stringContaining(`version ${version} of ${keyName}`),
  });
  expectNoBytes(result.message, "the DATA_LOSS message");
}

describe("tampering with stored key material", () => {
  let keyward: TestKeyward;
  let sql: pg.Pool;
  let keys: Client<typeof KeysService>;
  let crypto: Client<typeof CryptoService>;

  beforeAll(async () => {
    keyward = await startTestKeyward();
    sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2, applicationName: "keyward-test" });
    keys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    crypto = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
  });
  afterAll(async () => {
    await sql?.end();
    await keyward?.close();
  });

  async function createKey(prefix: string, purpose: KeyPurpose, algorithm: KeyAlgorithm): Promise<string> {
    const { key } = await keys.createKey({ keyId: `${prefix}-${randomBytes(4).toString("hex")}`, key: { purpose, algorithm } });
    return key!.name;
  }

  async function material(keyName: string, version: number): Promise<Buffer> {
    const { rows } = await sql.query<{ wrapped_material: Buffer }>(
      "SELECT wrapped_material FROM key_versions WHERE key_name = $1 AND version = $2",
      [keyName, version],
    );
    expect(rows, `${keyName} version ${version}`).toHaveLength(1);
    seenMaterial.push(rows[0]!.wrapped_material);
    return rows[0]!.wrapped_material;
  }

  async function writeMaterial(keyName: string, version: number, bytes: Buffer): Promise<void> {
    const { rowCount } = await sql.query("UPDATE key_versions SET wrapped_material = $3 WHERE key_name = $1 AND version = $2", [
      keyName,
      version,
      bytes,
    ]);
    expect(rowCount).toBe(1);
  }

  /** Copies one row's wrapped material over another's, as an attacker with SQL access could. */
  async function copyMaterial(from: { key: string; version: number }, to: { key: string; version: number }): Promise<void> {
    const source = await material(from.key, from.version);
    expect(source.equals(await material(to.key, to.version))).toBe(false);
    await writeMaterial(to.key, to.version, source);
  }

  /**
   * Rotates `keyName` and waits until this server encrypts with the new
   * version: its cache entry for the key has then been rebuilt, and the
   * older versions are no longer open in it.
   */
  async function rotateAndWait(keyName: string): Promise<number> {
    const { key } = await keys.rotateKey({ name: keyName });
    const version = key!.primaryVersion;
    await expect
      .poll(async () => (await crypto.encrypt({ name: keyName, plaintext: message })).keyVersion, { timeout: 3000, interval: 10 })
      .toBe(`${keyName}/versions/${version}`);
    return version;
  }

  it("stores each version's material wrapped by the root key, never raw", async () => {
    const aesA = await createKey("raw-aes", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const aesB = await createKey("raw-aes", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const mac256 = await createKey("raw-mac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256);
    const mac512 = await createKey("raw-mac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA512);
    const ed25519 = await createKey("raw-sign", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);

    const a = await material(aesA, 1);
    const b = await material(aesB, 1);
    const m256 = await material(mac256, 1);
    const m512 = await material(mac512, 1);
    const ed = await material(ed25519, 1);
    // 32-byte keys wrap to 1 + 12 + 32 + 16 bytes; a 64-byte HMAC-SHA512 key and
    // a 48-byte Ed25519 PKCS#8 document to their length plus the same overhead.
    expect([a, b, m256, m512, ed].map((bytes) => bytes.length)).toEqual([61, 61, 61, 64 + WRAP_OVERHEAD, 48 + WRAP_OVERHEAD]);
    expect([a, b, m256, m512, ed].map((bytes) => bytes[0])).toEqual([1, 1, 1, 1, 1]);
    // Two keys never share material, nor a nonce.
    expect(a.equals(b)).toBe(false);
    expect(a.subarray(1, 13).equals(b.subarray(1, 13))).toBe(false);

    // No 32-byte window of the stored HMAC-SHA256 row is the key the server MACs with.
    const { mac } = await crypto.mac({ name: mac256, data: message });
    expect(mac).toHaveLength(32);
    for (let i = 0; i + 32 <= m256.length; i++) {
      const candidate = createHmac("sha256", m256.subarray(i, i + 32)).update(message).digest();
      expect(candidate.equals(Buffer.from(mac)), `window at offset ${i} is the raw key`).toBe(false);
    }
    // Nor is the Ed25519 row a private key in the clear.
    expect(ed.includes(ED25519_PKCS8_PREFIX)).toBe(false);
  });

  it("a version holding another version's material of the same key answers DATA_LOSS for Encrypt, Decrypt, Sign, Verify and Mac", async () => {
    // Encrypt: version 2 (primary) now holds version 1's material.
    const aes = await createKey("same-aes", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    await keys.rotateKey({ name: aes });
    await copyMaterial({ key: aes, version: 1 }, { key: aes, version: 2 });
    for (let attempt = 0; attempt < 2; attempt++) {
      // Not once, then silently usable: every attempt is refused.
      expectDataLoss(await outcome(crypto.encrypt({ name: aes, plaintext: message })), aes, 2);
      expectDataLoss(await outcome(crypto.generateDataKey({ name: aes, length: { case: "numberOfBytes", value: 32 } })), aes, 2);
    }
    // The untouched version still works, so the refusal is about the row, not the key.
    const v1 = await crypto.encrypt({ name: `${aes}/versions/1`, plaintext: message });
    expect(Buffer.from((await crypto.decrypt({ name: aes, ciphertext: v1.ciphertext })).plaintext)).toEqual(Buffer.from(message));

    // Decrypt: a ciphertext of version 1, whose row then receives version 2's material.
    const dec = await createKey("same-dec", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const old = await crypto.encrypt({ name: dec, plaintext: message });
    expect(old.keyVersion).toBe(`${dec}/versions/1`);
    await rotateAndWait(dec);
    await copyMaterial({ key: dec, version: 2 }, { key: dec, version: 1 });
    expectDataLoss(await outcome(crypto.decrypt({ name: dec, ciphertext: old.ciphertext })), dec, 1);
    expectDataLoss(await outcome(crypto.reEncrypt({ name: dec, ciphertext: old.ciphertext })), dec, 1);
    const batch = await crypto.batchDecrypt({ name: dec, items: [{ ciphertext: old.ciphertext }] });
    expect(batch.results[0]?.result).toMatchObject({ case: "error", value: { code: Code.DataLoss } });

    // Sign and Verify: version 2 of a signing key holds version 1's private key.
    const sign = await createKey("same-sign", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);
    await keys.rotateKey({ name: sign });
    await copyMaterial({ key: sign, version: 1 }, { key: sign, version: 2 });
    expectDataLoss(await outcome(crypto.sign({ name: sign, input: signInput })), sign, 2);
    const byV1 = await crypto.sign({ name: `${sign}/versions/1`, input: signInput });
    expectDataLoss(
      await outcome(crypto.verify({ name: `${sign}/versions/2`, input: signInput, signature: byV1.signature })),
      sign,
      2,
    );
    expect((await crypto.verify({ name: byV1.keyVersion, input: signInput, signature: byV1.signature })).valid).toBe(true);

    // Mac: the other direction, an old version receiving the primary's material.
    const mac = await createKey("same-mac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256);
    await keys.rotateKey({ name: mac });
    await copyMaterial({ key: mac, version: 2 }, { key: mac, version: 1 });
    expectDataLoss(await outcome(crypto.mac({ name: `${mac}/versions/1`, data: message })), mac, 1);
    expect((await crypto.mac({ name: mac, data: message })).keyVersion).toBe(`${mac}/versions/2`);
  });

  it("a version holding another key's material (same algorithm) answers DATA_LOSS", async () => {
    // Encrypt: X's only version holds Y's material.
    const x = await createKey("cross-x", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const y = await createKey("cross-y", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    await copyMaterial({ key: y, version: 1 }, { key: x, version: 1 });
    expectDataLoss(await outcome(crypto.encrypt({ name: x, plaintext: message })), x, 1);
    expectDataLoss(await outcome(crypto.encrypt({ name: x, plaintext: message })), x, 1);
    const batch = await outcome(crypto.batchEncrypt({ name: x, items: [{ plaintext: message }] }));
    expectDataLoss(batch, x, 1);
    // Y, the source of the copy, is unaffected.
    expect((await crypto.encrypt({ name: y, plaintext: message })).keyVersion).toBe(`${y}/versions/1`);

    // Decrypt: a ciphertext of X2 version 1, whose row then receives Y's material.
    const x2 = await createKey("cross-dec", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const old = await crypto.encrypt({ name: x2, plaintext: message });
    await rotateAndWait(x2);
    await copyMaterial({ key: y, version: 1 }, { key: x2, version: 1 });
    expectDataLoss(await outcome(crypto.decrypt({ name: x2, ciphertext: old.ciphertext })), x2, 1);

    // Sign: P's private key replaced by Q's would sign as Q while P's public key is published.
    const p = await createKey("cross-p", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);
    const q = await createKey("cross-q", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);
    await copyMaterial({ key: q, version: 1 }, { key: p, version: 1 });
    expectDataLoss(await outcome(crypto.sign({ name: p, input: signInput })), p, 1);
    expectDataLoss(await outcome(keys.getPublicKey({ name: p })), p, 1);
    expect((await crypto.sign({ name: q, input: signInput })).keyVersion).toBe(`${q}/versions/1`);

    // Mac: the same for MAC keys.
    const m = await createKey("cross-m", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256);
    const n = await createKey("cross-n", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256);
    await copyMaterial({ key: n, version: 1 }, { key: m, version: 1 });
    expectDataLoss(await outcome(crypto.mac({ name: m, data: message })), m, 1);
  });

  it("GetPublicKey refuses a public key written over in the database, which would make outside verifiers trust another signer", async () => {
    const name = await createKey("pub-swap", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);
    const genuine = (await keys.getPublicKey({ name })).pem;
    const impostor = generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "pem" }).toString();
    const swap = (pem: string) =>
      sql.query("UPDATE key_versions SET public_key_pem = $2 WHERE key_name = $1 AND version = 1", [name, pem]);

    await swap(impostor);
    const refused = await outcome(keys.getPublicKey({ name }));
    expectDataLoss(refused, name, 1);
    expect(refused.message).not.toContain("PUBLIC KEY");

    // Put back, the genuine key is served again, and it verifies what Keyward signs.
    await swap(genuine);
    const served = (await keys.getPublicKey({ name })).pem;
    expect(served).toBe(genuine);
    const { signature } = await crypto.sign({ name, input: signInput });
    expect(verify(null, message, createPublicKey(served), signature)).toBe(true);
  });

  it("one flipped byte anywhere in the wrapped material answers DATA_LOSS; restoring it restores the key", async () => {
    // Format byte, first nonce byte, first and last bytes of the wrapped key, first and last tag bytes.
    const positions = [0, 1, 13, 44, 45, 60];
    const refused: string[] = [];
    for (const position of positions) {
      const name = await createKey(`flip-${position}`, KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
      const original = await material(name, 1);
      expect(original).toHaveLength(61);
      const flipped = Buffer.from(original);
      flipped[position]! ^= 0x01;
      await writeMaterial(name, 1, flipped);
      const result = await outcome(crypto.encrypt({ name, plaintext: message }));
      expectDataLoss(result, name, 1);
      refused.push(`${position}: ${Code[result.code]}`);
      // A failed open is not cached: with the right bytes back, the key serves again.
      await writeMaterial(name, 1, original);
      const restored = await crypto.encrypt({ name, plaintext: message });
      expect(Buffer.from((await crypto.decrypt({ name, ciphertext: restored.ciphertext })).plaintext)).toEqual(Buffer.from(message));
    }
    expect(refused).toEqual(positions.map((p) => `${p}: DataLoss`));
  });

  it("a version's row deleted answers DATA_LOSS naming the missing version, not NOT_FOUND or \"decryption failed\"", async () => {
    // Keyward never deletes a version's row (a destroyed version keeps it,
    // without material), so a row missing below the primary was deleted
    // behind its back. The deletion reaches this server's cache through the
    // change feed: poll until the call is refused, counting each refusal.
    const untilRefused = async (call: () => Promise<unknown>): Promise<Outcome<unknown>> => {
      const deadline = Date.now() + 5000;
      for (;;) {
        const result = await outcome(call());
        if (result.code === Code.DataLoss) dataLossCalls++;
        if (result.code !== 0 || Date.now() > deadline) return result;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    const expectMissing = (result: Outcome<unknown>, keyName: string, version: number) => {
      expect({ code: Code[result.code] ?? "OK", message: result.message }).toEqual({
        code: "DataLoss",
        message: `version ${version} of ${keyName} is missing from the database: it was deleted outside Keyward`,
      });
    };
    const deleteRow = async (keyName: string, version: number) => {
      const { rowCount } = await sql.query("DELETE FROM key_versions WHERE key_name = $1 AND version = $2", [keyName, version]);
      expect(rowCount).toBe(1);
    };

    // An older version: its ciphertexts and explicit uses are refused as DATA_LOSS.
    const name = await createKey("gone", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    const old = await crypto.encrypt({ name, plaintext: message });
    await rotateAndWait(name);
    await deleteRow(name, 1);
    expectMissing(await untilRefused(() => crypto.decrypt({ name, ciphertext: old.ciphertext })), name, 1);
    dataLossCalls++;
    expectMissing(await outcome(crypto.encrypt({ name: `${name}/versions/1`, plaintext: message })), name, 1);
    // A version the key never had is still NOT_FOUND, and the primary still serves.
    expect(Code[(await outcome(crypto.encrypt({ name: `${name}/versions/3`, plaintext: message }))).code]).toBe("NotFound");
    expect((await crypto.encrypt({ name, plaintext: message })).keyVersion).toBe(`${name}/versions/2`);

    // The primary: Encrypt is refused rather than falling back to anything else.
    await deleteRow(name, 2);
    expectMissing(await untilRefused(() => crypto.encrypt({ name, plaintext: message })), name, 2);

    // The same for signing and MAC keys.
    const sign = await createKey("gone-sign", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);
    await deleteRow(sign, 1);
    expectMissing(await untilRefused(() => crypto.sign({ name: sign, input: signInput })), sign, 1);
    const mac = await createKey("gone-mac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256);
    await deleteRow(mac, 1);
    expectMissing(await untilRefused(() => crypto.mac({ name: mac, data: message })), mac, 1);
  });

  it("records every DATA_LOSS in the audit log, naming the version, and never writes material to the audit log or the logs", async () => {
    const { rows } = await sql.query<{ resources: string[]; result_message: string; key_version: string }>(
      "SELECT resources, result_message, key_version FROM audit_events WHERE result_code = $1 ORDER BY sequence",
      [Code.DataLoss],
    );
    expect(dataLossCalls).toBeGreaterThanOrEqual(20);
    expect(rows.length).toBe(dataLossCalls);
    for (const row of rows) {
      expect(row.result_message).toMatch(new RegExp(`version \\d+ of ${row.resources[0]!.replace(/[/-]/g, "\\$&")}\\b`));
      expectNoBytes(row.result_message, "an audit event's message");
    }
    expect(seenMaterial.length).toBeGreaterThan(20);
    const logs = keyward.logs.join("\n");
    expect(logs).toContain('"code":"data_loss"');
    for (const bytes of seenMaterial) {
      for (const fragment of encodedWindows(bytes)) {
        if (logs.includes(fragment)) {
          throw new Error(`the server's logs contain "${fragment}", an encoding of stored key material`);
        }
      }
    }
  });
});
