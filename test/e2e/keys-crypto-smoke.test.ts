import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

describe("smoke", () => {
  let keyward: TestKeyward;
  beforeAll(async () => {
    keyward = await startTestKeyward();
  });
  afterAll(() => keyward?.close());

  it("creates, encrypts, decrypts", async () => {
    const admin = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    const service = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
    const { key } = await admin.createKey({ keyId: "k1", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
    expect(key?.name).toBe("keys/k1");
    const enc = await service.encrypt({ name: "keys/k1", plaintext: Buffer.from("hello") });
    const dec = await service.decrypt({ name: "keys/k1", ciphertext: enc.ciphertext });
    expect(Buffer.from(dec.plaintext).toString()).toBe("hello");
    await admin.rotateKey({ name: "keys/k1" });
    const dec2 = await service.decrypt({ name: "keys/k1", ciphertext: enc.ciphertext });
    expect(dec2.keyVersion).toBe("keys/k1/versions/1");
    const err = await service.decrypt({ name: "keys/k1", ciphertext: Buffer.from(enc.ciphertext).fill(1, 30, 31) }).catch((e) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
  });
});
