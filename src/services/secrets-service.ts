import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { crc32c } from "../crypto/crc32c.js";
import { DomainError } from "../domain/errors.js";
import type { SecretManager, SecretUpdate } from "../domain/secrets/secret-manager.js";
import { kAuditWithin, kIdentity } from "../server/context.js";
import { PERMISSIONS } from "../server/permissions.js";
import type { PolicyStore } from "../server/policy-store.js";
import { requirePlainText } from "./text.js";
import { decodePageToken, encodePageToken, filterDigest, grantedPage, pageSizeOf } from "./page-token.js";
import {
  generateSpecFromProto,
  parseSecretFilter,
  secretTypeFromProto,
  splitSecretVersionName,
  toProtoSecret,
  toProtoSecretVersion,
} from "./secret-convert.js";

const LIST_SECRETS = PERMISSIONS["keyward.v1.SecretsService/ListSecrets"]!;

const caller = (context: HandlerContext) => context.values.get(kIdentity)!.name;
const within = (context: HandlerContext) => context.values.get(kAuditWithin);

/**
 * Versions are numbered from 1 up, one at a time, so none can pass 2^53 - 1;
 * the protos accept int64. A larger number, rounded to a JS number, would
 * name another version in the NOT_FOUND message, or fall outside
 * PostgreSQL's bigint and fail the call as INTERNAL.
 */
const MAX_VERSION = BigInt(Number.MAX_SAFE_INTEGER);

/** SecretsService: parses, calls the secret manager, formats. Values leave only through AccessSecretVersion and GenerateSecret. */
export function createSecretsService(deps: { secrets: SecretManager; policy: PolicyStore }): ServiceImpl<typeof SecretsService> {
  const { secrets } = deps;

  /** The version as the domain's number, or NOT_FOUND (the secret's own first) for one that cannot exist. */
  const versionNumber = async (secretName: string, version: bigint): Promise<number> => {
    if (version <= MAX_VERSION) {
      return Number(version);
    }
    await secrets.get(secretName);
    throw new DomainError("not-found", `${secretName}/versions/${version} not found`);
  };

  return {
    async createSecret(request, context) {
      const spec = request.secret;
      const secret = await secrets.create(
        {
          name: `${request.parent}/${request.secretId}`,
          type: secretTypeFromProto(spec?.type ?? 0),
          description: requirePlainText("secret.description", spec?.description ?? ""),
          labels: spec?.labels ?? {},
          keyName: spec?.key ?? "",
          maxVersions: spec?.maxVersions ?? 0,
        },
        caller(context),
        within(context),
      );
      return { secret: toProtoSecret(secret) };
    },

    async getSecret(request) {
      return { secret: toProtoSecret(await secrets.get(request.name)) };
    },

    async listSecrets(request, context) {
      const filter = parseSecretFilter(request.filter);
      const digest = filterDigest(["secrets", request.parent, filter]);
      const after = decodePageToken(request.pageToken, digest);
      // Only secrets the caller is granted are listed.
      const identity = caller(context);
      const authorizer = deps.policy.current();
      const roles = LIST_SECRETS.kind === "role" ? LIST_SECRETS.roles : [];
      const { page, next } = await grantedPage(
        (from, limit) => secrets.list(request.parent, filter, from, limit),
        (secret) => authorizer.decide(identity, roles, [secret.name]).kind === "allow",
        after,
        pageSizeOf(request.pageSize),
      );
      return {
        secrets: page.map(toProtoSecret),
        nextPageToken: next === undefined ? "" : encodePageToken(next, digest),
      };
    },

    async updateSecret(request, context) {
      const spec = request.secret!;
      const update: { -readonly [K in keyof SecretUpdate]: SecretUpdate[K] } = {};
      for (const path of request.updateMask!.paths) {
        if (path === "description") update.description = requirePlainText("secret.description", spec.description);
        if (path === "labels") update.labels = spec.labels;
        if (path === "max_versions") update.maxVersions = spec.maxVersions;
      }
      const secret = await secrets.update(spec.name, update, spec.etag, caller(context), within(context));
      return { secret: toProtoSecret(secret) };
    },

    async deleteSecret(request, context) {
      await secrets.delete(request.name, request.etag, within(context));
      return {};
    },

    async addSecretVersion(request, context) {
      const payload = request.payload!;
      if (payload.dataCrc32c !== undefined && crc32c(payload.data) !== payload.dataCrc32c) {
        throw new DomainError("invalid-argument", "payload.data_crc32c does not match the data received; it was corrupted in transit");
      }
      const version = await secrets.addVersion(
        request.parent,
        { data: payload.data, clientSpecifiedCrc32c: payload.dataCrc32c !== undefined },
        request.expectedCurrentVersion,
        caller(context),
        within(context),
      );
      return { secretVersion: toProtoSecretVersion(version) };
    },

    async accessSecretVersion(request) {
      const { secretName, version } = splitSecretVersionName(request.name);
      const found = await secrets.access(secretName, version === "latest" ? version : await versionNumber(secretName, version));
      return {
        name: `${secretName}/versions/${found.version.version}`,
        payload: { data: found.value, dataCrc32c: crc32c(found.value) },
      };
    },

    async listSecretVersions(request) {
      const digest = filterDigest(["secret-versions", request.parent]);
      const cursor = decodePageToken(request.pageToken, digest);
      const before = cursor === "" ? Number.MAX_SAFE_INTEGER : Number(cursor);
      if (!Number.isSafeInteger(before)) {
        throw new DomainError("invalid-argument", "page_token is malformed");
      }
      const pageSize = pageSizeOf(request.pageSize);
      const versions = await secrets.listVersions(request.parent, before, pageSize + 1);
      const page = versions.slice(0, pageSize);
      return {
        secretVersions: page.map(toProtoSecretVersion),
        nextPageToken: versions.length > pageSize ? encodePageToken(String(page.at(-1)!.version), digest) : "",
      };
    },

    async disableSecretVersion(request, context) {
      const { secretName, version } = splitSecretVersionName(request.name);
      const number = await versionNumber(secretName, version as bigint);
      return { secretVersion: toProtoSecretVersion(await secrets.moveVersion(secretName, number, "disable", within(context))) };
    },

    async enableSecretVersion(request, context) {
      const { secretName, version } = splitSecretVersionName(request.name);
      const number = await versionNumber(secretName, version as bigint);
      return { secretVersion: toProtoSecretVersion(await secrets.moveVersion(secretName, number, "enable", within(context))) };
    },

    async destroySecretVersion(request, context) {
      const { secretName, version } = splitSecretVersionName(request.name);
      const number = await versionNumber(secretName, version as bigint);
      return { secretVersion: toProtoSecretVersion(await secrets.moveVersion(secretName, number, "destroy", within(context))) };
    },

    async rollbackSecret(request, context) {
      const version = await secrets.rollback(
        request.name,
        await versionNumber(request.name, request.version),
        request.expectedCurrentVersion,
        caller(context),
        within(context),
      );
      return { secretVersion: toProtoSecretVersion(version) };
    },

    async generateSecret(request, context) {
      const generated = await secrets.generate(
        request.parent,
        generateSpecFromProto(request.spec!),
        request.expectedCurrentVersion,
        caller(context),
        within(context),
      );
      return {
        secretVersion: toProtoSecretVersion(generated.version),
        payload: { data: generated.value, dataCrc32c: crc32c(generated.value) },
      };
    },
  };
}
