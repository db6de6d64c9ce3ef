import { randomBytes } from "node:crypto";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import {
  Code,
  ConnectError,
  createKeywardClient,
  ENVELOPE_FORMAT_VERSION,
  envelopeDecrypt,
  envelopeEncrypt,
  KeyAlgorithm,
  KeyPurpose,
  SecretType,
  type Interceptor,
  type KeywardClient,
  type KeywardClientOptions,
} from "keyward";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { expectFailure, failure } from "../helpers/expect.js";
import { startTestKeyward, type ClientCredentials, type TestKeyward } from "../helpers/keyward.js";

/**
 * The TypeScript client library (`import … from "keyward"`) against a real
 * Keyward over real mTLS: every service, deadlines, which calls are retried
 * after UNAVAILABLE and how, several addresses, and the envelope helpers.
 */

let keyward: TestKeyward;
let creds: Record<"admin" | "service" | "auditor", ClientCredentials>;
const clients: KeywardClient[] = [];
const servers: Server[] = [];

/** A client as `name`, closed after the file. */
function clientAs(name: keyof typeof creds, options: Partial<KeywardClientOptions> = {}): KeywardClient {
  const client = createKeywardClient({ address: `127.0.0.1:${keyward.port}`, ...creds[name], ...options });
  clients.push(client);
  return client;
}

/** An interceptor recording each attempt: method name and when it started. */
function attemptLog(): { interceptor: Interceptor; attempts: { method: string; at: number }[] } {
  const attempts: { method: string; at: number }[] = [];
  return {
    attempts,
    interceptor: (next) => (req) => {
      attempts.push({ method: req.method.name, at: performance.now() });
      return next(req);
    },
  };
}

/** A loopback port nothing listens on: connecting is refused. */
async function refusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * A TCP forwarder on a loopback port to Keyward: TLS passes through it
 * untouched. `delayMs` holds every chunk from the server back that long (a
 * slow network); `stop()` closes the port (connections are refused) and
 * `start()` opens the same port again.
 */
async function forwarder(delayMs = 0): Promise<{ port: number; stop(): Promise<void>; start(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((downstream) => {
    const upstream = tcpConnect(keyward.port, "127.0.0.1");
    sockets.add(downstream).add(upstream);
    let last = 0;
    upstream.on("data", (chunk) => {
      // Order is kept: no chunk is written before the one before it.
      last = Math.max(performance.now() + delayMs, last);
      setTimeout(() => downstream.writable && downstream.write(chunk), last - performance.now());
    });
    downstream.pipe(upstream);
    const end = () => {
      downstream.destroy();
      upstream.destroy();
    };
    for (const socket of [downstream, upstream]) {
      socket.on("close", end).on("error", end);
      socket.on("close", () => sockets.delete(socket));
    }
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return {
    port,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) {
          socket.destroy();
        }
        server.close(() => resolve());
      }),
    start: () => new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve)),
  };
}

const keyId = (prefix: string) => `${prefix}-${randomBytes(4).toString("hex")}`;

beforeAll(async () => {
  keyward = await startTestKeyward();
  creds = {
    admin: await keyward.credentials("admin"),
    service: await keyward.credentials("service"),
    auditor: await keyward.credentials("auditor"),
  };
});

afterAll(async () => {
  for (const client of clients) {
    client.close();
  }
  for (const server of servers) {
    server.close();
  }
  await keyward?.close();
});

describe("every service through the client", () => {
  it("Access, Keys, Crypto, Secrets and Audit answer, each caller as its certificate's identity", async () => {
    const admin = clientAs("admin");
    const service = clientAs("service");
    const auditor = clientAs("auditor");

    for (const [client, name] of [
      [admin, "admin"],
      [service, "service"],
      [auditor, "auditor"],
    ] as const) {
      expect((await client.access.getCallerIdentity({})).identity).toBe(`spiffe://keyward.local/${name}`);
    }

    const { key } = await admin.keys.createKey({
      keyId: keyId("lib"),
      key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM },
    });
    const name = key!.name;
    expect((await admin.keys.rotateKey({ name })).key?.primaryVersion).toBe(2);
    expect((await auditor.keys.getKey({ name })).key?.primaryVersion).toBe(2);
    expect((await admin.keys.listKeys({})).keys.map((k) => k.name)).toContain(name);

    const plaintext = Buffer.from("through the library");
    const encrypted = await service.crypto.encrypt({ name, plaintext, associatedData: Buffer.from("order-42") });
    expect(encrypted.keyVersion).toBe(`${name}/versions/2`);
    const decrypted = await service.crypto.decrypt({ name, ciphertext: encrypted.ciphertext, associatedData: Buffer.from("order-42") });
    expect(Buffer.from(decrypted.plaintext)).toEqual(plaintext);

    const signing = (
      await admin.keys.createKey({ keyId: keyId("lib-sign"), key: { purpose: KeyPurpose.SIGN_VERIFY, algorithm: KeyAlgorithm.ED25519 } })
    ).key!.name;
    const signed = await service.crypto.sign({ name: signing, input: { case: "message", value: plaintext } });
    const verified = await service.crypto.verify({ name: signed.keyVersion, input: { case: "message", value: plaintext }, signature: signed.signature });
    expect(verified.valid).toBe(true);
    expect((await service.keys.getPublicKey({ name: signed.keyVersion })).pem).toMatch(/^-----BEGIN PUBLIC KEY-----/);

    const secret = (await admin.secrets.createSecret({ parent: "secrets/lib/prod", secretId: "db/password", secret: { type: SecretType.PASSWORD } }))
      .secret!.name;
    await service.secrets.addSecretVersion({ parent: secret, payload: { data: Buffer.from("hunter2") }, expectedCurrentVersion: 0n });
    const value = await service.secrets.accessSecretVersion({ name: `${secret}/versions/latest` });
    expect(Buffer.from(value.payload!.data).toString()).toBe("hunter2");

    const chain = await auditor.audit.verifyAuditChain({});
    expect({ intact: chain.intact, reason: chain.reason }).toEqual({ intact: true, reason: "" });
    const encrypts = await auditor.audit.listAuditEvents({ method: "/keyward.v1.CryptoService/Encrypt", identity: "spiffe://keyward.local/service" });
    expect(encrypts.events.map((e) => e.resources)).toContainEqual([name]);
    // The server stream: replay from the first event, then stop reading.
    const abort = new AbortController();
    const tailed: bigint[] = [];
    for await (const { event } of auditor.audit.tailAuditEvents({ startSequence: 1n }, { signal: abort.signal })) {
      tailed.push(event!.sequence);
      if (tailed.length === 3) {
        abort.abort();
        break;
      }
    }
    expect(tailed).toEqual([1n, 2n, 3n]);
  });

  it("close(): later calls fail CANCELED without a connection", async () => {
    const client = clientAs("service");
    await client.access.getCallerIdentity({});
    client.close();
    await expectFailure(client.access.getCallerIdentity({}), Code.Canceled, "the Keyward client is closed");
  });
});

describe("deadlines", () => {
  it("a unary call past the default deadline fails DEADLINE_EXCEEDED, once; a call's own timeoutMs overrides the default", async () => {
    const slow = await forwarder(500);
    const log = attemptLog();
    const client = clientAs("service", { address: `127.0.0.1:${slow.port}`, defaultTimeoutMs: 300, interceptors: [log.interceptor] });

    // The TLS handshake alone waits for the server's delayed answer.
    let started = performance.now();
    const late = await failure(client.access.getCallerIdentity({}));
    const elapsed = performance.now() - started;
    expect(Code[late.code]).toBe(Code[Code.DeadlineExceeded]);
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(2000);
    // DEADLINE_EXCEEDED is not retried.
    expect(log.attempts).toHaveLength(1);

    started = performance.now();
    const patient = await client.access.getCallerIdentity({}, { timeoutMs: 20_000 });
    expect(patient.identity).toBe("spiffe://keyward.local/service");
    expect(performance.now() - started).toBeGreaterThanOrEqual(500);

    // On the now open connection one round trip still takes 500 ms: a
    // shorter per-call deadline than the default is enforced too.
    const impatient = clientAs("service", { address: `127.0.0.1:${slow.port}`, defaultTimeoutMs: 20_000 });
    await impatient.access.getCallerIdentity({});
    expect(Code[(await failure(impatient.access.getCallerIdentity({}, { timeoutMs: 200 }))).code]).toBe(Code[Code.DeadlineExceeded]);
    expect((await impatient.access.getCallerIdentity({})).identity).toBe("spiffe://keyward.local/service");
  });

  it("retries stay within the call's deadline, and stop at once when the call is aborted", async () => {
    const log = attemptLog();
    const client = clientAs("service", {
      address: `127.0.0.1:${await refusedPort()}`,
      retry: { maxAttempts: 50, initialBackoffMs: 100, maxBackoffMs: 100 },
      interceptors: [log.interceptor],
    });
    let started = performance.now();
    const err = await failure(client.keys.getKey({ name: "keys/x" }, { timeoutMs: 400 }));
    // The last attempt's own error, not a deadline the retries ran into.
    expect(Code[err.code]).toBe(Code[Code.Unavailable]);
    expect(performance.now() - started).toBeLessThan(1000);
    // Pauses of 50–100 ms: at most 9 attempts fit in 400 ms; at least 3 unless connecting took 100 ms.
    expect(log.attempts.length).toBeGreaterThanOrEqual(3);
    expect(log.attempts.length).toBeLessThanOrEqual(9);

    const slowRetries = clientAs("service", {
      address: `127.0.0.1:${await refusedPort()}`,
      retry: { maxAttempts: 5, initialBackoffMs: 5000, maxBackoffMs: 5000 },
    });
    started = performance.now();
    await expectFailure(
      slowRetries.keys.getKey({ name: "keys/x" }, { signal: AbortSignal.timeout(150) }),
      Code.Canceled,
      "the call was canceled while waiting to retry",
    );
    expect(performance.now() - started).toBeLessThan(1500);
  });
});

describe("retries after UNAVAILABLE", () => {
  /**
   * Every unary RPC, and how many attempts it gets against a port that
   * refuses connections with maxAttempts 4: written out here, apart from
   * the table in src/client/retry-policy.ts, so changing either shows.
   */
  const EXPECTED: [string, (c: KeywardClient) => Promise<unknown>, 1 | 4][] = [
    ["CreateKey", (c) => c.keys.createKey({}), 1],
    ["GetKey", (c) => c.keys.getKey({}), 4],
    ["ListKeys", (c) => c.keys.listKeys({}), 4],
    ["UpdateKey", (c) => c.keys.updateKey({ key: { name: "keys/x" } }), 1],
    ["UpdateKey with etag", (c) => c.keys.updateKey({ key: { name: "keys/x", etag: "e1" } }), 4],
    ["RotateKey", (c) => c.keys.rotateKey({}), 1],
    ["ListKeyVersions", (c) => c.keys.listKeyVersions({}), 4],
    ["EnableKey", (c) => c.keys.enableKey({}), 4],
    ["DisableKey", (c) => c.keys.disableKey({}), 4],
    ["ScheduleKeyDeletion", (c) => c.keys.scheduleKeyDeletion({}), 1],
    ["CancelKeyDeletion", (c) => c.keys.cancelKeyDeletion({}), 1],
    ["EnableKeyVersion", (c) => c.keys.enableKeyVersion({}), 4],
    ["DisableKeyVersion", (c) => c.keys.disableKeyVersion({}), 4],
    ["GetPublicKey", (c) => c.keys.getPublicKey({}), 4],
    ["Encrypt", (c) => c.crypto.encrypt({}), 4],
    ["Decrypt", (c) => c.crypto.decrypt({}), 4],
    ["ReEncrypt", (c) => c.crypto.reEncrypt({}), 4],
    ["GenerateDataKey", (c) => c.crypto.generateDataKey({}), 4],
    ["GenerateDataKeyWithoutPlaintext", (c) => c.crypto.generateDataKeyWithoutPlaintext({}), 4],
    ["Sign", (c) => c.crypto.sign({}), 4],
    ["Verify", (c) => c.crypto.verify({}), 4],
    ["Mac", (c) => c.crypto.mac({}), 4],
    ["VerifyMac", (c) => c.crypto.verifyMac({}), 4],
    ["BatchEncrypt", (c) => c.crypto.batchEncrypt({}), 4],
    ["BatchDecrypt", (c) => c.crypto.batchDecrypt({}), 4],
    ["CreateSecret", (c) => c.secrets.createSecret({}), 1],
    ["GetSecret", (c) => c.secrets.getSecret({}), 4],
    ["ListSecrets", (c) => c.secrets.listSecrets({}), 4],
    ["UpdateSecret", (c) => c.secrets.updateSecret({ secret: { name: "secrets/a/b/c" } }), 1],
    ["UpdateSecret with etag", (c) => c.secrets.updateSecret({ secret: { name: "secrets/a/b/c", etag: "e1" } }), 4],
    ["DeleteSecret", (c) => c.secrets.deleteSecret({}), 1],
    ["DeleteSecret with etag", (c) => c.secrets.deleteSecret({ etag: "e1" }), 4],
    ["AddSecretVersion", (c) => c.secrets.addSecretVersion({}), 1],
    ["AddSecretVersion with expected_current_version", (c) => c.secrets.addSecretVersion({ expectedCurrentVersion: 0n }), 4],
    ["AccessSecretVersion", (c) => c.secrets.accessSecretVersion({}), 4],
    ["ListSecretVersions", (c) => c.secrets.listSecretVersions({}), 4],
    ["DisableSecretVersion", (c) => c.secrets.disableSecretVersion({}), 4],
    ["EnableSecretVersion", (c) => c.secrets.enableSecretVersion({}), 4],
    ["DestroySecretVersion", (c) => c.secrets.destroySecretVersion({}), 4],
    ["RollbackSecret", (c) => c.secrets.rollbackSecret({}), 1],
    ["RollbackSecret with expected_current_version", (c) => c.secrets.rollbackSecret({ expectedCurrentVersion: 3n }), 4],
    ["GenerateSecret", (c) => c.secrets.generateSecret({}), 1],
    ["GenerateSecret with expected_current_version", (c) => c.secrets.generateSecret({ expectedCurrentVersion: 3n }), 4],
    ["ListAuditEvents", (c) => c.audit.listAuditEvents({}), 4],
    ["VerifyAuditChain", (c) => c.audit.verifyAuditChain({}), 4],
    ["GetAuditCheckpoint", (c) => c.audit.getAuditCheckpoint({}), 4],
    ["GetCallerIdentity", (c) => c.access.getCallerIdentity({}), 4],
  ];

  it("against a refused port: idempotent calls get 4 attempts, the others exactly 1, every one ends UNAVAILABLE", async () => {
    const log = attemptLog();
    const client = clientAs("admin", {
      address: `127.0.0.1:${await refusedPort()}`,
      retry: { maxAttempts: 4, initialBackoffMs: 4, maxBackoffMs: 16 },
      interceptors: [log.interceptor],
    });
    const seen: Record<string, string> = {};
    const expected: Record<string, string> = {};
    for (const [label, call, attempts] of EXPECTED) {
      log.attempts.length = 0;
      const err = await failure(call(client));
      seen[label] = `${Code[err.code]} after ${log.attempts.length}`;
      expected[label] = `${Code[Code.Unavailable]} after ${attempts}`;
    }
    expect(seen).toEqual(expected);

    // The table names every unary method of the five services.
    const unary = [KeysService, CryptoService, SecretsService, AuditService, AccessService].flatMap((s) =>
      s.methods.filter((m) => m.methodKind === "unary").map((m) => m.name),
    );
    expect(new Set(EXPECTED.map(([label]) => label.split(" ")[0]))).toEqual(new Set(unary));

    // The stream is not retried: resuming is the caller's decision.
    log.attempts.length = 0;
    const tail = async () => {
      for await (const _ of client.audit.tailAuditEvents({})) {
        // nothing arrives
      }
    };
    expect(Code[(await failure(tail())).code]).toBe(Code[Code.Unavailable]);
    expect(log.attempts.map((a) => a.method)).toEqual(["TailAuditEvents"]);
  });

  it("pauses grow exponentially, with jitter: retry n waits within [cap/2, cap], cap = initial·2^(n-1)", async () => {
    const log = attemptLog();
    const client = clientAs("service", {
      address: `127.0.0.1:${await refusedPort()}`,
      retry: { maxAttempts: 4, initialBackoffMs: 40, maxBackoffMs: 1000 },
      interceptors: [log.interceptor],
    });
    const firstPauses: number[] = [];
    for (let run = 0; run < 6; run++) {
      log.attempts.length = 0;
      await failure(client.crypto.encrypt({ name: "keys/x" }));
      const at = log.attempts.map((a) => a.at);
      const pauses = [at[1]! - at[0]!, at[2]! - at[1]!, at[3]! - at[2]!];
      // Timers never fire early; a refused connect takes a millisecond or so on top.
      expect(pauses[0]).toBeGreaterThanOrEqual(19);
      expect(pauses[1]).toBeGreaterThanOrEqual(39);
      expect(pauses[2]).toBeGreaterThanOrEqual(79);
      expect(pauses[2]).toBeGreaterThan(pauses[0]!);
      firstPauses.push(pauses[0]!);
    }
    // Six draws from [20, 40] ms do not all land within 1 ms of each other.
    expect(Math.max(...firstPauses) - Math.min(...firstPauses)).toBeGreaterThan(1);
  });

  it("with several addresses a retry goes to the next one: GetKey reaches the live server, CreateKey is not sent twice", async () => {
    const admin = clientAs("admin");
    const name = (
      await admin.keys.createKey({ keyId: keyId("spread"), key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } })
    ).key!.name;

    const log = attemptLog();
    const client = clientAs("admin", {
      address: [`127.0.0.1:${await refusedPort()}`, `127.0.0.1:${keyward.port}`],
      interceptors: [log.interceptor],
    });
    expect((await client.keys.getKey({ name })).key?.name).toBe(name);
    expect(log.attempts.map((a) => a.method)).toEqual(["GetKey", "GetKey"]);

    // The next call starts on the refused address again.
    log.attempts.length = 0;
    const id = keyId("never");
    await failure(client.keys.createKey({ keyId: id, key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } })).then(
      (err) => expect(Code[err.code]).toBe(Code[Code.Unavailable]),
    );
    expect(log.attempts.map((a) => a.method)).toEqual(["CreateKey"]);
    await expectFailure(admin.keys.getKey({ name: `keys/${id}` }), Code.NotFound, `keys/${id} not found`);
  });

  it("a server gone and back on the same port: GetKey retried until it answers; RotateKey fails at once and rotates nothing", async () => {
    const admin = clientAs("admin");
    const name = (
      await admin.keys.createKey({ keyId: keyId("restart"), key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } })
    ).key!.name;
    const port = await forwarder();
    await port.stop();

    const log = attemptLog();
    const client = clientAs("admin", {
      address: `127.0.0.1:${port.port}`,
      retry: { maxAttempts: 10, initialBackoffMs: 50, maxBackoffMs: 200 },
      interceptors: [log.interceptor],
    });
    expect(Code[(await failure(client.keys.rotateKey({ name }))).code]).toBe(Code[Code.Unavailable]);
    expect(log.attempts.map((a) => a.method)).toEqual(["RotateKey"]);

    log.attempts.length = 0;
    const pending = client.keys.getKey({ name });
    setTimeout(() => void port.start(), 300);
    const got = await pending;
    // Refused until the port opened again, then answered: nothing rotated.
    expect(got.key?.primaryVersion).toBe(1);
    expect(log.attempts.length).toBeGreaterThanOrEqual(2);
    expect(log.attempts.every((a) => a.method === "GetKey")).toBe(true);
    expect(log.attempts.at(-1)!.at - log.attempts[0]!.at).toBeGreaterThanOrEqual(250);
  });
});

describe("envelope encryption of large payloads", () => {
  let service: KeywardClient;
  let name: string;
  beforeAll(async () => {
    service = clientAs("service");
    name = (
      await clientAs("admin").keys.createKey({
        keyId: keyId("envelope"),
        key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM },
      })
    ).key!.name;
  });

  /** The service client, keeping every data key GenerateDataKey and Decrypt hand to the helpers. */
  function watching(): { client: Pick<KeywardClient, "crypto">; dataKeys: Uint8Array[] } {
    const dataKeys: Uint8Array[] = [];
    const crypto = Object.create(service.crypto) as KeywardClient["crypto"];
    crypto.generateDataKey = async (...args) => {
      const out = await service.crypto.generateDataKey(...args);
      dataKeys.push(out.plaintext);
      return out;
    };
    crypto.decrypt = async (...args) => {
      const out = await service.crypto.decrypt(...args);
      dataKeys.push(out.plaintext);
      return out;
    };
    return { client: { crypto }, dataKeys };
  }

  it.each([
    ["1 B", 1],
    ["1 MiB", 1 << 20],
    ["16 MiB", 16 << 20],
  ])("round trip of %s: format version 1, 31 + w bytes of overhead, data keys zeroed after use", async (_label, size) => {
    const plaintext = randomBytes(size);
    const aad = Buffer.from(`invoice-${size}`);
    const { client, dataKeys } = watching();
    const envelope = await envelopeEncrypt(client, name, plaintext, aad);

    const w = envelope.readUInt16BE(1);
    expect(envelope[0]).toBe(ENVELOPE_FORMAT_VERSION);
    // w: Keyward's ciphertext of a 32-byte data key, 97 + n bytes of framing.
    expect(w).toBe(97 + Buffer.byteLength(name) + 32);
    expect(envelope.length).toBe(size + 31 + w);
    expect(envelope.subarray(15 + w, 15 + w + 64).equals(plaintext.subarray(0, 64))).toBe(false);

    const opened = await envelopeDecrypt(client, name, envelope, aad);
    expect(opened.equals(plaintext)).toBe(true);
    expect(dataKeys.map((k) => [k.length, k.every((b) => b === 0)])).toEqual([
      [32, true],
      [32, true],
    ]);
  });

  it("without associated data; each envelope has its own data key and IV", async () => {
    const plaintext = Buffer.from("same payload");
    const [a, b] = [await envelopeEncrypt(service, name, plaintext), await envelopeEncrypt(service, name, plaintext)];
    expect(a.equals(b)).toBe(false);
    expect((await envelopeDecrypt(service, name, a)).equals(plaintext)).toBe(true);
    await expectFailure(envelopeDecrypt(service, name, a, Buffer.from("x")), Code.InvalidArgument, "decryption failed");
  });

  it("changing any byte of header, wrapped key, IV, ciphertext or tag, truncating, extending, or another aad fails \"decryption failed\"", async () => {
    const aad = Buffer.from("record-7");
    const envelope = await envelopeEncrypt(service, name, Buffer.from("x"), aad);
    const w = envelope.readUInt16BE(1);
    const regions = (i: number) =>
      i < 3 ? "header" : i < 3 + w ? "wrapped key" : i < 15 + w ? "iv" : i < envelope.length - 16 ? "ciphertext" : "tag";
    const outcomes: Record<string, string> = {};
    const record = async (what: string, attempt: Promise<unknown>) => {
      const result = await attempt.then(
        () => "OPENED",
        (err: unknown) => {
          const e = ConnectError.from(err);
          return `${Code[e.code]} ${e.rawMessage}`;
        },
      );
      outcomes[what] = outcomes[what] === undefined || outcomes[what] === result ? result : `${outcomes[what]} | ${result}`;
    };
    for (let i = 0; i < envelope.length; i++) {
      const tampered = Buffer.from(envelope);
      tampered[i]! ^= i % 2 === 0 ? 0x01 : 0x80;
      await record(regions(i), envelopeDecrypt(service, name, tampered, aad));
    }
    for (const length of [0, 1, 3, 3 + w, 15 + w, envelope.length - 16, envelope.length - 1]) {
      await record("truncated", envelopeDecrypt(service, name, envelope.subarray(0, length), aad));
    }
    await record("extended", envelopeDecrypt(service, name, Buffer.concat([envelope, Buffer.from([0])]), aad));
    for (const other of [Buffer.from("record-8"), Buffer.alloc(0), Buffer.concat([aad, Buffer.from([0])])]) {
      await record("other aad", envelopeDecrypt(service, name, envelope, other));
    }
    // Another envelope's wrapped key (same key, same aad) holds another data key.
    const other = await envelopeEncrypt(service, name, Buffer.from("y"), aad);
    await record("swapped wrapped key", envelopeDecrypt(service, name, Buffer.concat([other.subarray(0, 3 + w), envelope.subarray(3 + w)]), aad));
    // ReEncrypt makes another wrapped key holding the same data key; it opens
    // the payload only if the header were not authenticated.
    const rewrapped = await service.crypto.reEncrypt({ name, ciphertext: envelope.subarray(3, 3 + w), associatedData: aad });
    expect(Buffer.from(rewrapped.ciphertext).equals(envelope.subarray(3, 3 + w))).toBe(false);
    const length = Buffer.alloc(2);
    length.writeUInt16BE(rewrapped.ciphertext.length);
    const spliced = Buffer.concat([envelope.subarray(0, 1), length, rewrapped.ciphertext, envelope.subarray(3 + w)]);
    await record("same data key, rewrapped", envelopeDecrypt(service, name, spliced, aad));

    const failed = `${Code[Code.InvalidArgument]} decryption failed`;
    expect(outcomes).toEqual({
      header: failed,
      "wrapped key": failed,
      iv: failed,
      ciphertext: failed,
      tag: failed,
      truncated: failed,
      extended: failed,
      "other aad": failed,
      "swapped wrapped key": failed,
      "same data key, rewrapped": failed,
    });
    // And the untouched envelope still opens.
    expect((await envelopeDecrypt(service, name, envelope, aad)).toString()).toBe("x");
  });

  it("another key cannot open it; a disabled key refuses with FAILED_PRECONDITION; encrypting with it too", async () => {
    const admin = clientAs("admin");
    const otherName = (
      await admin.keys.createKey({ keyId: keyId("other"), key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } })
    ).key!.name;
    const envelope = await envelopeEncrypt(service, otherName, Buffer.from("payload"));
    await expectFailure(envelopeDecrypt(service, name, envelope), Code.InvalidArgument, "decryption failed");
    await admin.keys.disableKey({ name: otherName });
    await expectFailure(envelopeDecrypt(service, otherName, envelope), Code.FailedPrecondition, `key ${otherName} is DISABLED`);
    await expectFailure(envelopeEncrypt(service, otherName, Buffer.from("payload")), Code.FailedPrecondition, `key ${otherName} is DISABLED`);
  });
});
