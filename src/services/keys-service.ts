import type { ServiceImpl } from "@connectrpc/connect";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { DomainError } from "../domain/errors.js";
import type { KeyManager } from "../domain/keys/key-manager.js";
import type { KeyUpdate } from "../domain/keys/state-machine.js";
import { kAuditWithin, kIdentity } from "../server/context.js";
import { PERMISSIONS } from "../server/permissions.js";
import type { PolicyStore } from "../server/policy-store.js";
import {
  algorithmFromProto,
  algorithmToProto,
  durationToMs,
  parseKeyFilter,
  purposeFromProto,
  splitVersionName,
  toProtoKey,
  toProtoKeyVersion,
  totalUsage,
} from "./key-convert.js";
import { requirePlainText } from "./text.js";
import { decodePageToken, encodePageToken, filterDigest, grantedPage, pageSizeOf } from "./page-token.js";

const LIST_KEYS = PERMISSIONS["keyward.v1.KeysService/ListKeys"]!;

/** KeysService: parses, calls the key manager, formats. Every mutation commits with its audit event. */
export function createKeysService(deps: {
  keys: KeyManager;
  policy: PolicyStore;
  /** Stored secret versions of a key encrypted with versions below the given one (rewrap progress). */
  storedValuesBelow?: (keyName: string, version: number) => Promise<number>;
}): ServiceImpl<typeof KeysService> {
  const { keys } = deps;
  return {
    async createKey(request, context) {
      const spec = request.key!;
      const created = await keys.create(
        {
          keyId: request.keyId,
          purpose: purposeFromProto(spec.purpose),
          algorithm: algorithmFromProto(spec.algorithm),
          rotationPeriodMs: spec.rotationPeriod ? durationToMs(spec.rotationPeriod, "rotation_period") : null,
          minDecryptionVersion: spec.minDecryptionVersion,
          description: requirePlainText("key.description", spec.description),
          labels: spec.labels,
        },
        context.values.get(kAuditWithin),
      );
      return { key: toProtoKey(created.key) };
    },

    async getKey(request) {
      const { key, versions } = await keys.get(request.name);
      const waiting = deps.storedValuesBelow ? await deps.storedValuesBelow(key.name, key.primaryVersion) : 0;
      return { key: { ...toProtoKey(key), secretVersionsToRewrap: BigInt(waiting), usage: totalUsage(versions) } };
    },

    async listKeys(request, context) {
      const filter = parseKeyFilter(request.filter);
      const digest = filterDigest(["keys", filter]);
      const after = decodePageToken(request.pageToken, digest);
      // Only keys the caller is granted are listed: a grant on `keys` lets
      // the caller list, not see every key.
      const identity = context.values.get(kIdentity)!.name;
      const authorizer = deps.policy.current();
      const roles = LIST_KEYS.kind === "role" ? LIST_KEYS.roles : [];
      const { page, next } = await grantedPage(
        (from, limit) => keys.list(filter, from, limit),
        (key) => authorizer.decide(identity, roles, [key.name]).kind === "allow",
        after,
        pageSizeOf(request.pageSize),
      );
      return {
        keys: page.map(toProtoKey),
        nextPageToken: next === undefined ? "" : encodePageToken(next, digest),
      };
    },

    async updateKey(request, context) {
      const spec = request.key!;
      const update: { -readonly [K in keyof KeyUpdate]: KeyUpdate[K] } = {};
      for (const path of request.updateMask!.paths) {
        if (path === "description") update.description = requirePlainText("key.description", spec.description);
        if (path === "labels") update.labels = spec.labels;
        if (path === "min_decryption_version") update.minDecryptionVersion = spec.minDecryptionVersion;
        if (path === "rotation_period") {
          update.rotationPeriodMs = spec.rotationPeriod ? durationToMs(spec.rotationPeriod, "rotation_period") : null;
        }
      }
      const key = await keys.update(spec.name, update, spec.etag, context.values.get(kAuditWithin));
      return { key: toProtoKey(key) };
    },

    async rotateKey(request, context) {
      const rotated = await keys.rotate(request.name, context.values.get(kAuditWithin));
      return { key: toProtoKey(rotated.key), keyVersion: toProtoKeyVersion(rotated.version, rotated.key.algorithm) };
    },

    async listKeyVersions(request) {
      const stored = await keys.get(request.parent);
      const digest = filterDigest(["versions", request.parent]);
      const cursor = decodePageToken(request.pageToken, digest);
      const before = cursor === "" ? Number.POSITIVE_INFINITY : Number(cursor);
      if (!Number.isSafeInteger(before) && cursor !== "") {
        throw new DomainError("invalid-argument", "page_token is malformed");
      }
      const pageSize = pageSizeOf(request.pageSize);
      const newestFirst = [...stored.versions].reverse().filter((v) => v.version < before);
      const page = newestFirst.slice(0, pageSize);
      return {
        keyVersions: page.map((v) => toProtoKeyVersion(v, stored.key.algorithm)),
        nextPageToken: newestFirst.length > pageSize ? encodePageToken(String(page.at(-1)!.version), digest) : "",
      };
    },

    async enableKey(request, context) {
      return { key: toProtoKey(await keys.enable(request.name, context.values.get(kAuditWithin))) };
    },

    async disableKey(request, context) {
      return { key: toProtoKey(await keys.disable(request.name, context.values.get(kAuditWithin))) };
    },

    async scheduleKeyDeletion(request, context) {
      const windowMs = request.pendingWindow ? durationToMs(request.pendingWindow, "pending_window") : undefined;
      return { key: toProtoKey(await keys.scheduleDeletion(request.name, windowMs, context.values.get(kAuditWithin))) };
    },

    async cancelKeyDeletion(request, context) {
      return { key: toProtoKey(await keys.cancelDeletion(request.name, context.values.get(kAuditWithin))) };
    },

    async enableKeyVersion(request, context) {
      const { keyName, version } = splitVersionName(request.name);
      const changed = await keys.enableVersion(keyName, version!, context.values.get(kAuditWithin));
      return { keyVersion: toProtoKeyVersion(changed.version, changed.key.algorithm) };
    },

    async disableKeyVersion(request, context) {
      const { keyName, version } = splitVersionName(request.name);
      const changed = await keys.disableVersion(keyName, version!, context.values.get(kAuditWithin));
      return { keyVersion: toProtoKeyVersion(changed.version, changed.key.algorithm) };
    },

    async getPublicKey(request) {
      const { keyName, version } = splitVersionName(request.name);
      const found = await keys.publicKey(keyName, version);
      return {
        pem: found.pem,
        algorithm: algorithmToProto(found.key.algorithm),
        keyVersion: `${keyName}/versions/${found.version}`,
      };
    },
  };
}
