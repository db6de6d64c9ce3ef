import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { INFRASTRUCTURE_SERVICES, KEYWARD_SERVICES } from "../../../src/main.js";
import { PERMISSIONS, withoutVersion } from "../../../src/server/permissions.js";

const PROTO_DIR = join(import.meta.dirname, "../../../proto/keyward/v1");

/** `keyward.v1.Service/Method` → the roles its proto comment documents ("Roles: ADMIN, AUDITOR."). */
function documentedRoles(): Map<string, string[]> {
  const documented = new Map<string, string[]>();
  for (const file of readdirSync(PROTO_DIR).filter((f) => f.endsWith(".proto"))) {
    const text = readFileSync(join(PROTO_DIR, file), "utf8");
    for (const service of text.matchAll(/^service (\w+) \{([\s\S]*?)^\}/gm)) {
      for (const rpc of service[2]!.matchAll(/((?:^ *\/\/.*\n)+) *rpc (\w+)\(/gm)) {
        const roles = /Roles: ([^\n]*?)\.?\n/.exec(rpc[1]!.replace(/^ *\/\/ ?/gm, ""))?.[1] ?? "";
        documented.set(
          `keyward.v1.${service[1]}/${rpc[2]}`,
          roles.startsWith("any authenticated caller") ? ["*"] : roles.split(/,\s*/).sort(),
        );
      }
    }
  }
  return documented;
}

describe("the permission table", () => {
  it("has one entry for every method the server serves, and no other", () => {
    const served = [...KEYWARD_SERVICES, ...INFRASTRUCTURE_SERVICES]
      .flatMap((service) => service.methods.map((method) => `${service.typeName}/${method.name}`))
      .sort();
    expect(Object.keys(PERMISSIONS).sort()).toEqual(served);
  });

  it("grants each RPC exactly the roles its proto comment documents", () => {
    const documented = documentedRoles();
    expect(documented.size).toBeGreaterThan(40);
    const tabled = new Map(
      Object.entries(PERMISSIONS)
        .filter(([name]) => name.startsWith("keyward."))
        .map(([name, permission]) => [name, permission.kind === "authenticated" ? ["*"] : [...permission.roles].sort()]),
    );
    expect(Object.fromEntries(tabled)).toEqual(Object.fromEntries(documented));
  });

  it.each([
    ["keyward.v1.KeysService/CreateKey", { keyId: "payments" }, ["keys/payments"]],
    ["keyward.v1.KeysService/GetKey", { name: "keys/payments" }, ["keys/payments"]],
    ["keyward.v1.KeysService/ListKeys", {}, ["keys"]],
    ["keyward.v1.KeysService/UpdateKey", { key: { name: "keys/payments" } }, ["keys/payments"]],
    ["keyward.v1.KeysService/DisableKeyVersion", { name: "keys/payments/versions/3" }, ["keys/payments"]],
    ["keyward.v1.CryptoService/Encrypt", { name: "keys/payments/versions/2" }, ["keys/payments"]],
    ["keyward.v1.CryptoService/ReEncrypt", { name: "keys/a", destinationKey: "" }, ["keys/a"]],
    ["keyward.v1.CryptoService/ReEncrypt", { name: "keys/a", destinationKey: "keys/b/versions/1" }, ["keys/a", "keys/b"]],
    ["keyward.v1.SecretsService/CreateSecret", { parent: "secrets/shop/prod", secretId: "db/password" }, ["secrets/shop/prod/db/password"]],
    ["keyward.v1.SecretsService/AccessSecretVersion", { name: "secrets/shop/prod/db/versions/latest" }, ["secrets/shop/prod/db"]],
    ["keyward.v1.SecretsService/UpdateSecret", { secret: { name: "secrets/shop/prod/db" } }, ["secrets/shop/prod/db"]],
    ["keyward.v1.AuditService/ListAuditEvents", {}, ["audit"]],
  ])("%s names the resource of %j", (method, request, resources) => {
    const permission = PERMISSIONS[method]!;
    expect(permission.kind).toBe("role");
    expect(permission.kind === "role" && permission.resources(request)).toEqual(resources);
  });

  it("authorizes versions as their key or secret", () => {
    expect(withoutVersion("keys/a/versions/12")).toBe("keys/a");
    expect(withoutVersion("secrets/p/e/a/b/versions/latest")).toBe("secrets/p/e/a/b");
    expect(withoutVersion("keys/a")).toBe("keys/a");
  });
});
