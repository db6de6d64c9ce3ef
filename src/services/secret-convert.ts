import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  GenerateSecretFormat,
  SecretSchema,
  SecretType as ProtoSecretType,
  SecretVersionOrigin as ProtoOrigin,
  SecretVersionSchema,
  SecretVersionState as ProtoSecretVersionState,
  type GenerateSecretSpec,
  type Secret as ProtoSecret,
  type SecretVersion as ProtoSecretVersion,
} from "../../gen/keyward/v1/secrets_pb.js";
import { DomainError } from "../domain/errors.js";
import type { GenerateFormat, GenerateSpec } from "../domain/secrets/generate.js";
import type { SecretFilter } from "../domain/secrets/repository.js";
import { secretVersionName, type Secret, type SecretType, type SecretVersion } from "../domain/secrets/secret.js";

/** UNSPECIFIED means OPAQUE (secrets.proto). */
export function secretTypeFromProto(type: ProtoSecretType): SecretType {
  const name = ProtoSecretType[type];
  return (name === undefined || name === "UNSPECIFIED" ? "OPAQUE" : name) as SecretType;
}

export function toProtoSecret(secret: Secret): ProtoSecret {
  return create(SecretSchema, {
    name: secret.name,
    type: ProtoSecretType[secret.type],
    description: secret.description,
    labels: { ...secret.labels },
    key: secret.keyName,
    maxVersions: secret.maxVersions,
    currentVersion: BigInt(secret.currentVersion),
    createTime: timestampFromDate(secret.createTime),
    updateTime: timestampFromDate(secret.updateTime),
    creator: secret.creator,
    updater: secret.updater,
    etag: secret.etag,
  });
}

export function toProtoSecretVersion(version: SecretVersion): ProtoSecretVersion {
  return create(SecretVersionSchema, {
    name: secretVersionName(version.secretName, version.version),
    version: BigInt(version.version),
    state: ProtoSecretVersionState[version.state],
    createTime: timestampFromDate(version.createTime),
    creator: version.creator,
    destroyTime: version.destroyTime ? timestampFromDate(version.destroyTime) : undefined,
    clientSpecifiedDataCrc32c: version.clientSpecifiedDataCrc32c,
    origin: ProtoOrigin[version.origin],
    sourceVersion: BigInt(version.sourceVersion),
  });
}

export function generateSpecFromProto(spec: GenerateSecretSpec): GenerateSpec {
  return {
    length: spec.length,
    format: GenerateSecretFormat[spec.format] as GenerateFormat,
    requireLowercase: spec.requireLowercase,
    requireUppercase: spec.requireUppercase,
    requireDigit: spec.requireDigit,
    requireSymbol: spec.requireSymbol,
    symbols: spec.symbols,
  };
}

/** ListSecrets' filter: `type=SECRET_TYPE_X` and `labels.k=v` terms joined by ` AND ` (shape checked by the proto). */
export function parseSecretFilter(filter: string): SecretFilter {
  const result: { type?: string; labels?: Record<string, string> } = {};
  if (filter === "") {
    return result;
  }
  for (const term of filter.split(" AND ")) {
    const [field, value] = term.split("=", 2) as [string, string];
    if (field === "type") {
      const bare = value.replace(/^SECRET_TYPE_/, "");
      if (!(bare in ProtoSecretType) || bare === "UNSPECIFIED") {
        throw new DomainError("invalid-argument", `filter: unknown type ${value}`);
      }
      result.type = bare;
    } else {
      (result.labels ??= {})[field.slice("labels.".length)] = value;
    }
  }
  return result;
}

/**
 * `…/versions/{n}` or `…/versions/latest` → its parts (the proto's pattern
 * has checked the shape). {n} stays a bigint: it may have 18 digits, more
 * than a JS number holds exactly.
 */
export function splitSecretVersionName(name: string): { secretName: string; version: bigint | "latest" } {
  const at = name.lastIndexOf("/versions/");
  const tail = name.slice(at + "/versions/".length);
  return { secretName: name.slice(0, at), version: tail === "latest" ? "latest" : BigInt(tail) };
}
