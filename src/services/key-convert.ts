import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import {
  KeyVersionUsageSchema,
  KeyAlgorithm as ProtoKeyAlgorithm,
  KeyPurpose as ProtoKeyPurpose,
  KeySchema,
  KeyState as ProtoKeyState,
  KeyVersionSchema,
  KeyVersionState as ProtoKeyVersionState,
  type Key as ProtoKey,
  type KeyVersion as ProtoKeyVersion,
  type KeyVersionUsage as ProtoKeyVersionUsage,
} from "../../gen/keyward/v1/keys_pb.js";
import { DomainError } from "../domain/errors.js";
import {
  keyVersionName,
  type Key,
  type KeyAlgorithm,
  type KeyPurpose,
  type KeyState,
  type KeyVersion,
} from "../domain/keys/key.js";
import type { KeyFilter } from "../domain/keys/repository.js";

// The domain's names are the proto enum names without their prefix, so the
// generated enum objects (name → number) map both ways.
const enumName = <E extends Record<string, string | number>>(e: E, value: number): string | undefined => {
  const name = (e as Record<number, string>)[value];
  return name === undefined || name === "UNSPECIFIED" ? undefined : name;
};

export const purposeFromProto = (p: ProtoKeyPurpose) => enumName(ProtoKeyPurpose, p) as KeyPurpose;
export const algorithmFromProto = (a: ProtoKeyAlgorithm) => enumName(ProtoKeyAlgorithm, a) as KeyAlgorithm;
export const algorithmToProto = (a: string) => ProtoKeyAlgorithm[a as keyof typeof ProtoKeyAlgorithm] as ProtoKeyAlgorithm;

/** A Duration → milliseconds, refusing fractions of a second where whole seconds are required. */
export function durationToMs(duration: Duration, field: string): number {
  if (duration.nanos !== 0) {
    throw new DomainError("invalid-argument", `${field} must be a whole number of seconds`);
  }
  return Number(duration.seconds) * 1000;
}

export function toProtoKey(key: Key): ProtoKey {
  return create(KeySchema, {
    name: key.name,
    purpose: ProtoKeyPurpose[key.purpose],
    algorithm: algorithmToProto(key.algorithm),
    state: ProtoKeyState[key.state],
    primaryVersion: key.primaryVersion,
    minDecryptionVersion: key.minDecryptionVersion,
    rotationPeriod: key.rotationPeriodMs === null ? undefined : durationFromMs(key.rotationPeriodMs),
    nextRotationTime: key.nextRotationTime ? timestampFromDate(key.nextRotationTime) : undefined,
    deletionTime: key.deletionTime ? timestampFromDate(key.deletionTime) : undefined,
    description: key.description,
    labels: { ...key.labels },
    createTime: timestampFromDate(key.createTime),
    updateTime: timestampFromDate(key.updateTime),
    etag: key.etag,
  });
}

export function toProtoKeyVersion(version: KeyVersion, algorithm: string): ProtoKeyVersion {
  return create(KeyVersionSchema, {
    name: keyVersionName(version.keyName, version.version),
    version: version.version,
    state: ProtoKeyVersionState[version.state],
    algorithm: algorithmToProto(algorithm),
    createTime: timestampFromDate(version.createTime),
    destroyTime: version.destroyTime ? timestampFromDate(version.destroyTime) : undefined,
    usage: {
      operationCount: BigInt(version.usage.operationCount),
      lastUsedTime: version.usage.lastUsedTime ? timestampFromDate(version.usage.lastUsedTime) : undefined,
    },
  });
}

/**
 * ListKeys' filter: `field=value` terms joined by ` AND ` (the proto's
 * pattern has already checked the shape). Enum values are the proto names.
 */
export function parseKeyFilter(filter: string): KeyFilter {
  const result: { state?: KeyState; purpose?: KeyPurpose; algorithm?: KeyAlgorithm; labels?: Record<string, string> } = {};
  if (filter === "") {
    return result;
  }
  for (const term of filter.split(" AND ")) {
    const [field, value] = term.split("=", 2) as [string, string];
    const set = <T>(name: string, prefix: string, e: Record<string, string | number>, assign: (v: T) => void) => {
      const bare = value.startsWith(prefix) ? value.slice(prefix.length) : "";
      if (!(bare in e) || bare === "UNSPECIFIED") {
        throw new DomainError("invalid-argument", `filter: unknown ${name} ${value}`);
      }
      assign(bare as T);
    };
    if (field === "state") set<KeyState>("state", "KEY_STATE_", ProtoKeyState, (v) => (result.state = v));
    else if (field === "purpose") set<KeyPurpose>("purpose", "KEY_PURPOSE_", ProtoKeyPurpose, (v) => (result.purpose = v));
    else if (field === "algorithm") set<KeyAlgorithm>("algorithm", "KEY_ALGORITHM_", ProtoKeyAlgorithm, (v) => (result.algorithm = v));
    else if (field.startsWith("labels.")) (result.labels ??= {})[field.slice("labels.".length)] = value;
    else throw new DomainError("invalid-argument", `filter: unknown field ${field}`);
  }
  return result;
}

/** `keys/{key}/versions/{n}` → its parts (the proto's pattern has checked the shape). */
export function splitVersionName(name: string): { keyName: string; version: number | undefined } {
  const at = name.indexOf("/versions/");
  return at === -1 ? { keyName: name, version: undefined } : { keyName: name.slice(0, at), version: Number(name.slice(at + 10)) };
}

/** Usage of every version together: operations summed, the latest use. */
export function totalUsage(versions: readonly KeyVersion[]): ProtoKeyVersionUsage {
  let count = 0;
  let last: Date | null = null;
  for (const v of versions) {
    count += v.usage.operationCount;
    if (v.usage.lastUsedTime !== null && (last === null || v.usage.lastUsedTime > last)) {
      last = v.usage.lastUsedTime;
    }
  }
  return create(KeyVersionUsageSchema, {
    operationCount: BigInt(count),
    lastUsedTime: last === null ? undefined : timestampFromDate(last),
  });
}
