import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { encodePageToken, filterDigest } from "../../src/services/page-token.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/** Inputs PostgreSQL text cannot hold (a NUL) answer INVALID_ARGUMENT, never INTERNAL, and change nothing. */
describe("control characters in stored text", () => {
  let keyward: TestKeyward;
  beforeAll(async () => {
    keyward = await startTestKeyward();
  });
  afterAll(() => keyward?.close());

  const refusal = (call: Promise<unknown>) =>
    call.then(
      () => ({ code: "OK", message: "" }),
      (err: unknown) => ({ code: Code[ConnectError.from(err).code], message: ConnectError.from(err).rawMessage }),
    );

  it("refuses them in key and secret descriptions, and creates nothing", async () => {
    const keys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    const secrets = connectClient(SecretsService, keyward.url, await keyward.credentials("admin"));
    const aes = { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM };
    expect(await refusal(keys.createKey({ keyId: "nul", key: { ...aes, description: "a\u0000b" } }))).toEqual({
      code: "InvalidArgument",
      message: "key.description must not contain control characters",
    });
    expect(await refusal(keys.getKey({ name: "keys/nul" }))).toMatchObject({ code: "NotFound" });

    await keys.createKey({ keyId: "plain", key: aes });
    expect(
      await refusal(keys.updateKey({ key: { name: "keys/plain", description: "line\nbreak" }, updateMask: { paths: ["description"] } })),
    ).toEqual({ code: "InvalidArgument", message: "key.description must not contain control characters" });

    expect(await refusal(secrets.createSecret({ parent: "secrets/app/prod", secretId: "nul", secret: { description: "\u0000" } }))).toEqual({
      code: "InvalidArgument",
      message: "secret.description must not contain control characters",
    });
    expect(await refusal(secrets.getSecret({ name: "secrets/app/prod/nul" }))).toMatchObject({ code: "NotFound" });
    // Refused before the project's default key would have been created.
    expect((await keys.listKeys({})).keys.map((k) => k.name)).toEqual(["keys/plain"]);
  });

  it("refuses a page token whose cursor was not issued by the server", async () => {
    const keys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    const forged = encodePageToken("keys/a\u0000", filterDigest(["keys", {}]));
    expect(await refusal(keys.listKeys({ pageToken: forged }))).toEqual({ code: "InvalidArgument", message: "page_token is malformed" });
  });
});
