import { create } from "@bufbuild/protobuf";
import { timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Role as ProtoRole } from "../../gen/keyward/v1/access_pb.js";
import {
  AuditCheckpointSchema,
  AuditEventSchema,
  type AuditCheckpoint as ProtoAuditCheckpoint,
  type AuditEvent as ProtoAuditEvent,
} from "../../gen/keyward/v1/audit_pb.js";
import { KeyAlgorithm } from "../../gen/keyward/v1/keys_pb.js";
import { checkpointPayload, type Checkpoint } from "../domain/audit/checkpoint.js";
import type { AuditEvent } from "../domain/audit/event.js";
import type { CheckpointSigner } from "../domain/audit/signer.js";
import type { Role } from "../domain/authz/roles.js";
import { DomainError } from "../domain/errors.js";

/** Domain role → proto enum. */
export const toProtoRole: Readonly<Record<Role, ProtoRole>> = {
  ADMIN: ProtoRole.ADMIN,
  SERVICE: ProtoRole.SERVICE,
  AUDITOR: ProtoRole.AUDITOR,
};

/** Domain audit event → proto message (every field, hashes included). */
export function toProtoAuditEvent(event: AuditEvent): ProtoAuditEvent {
  return create(AuditEventSchema, {
    sequence: event.sequence,
    time: timestampFromDate(event.time),
    identity: event.identity,
    roles: event.roles.map((role) => toProtoRole[role] ?? ProtoRole.UNSPECIFIED),
    method: event.method,
    resources: [...event.resources],
    keyVersion: event.keyVersion,
    resultCode: event.resultCode,
    resultMessage: event.resultMessage,
    requestId: event.requestId,
    peerAddress: event.peerAddress,
    policyDigest: event.policyDigest,
    previousHash: event.previousHash,
    hash: event.hash,
  });
}

/** A signed checkpoint → proto message, with the exact signed bytes and the key to verify them. */
export function toProtoAuditCheckpoint(
  checkpoint: Checkpoint,
  key: Pick<CheckpointSigner, "publicKeyPem" | "algorithm">,
): ProtoAuditCheckpoint {
  return create(AuditCheckpointSchema, {
    sequence: checkpoint.sequence,
    hash: checkpoint.hash,
    time: timestampFromDate(checkpoint.time),
    signedPayload: checkpointPayload(checkpoint.sequence, checkpoint.hash, checkpoint.time),
    signature: checkpoint.signature,
    algorithm: key.algorithm === "ED25519" ? KeyAlgorithm.ED25519 : KeyAlgorithm.UNSPECIFIED,
    publicKeyPem: key.publicKeyPem,
    keyId: checkpoint.keyId,
  });
}

/**
 * A proto Timestamp → whole milliseconds, rounded up: audit times are whole
 * milliseconds, so for both an inclusive lower bound and an exclusive upper
 * bound rounding up keeps exactly the events the caller asked for.
 */
export function timestampToCeilDate(timestamp: Timestamp, field: string): Date {
  // The proto's rules bound the seconds; nanos outside 0..999,999,999 make an
  // invalid Timestamp that protovalidate lets through.
  if (!Number.isInteger(timestamp.nanos) || timestamp.nanos < 0 || timestamp.nanos > 999_999_999) {
    throw new DomainError("invalid-argument", `${field}: nanos must be within 0..999999999`);
  }
  return new Date(Number(timestamp.seconds) * 1000 + Math.ceil(timestamp.nanos / 1_000_000));
}
