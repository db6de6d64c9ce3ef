/** The keys, secrets and prepared inputs of a run, made through the API on a fresh server. */
import { randomBytes } from "node:crypto";
import { CryptoService } from "../../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../../gen/keyward/v1/secrets_pb.js";
import { grpcJsClient } from "../../helpers/clients.js";
import type { Credentials, Fixtures } from "./protocol.js";

const PROJECT = "secrets/bench/prod";

/**
 * As the admin identity: the keys and secrets (`writers` of them for
 * AddSecretVersion, one per slot); as the service identity: ciphertexts,
 * signatures, a stored value.
 */
export async function createFixtures(address: string, admin: Credentials, service: Credentials, writers: number): Promise<Fixtures> {
  const creds = (c: Credentials) => ({ ca: Buffer.from(c.ca), cert: Buffer.from(c.cert), key: Buffer.from(c.key) });
  const keysAdmin = grpcJsClient(KeysService, address, creds(admin));
  const secretsAdmin = grpcJsClient(SecretsService, address, creds(admin));
  const crypto = grpcJsClient(CryptoService, address, creds(service));
  const secrets = grpcJsClient(SecretsService, address, creds(service));
  try {
    const specs = {
      aes: [KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
      aesOther: [KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
      ed25519: [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519],
      p256: [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ECDSA_P256_SHA256],
      rsa2048: [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.RSA_PSS_2048_SHA256],
      hmac: [KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256],
    } as const;
    const keys = {} as Record<keyof typeof specs, string>;
    for (const [role, [purpose, algorithm]] of Object.entries(specs) as [keyof typeof specs, (typeof specs)[keyof typeof specs]][]) {
      const keyId = `bench-${role.toLowerCase()}`;
      await keysAdmin.stubs.createKey({ keyId, key: { purpose, algorithm } });
      keys[role] = `keys/${keyId}`;
    }

    const plaintexts = { "32b": randomBytes(32), "1k": randomBytes(1024), "64k": randomBytes(65536) };
    const ciphertexts: Record<string, Uint8Array> = {};
    for (const [size, plaintext] of Object.entries(plaintexts)) {
      ciphertexts[size] = (await crypto.stubs.encrypt({ name: keys.aes, plaintext })).ciphertext;
    }
    const message = randomBytes(32);
    const signatures: Record<string, Uint8Array> = {};
    for (const name of [keys.ed25519, keys.p256, keys.rsa2048]) {
      signatures[name] = (await crypto.stubs.sign({ name, input: { case: "message", value: message } })).signature;
    }

    const readSecret = `${PROJECT}/read-1k`;
    const writeSecrets = Array.from({ length: writers }, (_, i) => `${PROJECT}/write-${i}`);
    for (const name of [readSecret, ...writeSecrets]) {
      await secretsAdmin.stubs.createSecret({ parent: PROJECT, secretId: name.slice(PROJECT.length + 1) });
    }
    await secrets.stubs.addSecretVersion({ parent: readSecret, payload: { data: randomBytes(1024) } });

    return { keys, plaintexts, ciphertexts, message, signatures, readSecret, writeSecrets };
  } finally {
    for (const client of [keysAdmin, secretsAdmin, crypto, secrets]) client.close();
  }
}
