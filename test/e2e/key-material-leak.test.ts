import { createPrivateKey, randomBytes } from "node:crypto";
import { ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { unwrapKey } from "../../src/crypto/key-wrap.js";
import { parseRootKey } from "../../src/crypto/root-key.js";
import { materialBinding } from "../../src/domain/keys/material.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/** Every textual form a byte string could take in a log line, a JSON body or a column. */
const forms = (bytes: Buffer) => [bytes.toString("hex"), bytes.toString("base64"), bytes.toString("base64url").replace(/=+$/, "")];

/**
 * Key material never leaves the server: the test unwraps every stored
 * version with the root key (which only it and the server know) and looks
 * for the raw bytes, or any 16-byte window of them, in every response,
 * error, log line and audit row produced while using the keys.
 */
describe("key material never leaves the server", () => {
  const rootKey = randomBytes(32);
  let keyward: TestKeyward;
  let pool: pg.Pool;

  beforeAll(async () => {
    keyward = await startTestKeyward({ KEYWARD_ROOT_KEY: rootKey.toString("base64") });
    pool = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2 });
  });
  afterAll(async () => {
    await pool?.end();
    await keyward?.close();
  });

  it("in no response, error, log line or audit event", async () => {
    const admin = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    const service = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
    const seen: string[] = [];
    const keep = (value: unknown) => seen.push(JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("base64") : typeof v === "bigint" ? String(v) : v)));
    const failed = (err: unknown) => keep(ConnectError.from(err).rawMessage);

    const specs = [
      ["aes", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
      ["chacha", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.CHACHA20_POLY1305],
      ["ed", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519],
      ["ec", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ECDSA_P256_SHA256],
      ["hmac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256],
    ] as const;
    for (const [id, purpose, algorithm] of specs) {
      keep(await admin.createKey({ keyId: id, key: { purpose, algorithm } }));
      keep(await admin.rotateKey({ name: `keys/${id}` }));
      keep(await admin.getKey({ name: `keys/${id}` }));
      keep(await admin.listKeyVersions({ parent: `keys/${id}` }));
    }
    const data = new TextEncoder().encode("data");
    for (const id of ["aes", "chacha"]) {
      const enc = await service.encrypt({ name: `keys/${id}`, plaintext: data });
      keep(enc);
      keep(await service.decrypt({ name: `keys/${id}`, ciphertext: enc.ciphertext }));
      keep(await service.generateDataKey({ name: `keys/${id}`, length: { case: "numberOfBytes", value: 32 } }));
      keep(await service.batchEncrypt({ name: `keys/${id}`, items: [{ plaintext: data }] }));
      await service.decrypt({ name: `keys/${id}`, ciphertext: Buffer.from(enc.ciphertext).fill(0, 40) }).catch(failed);
    }
    for (const id of ["ed", "ec"]) {
      keep(await service.sign({ name: `keys/${id}`, input: { case: "message", value: data } }));
      keep(await admin.getPublicKey({ name: `keys/${id}` }));
    }
    keep(await service.mac({ name: "keys/hmac", data }));
    await service.mac({ name: "keys/aes", data }).catch(failed);
    expect(seen.length).toBeGreaterThan(30);

    const { rows } = await pool.query<{ key_name: string; version: number; algorithm: string; wrapped_material: Buffer }>(
      `SELECT v.key_name, v.version, k.algorithm, v.wrapped_material FROM key_versions v JOIN keys k ON k.name = v.key_name`,
    );
    expect(rows).toHaveLength(specs.length * 2);
    const audit = await pool.query("SELECT * FROM audit_events");
    const haystack = [...seen, ...keyward.logs, ...audit.rows.map((row) => JSON.stringify(row))].join("\n");
    const root = parseRootKey(rootKey);
    for (const row of rows) {
      const unwrapped = unwrapKey(root, row.wrapped_material, materialBinding(row.key_name, row.version, row.algorithm)).expose();
      // A signing key's PKCS#8 also holds its public key, which GetPublicKey
      // rightly returns: look for the private scalar only.
      const material =
        row.algorithm === "ED25519" || row.algorithm.startsWith("ECDSA")
          ? Buffer.from(createPrivateKey({ key: unwrapped, format: "der", type: "pkcs8" }).export({ format: "jwk" }).d!, "base64url")
          : unwrapped;
      expect(material.length).toBeGreaterThanOrEqual(32);
      // The wrapped form stored in the database is not the material either.
      expect(row.wrapped_material.includes(unwrapped.subarray(0, 16))).toBe(false);
      for (let at = 0; at + 16 <= material.length; at += 16) {
        for (const form of forms(Buffer.from(material.subarray(at, at + 16)))) {
          expect(haystack.includes(form.slice(0, 20)), `${row.key_name} v${row.version} at ${at}`).toBe(false);
        }
      }
    }
  });
});
