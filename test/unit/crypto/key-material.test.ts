import { createPublicKey } from "node:crypto";
import { inspect } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { parseCiphertext, createEnvelope } from "../../../src/crypto/envelope.js";
import {
  generateKeyMaterial,
  isKeyAlgorithm,
  KEY_ALGORITHMS,
  type KeyAlgorithm,
  type KeyMaterial,
  KeyMaterialError,
  keyPurpose,
  loadKey,
} from "../../../src/crypto/key-material.js";
import { SecretBytes } from "../../../src/crypto/secret-bytes.js";

const material = new Map<KeyAlgorithm, KeyMaterial>();

beforeAll(async () => {
  for (const generated of await Promise.all(KEY_ALGORITHMS.map((a) => generateKeyMaterial(a)))) {
    material.set(generated.algorithm, generated);
  }
}, 60_000);

it("covers every algorithm of keys.proto, in its order", () => {
  expect(KEY_ALGORITHMS).toEqual([
    "AES_256_GCM",
    "CHACHA20_POLY1305",
    "ED25519",
    "ECDSA_P256_SHA256",
    "ECDSA_P384_SHA384",
    "RSA_PSS_2048_SHA256",
    "RSA_PSS_3072_SHA256",
    "RSA_PSS_4096_SHA256",
    "HMAC_SHA256",
    "HMAC_SHA512",
  ]);
  expect(KEY_ALGORITHMS.map(keyPurpose)).toEqual([
    "ENCRYPT_DECRYPT",
    "ENCRYPT_DECRYPT",
    ...Array(6).fill("SIGN_VERIFY"),
    "MAC",
    "MAC",
  ]);
  expect(KEY_ALGORITHMS.every(isKeyAlgorithm)).toBe(true);
  expect(["", "AES_128_GCM", "KEY_ALGORITHM_AES_256_GCM", "toString", "__proto__"].some(isKeyAlgorithm)).toBe(false);
});

describe.each(KEY_ALGORITHMS)("%s", (algorithm) => {
  const sizes: Record<KeyAlgorithm, [number, number]> = {
    AES_256_GCM: [32, 32],
    CHACHA20_POLY1305: [32, 32],
    HMAC_SHA256: [32, 32],
    HMAC_SHA512: [64, 64],
    ED25519: [48, 48],
    ECDSA_P256_SHA256: [100, 160],
    ECDSA_P384_SHA384: [150, 200],
    RSA_PSS_2048_SHA256: [1100, 1300],
    RSA_PSS_3072_SHA256: [1700, 1900],
    RSA_PSS_4096_SHA256: [2300, 2500],
  };

  it("generates fresh material of the documented form", async () => {
    const generated = material.get(algorithm)!;
    const [min, max] = sizes[algorithm];
    expect(generated.material.length).toBeGreaterThanOrEqual(min);
    expect(generated.material.length).toBeLessThanOrEqual(max);
    expect(generated.algorithm).toBe(algorithm);
    const again = await generateKeyMaterial(algorithm);
    expect(again.material.equals(generated.material)).toBe(false);
    if (keyPurpose(algorithm) === "SIGN_VERIFY") {
      expect(generated.publicKeyPem).toMatch(/^-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+-----END PUBLIC KEY-----\n$/);
      expect(generated.publicKeyPem!.length).toBeLessThanOrEqual(1024);
      expect(createPublicKey(generated.publicKeyPem!).type).toBe("public");
    } else {
      expect(generated.publicKeyPem).toBeUndefined();
    }
  });

  it("loads into a ready primitive of its purpose", async () => {
    const loaded = loadKey(algorithm, material.get(algorithm)!.material);
    expect(loaded.algorithm).toBe(algorithm);
    expect(loaded.purpose).toBe(keyPurpose(algorithm));
    const data = Buffer.from("loaded once, used many times");
    switch (loaded.purpose) {
      case "ENCRYPT_DECRYPT": {
        expect(loaded.aead.decrypt(loaded.aead.encrypt(data, data), data).equals(data)).toBe(true);
        const envelope = createEnvelope({ keyName: "keys/k", version: 2, aead: loaded.aead });
        const ciphertext = envelope.encrypt(data, Buffer.alloc(0));
        expect(parseCiphertext(ciphertext).keyVersion).toBe(2);
        // A second load of the same material opens what the first sealed.
        const again = loadKey(algorithm, material.get(algorithm)!.material);
        if (again.purpose !== "ENCRYPT_DECRYPT") throw new Error("purpose changed");
        const other = createEnvelope({ keyName: "keys/k", version: 2, aead: again.aead });
        expect(other.decrypt(ciphertext, Buffer.alloc(0)).equals(data)).toBe(true);
        break;
      }
      case "SIGN_VERIFY":
        expect(await loaded.verifier.verify({ message: data }, await loaded.signer.sign({ message: data }))).toBe(true);
        expect(loaded.publicKeyPem).toBe(material.get(algorithm)!.publicKeyPem);
        break;
      case "MAC":
        expect(loaded.mac.verify(data, loaded.mac.compute(data))).toBe(true);
        break;
    }
  });

  it("keeps its key bytes out of strings", () => {
    const { material: secret } = material.get(algorithm)!;
    const bytes = secret.expose();
    for (const shown of [String(secret), JSON.stringify({ secret }), inspect(secret)]) {
      expect(shown).not.toContain(bytes.toString("hex"));
      expect(shown).not.toContain(bytes.toString("base64"));
    }
  });

  it("refuses material of another algorithm, with the bytes kept out of the error", () => {
    const foreign = KEY_ALGORITHMS.filter((a) => a !== algorithm && !sameForm(a, algorithm));
    for (const other of foreign) {
      const secret = material.get(other)!.material;
      let caught: unknown;
      try {
        loadKey(algorithm, secret);
      } catch (err) {
        caught = err;
      }
      expect({ other, error: caught instanceof KeyMaterialError }).toEqual({ other, error: true });
      expect((caught as Error).message).not.toContain(secret.expose().toString("hex").slice(0, 16));
    }
  });

  it.each([
    ["no bytes", Buffer.alloc(0)],
    ["one byte", Buffer.of(0x30)],
    ["31 bytes", Buffer.alloc(31, 1)],
    ["65 bytes", Buffer.alloc(65, 1)],
    ["DER garbage", Buffer.from("3082ffff0201", "hex")],
  ])("refuses %s", (_name, bytes) => {
    expect(() => loadKey(algorithm, new SecretBytes(bytes))).toThrow(KeyMaterialError);
  });
});

it("refuses an unknown algorithm", async () => {
  await expect(generateKeyMaterial("AES_128_GCM" as KeyAlgorithm)).rejects.toThrow(TypeError);
  expect(() => loadKey("AES_128_GCM" as KeyAlgorithm, new SecretBytes(Buffer.alloc(32)))).toThrow(TypeError);
});

/** Symmetric algorithms whose raw keys have the same length are indistinguishable by form. */
function sameForm(a: KeyAlgorithm, b: KeyAlgorithm): boolean {
  const thirtyTwo: KeyAlgorithm[] = ["AES_256_GCM", "CHACHA20_POLY1305", "HMAC_SHA256"];
  return thirtyTwo.includes(a) && thirtyTwo.includes(b);
}
