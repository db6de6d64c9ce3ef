/**
 * How each case calls the server, and what a right answer looks like: a call
 * that answers wrongly counts as an error, so a fast but broken server does
 * not pass for a fast one. Requests are built once and reused.
 */
import { create } from "@bufbuild/protobuf";
import { HealthCheckRequestSchema, HealthCheckResponse_ServingStatus, Health } from "../../../gen/grpc/health/v1/health_pb.js";
import {
  BatchEncryptRequestSchema,
  CryptoService,
  DataKeySpec,
  DecryptRequestSchema,
  EncryptRequestSchema,
  GenerateDataKeyRequestSchema,
  MacRequestSchema,
  ReEncryptRequestSchema,
  SignRequestSchema,
  VerifyRequestSchema,
} from "../../../gen/keyward/v1/crypto_pb.js";
import { AccessSecretVersionRequestSchema, AddSecretVersionRequestSchema, SecretsService } from "../../../gen/keyward/v1/secrets_pb.js";
import type { grpcJsClient } from "../../helpers/clients.js";
import type { Fixtures } from "./protocol.js";

/** The stubs of one connection per service. */
export interface ConnectionStubs {
  readonly health: ReturnType<typeof grpcJsClient<typeof Health>>["stubs"];
  readonly crypto: ReturnType<typeof grpcJsClient<typeof CryptoService>>["stubs"];
  readonly secrets: ReturnType<typeof grpcJsClient<typeof SecretsService>>["stubs"];
}

/** An answer that arrived but is not what the case expects. */
export class WrongAnswer extends Error {}

function expect(condition: boolean, what: string): void {
  if (!condition) throw new WrongAnswer(what);
}

const SIZES: Readonly<Record<string, number>> = { "32b": 32, "1k": 1024, "64k": 65536 };

/**
 * One call of `caseId` on `stubs` by the slot numbered `slot` (among every
 * load process's slots); resolves when it answered rightly.
 */
export function createOperation(caseId: string, stubs: ConnectionStubs, fixtures: Fixtures): (slot: number) => Promise<void> {
  const { keys } = fixtures;
  const sized = /^(encrypt|decrypt)-(32b|1k|64k)$/.exec(caseId);
  if (sized) {
    const [, verb, size] = sized;
    const plaintext = fixtures.plaintexts[size!]!;
    if (verb === "encrypt") {
      const request = create(EncryptRequestSchema, { name: keys.aes, plaintext });
      return async () => {
        const { ciphertext } = await stubs.crypto.encrypt(request);
        expect(ciphertext.length > SIZES[size!]!, "Encrypt: ciphertext shorter than the plaintext");
      };
    }
    const request = create(DecryptRequestSchema, { name: keys.aes, ciphertext: fixtures.ciphertexts[size!]! });
    return async () => {
      const answer = await stubs.crypto.decrypt(request);
      expect(Buffer.from(answer.plaintext).equals(plaintext), "Decrypt: not the plaintext encrypted");
    };
  }
  const signing = /^(sign|verify)-(ed25519|p256|rsa2048)$/.exec(caseId);
  if (signing) {
    const [, verb, algorithm] = signing;
    const name = keys[algorithm as "ed25519" | "p256" | "rsa2048"];
    const input = { case: "message" as const, value: fixtures.message };
    if (verb === "sign") {
      const request = create(SignRequestSchema, { name, input });
      return async () => {
        const { signature } = await stubs.crypto.sign(request);
        expect(signature.length > 0, "Sign: empty signature");
      };
    }
    const request = create(VerifyRequestSchema, { name, input, signature: fixtures.signatures[name]! });
    return async () => {
      const { valid } = await stubs.crypto.verify(request);
      expect(valid, "Verify: a valid signature was not accepted");
    };
  }
  const batch = /^batch-encrypt-(\d+)$/.exec(caseId);
  if (batch) {
    const size = Number(batch[1]);
    const plaintext = fixtures.plaintexts["1k"]!;
    const request = create(BatchEncryptRequestSchema, { name: keys.aes, items: Array.from({ length: size }, () => ({ plaintext })) });
    return async () => {
      const { results } = await stubs.crypto.batchEncrypt(request);
      expect(results.length === size, `BatchEncrypt: ${results.length} results for ${size} items`);
      for (const r of results) {
        expect(r.result.case === "ciphertext", `BatchEncrypt: an item failed: ${r.result.case === "error" ? r.result.value.message : "no result"}`);
      }
    };
  }
  switch (caseId) {
    case "baseline": {
      const request = create(HealthCheckRequestSchema, {});
      return async () => {
        const { status } = await stubs.health.check(request);
        expect(status === HealthCheckResponse_ServingStatus.SERVING, `Health/Check: ${HealthCheckResponse_ServingStatus[status]}`);
      };
    }
    case "reencrypt-1k": {
      const request = create(ReEncryptRequestSchema, {
        name: keys.aes,
        ciphertext: fixtures.ciphertexts["1k"]!,
        destinationKey: keys.aesOther,
      });
      return async () => {
        const { ciphertext } = await stubs.crypto.reEncrypt(request);
        expect(ciphertext.length > 1024, "ReEncrypt: ciphertext too short");
      };
    }
    case "generate-data-key": {
      const request = create(GenerateDataKeyRequestSchema, { name: keys.aes, length: { case: "keySpec", value: DataKeySpec.AES_256 } });
      return async () => {
        const { plaintext, ciphertext } = await stubs.crypto.generateDataKey(request);
        expect(plaintext.length === 32 && ciphertext.length > 32, "GenerateDataKey: wrong lengths");
      };
    }
    case "mac-1k": {
      const request = create(MacRequestSchema, { name: keys.hmac, data: fixtures.plaintexts["1k"]! });
      return async () => {
        const { mac } = await stubs.crypto.mac(request);
        expect(mac.length === 32, "Mac: not an HMAC-SHA256");
      };
    }
    case "access-secret-1k": {
      const request = create(AccessSecretVersionRequestSchema, { name: `${fixtures.readSecret}/versions/latest` });
      return async () => {
        const { payload } = await stubs.secrets.accessSecretVersion(request);
        expect(payload?.data.length === 1024, "AccessSecretVersion: not the 1 KiB value stored");
      };
    }
    case "add-secret-version-1k": {
      // Each slot writes to a secret of its own: concurrent writers of one
      // secret conflict and write again, which measures contention, not cost.
      const requests = fixtures.writeSecrets.map((parent) =>
        create(AddSecretVersionRequestSchema, { parent, payload: { data: fixtures.plaintexts["1k"]! } }),
      );
      return async (slot) => {
        const request = requests[slot % requests.length]!;
        const { secretVersion } = await stubs.secrets.addSecretVersion(request);
        expect(secretVersion?.name.startsWith(`${request.parent}/versions/`) === true, "AddSecretVersion: not a version of the secret written");
      };
    }
    default:
      throw new RangeError(`no operation for case "${caseId}"`);
  }
}
