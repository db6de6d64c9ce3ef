import { execFile, spawnSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { fromBinary, fromJson, toJson, type DescService, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflection as ServerReflectionV1Alpha,
  type ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { AccessService, GetCallerIdentityResponseSchema, type GetCallerIdentityResponse } from "../../gen/keyward/v1/access_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { connectClient, grpcJsClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/**
 * Real clients — @grpc/grpc-js, connect-node over every protocol, `buf curl`
 * through reflection and Python grpcio — against one Keyward over real mTLS.
 * Each must see exactly the identity its certificate proves, the roles and
 * grants of the dev policy, and the digest of the policy file in force.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const PYTHON = "/usr/bin/python3";
const PYTHON_SCRIPT = join(ROOT, "test/fixtures/python/get_caller_identity.py");
const PYTHON_INSTALL_HINT = "apt-get update && apt-get install -y python3-grpcio python3-grpc-tools";
const PYTHON_GRPC = spawnSync(PYTHON, ["-c", "import grpc, grpc_tools.protoc"], { stdio: "ignore" }).status === 0;
if (!PYTHON_GRPC) {
  console.warn(`${PYTHON} cannot import grpc and grpc_tools: the Python grpcio tests are SKIPPED. Install with: ${PYTHON_INSTALL_HINT}`);
}

const KEYWARD_SERVICES: readonly DescService[] = [KeysService, CryptoService, SecretsService, AuditService, AccessService];
const INFRASTRUCTURE_SERVICES: readonly DescService[] = [Health, ServerReflectionV1, ServerReflectionV1Alpha];

/** The dev identities and what the dev policy grants each (written out, not derived from src/). */
const DEV_IDENTITIES = [
  { name: "admin", identity: "spiffe://keyward.local/admin", role: "ROLE_ADMIN" },
  { name: "service", identity: "spiffe://keyward.local/service", role: "ROLE_SERVICE" },
  { name: "auditor", identity: "spiffe://keyward.local/auditor", role: "ROLE_AUDITOR" },
] as const;
type DevName = (typeof DEV_IDENTITIES)[number]["name"];

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(command: string, args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { cwd: ROOT, env: { ...process.env, ...env }, timeout: 20_000, maxBuffer: 4 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** Protobuf JSON, canonical: what protobuf-es writes for the message the JSON denotes. */
function canonical(json: JsonValue): JsonValue {
  return toJson(GetCallerIdentityResponseSchema, fromJson(GetCallerIdentityResponseSchema, json));
}

/** A timestamp as protobuf JSON writes it (no fraction for whole seconds). */
function jsonTimestamp(date: Date): string {
  return date.toISOString().replace(".000Z", "Z");
}

describe("real clients against Keyward over mTLS", () => {
  let keyward: TestKeyward;
  /** What GetCallerIdentity must answer each dev identity, as canonical protobuf JSON. */
  const expected = {} as Record<DevName, JsonValue>;
  /** The PEM file paths of each dev identity, for the out-of-process clients. */
  const files = (name: DevName) => ({ ca: keyward.pki.caCert, ...keyward.pki.client(name) });

  beforeAll(async () => {
    keyward = await startTestKeyward();
    const policyDigest = createHash("sha256")
      .update(await readFile(join(keyward.dataDir, "policy.yaml")))
      .digest("hex");
    for (const { name, identity, role } of DEV_IDENTITIES) {
      const cert = new X509Certificate((await keyward.credentials(name)).cert);
      expected[name] = {
        identity,
        identitySource: "IDENTITY_SOURCE_SPIFFE_ID",
        roles: [role],
        grants: [{ role, resourcePatterns: ["**"], effect: "GRANT_EFFECT_ALLOW" }],
        certificate: {
          subject: `CN=${name}`,
          serialNumber: cert.serialNumber.toLowerCase(),
          notBefore: jsonTimestamp(new Date(cert.validFrom)),
          notAfter: jsonTimestamp(new Date(cert.validTo)),
          sha256Fingerprint: cert.fingerprint256.replaceAll(":", "").toLowerCase(),
        },
        policyDigest,
      };
    }
  });
  afterAll(() => keyward?.close());

  const identityJson = (response: GetCallerIdentityResponse) => toJson(GetCallerIdentityResponseSchema, response);
  /** Access log entries written after `from` (an index into keyward.logs). */
  const callsSince = (from: number) =>
    keyward.logs
      .slice(from)
      .map((line) => JSON.parse(line) as { msg?: string; method?: string; identity?: string })
      .filter((entry) => entry.msg?.startsWith("call"));

  it("computes the expected answers from the real files (sanity of the fixture)", () => {
    for (const { name } of DEV_IDENTITIES) {
      const certificate = (expected[name] as { certificate: Record<string, string> }).certificate;
      expect(certificate.serialNumber).toMatch(/^[0-9a-f]+$/);
      expect(certificate.sha256Fingerprint).toMatch(/^[0-9a-f]{64}$/);
    }
    expect(new Set(DEV_IDENTITIES.map(({ name }) => (expected[name] as { certificate: { serialNumber: string } }).certificate.serialNumber)).size).toBe(3);
  });

  describe("GetCallerIdentity", () => {
    it.each(DEV_IDENTITIES.map(({ name }) => name))("@grpc/grpc-js typed stubs, as %s", async (name) => {
      const client = grpcJsClient(AccessService, `127.0.0.1:${keyward.port}`, await keyward.credentials(name));
      try {
        expect(identityJson(await client.stubs.getCallerIdentity({}))).toEqual(expected[name]);
      } finally {
        client.close();
      }
    });

    it.each(["grpc", "grpc-web", "connect", "connect-http1"] as const)("connect-node, protocol %s", async (protocol) => {
      for (const { name } of DEV_IDENTITIES) {
        const client = connectClient(AccessService, keyward.url, await keyward.credentials(name), protocol);
        expect(identityJson(await client.getCallerIdentity({})), name).toEqual(expected[name]);
      }
    });

    describe("buf curl through server reflection", () => {
      const bufCurl = (name: DevName, ...args: string[]) => {
        const { ca, cert, key } = files(name);
        return run("npx", ["buf", "curl", "--cacert", ca, "--cert", cert, "--key", key, ...args]);
      };
      const callIdentity = async (name: DevName, ...args: string[]) => {
        const result = await bufCurl(name, ...args, `${keyward.url}/keyward.v1.AccessService/GetCallerIdentity`);
        expect(result.stderr.replace(/^npm warn .*\n/gm, "")).toBe("");
        expect(result.code).toBe(0);
        return JSON.parse(result.stdout) as JsonValue;
      };

      it.each(DEV_IDENTITIES.map(({ name }) => name))("as %s, reflecting with grpc.reflection.v1", async (name) => {
        const from = keyward.logs.length;
        expect(canonical(await callIdentity(name))).toEqual(expected[name]);
        // By default buf curl asks reflection v1 first; the server serves it, so v1alpha is never needed.
        await vi.waitFor(() =>
          expect(callsSince(from)).toContainEqual(
            expect.objectContaining({ method: "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", identity: `spiffe://keyward.local/${name}` }),
          ),
        );
        expect(callsSince(from).map((entry) => entry.method)).not.toContain("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
      });

      it("with --reflect-protocol grpc-v1alpha", async () => {
        const from = keyward.logs.length;
        expect(canonical(await callIdentity("auditor", "--reflect-protocol", "grpc-v1alpha"))).toEqual(expected.auditor);
        await vi.waitFor(() =>
          expect(callsSince(from)).toContainEqual(
            expect.objectContaining({
              method: "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              identity: "spiffe://keyward.local/auditor",
            }),
          ),
        );
        expect(callsSince(from).map((entry) => entry.method)).not.toContain("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
      });

      it("--list-methods lists every keyward.v1 method, health and reflection", async () => {
        const result = await bufCurl("service", "--list-methods", keyward.url);
        expect(result.code).toBe(0);
        const listed = result.stdout.split("\n").filter(Boolean).sort();
        const served = [...KEYWARD_SERVICES, ...INFRASTRUCTURE_SERVICES]
          .flatMap((service) => service.methods.map((method) => `${service.typeName}/${method.name}`))
          .sort();
        expect(listed).toEqual(served);
        // Guard against both lists being empty or missing a family.
        expect(listed).toEqual(
          expect.arrayContaining([
            "keyward.v1.KeysService/CreateKey",
            "keyward.v1.AccessService/GetCallerIdentity",
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Watch",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
          ]),
        );
      });
    });

    describe("Python grpcio", () => {
      let stubs: string | undefined;

      beforeAll(async () => {
        if (!PYTHON_GRPC) {
          return;
        }
        stubs = await mkdtemp(join(tmpdir(), "keyward-python-"));
        // access.proto imports only google/protobuf/timestamp.proto, which the
        // protobuf runtime ships (grpc_tools adds its include path itself).
        const protoc = await run(PYTHON, [
          "-m",
          "grpc_tools.protoc",
          "-I",
          "proto",
          `--python_out=${stubs}`,
          `--grpc_python_out=${stubs}`,
          "keyward/v1/access.proto",
        ]);
        if (protoc.code !== 0) {
          throw new Error(`grpc_tools.protoc failed (${protoc.code}): ${protoc.stderr}`);
        }
      });
      afterAll(async () => {
        if (stubs !== undefined) {
          await rm(stubs, { recursive: true, force: true });
        }
      });

      it.skipIf(!PYTHON_GRPC).each(DEV_IDENTITIES.map(({ name }) => name))(
        `grpc.secure_channel, as %s${PYTHON_GRPC ? "" : ` (SKIPPED: ${PYTHON} lacks grpc/grpc_tools; install with: ${PYTHON_INSTALL_HINT})`}`,
        async (name) => {
          const { ca, cert, key } = files(name);
          const result = await run(PYTHON, [PYTHON_SCRIPT, `127.0.0.1:${keyward.port}`, ca, cert, key], { PYTHONPATH: stubs! });
          expect(result.stderr).toBe("");
          expect(result.code).toBe(0);
          expect(canonical(JSON.parse(result.stdout) as JsonValue)).toEqual(expected[name]);
        },
      );
    });
  });

  describe("grpc.health.v1", () => {
    const health = async () => connectClient(Health, keyward.url, await keyward.credentials("service"));

    it.each(["", "keyward.v1.KeysService"])("Check(%j) answers SERVING", async (service) => {
      expect((await (await health()).check({ service })).status).toBe(ServingStatus.SERVING);
    });

    it("Check of an unknown service answers NOT_FOUND", async () => {
      const error = await (await health()).check({ service: "keyward.v1.NoSuchService" }).then(
        () => undefined,
        (err: unknown) => ConnectError.from(err),
      );
      expect(error?.code).toBe(Code.NotFound);
    });

    it("List reports every served service as SERVING", async () => {
      const { statuses } = await (await health()).list({});
      expect(statuses[""]?.status).toBe(ServingStatus.SERVING);
      expect(statuses["keyward.v1.KeysService"]?.status).toBe(ServingStatus.SERVING);
      expect(statuses["grpc.health.v1.Health"]?.status).toBe(ServingStatus.SERVING);
    });

    it("Watch streams SERVING first", async () => {
      const abort = new AbortController();
      const statuses: ServingStatus[] = [];
      try {
        for await (const response of (await health()).watch({ service: "" }, { signal: abort.signal })) {
          statuses.push(response.status);
          break;
        }
      } finally {
        abort.abort();
      }
      expect(statuses).toEqual([ServingStatus.SERVING]);
    });
  });

  describe("grpc.reflection.v1alpha through the connect client", () => {
    let responses: ServerReflectionResponse[];

    beforeAll(async () => {
      const client = connectClient(ServerReflectionV1Alpha, keyward.url, await keyward.credentials("auditor"));
      const requests: Array<MessageInitShape<typeof ServerReflectionRequestSchema>> = [
        { messageRequest: { case: "listServices", value: "" } },
        { messageRequest: { case: "fileContainingSymbol", value: "keyward.v1.KeysService.CreateKey" } },
        { messageRequest: { case: "fileContainingSymbol", value: "keyward.v1.NoSuchService" } },
      ];
      responses = [];
      for await (const response of client.serverReflectionInfo(
        (async function* () {
          yield* requests;
        })(),
      )) {
        responses.push(response);
      }
    });

    it("answers each request, in order", () => {
      expect(responses.map((response) => response.messageResponse.case)).toEqual([
        "listServicesResponse",
        "fileDescriptorResponse",
        "errorResponse",
      ]);
    });

    it("list_services includes all five keyward services", () => {
      const answer = responses[0]!.messageResponse;
      const names = answer.case === "listServicesResponse" ? answer.value.service.map((service) => service.name) : [];
      expect(names).toEqual(expect.arrayContaining(KEYWARD_SERVICES.map((service) => service.typeName)));
      expect(KEYWARD_SERVICES.map((service) => service.typeName)).toEqual([
        "keyward.v1.KeysService",
        "keyward.v1.CryptoService",
        "keyward.v1.SecretsService",
        "keyward.v1.AuditService",
        "keyward.v1.AccessService",
      ]);
    });

    it("file_containing_symbol of a method returns its file first, then its imports", () => {
      const answer = responses[1]!.messageResponse;
      const files = (answer.case === "fileDescriptorResponse" ? answer.value.fileDescriptorProto : []).map((bytes) =>
        fromBinary(FileDescriptorProtoSchema, bytes),
      );
      expect(files[0]?.name).toBe("keyward/v1/keys.proto");
      expect(files[0]?.service.find((service) => service.name === "KeysService")?.method.map((method) => method.name)).toContain(
        "CreateKey",
      );
      // The imports come along, so a client can build the file without asking again.
      expect(files[0]?.dependency).toContain("buf/validate/validate.proto");
      expect(files.slice(1).map((file) => file.name)).toEqual(expect.arrayContaining(files[0]?.dependency ?? ["(no file)"]));
    });

    it("an unknown symbol answers error_response with code 5 (NOT_FOUND)", () => {
      const answer = responses[2]!.messageResponse;
      expect(answer.case).toBe("errorResponse");
      expect(answer.case === "errorResponse" ? answer.value.errorCode : undefined).toBe(5);
    });
  });
});
