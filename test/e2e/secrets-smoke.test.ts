import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SecretsService, SecretType } from "../../gen/keyward/v1/secrets_pb.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

describe("secrets smoke", () => {
  let keyward: TestKeyward;
  beforeAll(async () => {
    keyward = await startTestKeyward();
  });
  afterAll(() => keyward?.close());
  it("works", async () => {
    const admin = connectClient(SecretsService, keyward.url, await keyward.credentials("admin"));
    const service = connectClient(SecretsService, keyward.url, await keyward.credentials("service"));
    const { secret } = await admin.createSecret({ parent: "secrets/shop/prod", secretId: "db/password", secret: { type: SecretType.PASSWORD, maxVersions: 2 } });
    expect(secret?.key).toMatch(/^keys\/secrets-/);
    const v1 = await service.addSecretVersion({ parent: "secrets/shop/prod/db/password", payload: { data: Buffer.from("hunter2") }, expectedCurrentVersion: 0n });
    expect(v1.secretVersion?.version).toBe(1n);
    const got = await service.accessSecretVersion({ name: "secrets/shop/prod/db/password/versions/latest" });
    expect(Buffer.from(got.payload!.data).toString()).toBe("hunter2");
    await service.addSecretVersion({ parent: "secrets/shop/prod/db/password", payload: { data: Buffer.from("b") } });
    await service.addSecretVersion({ parent: "secrets/shop/prod/db/password", payload: { data: Buffer.from("c") } });
    const versions = await admin.listSecretVersions({ parent: "secrets/shop/prod/db/password" });
    expect(versions.secretVersions.map((v) => v.state)).toEqual([1, 1, 3]);
    const g = await service.generateSecret({ parent: "secrets/shop/prod/db/password", spec: { length: 20, format: 5, requireDigit: true } });
    expect(g.payload!.data.length).toBe(20);
    const rb = await admin.rollbackSecret({ name: "secrets/shop/prod/db/password", version: 3n });
    expect(rb.secretVersion?.version).toBe(5n);
    const got2 = await service.accessSecretVersion({ name: "secrets/shop/prod/db/password/versions/latest" });
    expect(Buffer.from(got2.payload!.data).toString()).toBe("c");
  });
});
