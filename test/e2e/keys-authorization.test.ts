import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
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
import { GenerateSecretFormat, SecretsService, SecretType } from "../../gen/keyward/v1/secrets_pb.js";
import type { Role } from "../../src/domain/authz/roles.js";
import { devSpiffeId } from "../../src/dev/pki.js";
import { INFRASTRUCTURE_SERVICES, KEYWARD_SERVICES } from "../../src/main.js";
import { PERMISSIONS } from "../../src/server/permissions.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { eventually } from "../helpers/expect.js";
import { issueDevClient, policyFileEnv, startTestKeyward, type ClientCredentials, type TestKeyward } from "../helpers/keyward.js";
import { policyText, type PolicyRule } from "../helpers/policy.js";

/**
 * The permission matrix: every RPC the server serves (the service
 * descriptors in gen/), called by five callers, under two policy files.
 *
 * | caller                 | identity | grant                                         | requests name            |
 * |------------------------|----------|-----------------------------------------------|--------------------------|
 * | ADMIN                  | admin    | ADMIN on `**`                                 | `keys/app-*`, `secrets/app/…` |
 * | SERVICE inside grants  | service  | SERVICE on `keys/app-*` and `secrets/app/**`  | `keys/app-*`, `secrets/app/…` |
 * | SERVICE outside grants | service  | (same)                                        | `keys/other-*`, `secrets/other/…` |
 * | AUDITOR                | auditor  | AUDITOR on `**`                               | `keys/app-*`, `secrets/app/…` |
 * | unknown identity       | stranger | nothing (valid certificate, no rule)          | `keys/app-*`, `secrets/app/…` |
 *
 * The second policy is the first plus explicit deny rules withdrawing each
 * identity's role on exactly what its allowed calls name (`keys`,
 * `keys/app-*`, `secrets/app/**`, `audit`): deny must win over allow rules
 * that still match.
 *
 * Each cell's expected answer is computed from src/server/permissions.ts
 * (the method's roles and the resources it reads from the request) against
 * the grants above, written here independently of the server's pattern
 * matcher: OK, or PERMISSION_DENIED with the exact message of the gate that
 * refuses (the role gate, a deny rule, or no grant). Allowed calls must
 * reach their handler and succeed: every request is valid and names an
 * existing resource in the right state; so a denial can never be mistaken
 * for NOT_FOUND. Every denial must leave its audit event (result_code 7, no
 * roles, the same message).
 */

const ADMIN_ID = devSpiffeId("admin");
const SERVICE_ID = devSpiffeId("service");
const AUDITOR_ID = devSpiffeId("auditor");
const STRANGER_ID = devSpiffeId("stranger");

const ALLOW_RULES: PolicyRule[] = [
  { name: "admin-everything", identities: [ADMIN_ID], roles: ["ADMIN"], resources: ["**"] },
  { name: "service-app", identities: [SERVICE_ID], roles: ["SERVICE"], resources: ["keys/app-*", "secrets/app/**"] },
  { name: "auditor-everything", identities: [AUDITOR_ID], roles: ["AUDITOR"], resources: ["**"] },
  // For the glob case: grants that lookalike names must not reach.
  { name: "newsbot", identities: [devSpiffeId("newsbot")], roles: ["SERVICE"], resources: ["keys/newsbot"] },
];
const APP_RESOURCES = ["keys", "keys/app-*", "secrets/app/**", "audit"];
const DENY_RULES: PolicyRule[] = [
  { name: "deny-admin-app", effect: "deny", identities: [ADMIN_ID], roles: ["ADMIN"], resources: APP_RESOURCES },
  { name: "deny-service-app", effect: "deny", identities: [SERVICE_ID], roles: ["SERVICE"], resources: ["keys/app-*", "secrets/app/**"] },
  { name: "deny-auditor-app", effect: "deny", identities: [AUDITOR_ID], roles: ["AUDITOR"], resources: APP_RESOURCES },
  { name: "deny-stranger", effect: "deny", identities: [STRANGER_ID], roles: ["ADMIN", "SERVICE", "AUDITOR"], resources: ["**"] },
];
const POLICY = policyText(ALLOW_RULES);
const POLICY_WITH_DENIES = policyText([...ALLOW_RULES, ...DENY_RULES]);

const appKey = (resource: string) => /^keys\/app-[^/]+$/.test(resource);
const appSecret = (resource: string) => /^secrets\/app(\/[^/]+)*$/.test(resource);
const everything = () => true;

interface Column {
  readonly label: string;
  readonly identity: "admin" | "service" | "auditor" | "stranger";
  /** The one role the identity's allow rule grants; none for the stranger. */
  readonly role: Role | undefined;
  /** The prefix of the key and secret names of the requests this column sends. */
  readonly prefix: "app" | "other";
  /** What the allow rules grant the column's role on. */
  readonly covers: (resource: string) => boolean;
  /** What the deny rules of the second policy withdraw, and the rule's name. */
  readonly withdrawn: (resource: string) => boolean;
  readonly denyRule: string;
}

const COLUMNS: readonly Column[] = [
  {
    label: "ADMIN",
    identity: "admin",
    role: "ADMIN",
    prefix: "app",
    covers: everything,
    withdrawn: (r) => r === "keys" || r === "audit" || appKey(r) || appSecret(r),
    denyRule: "deny-admin-app",
  },
  {
    label: "SERVICE inside grants",
    identity: "service",
    role: "SERVICE",
    prefix: "app",
    covers: (r) => appKey(r) || appSecret(r),
    withdrawn: (r) => appKey(r) || appSecret(r),
    denyRule: "deny-service-app",
  },
  {
    label: "SERVICE outside grants",
    identity: "service",
    role: "SERVICE",
    prefix: "other",
    covers: (r) => appKey(r) || appSecret(r),
    withdrawn: (r) => appKey(r) || appSecret(r),
    denyRule: "deny-service-app",
  },
  {
    label: "AUDITOR",
    identity: "auditor",
    role: "AUDITOR",
    prefix: "app",
    covers: everything,
    withdrawn: (r) => r === "keys" || r === "audit" || appKey(r) || appSecret(r),
    denyRule: "deny-auditor-app",
  },
  {
    label: "unknown identity",
    identity: "stranger",
    role: undefined,
    prefix: "app",
    covers: () => false,
    withdrawn: everything,
    denyRule: "deny-stranger",
  },
];

const SERVED: readonly DescService[] = [...KEYWARD_SERVICES, ...INFRASTRUCTURE_SERVICES];
const METHODS = SERVED.flatMap((service) => service.methods.map((method) => ({ service, method })));
const fullName = (service: DescService, method: DescMethod) => `${service.typeName}/${method.name}`;
const requestKey = (service: DescService, method: DescMethod) => `${service.name}.${method.localName}`;

const data = new TextEncoder().encode("authorization matrix");
const message = { case: "message" as const, value: data };

/** What the allowed calls need: a ciphertext, a signature and a MAC made with the `app` keys. */
interface Material {
  ciphertext: Uint8Array;
  signature: Uint8Array;
  mac: Uint8Array;
}

/**
 * A valid request for every method, keyed `Service.method`, naming
 * `keys/<prefix>-*` and `secrets/<prefix>/prod/*`. Lifecycle methods each
 * get a resource of their own, so the order the matrix runs in cannot
 * change any answer.
 */
function requests(prefix: string, m: Material): Record<string, object> {
  const k = (name: string) => `keys/${prefix}-${name}`;
  const s = (name: string) => `secrets/${prefix}/prod/${name}`;
  return {
    "KeysService.createKey": { keyId: `${prefix}-created`, key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } },
    "KeysService.getKey": { name: k("enc") },
    "KeysService.listKeys": {},
    "KeysService.updateKey": { key: { name: k("meta"), description: "updated by the matrix" }, updateMask: { paths: ["description"] } },
    "KeysService.rotateKey": { name: k("rot") },
    "KeysService.listKeyVersions": { parent: k("enc") },
    "KeysService.enableKey": { name: k("life") },
    "KeysService.disableKey": { name: k("off") },
    "KeysService.scheduleKeyDeletion": { name: k("doomed") },
    "KeysService.cancelKeyDeletion": { name: k("pending") },
    "KeysService.enableKeyVersion": { name: `${k("versions")}/versions/2` },
    "KeysService.disableKeyVersion": { name: `${k("versions")}/versions/1` },
    "KeysService.getPublicKey": { name: k("sign") },

    "CryptoService.encrypt": { name: k("enc"), plaintext: data },
    "CryptoService.decrypt": { name: k("enc"), ciphertext: m.ciphertext },
    "CryptoService.reEncrypt": { name: k("enc"), ciphertext: m.ciphertext, destinationKey: k("dst") },
    "CryptoService.generateDataKey": { name: k("enc"), length: { case: "numberOfBytes", value: 32 } },
    "CryptoService.generateDataKeyWithoutPlaintext": { name: k("enc"), length: { case: "numberOfBytes", value: 32 } },
    "CryptoService.sign": { name: k("sign"), input: message },
    "CryptoService.verify": { name: `${k("sign")}/versions/1`, input: message, signature: m.signature },
    "CryptoService.mac": { name: k("mac"), data },
    "CryptoService.verifyMac": { name: k("mac"), data, mac: m.mac },
    "CryptoService.batchEncrypt": { name: k("enc"), items: [{ plaintext: data }] },
    "CryptoService.batchDecrypt": { name: k("enc"), items: [{ ciphertext: m.ciphertext }] },

    "SecretsService.createSecret": { parent: `secrets/${prefix}/prod`, secretId: "created", secret: { type: SecretType.OPAQUE } },
    "SecretsService.getSecret": { name: s("read") },
    "SecretsService.listSecrets": { parent: `secrets/${prefix}/prod` },
    "SecretsService.updateSecret": { secret: { name: s("meta"), description: "updated by the matrix" }, updateMask: { paths: ["description"] } },
    "SecretsService.deleteSecret": { name: s("doomed") },
    "SecretsService.addSecretVersion": { parent: s("write"), payload: { data } },
    "SecretsService.accessSecretVersion": { name: `${s("read")}/versions/latest` },
    "SecretsService.listSecretVersions": { parent: s("read") },
    "SecretsService.disableSecretVersion": { name: `${s("states")}/versions/1` },
    "SecretsService.enableSecretVersion": { name: `${s("states")}/versions/2` },
    "SecretsService.destroySecretVersion": { name: `${s("destroy")}/versions/1` },
    "SecretsService.rollbackSecret": { name: s("rollback"), version: 1n },
    "SecretsService.generateSecret": { parent: s("gen"), spec: { length: 24, format: GenerateSecretFormat.ALPHANUMERIC } },

    "AuditService.listAuditEvents": { pageSize: 1 },
    "AuditService.tailAuditEvents": { startSequence: 1n },
    "AuditService.verifyAuditChain": { startSequence: 1n, endSequence: 1n },
    "AuditService.getAuditCheckpoint": {},

    "AccessService.getCallerIdentity": {},

    "Health.check": { service: "" },
    "Health.watch": { service: "" },
    "Health.list": {},
    "ServerReflection.serverReflectionInfo": { messageRequest: { case: "listServices", value: "" } },
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

/** Secrets every prefix has, with how many versions SERVICE writes into the `app` ones. */
const FIXTURE_SECRETS: ReadonlyArray<readonly [string, number]> = [
  ["read", 2],
  ["meta", 0],
  ["doomed", 0],
  ["write", 0],
  ["states", 2],
  ["destroy", 1],
  ["rollback", 1],
  ["gen", 0],
];

type AnyCall = (request: unknown, options: { headers: Record<string, string>; signal: AbortSignal }) => unknown;
type AnyClient = Record<string, AnyCall>;

interface Call {
  readonly requestId: string;
  readonly code: Code | 0;
  readonly message: string;
}

/** Calls any method, unary or streaming; a stream that yields a first message counts as OK. */
async function call(client: AnyClient, method: DescMethod, request: object, requestId: string): Promise<Call> {
  const abort = new AbortController();
  const options = { headers: { "x-request-id": requestId }, signal: abort.signal };
  try {
    if (method.methodKind === "unary") {
      await client[method.localName]!(request, options);
    } else {
      const input =
        method.methodKind === "bidi_streaming" || method.methodKind === "client_streaming"
          ? (async function* () {
              yield request;
            })()
          : request;
      for await (const _ of client[method.localName]!(input, options) as AsyncIterable<unknown>) {
        break;
      }
    }
    return { requestId, code: 0, message: "" };
  } catch (err) {
    const error = ConnectError.from(err);
    return { requestId, code: error.code, message: error.rawMessage };
  } finally {
    abort.abort();
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

/** Replaces the file atomically, so the server's 1 s poller never reads it half-written. */
async function replaceFile(file: string, text: string): Promise<void> {
  await writeFile(`${file}.tmp`, text);
  await rename(`${file}.tmp`, file);
}

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

describe("the permission matrix, under a policy file", () => {
  let dir: string;
  let policyFile: string;
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

  /** Puts `policy` in force and waits until the server enforces it. */
  async function usePolicy(policy: string): Promise<void> {
    await replaceFile(policyFile, policy);
    await eventually(
      () => client(AccessService, "admin").getCallerIdentity({}),
      (me) => me.policyDigest === sha256(policy),
      10_000,
      "the new policy in force",
    );
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "keyward-keys-authz-"));
    policyFile = join(dir, "policy.yaml");
    keyward = await startTestKeyward(await policyFileEnv(dir, "policy.yaml", POLICY));
    await issueDevClient(keyward.dataDir, "stranger", STRANGER_ID);
    await issueDevClient(keyward.dataDir, "newsbot", devSpiffeId("newsbot"));
    // Lookalike identities: names that start like the granted one.
    await issueDevClient(keyward.dataDir, "newsbot_other", devSpiffeId("newsbot_other"));
    await issueDevClient(keyward.dataDir, "newsbot-extra", devSpiffeId("newsbot/extra"));
    sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2, applicationName: "keyward-test" });
    for (const name of ["admin", "service", "auditor", "stranger", "newsbot", "newsbot_other", "newsbot-extra"]) {
      credentials.set(name, await keyward.credentials(name));
    }

    const keys = client(KeysService, "admin");
    const secrets = client(SecretsService, "admin");
    const values = client(SecretsService, "service");
    await Promise.all(
      ["app", "other"].map(async (prefix) => {
        await Promise.all(FIXTURE_KEYS.map(([id, purpose, algorithm]) => keys.createKey({ keyId: `${prefix}-${id}`, key: { purpose, algorithm } })));
        await keys.rotateKey({ name: `keys/${prefix}-versions` });
        await keys.scheduleKeyDeletion({ name: `keys/${prefix}-pending` });
        // The first secret creates the environment's default key; the others share it.
        const [first, ...rest] = FIXTURE_SECRETS.map(([id]) => id);
        const create = (id: string) => secrets.createSecret({ parent: `secrets/${prefix}/prod`, secretId: id, secret: { type: SecretType.OPAQUE } });
        await create(first!);
        await Promise.all(rest.map(create));
        // SERVICE may write only the app secrets: the other ones stay empty,
        // which no call of the matrix can tell, as it is refused before any lookup.
        for (const [id, versions] of FIXTURE_SECRETS) {
          for (let v = 0; prefix === "app" && v < versions; v++) {
            await values.addSecretVersion({ parent: `secrets/${prefix}/prod/${id}`, payload: { data: new TextEncoder().encode(`value ${v + 1}`) } });
          }
        }
      }),
    );
    await secrets.disableSecretVersion({ name: "secrets/app/prod/states/versions/2" });
    const crypto = client(CryptoService, "service");
    material = {
      ciphertext: (await crypto.encrypt({ name: "keys/app-enc", plaintext: data })).ciphertext,
      signature: (await crypto.sign({ name: "keys/app-sign", input: message })).signature,
      mac: (await crypto.mac({ name: "keys/app-mac", data })).mac,
    };
  }, 60_000);
  afterAll(async () => {
    await sql?.end();
    await keyward?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("runs under the policy file: each identity holds exactly the role it grants, the stranger none", async () => {
    const expected: Record<string, ProtoRole[]> = {
      admin: [ProtoRole.ADMIN],
      service: [ProtoRole.SERVICE],
      auditor: [ProtoRole.AUDITOR],
      stranger: [],
    };
    for (const [identity, roles] of Object.entries(expected)) {
      const me = await client(AccessService, identity).getCallerIdentity({});
      expect(me.policyDigest).toBe(sha256(POLICY));
      expect(me.roles, identity).toEqual(roles);
    }
  });

  it("has a request for every served RPC, and each is in the permission table", () => {
    const built = Object.keys(requests("app", { ciphertext: data, signature: data, mac: data })).sort();
    // Reflection is served twice (v1 and v1alpha) under the same local name.
    expect(built).toEqual([...new Set(METHODS.map(({ service, method }) => requestKey(service, method)))].sort());
    for (const { service, method } of METHODS) {
      expect(PERMISSIONS[fullName(service, method)], fullName(service, method)).toBeDefined();
    }
    expect(METHODS.length).toBe(Object.keys(PERMISSIONS).length);
  });

  it("answers every RPC × caller × {allowed, denied by a deny rule} as permissions.ts and the grants say, and audits every denial", async () => {
    let cells = 0;
    const allowedCells: Array<{ cell: string; requestId: string }> = [];
    const deniedCells: Array<{ cell: string; requestId: string; identity: string; method: string; message: string }> = [];

    for (const variant of ["allow rules only", "with deny rules"] as const) {
      if (variant === "with deny rules") await usePolicy(POLICY_WITH_DENIES);
      try {
        const expected: Record<string, string> = {};
        const actual: Record<string, string> = {};
        for (const column of COLUMNS) {
          const bodies = requests(column.prefix, material);
          // A column's calls run concurrently: each names resources of its own.
          await Promise.all(METHODS.map(async ({ service, method }) => {
            const name = fullName(service, method);
            const permission = PERMISSIONS[name]!;
            const body = bodies[requestKey(service, method)]!;
            const cell = `${variant} | ${column.label} | ${name}`;
            cells++;

            if (permission.kind === "authenticated") {
              expected[cell] = "OK";
            } else if (column.role === undefined || !permission.roles.includes(column.role)) {
              const who = devSpiffeId(column.identity);
              expected[cell] = `PermissionDenied: ${who} may not call ${name}: it requires the ${permission.roles.join(" or ")} role`;
            } else {
              // The resources exactly as the server reads them: from the decoded request message.
              const decoded = create(method.input, body as never) as unknown as Record<string, unknown>;
              const resources = method.methodKind === "unary" ? permission.resources(decoded) : permission.resources({});
              let outcome = "OK";
              for (const resource of resources) {
                if (variant === "with deny rules" && column.withdrawn(resource)) {
                  outcome = `PermissionDenied: permission denied: denied on "${resource}" by rule "${column.denyRule}"`;
                  break;
                }
                if (!column.covers(resource)) {
                  outcome = `PermissionDenied: permission denied: no rule grants ${permission.roles.join(" or ")} on "${resource}"`;
                  break;
                }
              }
              expected[cell] = outcome;
            }

            const requestId = newRequestId(`${column.identity}-${method.name}`);
            const result = await call(anyClient(service, column.identity), method, body, requestId);
            actual[cell] = result.code === 0 ? "OK" : `${codeName(result.code)}: ${result.message}`;
            if (result.code === Code.PermissionDenied) {
              deniedCells.push({ cell, requestId, identity: devSpiffeId(column.identity), method: `/${name}`, message: result.message });
            } else if (result.code === 0) {
              allowedCells.push({ cell, requestId });
            }
          }));
        }
        expect(actual).toEqual(expected);

        // Not degenerate: under the allow rules every column but SERVICE
        // outside its grants is allowed a method that needs a role, and
        // every column is denied something; with the deny rules, no method
        // that needs a role is allowed to anyone.
        for (const column of COLUMNS) {
          const roleCells = Object.entries(expected).filter(
            ([cell]) => cell.startsWith(`${variant} | ${column.label} |`) && PERMISSIONS[cell.split(" | ")[2]!]!.kind === "role",
          );
          const codes = roleCells.map(([, code]) => code.split(":")[0]);
          expect(codes, column.label).toContain("PermissionDenied");
          const allowsSome = variant === "allow rules only" && column.role !== undefined && column.prefix === "app";
          expect(codes.includes("OK"), `${variant} | ${column.label}`).toBe(allowsSome);
        }
      } finally {
        if (variant === "with deny rules") await usePolicy(POLICY);
      }
    }

    const cellCount = METHODS.length * COLUMNS.length * 2;
    expect(cells).toBe(cellCount);
    expect(deniedCells.length + allowedCells.length).toBe(cells);
    console.log(
      `permission matrix: ${cells} cells checked (${METHODS.length} RPCs × ${COLUMNS.length} callers × 2 policies): ` +
        `${allowedCells.length} allowed, ${deniedCells.length} denied, every denial audited`,
    );

    const events = await auditEvents([...deniedCells, ...allowedCells].map((c) => c.requestId));
    for (const d of deniedCells) {
      const rows = events.get(d.requestId) ?? [];
      expect(
        rows.map((r) => ({ identity: r.identity, method: r.method, result_code: r.result_code, roles: r.roles, result_message: r.result_message })),
        d.cell,
      ).toEqual([{ identity: d.identity, method: d.method, result_code: Code.PermissionDenied, roles: [], result_message: d.message }]);
    }
    for (const a of allowedCells) {
      expect((events.get(a.requestId) ?? []).map((r) => r.result_code), a.cell).toEqual([0]);
    }
  });

  it("ADMIN, granted everything, cannot Encrypt, Decrypt or read a secret value: separation of duties", async () => {
    const crypto = anyClient(CryptoService, "admin");
    const encrypt = await call(crypto, CryptoService.method.encrypt, { name: "keys/app-enc", plaintext: data }, newRequestId("sod-encrypt"));
    const decrypt = await call(
      crypto,
      CryptoService.method.decrypt,
      { name: "keys/app-enc", ciphertext: material.ciphertext },
      newRequestId("sod-decrypt"),
    );
    const access = await call(
      anyClient(SecretsService, "admin"),
      SecretsService.method.accessSecretVersion,
      { name: "secrets/app/prod/read/versions/1" },
      newRequestId("sod-access"),
    );
    expect([encrypt, decrypt, access].map((r) => ({ code: codeName(r.code), message: r.message }))).toEqual([
      { code: "PermissionDenied", message: `${ADMIN_ID} may not call keyward.v1.CryptoService/Encrypt: it requires the SERVICE role` },
      { code: "PermissionDenied", message: `${ADMIN_ID} may not call keyward.v1.CryptoService/Decrypt: it requires the SERVICE role` },
      { code: "PermissionDenied", message: `${ADMIN_ID} may not call keyward.v1.SecretsService/AccessSecretVersion: it requires the SERVICE role` },
    ]);
    const events = await auditEvents([encrypt.requestId, decrypt.requestId, access.requestId]);
    expect([...events.values()].flat().map((r) => [r.method, r.result_code])).toEqual([
      ["/keyward.v1.CryptoService/Encrypt", 7],
      ["/keyward.v1.CryptoService/Decrypt", 7],
      ["/keyward.v1.SecretsService/AccessSecretVersion", 7],
    ]);
    // The same ciphertext does decrypt for SERVICE: the refusal is about the role.
    const plain = await client(CryptoService, "service").decrypt({ name: "keys/app-enc", ciphertext: material.ciphertext });
    expect(Buffer.from(plain.plaintext)).toEqual(Buffer.from(data));
  });

  it("SERVICE cannot CreateKey or RotateKey, not even keys inside its grants, and nothing changes", async () => {
    const keys = anyClient(KeysService, "service");
    const createCall = await call(
      keys,
      KeysService.method.createKey,
      { keyId: "app-by-service", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } },
      newRequestId("sod-create"),
    );
    const rotate = await call(keys, KeysService.method.rotateKey, { name: "keys/app-enc" }, newRequestId("sod-rotate"));
    expect([createCall, rotate].map((r) => [codeName(r.code), r.message])).toEqual([
      ["PermissionDenied", `${SERVICE_ID} may not call keyward.v1.KeysService/CreateKey: it requires the ADMIN role`],
      ["PermissionDenied", `${SERVICE_ID} may not call keyward.v1.KeysService/RotateKey: it requires the ADMIN role`],
    ]);
    const events = await auditEvents([createCall.requestId, rotate.requestId]);
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

  // Secret names against lookalikes (`newsbot_other`, `workers`, `*` against
  // `/`) are the matrix of secrets-scenario.test.ts; keys and identities here.
  it("a grant never reaches a lookalike key or identity: `keys/newsbot` is not `keys/newsbot-other`, `…/newsbot` is not `…/newsbot_other`", async () => {
    const keys = client(KeysService, "admin");
    const names = ["keys/newsbot", "keys/newsbot-other", "keys/newsbot2"];
    for (const name of names) {
      await keys.createKey({ keyId: name.slice("keys/".length), key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
    }
    const outcomes: Record<string, string> = {};
    const requestIds: string[] = [];
    for (const identity of ["newsbot", "newsbot_other", "newsbot-extra"]) {
      for (const name of names) {
        const r = await call(anyClient(CryptoService, identity), CryptoService.method.encrypt, { name, plaintext: data }, newRequestId("glob"));
        requestIds.push(r.requestId);
        outcomes[`${identity} → ${name}`] = r.code === 0 ? "OK" : `${codeName(r.code)}: ${r.message}`;
      }
    }
    const noGrant = (resource: string) => `PermissionDenied: permission denied: no rule grants SERVICE on "${resource}"`;
    const noRole = (identity: string) =>
      `PermissionDenied: ${devSpiffeId(identity)} may not call keyward.v1.CryptoService/Encrypt: it requires the SERVICE role`;
    expect(outcomes).toEqual({
      "newsbot → keys/newsbot": "OK",
      "newsbot → keys/newsbot-other": noGrant("keys/newsbot-other"),
      "newsbot → keys/newsbot2": noGrant("keys/newsbot2"),
      ...Object.fromEntries(names.map((name) => [`newsbot_other → ${name}`, noRole("newsbot_other")])),
      ...Object.fromEntries(names.map((name) => [`newsbot-extra → ${name}`, noRole("newsbot/extra")])),
    });
    const events = await auditEvents(requestIds);
    expect(requestIds.map((id) => events.get(id)?.map((r) => r.result_code))).toEqual([[0], ...Array(8).fill([7])]);
  });
});
