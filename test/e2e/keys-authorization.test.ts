import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AccessService, Role as ProtoRole } from "../../gen/keyward/v1/access_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import type { Role } from "../../src/domain/authz/roles.js";
import { devSpiffeId } from "../../src/dev/pki.js";
import { PERMISSIONS } from "../../src/server/permissions.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { policyFileEnv, startTestKeyward, type ClientCredentials, type TestKeyward } from "../helpers/keyward.js";
import { policyText } from "../helpers/policy.js";

/**
 * Every KeysService and CryptoService RPC, called by four callers under one
 * policy file:
 *
 * | caller                 | identity | grant                      | requests name keys |
 * |------------------------|----------|----------------------------|--------------------|
 * | ADMIN                  | admin    | ADMIN on `**`              | `keys/app-*`       |
 * | SERVICE inside grants  | service  | SERVICE on `keys/app-*`    | `keys/app-*`       |
 * | SERVICE outside grants | service  | (same)                     | `keys/other-*`     |
 * | AUDITOR                | auditor  | AUDITOR on `**`            | `keys/app-*`       |
 *
 * Whether a cell is allowed is computed from src/server/permissions.ts (the
 * method's roles, and the resources it reads out of the request) against
 * the grants above; allowed calls must reach their handler and succeed
 * (every request is valid and names an existing key in the right state),
 * denied ones must answer PERMISSION_DENIED and leave an audit event with
 * result_code 7. All keys named exist, the `keys/other-*` ones included, so
 * a denial can never be mistaken for NOT_FOUND.
 */

const ADMIN_ID = devSpiffeId("admin");
const SERVICE_ID = devSpiffeId("service");
const AUDITOR_ID = devSpiffeId("auditor");

const POLICY = policyText([
  { name: "admin-everything", identities: [ADMIN_ID], roles: ["ADMIN"], resources: ["**"] },
  { name: "service-app-keys", identities: [SERVICE_ID], roles: ["SERVICE"], resources: ["keys/app-*"] },
  { name: "auditor-everything", identities: [AUDITOR_ID], roles: ["AUDITOR"], resources: ["**"] },
]);

interface Column {
  readonly label: string;
  readonly identity: "admin" | "service" | "auditor";
  readonly role: Role;
  /** The key-name prefix of the requests this column sends. */
  readonly prefix: "app" | "other";
  /**
   * What the policy grants the column's role on, written independently of
   * the server's pattern matcher: `**` covers everything, `keys/app-*`
   * exactly one segment after `keys/app-`.
   */
  readonly covers: (resource: string) => boolean;
}

const everything = () => true;
const appKeys = (resource: string) => /^keys\/app-[^/]+$/.test(resource);

const COLUMNS: readonly Column[] = [
  { label: "ADMIN", identity: "admin", role: "ADMIN", prefix: "app", covers: everything },
  { label: "SERVICE inside grants", identity: "service", role: "SERVICE", prefix: "app", covers: appKeys },
  { label: "SERVICE outside grants", identity: "service", role: "SERVICE", prefix: "other", covers: appKeys },
  { label: "AUDITOR", identity: "auditor", role: "AUDITOR", prefix: "app", covers: everything },
];

const SERVICES: readonly DescService[] = [KeysService, CryptoService];
const METHODS = SERVICES.flatMap((service) => service.methods.map((method) => ({ service, method })));
const fullName = (service: DescService, method: DescMethod) => `${service.typeName}/${method.name}`;

const data = new TextEncoder().encode("authorization matrix");
const message = { case: "message" as const, value: data };

/** What the allowed calls need: a ciphertext, a signature and a MAC made with the `app` keys. */
interface Material {
  ciphertext: Uint8Array;
  signature: Uint8Array;
  mac: Uint8Array;
}

/**
 * A valid request for every method, naming `keys/<prefix>-*`. Lifecycle
 * methods each get a key of their own, so that the order the matrix runs in
 * cannot change any answer.
 */
function requests(prefix: string, m: Material): Record<string, object> {
  const k = (name: string) => `keys/${prefix}-${name}`;
  return {
    createKey: { keyId: `${prefix}-created`, key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } },
    getKey: { name: k("enc") },
    listKeys: {},
    updateKey: { key: { name: k("meta"), description: "updated by the matrix" }, updateMask: { paths: ["description"] } },
    rotateKey: { name: k("rot") },
    listKeyVersions: { parent: k("enc") },
    enableKey: { name: k("life") },
    disableKey: { name: k("off") },
    scheduleKeyDeletion: { name: k("doomed") },
    cancelKeyDeletion: { name: k("pending") },
    enableKeyVersion: { name: `${k("versions")}/versions/2` },
    disableKeyVersion: { name: `${k("versions")}/versions/1` },
    getPublicKey: { name: k("sign") },

    encrypt: { name: k("enc"), plaintext: data },
    decrypt: { name: k("enc"), ciphertext: m.ciphertext },
    reEncrypt: { name: k("enc"), ciphertext: m.ciphertext, destinationKey: k("dst") },
    generateDataKey: { name: k("enc"), length: { case: "numberOfBytes", value: 32 } },
    generateDataKeyWithoutPlaintext: { name: k("enc"), length: { case: "numberOfBytes", value: 32 } },
    sign: { name: k("sign"), input: message },
    verify: { name: `${k("sign")}/versions/1`, input: message, signature: m.signature },
    mac: { name: k("mac"), data },
    verifyMac: { name: k("mac"), data, mac: m.mac },
    batchEncrypt: { name: k("enc"), items: [{ plaintext: data }] },
    batchDecrypt: { name: k("enc"), items: [{ ciphertext: m.ciphertext }] },
  };
}

/** Keys every prefix has, with the state its lifecycle requests expect. */
const FIXTURE_KEYS: ReadonlyArray<readonly [string, KeyPurpose, KeyAlgorithm]> = [
  ["enc", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["dst", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["sign", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519],
  ["mac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256],
  ["meta", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["rot", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["life", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["off", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["doomed", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["pending", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ["versions", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
];

type AnyClient = Record<string, (request: object, options: { headers: Record<string, string> }) => Promise<unknown>>;

interface Call {
  readonly requestId: string;
  readonly code: Code | 0;
  readonly message: string;
}

async function call(client: AnyClient, method: DescMethod, request: object, requestId: string): Promise<Call> {
  try {
    await client[method.localName]!(request, { headers: { "x-request-id": requestId } });
    return { requestId, code: 0, message: "" };
  } catch (err) {
    const error = ConnectError.from(err);
    return { requestId, code: error.code, message: error.rawMessage };
  }
}

const codeName = (code: Code | 0) => (code === 0 ? "OK" : Code[code]!);
const newRequestId = (label: string) => `authz-${label}-${randomBytes(6).toString("hex")}`;

interface AuditRow {
  request_id: string;
  identity: string;
  method: string;
  roles: string[];
  resources: string[];
  result_code: number;
  result_message: string;
}

describe("KeysService and CryptoService authorization under a policy file", () => {
  let dir: string;
  let keyward: TestKeyward;
  let sql: pg.Pool;
  const credentials = new Map<string, ClientCredentials>();
  let material: Material;

  // One transport (one HTTP/2 connection) per identity, shared by its clients.
  const transports = new Map<string, ReturnType<typeof createGrpcTransport>>();
  const client = <S extends DescService>(service: S, identity: string): Client<S> => {
    let transport = transports.get(identity);
    if (transport === undefined) {
      transport = createGrpcTransport({ baseUrl: keyward.url, nodeOptions: credentials.get(identity)! });
      transports.set(identity, transport);
    }
    return createClient(service, transport);
  };
  const anyClient = (service: DescService, identity: string) => client(service, identity) as unknown as AnyClient;

  async function auditEvents(requestIds: readonly string[]): Promise<Map<string, AuditRow[]>> {
    const { rows } = await sql.query<AuditRow>(
      `SELECT request_id, identity, method, roles, resources, result_code, result_message
         FROM audit_events WHERE request_id = ANY($1) ORDER BY sequence`,
      [requestIds],
    );
    const byId = new Map<string, AuditRow[]>();
    for (const row of rows) {
      byId.set(row.request_id, [...(byId.get(row.request_id) ?? []), row]);
    }
    return byId;
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "keyward-keys-authz-"));
    keyward = await startTestKeyward(await policyFileEnv(dir, "policy.yaml", POLICY));
    sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2, applicationName: "keyward-test" });
    for (const name of ["admin", "service", "auditor"]) {
      credentials.set(name, await keyward.credentials(name));
    }

    const keys = client(KeysService, "admin");
    for (const prefix of ["app", "other"]) {
      for (const [id, purpose, algorithm] of FIXTURE_KEYS) {
        await keys.createKey({ keyId: `${prefix}-${id}`, key: { purpose, algorithm } });
      }
      await keys.rotateKey({ name: `keys/${prefix}-versions` });
      await keys.scheduleKeyDeletion({ name: `keys/${prefix}-pending` });
    }
    const crypto = client(CryptoService, "service");
    material = {
      ciphertext: (await crypto.encrypt({ name: "keys/app-enc", plaintext: data })).ciphertext,
      signature: (await crypto.sign({ name: "keys/app-sign", input: message })).signature,
      mac: (await crypto.mac({ name: "keys/app-mac", data })).mac,
    };
  });
  afterAll(async () => {
    await sql?.end();
    await keyward?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("runs under the policy file: each identity holds exactly the role it grants", async () => {
    const expected: Record<string, ProtoRole[]> = { admin: [ProtoRole.ADMIN], service: [ProtoRole.SERVICE], auditor: [ProtoRole.AUDITOR] };
    for (const [identity, roles] of Object.entries(expected)) {
      const me = await client(AccessService, identity).getCallerIdentity({});
      expect(me.policyDigest).toBe(createHash("sha256").update(POLICY).digest("hex"));
      expect(me.roles, identity).toEqual(roles);
    }
  });

  it("has a request for every KeysService and CryptoService RPC, and each is in the permission table", () => {
    const built = Object.keys(requests("app", { ciphertext: data, signature: data, mac: data })).sort();
    expect(built).toEqual(METHODS.map(({ method }) => method.localName).sort());
    for (const { service, method } of METHODS) {
      expect(PERMISSIONS[fullName(service, method)]?.kind, fullName(service, method)).toBe("role");
    }
  });

  it("answers every RPC × caller as permissions.ts and the grants say, and audits every denial with result_code 7", async () => {
    const expected: Record<string, string> = {};
    const actual: Record<string, string> = {};
    const denied: Array<{ cell: string; requestId: string; identity: string; method: string }> = [];
    const allowed: Array<{ cell: string; requestId: string }> = [];

    for (const column of COLUMNS) {
      const bodies = requests(column.prefix, material);
      for (const { service, method } of METHODS) {
        const name = fullName(service, method);
        const permission = PERMISSIONS[name]!;
        if (permission.kind !== "role") throw new Error(`${name} is open to every caller`);
        // The resources exactly as the server reads them: from the decoded request message.
        const request = create(method.input, bodies[method.localName] as never);
        const resources = permission.resources(request as unknown as Record<string, unknown>);
        const mayCall = permission.roles.includes(column.role);
        const covered = resources.every((resource) => column.covers(resource));
        const cell = `${column.label} × ${method.name}`;
        expected[cell] = mayCall && covered ? "OK" : "PermissionDenied";

        const requestId = newRequestId(`${column.identity}-${method.name}`);
        const result = await call(anyClient(service, column.identity), method, bodies[method.localName]!, requestId);
        actual[cell] = codeName(result.code) + (result.code !== 0 && result.code !== Code.PermissionDenied ? `: ${result.message}` : "");
        if (result.code === Code.PermissionDenied) {
          denied.push({ cell, requestId, identity: devSpiffeId(column.identity), method: `/${name}` });
          // A role the caller does not hold is refused by the role gate; a
          // role held elsewhere, by the resource check naming the resource.
          expect(result.message, cell).toMatch(mayCall ? /^permission denied: no rule grants [A-Za-z ]+ on "keys\/other-/ : /requires the/);
        } else if (result.code === 0) {
          allowed.push({ cell, requestId });
        }
      }
    }
    expect(actual).toEqual(expected);

    // The matrix is not degenerate: every column is denied something, and
    // every column but SERVICE outside its grants is allowed something.
    for (const column of COLUMNS) {
      const codes = Object.entries(expected).filter(([cell]) => cell.startsWith(`${column.label} ×`)).map(([, code]) => code);
      expect(codes, column.label).toContain("PermissionDenied");
      if (column.prefix === "app") expect(codes, column.label).toContain("OK");
      else expect(codes, column.label).not.toContain("OK");
    }

    const events = await auditEvents([...denied, ...allowed].map((c) => c.requestId));
    for (const d of denied) {
      const rows = events.get(d.requestId) ?? [];
      expect(
        rows.map((r) => ({ identity: r.identity, method: r.method, result_code: r.result_code, roles: r.roles })),
        d.cell,
      ).toEqual([{ identity: d.identity, method: d.method, result_code: Code.PermissionDenied, roles: [] }]);
    }
    for (const a of allowed) {
      expect((events.get(a.requestId) ?? []).map((r) => r.result_code), a.cell).toEqual([0]);
    }
  });

  it("ADMIN, granted everything, cannot Encrypt or Decrypt: separation of duties", async () => {
    const crypto = anyClient(CryptoService, "admin");
    const encrypt = await call(crypto, CryptoService.method.encrypt, { name: "keys/app-enc", plaintext: data }, newRequestId("sod-encrypt"));
    const decrypt = await call(
      crypto,
      CryptoService.method.decrypt,
      { name: "keys/app-enc", ciphertext: material.ciphertext },
      newRequestId("sod-decrypt"),
    );
    for (const [result, method] of [
      [encrypt, "Encrypt"],
      [decrypt, "Decrypt"],
    ] as const) {
      expect({ code: codeName(result.code), message: result.message }).toEqual({
        code: "PermissionDenied",
        message: `${ADMIN_ID} may not call keyward.v1.CryptoService/${method}: it requires the SERVICE role`,
      });
    }
    const events = await auditEvents([encrypt.requestId, decrypt.requestId]);
    expect([...events.values()].flat().map((r) => [r.method, r.result_code])).toEqual([
      ["/keyward.v1.CryptoService/Encrypt", 7],
      ["/keyward.v1.CryptoService/Decrypt", 7],
    ]);
    // The same ciphertext does decrypt for SERVICE: the refusal is about the role.
    const plain = await client(CryptoService, "service").decrypt({ name: "keys/app-enc", ciphertext: material.ciphertext });
    expect(Buffer.from(plain.plaintext)).toEqual(Buffer.from(data));
  });

  it("SERVICE cannot CreateKey or RotateKey, not even keys inside its grants, and nothing changes", async () => {
    const keys = anyClient(KeysService, "service");
    const create = await call(
      keys,
      KeysService.method.createKey,
      { keyId: "app-by-service", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } },
      newRequestId("sod-create"),
    );
    const rotate = await call(keys, KeysService.method.rotateKey, { name: "keys/app-enc" }, newRequestId("sod-rotate"));
    expect([create, rotate].map((r) => [codeName(r.code), r.message])).toEqual([
      ["PermissionDenied", `${SERVICE_ID} may not call keyward.v1.KeysService/CreateKey: it requires the ADMIN role`],
      ["PermissionDenied", `${SERVICE_ID} may not call keyward.v1.KeysService/RotateKey: it requires the ADMIN role`],
    ]);
    const events = await auditEvents([create.requestId, rotate.requestId]);
    expect([...events.values()].flat().map((r) => [r.method, r.result_code, r.resources])).toEqual([
      ["/keyward.v1.KeysService/CreateKey", 7, ["keys/app-by-service"]],
      ["/keyward.v1.KeysService/RotateKey", 7, ["keys/app-enc"]],
    ]);
    const admin = client(KeysService, "admin");
    await expect(admin.getKey({ name: "keys/app-by-service" })).rejects.toMatchObject({ code: Code.NotFound });
    expect((await admin.getKey({ name: "keys/app-enc" })).key?.primaryVersion).toBe(1);
  });

  it("ReEncrypt from a granted key to a key outside SERVICE's grants is PERMISSION_DENIED; inside its grants it succeeds", async () => {
    const crypto = anyClient(CryptoService, "service");
    const attempt = (destinationKey: string, label: string) =>
      call(
        crypto,
        CryptoService.method.reEncrypt,
        { name: "keys/app-enc", ciphertext: material.ciphertext, destinationKey },
        newRequestId(label),
      );
    const outside = await attempt("keys/other-dst", "reencrypt-outside");
    const outsideVersion = await attempt("keys/other-dst/versions/1", "reencrypt-outside-version");
    const inside = await attempt("keys/app-dst", "reencrypt-inside");

    expect([outside, outsideVersion].map((r) => [codeName(r.code), r.message])).toEqual([
      ["PermissionDenied", 'permission denied: no rule grants SERVICE on "keys/other-dst"'],
      ["PermissionDenied", 'permission denied: no rule grants SERVICE on "keys/other-dst"'],
    ]);
    expect(codeName(inside.code)).toBe("OK");

    const events = await auditEvents([outside.requestId, outsideVersion.requestId, inside.requestId]);
    expect(events.get(outside.requestId)!.map((r) => [r.result_code, r.resources, r.roles])).toEqual([
      [7, ["keys/app-enc", "keys/other-dst"], []],
    ]);
    expect(events.get(outsideVersion.requestId)!.map((r) => r.result_code)).toEqual([7]);
    expect(events.get(inside.requestId)!.map((r) => [r.result_code, r.resources, r.roles])).toEqual([
      [0, ["keys/app-enc", "keys/app-dst"], ["SERVICE"]],
    ]);
  });
});
