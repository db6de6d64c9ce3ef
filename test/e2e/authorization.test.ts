import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { loadDevCertificateAuthority, issueCertificate } from "../../src/dev/pki.js";
import { KEYWARD_SERVICES } from "../../src/main.js";
import { PERMISSIONS } from "../../src/server/permissions.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type ClientCredentials, type TestKeyward } from "../helpers/keyward.js";

type AnyClient = Record<string, (request: object, options?: { signal?: AbortSignal }) => unknown>;

/** Calls `method` with `request` and returns the resulting code (Code.Ok as 0). */
async function codeOf(client: AnyClient, method: DescMethod, request: object = {}): Promise<Code | 0> {
  // A follow-mode stream (TailAuditEvents) may stay open without sending
  // anything: still open after a second, without an error, counts as passed.
  const streaming = method.methodKind === "server_streaming";
  const patience = new AbortController();
  const timer = streaming ? setTimeout(() => patience.abort(), 1000) : undefined;
  try {
    const result = client[method.localName]!(request, { signal: patience.signal });
    if (streaming) {
      for await (const _ of result as AsyncIterable<unknown>) {
        break;
      }
    } else {
      await result;
    }
    return 0;
  } catch (err) {
    return streaming && patience.signal.aborted ? 0 : ConnectError.from(err).code;
  } finally {
    clearTimeout(timer);
  }
}

const keywardMethods = KEYWARD_SERVICES.flatMap((service) => service.methods.map((method) => ({ service, method })));
const fullName = (service: DescService, method: DescMethod) => `${service.typeName}/${method.name}`;

describe("authorization over mTLS", () => {
  let keyward: TestKeyward;
  const clients = new Map<string, (service: DescService) => AnyClient>();

  const clientFor = (credentials: ClientCredentials) => {
    const transport = createGrpcTransport({ baseUrl: keyward.url, nodeOptions: credentials });
    return (service: DescService) => createClient(service, transport) as unknown as AnyClient;
  };

  beforeAll(async () => {
    keyward = await startTestKeyward();
    for (const name of ["admin", "service", "auditor"]) {
      clients.set(name, clientFor(await keyward.credentials(name)));
    }
    const ca = await loadDevCertificateAuthority(keyward.pki.dir);
    const stranger = await issueCertificate(ca, {
      commonName: "stranger",
      usage: "client",
      spiffeId: "spiffe://keyward.local/stranger",
    });
    const { ca: caPem } = await keyward.credentials("admin");
    clients.set("stranger", clientFor({ ca: caPem, cert: Buffer.from(stranger.certPem), key: Buffer.from(stranger.keyPem) }));
  });
  afterAll(() => keyward?.close());

  it("has exactly one permission entry per served keyward method", () => {
    const served = keywardMethods.map(({ service, method }) => fullName(service, method)).sort();
    const tabled = Object.keys(PERMISSIONS)
      .filter((name) => name.startsWith("keyward."))
      .sort();
    expect(tabled).toEqual(served);
  });

  // With the dev policy every dev identity holds its one role on "**", so the
  // role alone decides: a permitted role gets past authorization (and, with an
  // empty request, is stopped by validation or reaches a handler that is not
  // implemented yet); any other role is refused before validation.
  for (const [name, role] of [
    ["admin", "ADMIN"],
    ["service", "SERVICE"],
    ["auditor", "AUDITOR"],
  ] as const) {
    it(`${name} (${role}) is refused exactly the methods its role may not call`, async () => {
      const outcomes: Record<string, string> = {};
      const expected: Record<string, string> = {};
      for (const { service, method } of keywardMethods) {
        const permission = PERMISSIONS[fullName(service, method)]!;
        const allowed = permission.kind === "authenticated" || permission.roles.includes(role);
        const code = await codeOf(clients.get(name)!(service), method);
        outcomes[method.name] = code === Code.PermissionDenied ? "denied" : "passed";
        expected[method.name] = allowed ? "passed" : "denied";
        if (allowed) {
          expect([0, Code.InvalidArgument, Code.NotFound], `${method.name}: ${Code[code]}`).toContain(code);
        }
      }
      expect(outcomes).toEqual(expected);
    });
  }

  it("SERVICE gets PERMISSION_DENIED on an ADMIN method, with a valid or an invalid request", async () => {
    const keys = connectClient(KeysService, keyward.url, await keyward.credentials("service"));
    const valid = { keyId: "payments", key: { purpose: 1, algorithm: 1 } };
    await expect(keys.createKey(valid)).rejects.toMatchObject({
      code: Code.PermissionDenied,
      rawMessage: "spiffe://keyward.local/service may not call keyward.v1.KeysService/CreateKey: it requires the ADMIN role",
    });
    // Denied before validation: an invalid request does not reveal the rules.
    await expect(keys.createKey({ keyId: "NOT VALID" })).rejects.toMatchObject({ code: Code.PermissionDenied });
    // The same valid request from ADMIN passes authorization and validation.
    const adminKeys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    await expect(adminKeys.createKey(valid)).resolves.toMatchObject({ key: { name: "keys/payments" } });
    await expect(adminKeys.createKey({ keyId: "NOT VALID", key: { purpose: 1, algorithm: 1 } })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });

  it("an unknown identity with a valid certificate is denied everything but GetCallerIdentity", async () => {
    const stranger = clients.get("stranger")!;
    const codes = new Map<string, Code | 0>();
    for (const { service, method } of keywardMethods) {
      codes.set(fullName(service, method), await codeOf(stranger(service), method));
    }
    for (const [name, code] of codes) {
      expect(Code[code] ?? "OK", name).toBe(name === "keyward.v1.AccessService/GetCallerIdentity" ? "OK" : "PermissionDenied");
    }
    const me = (await stranger(AccessService).getCallerIdentity!({})) as { identity: string; roles: unknown[]; grants: unknown[] };
    expect(me.identity).toBe("spiffe://keyward.local/stranger");
    expect(me.roles).toEqual([]);
    expect(me.grants).toEqual([]);
  });

  it("logs one access line per call with identity, method and code, and no request content", async () => {
    const keys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
    const marker = "zz-secret-marker-7f3a";
    await keys.createKey({ keyId: "logged", key: { purpose: 1, algorithm: 1, description: marker } });
    await keys.createKey({ keyId: "logged", key: { purpose: 1, algorithm: 1, description: marker } }).catch(() => {});
    const line = keyward.logs.map((l) => JSON.parse(l)).find((l) => l.method === "/keyward.v1.KeysService/CreateKey" && l.code === "already_exists");
    expect(line).toMatchObject({ identity: "spiffe://keyward.local/admin", msg: "call failed" });
    expect(line.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(typeof line.durationMs).toBe("number");
    expect(keyward.logs.join("\n")).not.toContain(marker);
  });
});
