import type { DescMessage, DescMethod, DescService, MessageInitShape } from "@bufbuild/protobuf";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";

/*
 * Which calls the client sends again after UNAVAILABLE.
 *
 * UNAVAILABLE usually means the call was not carried out, but not always:
 * a connection can break after the server committed and before the answer
 * arrived. So a call is retried only when carrying it out twice has the
 * same effect as once:
 *
 * - reads, and every CryptoService call: they change no state (Encrypt and
 *   GenerateDataKey return a fresh ciphertext or data key each time, nothing
 *   is stored; a retry costs one more audit event and one more usage count);
 * - state changes documented as a no-op when the state is already reached
 *   (Enable/Disable of keys, key versions and secret versions, and
 *   DestroySecretVersion);
 * - mutations that carry a check-and-set (an etag, or
 *   expected_current_version): a repeat of one that already happened fails
 *   ABORTED instead of applying twice.
 *
 * Never: CreateKey and CreateSecret (a repeat answers ALREADY_EXISTS for the
 * caller's own success), RotateKey (a repeat adds a second version),
 * ScheduleKeyDeletion and CancelKeyDeletion (a repeat answers
 * FAILED_PRECONDITION for the caller's own success), the other mutations
 * without check-and-set (a repeat of UpdateKey could overwrite a change
 * made in between; of AddSecretVersion, add a second version; of
 * DeleteSecret, delete a secret created again under the same name), and
 * TailAuditEvents (a stream: resume it from the last sequence received + 1).
 */

/** "always", "never", or a test of the request (true: retry). */
type Rule<I extends DescMessage> = "always" | "never" | ((request: MessageInitShape<I>) => boolean);

/** One rule per method of a service: the compiler rejects a table missing a method. */
type Rules<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends { input: infer I extends DescMessage } ? Rule<I> : never;
};

export const KEYS_RETRY: Rules<typeof KeysService> = {
  createKey: "never",
  getKey: "always",
  listKeys: "always",
  updateKey: (request) => Boolean(request.key?.etag),
  rotateKey: "never",
  listKeyVersions: "always",
  enableKey: "always",
  disableKey: "always",
  scheduleKeyDeletion: "never",
  cancelKeyDeletion: "never",
  enableKeyVersion: "always",
  disableKeyVersion: "always",
  getPublicKey: "always",
};

export const CRYPTO_RETRY: Rules<typeof CryptoService> = {
  encrypt: "always",
  decrypt: "always",
  reEncrypt: "always",
  generateDataKey: "always",
  generateDataKeyWithoutPlaintext: "always",
  sign: "always",
  verify: "always",
  mac: "always",
  verifyMac: "always",
  batchEncrypt: "always",
  batchDecrypt: "always",
};

export const SECRETS_RETRY: Rules<typeof SecretsService> = {
  createSecret: "never",
  getSecret: "always",
  listSecrets: "always",
  updateSecret: (request) => Boolean(request.secret?.etag),
  deleteSecret: (request) => Boolean(request.etag),
  addSecretVersion: (request) => request.expectedCurrentVersion !== undefined,
  accessSecretVersion: "always",
  listSecretVersions: "always",
  disableSecretVersion: "always",
  enableSecretVersion: "always",
  destroySecretVersion: "always",
  rollbackSecret: (request) => request.expectedCurrentVersion !== undefined,
  generateSecret: (request) => request.expectedCurrentVersion !== undefined,
};

export const AUDIT_RETRY: Rules<typeof AuditService> = {
  listAuditEvents: "always",
  tailAuditEvents: "never",
  verifyAuditChain: "always",
  // Signs a checkpoint of the head: a repeat signs another, harmlessly.
  getAuditCheckpoint: "always",
};

export const ACCESS_RETRY: Rules<typeof AccessService> = {
  getCallerIdentity: "always",
};

const RULES = new Map<string, Rule<DescMessage>>();
for (const [service, rules] of [
  [KeysService, KEYS_RETRY],
  [CryptoService, CRYPTO_RETRY],
  [SecretsService, SECRETS_RETRY],
  [AuditService, AUDIT_RETRY],
  [AccessService, ACCESS_RETRY],
] as [DescService, Record<string, Rule<DescMessage>>][]) {
  for (const method of service.methods) {
    RULES.set(`${service.typeName}/${method.name}`, rules[method.localName]!);
  }
}

/**
 * Whether a call of `method` with `request` may be sent again after it
 * failed UNAVAILABLE (see the table above). Methods of other services are
 * never retried.
 */
export function isRetryable<I extends DescMessage>(method: DescMethod, request: MessageInitShape<I>): boolean {
  const rule = RULES.get(`${method.parent.typeName}/${method.name}`) ?? "never";
  return typeof rule === "function" ? rule(request as MessageInitShape<DescMessage>) : rule === "always";
}
