import type { Role } from "../domain/authz/roles.js";

/**
 * What a method requires. `resources` reads the resource names out of the
 * (already validated) request, without any lookup, so authorization is
 * decided before anything is read from storage and a caller cannot probe
 * what exists.
 */
export type Permission =
  | { readonly kind: "authenticated" }
  | {
      readonly kind: "role";
      readonly roles: readonly Role[];
      readonly resources: (request: Request) => string[];
    };

type Request = Record<string, unknown>;

const ADMIN: readonly Role[] = ["ADMIN"];
const SERVICE: readonly Role[] = ["SERVICE"];
const AUDIT_READERS: readonly Role[] = ["AUDITOR", "ADMIN"];
const KEY_READERS: readonly Role[] = ["ADMIN", "SERVICE", "AUDITOR"];
const LISTERS: readonly Role[] = ["ADMIN", "AUDITOR"];

/** Collection names, used as the resource of calls that name no single resource. */
export const KEYS_COLLECTION = "keys";
export const AUDIT_RESOURCE = "audit";

const text = (request: Request, field: string): string => {
  const value = request[field];
  return typeof value === "string" ? value : "";
};

/**
 * A version belongs to its key or secret: grants on `keys/payments` cover
 * `keys/payments/versions/3`, so policies name keys and secrets only.
 */
export function withoutVersion(name: string): string {
  const at = name.lastIndexOf("/versions/");
  return at === -1 ? name : name.slice(0, at);
}

const named = (field: string) => (request: Request) => [withoutVersion(text(request, field))];
const nested = (field: string) => (request: Request) => {
  const inner = request[field];
  return [withoutVersion(inner && typeof inner === "object" ? text(inner as Request, "name") : "")];
};
const fixed = (resource: string) => () => [resource];

const role = (roles: readonly Role[], resources: (request: Request) => string[]): Permission => ({
  kind: "role",
  roles,
  resources,
});

/**
 * The one permission table: every RPC Keyward serves, by `package.Service/Method`.
 * A method missing here is denied to everybody.
 */
export const PERMISSIONS: Readonly<Record<string, Permission>> = {
  "keyward.v1.AccessService/GetCallerIdentity": { kind: "authenticated" },

  "keyward.v1.KeysService/CreateKey": role(ADMIN, (r) => [`${KEYS_COLLECTION}/${text(r, "keyId")}`]),
  "keyward.v1.KeysService/GetKey": role(KEY_READERS, named("name")),
  "keyward.v1.KeysService/ListKeys": role(LISTERS, fixed(KEYS_COLLECTION)),
  "keyward.v1.KeysService/UpdateKey": role(ADMIN, nested("key")),
  "keyward.v1.KeysService/RotateKey": role(ADMIN, named("name")),
  "keyward.v1.KeysService/ListKeyVersions": role(KEY_READERS, named("parent")),
  "keyward.v1.KeysService/EnableKey": role(ADMIN, named("name")),
  "keyward.v1.KeysService/DisableKey": role(ADMIN, named("name")),
  "keyward.v1.KeysService/ScheduleKeyDeletion": role(ADMIN, named("name")),
  "keyward.v1.KeysService/CancelKeyDeletion": role(ADMIN, named("name")),
  "keyward.v1.KeysService/EnableKeyVersion": role(ADMIN, named("name")),
  "keyward.v1.KeysService/DisableKeyVersion": role(ADMIN, named("name")),
  "keyward.v1.KeysService/GetPublicKey": role(KEY_READERS, named("name")),

  "keyward.v1.CryptoService/Encrypt": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/Decrypt": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/ReEncrypt": role(SERVICE, (r) => {
    const source = withoutVersion(text(r, "name"));
    const destination = text(r, "destinationKey");
    return destination === "" ? [source] : [source, withoutVersion(destination)];
  }),
  "keyward.v1.CryptoService/GenerateDataKey": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/GenerateDataKeyWithoutPlaintext": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/Sign": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/Verify": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/Mac": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/VerifyMac": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/BatchEncrypt": role(SERVICE, named("name")),
  "keyward.v1.CryptoService/BatchDecrypt": role(SERVICE, named("name")),

  // Naming a key to encrypt with needs ADMIN on that key too: no borrowing keys one does not manage.
  "keyward.v1.SecretsService/CreateSecret": role(ADMIN, (r) => {
    const secret = `${text(r, "parent")}/${text(r, "secretId")}`;
    const inner = r.secret;
    const key = inner && typeof inner === "object" ? text(inner as Request, "key") : "";
    return key === "" ? [secret] : [secret, key];
  }),
  "keyward.v1.SecretsService/GetSecret": role(KEY_READERS, named("name")),
  "keyward.v1.SecretsService/ListSecrets": role(KEY_READERS, named("parent")),
  "keyward.v1.SecretsService/UpdateSecret": role(ADMIN, nested("secret")),
  "keyward.v1.SecretsService/DeleteSecret": role(ADMIN, named("name")),
  "keyward.v1.SecretsService/AddSecretVersion": role(SERVICE, named("parent")),
  "keyward.v1.SecretsService/AccessSecretVersion": role(SERVICE, named("name")),
  "keyward.v1.SecretsService/ListSecretVersions": role(KEY_READERS, named("parent")),
  "keyward.v1.SecretsService/DisableSecretVersion": role(ADMIN, named("name")),
  "keyward.v1.SecretsService/EnableSecretVersion": role(ADMIN, named("name")),
  "keyward.v1.SecretsService/DestroySecretVersion": role(ADMIN, named("name")),
  "keyward.v1.SecretsService/RollbackSecret": role(ADMIN, named("name")),
  "keyward.v1.SecretsService/GenerateSecret": role(SERVICE, named("parent")),

  "keyward.v1.AuditService/ListAuditEvents": role(AUDIT_READERS, fixed(AUDIT_RESOURCE)),
  "keyward.v1.AuditService/TailAuditEvents": role(AUDIT_READERS, fixed(AUDIT_RESOURCE)),
  "keyward.v1.AuditService/VerifyAuditChain": role(AUDIT_READERS, fixed(AUDIT_RESOURCE)),
  "keyward.v1.AuditService/GetAuditCheckpoint": role(AUDIT_READERS, fixed(AUDIT_RESOURCE)),

  // Infrastructure any authenticated caller may use: probes and schema discovery
  // reveal nothing about keys or secrets.
  "grpc.health.v1.Health/Check": { kind: "authenticated" },
  "grpc.health.v1.Health/Watch": { kind: "authenticated" },
  "grpc.health.v1.Health/List": { kind: "authenticated" },
  "grpc.reflection.v1.ServerReflection/ServerReflectionInfo": { kind: "authenticated" },
  "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": { kind: "authenticated" },
};
