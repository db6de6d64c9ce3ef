import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService, SecretType } from "../../gen/keyward/v1/secrets_pb.js";
import { INFRASTRUCTURE_SERVICES, KEYWARD_SERVICES } from "../../src/main.js";
import { createScratch } from "./database.js";
import { documentedCodes } from "./documented-codes.js";
import { realisticValues, type FuzzPools } from "./fuzz-values.js";
import { serveWithIdentities, type IdentitiesServer } from "./identities-server.js";
import type { ClientCredentials } from "./keyward.js";
import { killServerProcesses } from "./keyward-process.js";
import { encodeMessage, messageArbitrary, mutatedBytes } from "./message-arbitrary.js";
import { rawGrpcClient, type RawGrpcClient, type RawOutcome } from "./raw-grpc.js";

/**
 * Fuzzes every RPC of the given services (the RPC list comes from the service
 * descriptors, so a new RPC is fuzzed without touching the tests) through a
 * real `keyward serve` process over real mTLS, with @grpc/grpc-js sending
 * raw request bytes. Requests are generated from the message descriptors
 * (boundary scalars, undefined enum numbers, long and huge strings, strings
 * that are not UTF-8, deep paths, 1001-item batches), mixed with realistic
 * values (existing and missing keys and secrets in every state, issued and
 * altered ciphertexts, signatures and MACs) so that most calls reach the
 * handlers, plus mutated and random bytes.
 *
 * Every answer must carry a code the RPC's comment in the protos documents
 * (INVALID_ARGUMENT added for bytes that were not a valid message), never
 * INTERNAL or UNKNOWN, and a message when it is not OK; the server must log
 * no error and still answer Health at the end.
 *
 * KEYWARD_FUZZ_CALLS overrides the number of calls of each suite and
 * KEYWARD_FUZZ_SEED the seed (default: random, printed).
 */

const SEED = Number(process.env.KEYWARD_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
/** How long a server stream (TailAuditEvents in follow mode, Health Watch) is read before the client cancels it. */
const STREAM_OPEN_MS = 100;
const DEADLINE_MS = 60_000;

/**
 * Codes of the infrastructure services, which have no Keyward comments:
 * grpc.health.v1 answers NOT_FOUND for an unknown service; reflection
 * answers errors inside its messages. INVALID_ARGUMENT: a string that is not
 * UTF-8.
 */
const INFRASTRUCTURE_CODES: Record<string, readonly string[]> = {
  "grpc.health.v1.Health/Check": ["OK", "NOT_FOUND", "INVALID_ARGUMENT"],
  "grpc.health.v1.Health/List": ["OK"],
  "grpc.health.v1.Health/Watch": ["OK", "INVALID_ARGUMENT"],
  "grpc.reflection.v1.ServerReflection/ServerReflectionInfo": ["OK", "INVALID_ARGUMENT"],
  "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ["OK", "INVALID_ARGUMENT"],
};

/**
 * How often each RPC is picked relative to the others (default 1): whole-
 * chain verification and audit replays read the whole log, which grows by
 * one event per call, and a stream is held open STREAM_OPEN_MS.
 */
const WEIGHTS: Record<string, number> = {
  "keyward.v1.AuditService/VerifyAuditChain": 0.15,
  "keyward.v1.AuditService/TailAuditEvents": 0.15,
  "keyward.v1.AuditService/ListAuditEvents": 0.5,
  "grpc.health.v1.Health/Watch": 0.2,
};

/** Calls by identity: mostly the one holding every role, so calls reach the handlers; some with one role each. */
const CALLERS = [
  { name: "fuzz-admin", weight: 8, connections: 4 },
  { name: "service", weight: 1, connections: 1 },
  { name: "auditor", weight: 1, connections: 1 },
] as const;

const codeName = (code: number) => grpc.status[code] ?? `CODE_${code}`;

/**
 * Every service the server serves, in four groups of 10 to 13 RPCs, one per
 * test file (fuzz-*.test.ts) so that each file stays near a minute on a
 * 2-core machine; the last group is everything else, so that a service added
 * to the server is fuzzed without touching the tests.
 */
export const FUZZ_GROUPS = {
  keys: [KeysService] as readonly DescService[],
  crypto: [CryptoService] as readonly DescService[],
  secrets: [SecretsService] as readonly DescService[],
  others: [...KEYWARD_SERVICES, ...INFRASTRUCTURE_SERVICES].filter((s) => s !== KeysService && s !== CryptoService && s !== SecretsService),
};

/**
 * Registers a vitest suite that fuzzes every RPC of `services` with `calls`
 * calls (KEYWARD_FUZZ_CALLS overrides it), `concurrency` of them in flight,
 * against a server of its own. Audit reads hold a database connection each:
 * their group runs fewer at once than the pool has connections, or the
 * fuzzer would measure pool waits.
 */
export function describeFuzzing(title: string, services: readonly DescService[], calls: number, concurrency = 96): void {
  const CONCURRENCY = concurrency;
  const TOTAL_CALLS = Number(process.env.KEYWARD_FUZZ_CALLS ?? calls);
  const scratch = createScratch("keyward-fuzz-");
  describe(title, () => {
    let served: IdentitiesServer;
    let pools: FuzzPools;

    beforeAll(async () => {
      served = await serveWithIdentities(
        scratch,
        ["fuzz-admin"],
        [
          { name: "fuzzer", identities: ["spiffe://keyward.local/fuzz-admin"], roles: ["ADMIN", "SERVICE", "AUDITOR"], resources: ["**"] },
          { name: "service", identities: ["spiffe://keyward.local/service"], roles: ["SERVICE"], resources: ["**"] },
          { name: "service-not-this", effect: "deny", identities: ["spiffe://keyward.local/service"], roles: ["SERVICE"], resources: ["keys/deny-*"] },
          { name: "auditor", identities: ["spiffe://keyward.local/auditor"], roles: ["AUDITOR"], resources: ["**"] },
        ],
        // A generous audit timeout, so that a loaded machine shows up as
        // slowness, not UNAVAILABLE.
        { KEYWARD_AUDIT_TIMEOUT_MS: "20000", KEYWARD_DB_POOL_MAX: "16" },
      );
      pools = await createFixtures(served.server.url, await served.credentials("fuzz-admin"));
    }, 120_000);

    afterAll(async () => {
      killServerProcesses();
      await scratch.cleanup();
    });

    it("answers every call with a documented code and a message, logs no error and stays up", async () => {
      const methods = services.flatMap((service) => service.methods);
      const documented = documentedCodes();
      const allowed = new Map<DescMethod, Set<string>>();
      for (const method of methods) {
        const key = `${method.parent.typeName}/${method.name}`;
        const codes = documented.get(key) ?? new Set(INFRASTRUCTURE_CODES[key]);
        expect(codes.size, `${key}: no documented codes`).toBeGreaterThan(0);
        allowed.set(method, codes);
      }

      const cases = caseSources(methods, realisticValues(pools), SEED);
      const callers = await Promise.all(
        CALLERS.map(async (caller) => {
          const credentials = await served.credentials(caller.name);
          return { ...caller, clients: Array.from({ length: caller.connections }, () => rawGrpcClient(served.address, credentials)) };
        }),
      );
      const pickCaller = weightedPicker(callers.map((c) => [c, c.weight] as const));
      const pickMethod = weightedPicker(methods.map((m) => [m, WEIGHTS[`${m.parent.typeName}/${m.name}`] ?? 1] as const));

      const histogram = new Map<string, number>();
      const perMethod = new Map<string, Map<string, number>>();
      const findings: string[] = [];
      let issued = 0;
      let rng = SEED;
      const random = () => {
        // xorshift32: picks are reproducible from the seed, like the cases.
        rng ^= rng << 13;
        rng ^= rng >>> 17;
        rng ^= rng << 5;
        return (rng >>> 0) / 2 ** 32;
      };

      const serverCpuBefore = served.cpuSeconds();
      const clientCpuBefore = process.cpuUsage();
      const started = performance.now();
      const worker = async (w: number) => {
        while (issued < TOTAL_CALLS) {
          issued += 1;
          const method = pickMethod(random());
          const caller = pickCaller(random());
          const client = caller.clients[w % caller.clients.length]!;
          const { kind, bytes } = cases.next(method);
          const outcome = await call(client, method, bytes);
          const name = codeName(outcome.code);
          histogram.set(name, (histogram.get(name) ?? 0) + 1);
          const key = `${method.parent.typeName}/${method.name}`;
          const byCode = perMethod.get(key) ?? new Map<string, number>();
          byCode.set(name, (byCode.get(name) ?? 0) + 1);
          perMethod.set(key, byCode);
          const expected = allowed.get(method)!.has(name) || (kind !== "structured" && name === "INVALID_ARGUMENT");
          if (!expected || (outcome.code !== grpc.status.OK && outcome.message === "")) {
            findings.push(
              `${key} as ${caller.name}, ${kind} request of ${bytes.length} bytes (${Buffer.from(bytes.subarray(0, 48)).toString("hex")}): ` +
                `${name} "${outcome.message.slice(0, 200)}"`,
            );
          }
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, (_, w) => worker(w)));
      const seconds = (performance.now() - started) / 1000;
      const serverCpu = served.cpuSeconds() - serverCpuBefore;
      const clientCpuMicros = process.cpuUsage(clientCpuBefore);
      const clientCpu = (clientCpuMicros.user + clientCpuMicros.system) / 1e6;
      callers.forEach((caller) => caller.clients.forEach((client) => client.close()));

      const total = [...histogram.values()].reduce((a, b) => a + b, 0);
      const sorted = [...histogram].sort((a, b) => b[1] - a[1]);
      console.log(
        `[fuzz] ${title}, seed ${SEED}: ${total} calls to ${perMethod.size} RPCs in ${seconds.toFixed(1)} s (${Math.round(total / seconds)}/s; ` +
          `CPU per call: server ${((serverCpu / total) * 1000).toFixed(2)} ms, client ${((clientCpu / total) * 1000).toFixed(2)} ms); ` +
          `codes: ${sorted.map(([code, n]) => `${code} ${n}`).join(", ")}`,
      );

      const crashed = served.server.child.exitCode !== null || served.server.child.signalCode !== null;
      expect(crashed, `the server exited (seed ${SEED}):\n${served.server.output().slice(-6000)}`).toBe(false);
      expect(findings.slice(0, 20), `${findings.length} unexpected answers (seed ${SEED})`).toEqual([]);
      expect(histogram.get("INTERNAL") ?? 0).toBe(0);
      expect(histogram.get("UNKNOWN") ?? 0).toBe(0);
      expect(total).toBe(TOTAL_CALLS);
      // Every RPC was called, and most calls got past validation.
      expect([...perMethod.keys()].sort()).toEqual(methods.map((m) => `${m.parent.typeName}/${m.name}`).sort());
      expect(total - (histogram.get("INVALID_ARGUMENT") ?? 0)).toBeGreaterThan(total * 0.3);

      // Still alive, still serving, and nothing logged at error level.
      expect(served.server.child.exitCode).toBeNull();
      const health = createClient(Health, createGrpcTransport({ baseUrl: served.server.url, nodeOptions: await served.credentials("auditor") }));
      expect((await health.check({})).status).toBe(ServingStatus.SERVING);
      // A database slow to answer on a loaded machine is logged at error
      // level and answered UNAVAILABLE (documented); anything else is a finding.
      const errors = served.server
        .lines()
        .filter((line) => /"level":"(error|fatal)"/.test(line))
        .filter((line) => !/"error":"(timeout exceeded when trying to connect|Connection terminated due to connection timeout|Query read timeout)"/.test(line));
      expect(errors.slice(0, 5)).toEqual([]);
    }, 600_000);
  });
}

type CaseKind = "structured" | "mutated" | "garbage";

/**
 * Request bytes per method, drawn in batches from fast-check arbitraries
 * built from the method's input descriptor: well-formed messages with every
 * field at random, plausible ones (realistic fields only, to reach the
 * handlers), mutated encodings and random bytes.
 */
function caseSources(methods: readonly DescMethod[], realistic: ReturnType<typeof realisticValues>, seed: number) {
  const arbitraries = new Map<DescMethod, fc.Arbitrary<{ kind: CaseKind; bytes: Uint8Array }>>();
  const batches = new Map<DescMethod, Array<{ kind: CaseKind; bytes: Uint8Array }>>();
  let batchSeed = seed;
  for (const method of methods) {
    const structured = messageArbitrary(method.input, { realistic }).map((init) => encodeMessage(method.input, init));
    const plausible = messageArbitrary(method.input, { realistic, plausible: true }).map((init) => encodeMessage(method.input, init));
    arbitraries.set(
      method,
      fc.oneof(
        { weight: 30, arbitrary: structured.map((bytes) => ({ kind: "structured" as const, bytes })) },
        { weight: 55, arbitrary: plausible.map((bytes) => ({ kind: "structured" as const, bytes })) },
        { weight: 10, arbitrary: mutatedBytes(structured).map((bytes) => ({ kind: "mutated" as const, bytes })) },
        { weight: 5, arbitrary: fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ kind: "garbage" as const, bytes })) },
      ),
    );
  }
  return {
    next(method: DescMethod) {
      let batch = batches.get(method);
      if (!batch || batch.length === 0) {
        batch = fc.sample(arbitraries.get(method)!, { numRuns: 200, seed: batchSeed++ });
        batches.set(method, batch);
      }
      return batch.pop()!;
    },
  };
}

function call(client: RawGrpcClient, method: DescMethod, bytes: Uint8Array): Promise<RawOutcome> {
  switch (method.methodKind) {
    case "unary":
      return client.unary(method, bytes, DEADLINE_MS);
    case "server_streaming":
      return client.serverStream(method, bytes, STREAM_OPEN_MS);
    case "bidi_streaming":
      return client.bidi(method, [bytes], DEADLINE_MS);
    case "client_streaming":
      return client.bidi(method, [bytes], DEADLINE_MS);
  }
}

function weightedPicker<T>(entries: ReadonlyArray<readonly [T, number]>): (u: number) => T {
  const total = entries.reduce((sum, [, weight]) => sum + weight, 0);
  return (u) => {
    let left = u * total;
    for (const [value, weight] of entries) {
      left -= weight;
      if (left < 0) {
        return value;
      }
    }
    return entries[entries.length - 1]![0];
  };
}

/**
 * Keys of every purpose and state, secrets (one at the deepest path
 * allowed), ciphertexts, signatures, MACs and page tokens, for realistic
 * requests.
 */
async function createFixtures(url: string, credentials: ClientCredentials): Promise<FuzzPools> {
  const transport = createGrpcTransport({ baseUrl: url, nodeOptions: credentials });
  const keys = createClient(KeysService, transport);
  const crypto = createClient(CryptoService, transport);
  const secrets = createClient(SecretsService, transport);
  const audit = createClient(AuditService, transport);

  const created: Array<[string, KeyPurpose, KeyAlgorithm]> = [
    ["aes", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
    ["chacha", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.CHACHA20_POLY1305],
    ["ed", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519],
    ["p256", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ECDSA_P256_SHA256],
    ["hmac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256],
    ["hmac512", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA512],
    ["off", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
    ["doomed", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
    ["deny-me", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  ];
  for (const [keyId, purpose, algorithm] of created) {
    await keys.createKey({ keyId, key: { purpose, algorithm, labels: { team: "payments" } } });
  }
  await keys.rotateKey({ name: "keys/aes" });
  await keys.disableKey({ name: "keys/off" });
  await keys.scheduleKeyDeletion({ name: "keys/doomed" });

  const associatedData = [new Uint8Array(0), new TextEncoder().encode("order-42")];
  const ciphertexts: Uint8Array[] = [];
  for (const name of ["keys/aes", "keys/aes/versions/1", "keys/chacha", "keys/deny-me"]) {
    for (const ad of associatedData) {
      ciphertexts.push((await crypto.encrypt({ name, plaintext: new TextEncoder().encode("fuzz"), associatedData: ad })).ciphertext);
    }
  }
  ciphertexts.push((await crypto.generateDataKey({ name: "keys/aes", length: { case: "numberOfBytes", value: 32 } })).ciphertext);
  const message = new TextEncoder().encode("message");
  const signatures = [(await crypto.sign({ name: "keys/ed", input: { case: "message", value: message } })).signature];
  signatures.push((await crypto.sign({ name: "keys/p256", input: { case: "message", value: message } })).signature);
  const macs = [(await crypto.mac({ name: "keys/hmac", data: message })).mac, (await crypto.mac({ name: "keys/hmac512", data: message })).mac];

  const deepest = "a/b/c/d/e/f/g/h";
  for (const secretId of ["db", "api", deepest]) {
    await secrets.createSecret({ parent: "secrets/app/prod", secretId, secret: { key: "keys/aes", labels: { env: "prod" } } });
    await secrets.addSecretVersion({ parent: `secrets/app/prod/${secretId}`, payload: { data: new TextEncoder().encode("v1") } });
    await secrets.addSecretVersion({ parent: `secrets/app/prod/${secretId}`, payload: { data: new TextEncoder().encode("v2") } });
  }
  await secrets.createSecret({ parent: "secrets/app/prod", secretId: "pw", secret: { type: SecretType.PASSWORD, key: "keys/aes" } });
  const pageTokens = [
    (await keys.listKeys({ pageSize: 1 })).nextPageToken,
    (await secrets.listSecrets({ parent: "secrets/app/prod", pageSize: 1 })).nextPageToken,
    (await keys.listKeyVersions({ parent: "keys/aes", pageSize: 1 })).nextPageToken,
    (await audit.listAuditEvents({ pageSize: 1 })).nextPageToken,
  ];

  return {
    keyNames: [...created.map(([id]) => `keys/${id}`), "keys/missing", "keys/never-was"],
    secretNames: ["secrets/app/prod/db", "secrets/app/prod/api", `secrets/app/prod/${deepest}`, "secrets/app/prod/pw", "secrets/app/prod/missing"],
    secretParents: ["secrets/app/prod", "secrets/app/dev", "secrets/other/prod"],
    ciphertexts,
    associatedData,
    signatures,
    macs,
    pageTokens,
    auditSequences: [0n, -1n, 5n, 10n, 50n, 1_000_000_000n, 9_000_000_000_000_000_000n],
  };
}
