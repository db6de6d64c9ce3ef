import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

describe("RotateKey of a slow-to-generate key", () => {
  let keyward: TestKeyward;
  beforeAll(async () => {
    keyward = await startTestKeyward();
  });
  afterAll(() => keyward?.close());

  it("does not hold the key's row while the new material is generated", async () => {
    const keys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    await keys.createKey({ keyId: "slow", key: { purpose: KeyPurpose.SIGN_VERIFY, algorithm: KeyAlgorithm.RSA_PSS_4096_SHA256 } });
    const finished: string[] = [];
    const rotation = keys.rotateKey({ name: "keys/slow" }).then((r) => {
      finished.push("rotate");
      return r;
    });
    // An RSA-4096 key takes far longer to generate than this wait.
    await new Promise((resolve) => setTimeout(resolve, 100));
    await keys.updateKey({ key: { name: "keys/slow", description: "changed meanwhile" }, updateMask: { paths: ["description"] } });
    finished.push("update");
    const rotated = await rotation;
    // The update did not wait for the generation; the rotation still landed, on top of it.
    expect(finished).toEqual(["update", "rotate"]);
    expect(rotated.key?.primaryVersion).toBe(2);
    expect(rotated.key?.description).toBe("changed meanwhile");
  });
});
