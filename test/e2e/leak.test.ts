import { randomBytes } from "node:crypto";
import { ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/**
 * Nothing secret reaches a log line or an error message: not the root key,
 * not the database password, not plaintext or secret values sent in requests,
 * whether the call succeeds, is refused by validation or by authorization.
 */
describe("secrets never leak into logs or errors", () => {
  const rootKey = randomBytes(32).toString("base64");
  const password = `pw-${randomBytes(12).toString("hex")}`;
  const plaintext = `plaintext-${randomBytes(12).toString("hex")}`;
  const secretValue = `secret-${randomBytes(12).toString("hex")}`;
  let keyward: TestKeyward;
  const errors: string[] = [];

  beforeAll(async () => {
    const url = new URL(inject("databaseUrl"));
    // Trust authentication ignores the password, so one can be added to see
    // whether it leaks; an embedded test database has a real one already.
    if (url.password === "") {
      url.password = password;
    }
    keyward = await startTestKeyward({ KEYWARD_ROOT_KEY: rootKey, DATABASE_URL: url.toString() });
  });
  afterAll(() => keyward?.close());

  it("holds for successful, invalid and denied calls", async () => {
    const record = (err: unknown) => {
      const error = ConnectError.from(err);
      errors.push(error.message, JSON.stringify(error.details), JSON.stringify([...error.metadata]));
    };
    const service = await keyward.credentials("service");
    const admin = await keyward.credentials("admin");
    await connectClient(AccessService, keyward.url, service).getCallerIdentity({});
    const payload = new TextEncoder().encode(plaintext);
    const secret = new TextEncoder().encode(secretValue);
    // Authorized and valid (answers UNIMPLEMENTED), invalid (bad name), denied (wrong role).
    await connectClient(CryptoService, keyward.url, service).encrypt({ name: "keys/a", plaintext: payload }).catch(record);
    await connectClient(CryptoService, keyward.url, service).encrypt({ name: "not a key", plaintext: payload }).catch(record);
    await connectClient(CryptoService, keyward.url, admin).encrypt({ name: "keys/a", plaintext: payload }).catch(record);
    await connectClient(SecretsService, keyward.url, service)
      .addSecretVersion({ parent: "secrets/shop/prod/db", payload: { data: secret } })
      .catch(record);
    await connectClient(SecretsService, keyward.url, service)
      .addSecretVersion({ parent: "secrets/BAD", payload: { data: secret } })
      .catch(record);
    await connectClient(KeysService, keyward.url, admin).createKey({ keyId: plaintext, key: { description: secretValue } }).catch(record);
    expect(errors.length).toBeGreaterThanOrEqual(18);

    const logs = keyward.logs.join("\n");
    expect(logs).toContain("keyward listening");
    expect(logs).toContain('"method":"/keyward.v1.CryptoService/Encrypt"');
    for (const needle of [rootKey, password, plaintext, secretValue, Buffer.from(plaintext).toString("base64")]) {
      expect(logs).not.toContain(needle);
      expect(errors.join("\n")).not.toContain(needle);
    }
  });
});
