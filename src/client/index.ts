/**
 * Keyward's TypeScript client: `createKeywardClient` (typed, deadlines,
 * safe retries, several replicas), the envelope helpers for payloads of any
 * size, and the generated request, response and enum types of the API.
 */
export { createKeywardClient, type KeywardClient, type KeywardClientOptions, type RetryOptions } from "./client.js";
export { ENVELOPE_FORMAT_VERSION, envelopeDecrypt, envelopeEncrypt } from "./envelope.js";
export { isRetryable } from "./retry-policy.js";
export { Code, ConnectError, type CallOptions, type Interceptor } from "@connectrpc/connect";
export * from "../../gen/keyward/v1/access_pb.js";
export * from "../../gen/keyward/v1/audit_pb.js";
export * from "../../gen/keyward/v1/crypto_pb.js";
export * from "../../gen/keyward/v1/keys_pb.js";
export * from "../../gen/keyward/v1/secrets_pb.js";
