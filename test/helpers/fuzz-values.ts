import { ScalarType, type DescField, type DescMessage } from "@bufbuild/protobuf";
import fc from "fast-check";
import { anyBytes, anyString, invalidUtf8, type RealisticValues } from "./message-arbitrary.js";

/** What exists on the server under fuzzing, for realistic field values. */
export interface FuzzPools {
  /** `keys/{key}` names: ones that exist in every state and purpose, and ones that do not. */
  readonly keyNames: readonly string[];
  readonly secretNames: readonly string[];
  /** `secrets/{project}/{environment}` parents and deeper prefixes. */
  readonly secretParents: readonly string[];
  /** Ciphertexts the server issued (Encrypt, GenerateDataKey), each with the associated data it needs. */
  readonly ciphertexts: readonly Uint8Array[];
  readonly associatedData: readonly Uint8Array[];
  readonly signatures: readonly Uint8Array[];
  readonly macs: readonly Uint8Array[];
  readonly pageTokens: readonly string[];
  /** Audit sequences for ranges and replays, without 1 (the whole log): that one is added rarely. */
  readonly auditSequences: readonly bigint[];
}

const SEGMENT = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const KEY_ID = /^[a-z][a-z0-9-]{0,62}$/;

/** A path of `depth` segments (1..12: the protos allow 1..8 below the environment). */
const secretPath = (min: number, max: number) =>
  fc
    .array(fc.oneof({ weight: 6, arbitrary: fc.stringMatching(SEGMENT) }, { weight: 1, arbitrary: fc.constantFrom("versions", "latest", "a".repeat(64)) }), {
      minLength: min,
      maxLength: max,
    })
    .map((segments) => segments.join("/"));

/** Versions of `names`: numbered (existing, large, zero), `latest`, and nested `versions`. */
const versionsOf = (names: fc.Arbitrary<string>, latest: boolean) =>
  fc
    .tuple(names, fc.constantFrom("1", "2", "3", "999999999", "1000000000", "0", "-1", "999999999999999999", ...(latest ? ["latest"] : [])))
    .map(([name, version]) => `${name}/versions/${version}`);

const mutate = (pool: readonly Uint8Array[]) =>
  fc.tuple(fc.constantFrom(...pool), fc.constantFrom("as-is", "flip", "truncate", "extend", "swap-halves"), fc.nat()).map(([bytes, how, at]) => {
    const i = at % Math.max(bytes.length, 1);
    switch (how) {
      case "flip": {
        const copy = Uint8Array.from(bytes);
        copy[i] = copy[i]! ^ 0x01;
        return copy;
      }
      case "truncate":
        return bytes.subarray(0, i);
      case "extend":
        return Uint8Array.from([...bytes, 0]);
      case "swap-halves":
        return Uint8Array.from([...bytes.subarray(i), ...bytes.subarray(0, i)]);
      default:
        return bytes;
    }
  });

/**
 * Realistic values by field name, for Keyward's request messages: names of
 * keys and secrets that exist (in every state) and that do not, deep and
 * reserved paths, ciphertexts, signatures and MACs the server issued (as is
 * and altered), page tokens, filters and update masks. Anything else is left
 * to the generic values.
 */
export function realisticValues(pools: FuzzPools) {
  const keyName = fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...pools.keyNames) },
    { weight: 2, arbitrary: fc.stringMatching(KEY_ID).map((id) => `keys/${id}`) },
    { weight: 1, arbitrary: fc.constantFrom("keys/", "keys/UPPER", "keys/a/b", `keys/${"k".repeat(63)}`, `keys/${"k".repeat(64)}`, "keys/a\u0000") },
  );
  const keyOrVersion = fc.oneof({ weight: 3, arbitrary: keyName }, { weight: 1, arbitrary: versionsOf(keyName, false) });
  const secretName = fc.oneof(
    { weight: 24, arbitrary: fc.constantFrom(...pools.secretNames) },
    { weight: 4, arbitrary: fc.tuple(fc.constantFrom(...pools.secretParents), secretPath(1, 10)).map(([p, path]) => `${p}/${path}`) },
    { weight: 1, arbitrary: invalidUtf8().map((bad) => `secrets/app/prod/${bad}`) },
  );
  const secretParent = fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...pools.secretParents, "secrets", "secrets/app", "secrets/versions/prod") },
    { weight: 1, arbitrary: secretPath(0, 12).map((path) => (path === "" ? "secrets" : `secrets/${path}`)) },
  );
  const secretVersion = fc.oneof(
    { weight: 4, arbitrary: fc.tuple(fc.constantFrom(...pools.secretNames), fc.constantFrom("1", "2", "3", "latest")).map(([name, v]) => `${name}/versions/${v}`) },
    { weight: 1, arbitrary: versionsOf(secretName, true) },
  );
  const projectEnvironment = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...pools.secretParents) }, { weight: 1, arbitrary: secretParent });
  const ciphertext = fc.oneof({ weight: 6, arbitrary: mutate(pools.ciphertexts) }, { weight: 1, arbitrary: anyBytes() });
  const filters = fc.constantFrom(
    "",
    "state=KEY_STATE_ENABLED",
    "purpose=KEY_PURPOSE_MAC AND state=KEY_STATE_DISABLED",
    "algorithm=KEY_ALGORITHM_AES_256_GCM",
    "labels.team=payments",
    "type=SECRET_TYPE_PASSWORD",
    "state=KEY_STATE_NOPE",
    "labels.=x",
    "type=SECRET_TYPE_JSON AND labels.env=prod",
  );

  return (field: DescField, parent: DescMessage): RealisticValues | undefined => {
    const secrets = parent.typeName.includes("Secret");
    switch (field.name) {
      case "name":
        if (parent.typeName === "keyward.v1.AccessSecretVersionRequest" || /(Disable|Enable|Destroy)SecretVersionRequest$/.test(parent.typeName)) {
          return { mixed: secretVersion };
        }
        if (/(Enable|Disable)KeyVersionRequest$/.test(parent.typeName)) {
          return { mixed: versionsOf(keyName, false) };
        }
        return { mixed: secrets ? secretName : keyOrVersion };
      case "parent":
        if (parent.typeName.includes("KeyVersions")) {
          return { mixed: keyName };
        }
        if (/(AddSecretVersion|ListSecretVersions|GenerateSecret)Request$/.test(parent.typeName)) {
          return { mixed: secretName };
        }
        return { mixed: parent.typeName === "keyward.v1.CreateSecretRequest" ? projectEnvironment : secretParent };
      case "destination_key":
      case "key":
        return field.fieldKind === "scalar" ? { mixed: keyOrVersion } : undefined;
      case "key_id":
        return { mixed: fc.oneof(fc.constantFrom(...pools.keyNames.map((n) => n.slice("keys/".length))), fc.stringMatching(KEY_ID)) };
      case "secret_id":
        // The fixtures' own ids too: DeleteSecret removes them, CreateSecret brings them back.
        return {
          mixed: fc.oneof(
            { weight: 3, arbitrary: fc.constantFrom(...pools.secretNames.map((name) => name.split("/").slice(3).join("/"))) },
            { weight: 1, arbitrary: secretPath(1, 10) },
          ),
        };
      case "ciphertext":
        return { mixed: ciphertext };
      case "associated_data":
      case "destination_associated_data":
        return { mixed: fc.constantFrom(...pools.associatedData) };
      case "signature":
        return { mixed: mutate(pools.signatures) };
      case "mac":
        return field.fieldKind === "scalar" ? { mixed: mutate(pools.macs) } : undefined;
      case "digest":
        return { mixed: fc.constantFrom(31, 32, 48, 64, 65).map((n) => new Uint8Array(n).fill(7)) };
      case "page_token":
        return { mixed: fc.oneof(fc.constantFrom(...pools.pageTokens, ""), anyString()) };
      case "filter":
        return { mixed: filters };
      case "paths":
        return {
          mixed: fc.array(fc.constantFrom("description", "labels", "rotation_period", "min_decryption_version", "max_versions", "*", "name", "purpose", ""), {
            maxLength: 3,
          }),
        };
      case "algorithm":
        // Generating RSA-3072/4096 keys takes seconds of CPU each: leave them out of key creation.
        return parent.typeName === "keyward.v1.Key" ? { only: fc.constantFrom(0, 1, 2, 3, 4, 5, 6, 9, 10, 11, -1, 99) } : undefined;
      case "purpose":
        return { mixed: fc.constantFrom(1, 2, 3) };
      case "plaintext":
      case "data":
      case "message":
        return field.fieldKind === "scalar" ? { mixed: fc.uint8Array({ maxLength: 64 }) } : undefined;
      case "key_spec":
        return { mixed: fc.constantFrom(1, 2) };
      case "number_of_bytes":
        return { mixed: fc.constantFrom(1, 16, 32, 1024) };
      case "format":
        return { mixed: fc.constantFrom(1, 2, 3, 4, 5) };
      case "length":
        return { mixed: fc.constantFrom(8, 32, 4096) };
      case "type":
        return parent.typeName === "keyward.v1.Secret" ? { mixed: fc.constantFrom(0, 1, 2, 3, 4, 5, 6, 7) } : undefined;
      case "max_versions":
        return { mixed: fc.constantFrom(0, 1, 3, 1000) };
      case "pending_window":
        return { mixed: fc.constantFrom(1, 86_400, 2_592_000, 31_536_000, 31_536_001).map((seconds) => ({ seconds: BigInt(seconds) })) };
      case "rotation_period":
        return { mixed: fc.constantFrom(60, 3600, 7_776_000).map((seconds) => ({ seconds: BigInt(seconds) })) };
      case "expected_current_version":
      case "version":
        return field.fieldKind === "scalar" && field.scalar === ScalarType.INT64 ? { mixed: fc.constantFrom(0n, 1n, 2n, 3n, 100n) } : undefined;
      case "start_sequence":
      case "end_sequence":
        // Mostly small ranges and sequences beyond the head: a replay or a
        // verification of the whole log costs time that grows with every
        // call made, and is done often enough by the generic values.
        return {
          mixed: fc.oneof(
            { weight: 8, arbitrary: fc.constantFrom(...pools.auditSequences) },
            { weight: 1, arbitrary: fc.constantFrom(1n, 999_999_999n) },
          ),
        };
      case "page_size":
        return { mixed: fc.constantFrom(0, 1, 2, 10, 100) };
      case "service":
        return { mixed: fc.constantFrom("", "keyward.v1.KeysService", "grpc.health.v1.Health", "nope.Service", "keyward.v1") };
      case "file_by_filename":
        return { mixed: fc.constantFrom("keyward/v1/keys.proto", "buf/validate/validate.proto", "google/protobuf/duration.proto", "nope.proto", "") };
      case "file_containing_symbol":
        return {
          mixed: fc.constantFrom("keyward.v1.KeysService", "keyward.v1.KeysService.CreateKey", "keyward.v1.Key", "keyward.v1.Nope", "", "."),
        };
      case "containing_type":
        return { mixed: fc.constantFrom("buf.validate.FieldRules", "google.protobuf.FieldOptions", "keyward.v1.Key", "") };
      default:
        return undefined;
    }
  };
}
