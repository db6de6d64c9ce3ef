import { create, toBinary } from "@bufbuild/protobuf";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { BatchEncryptRequestSchema, CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { ENV_VARS } from "../../src/config.js";
import { CONNECTION_WINDOW_BYTES, MAX_CONCURRENT_STREAMS, STREAM_WINDOW_BYTES } from "../../src/server/connection-limits.js";
import { createScratch } from "../helpers/database.js";
import { eventually, expectFailure, outcome } from "../helpers/expect.js";
import { serveWithIdentities, type IdentitiesServer } from "../helpers/identities-server.js";
import type { ClientCredentials } from "../helpers/keyward.js";
import { killServerProcesses } from "../helpers/keyward-process.js";
import { errorCode, FLAG, FRAME, frame, grpcRequestHeaders, H2_ERROR, PREFACE, rawHttp2, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS, settingValue } from "../helpers/raw-http2.js";

/**
 * Every documented limit, at the limit and one step beyond, against a
 * `keyward serve` process: the exact code and message a caller gets. The
 * limits are README's "Limits" table; the protos' validation rules and
 * src/config.ts are where they are set.
 */

const scratch = createScratch("keyward-limits-");
const MAX_MESSAGE_BYTES = Number(ENV_VARS.KEYWARD_MAX_MESSAGE_BYTES);
/** Small, so that one test can hold that many calls in flight. */
const CALLS_PER_IDENTITY = 4;

describe("limits", () => {
  let served: IdentitiesServer;
  let owner: ClientCredentials;
  let keys: Client<typeof KeysService>;
  let crypto: Client<typeof CryptoService>;
  let secrets: Client<typeof SecretsService>;

  beforeAll(async () => {
    served = await serveWithIdentities(
      scratch,
      ["owner", "alice", "bob"],
      [
        { name: "owner", identities: ["spiffe://keyward.local/owner"], roles: ["ADMIN", "SERVICE", "AUDITOR"], resources: ["**"] },
        { name: "callers", identities: ["spiffe://keyward.local/alice", "spiffe://keyward.local/bob"], roles: ["SERVICE"], resources: ["**"] },
      ],
      { KEYWARD_MAX_CALLS_PER_IDENTITY: String(CALLS_PER_IDENTITY) },
    );
    owner = await served.credentials("owner");
    const transport = createGrpcTransport({ baseUrl: served.server.url, nodeOptions: owner });
    keys = createClient(KeysService, transport);
    crypto = createClient(CryptoService, transport);
    secrets = createClient(SecretsService, transport);
    await keys.createKey({ keyId: "aes", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } });
    await secrets.createSecret({ parent: "secrets/app/prod", secretId: "db", secret: { key: "keys/aes" } });
  }, 60_000);

  afterAll(async () => {
    killServerProcesses();
    await scratch.cleanup();
  });

  const bytes = (n: number) => new Uint8Array(n).fill(0x61);

  it("message size: a request of exactly KEYWARD_MAX_MESSAGE_BYTES is served, one byte more is RESOURCE_EXHAUSTED unread", async () => {
    // A BatchEncrypt of 16 items whose encoding is exactly the limit: the
    // last item's plaintext is shortened until it fits to the byte.
    const request = (size: number) => {
      const items = Array.from({ length: 16 }, () => ({ plaintext: bytes(262_144) }));
      for (;;) {
        const encoded = toBinary(BatchEncryptRequestSchema, create(BatchEncryptRequestSchema, { name: "keys/aes", items }));
        if (encoded.length === size) {
          return { name: "keys/aes", items };
        }
        const last = items[15]!;
        last.plaintext = bytes(last.plaintext.length - (encoded.length - size));
      }
    };
    expect(MAX_MESSAGE_BYTES).toBe(4 * 1024 * 1024);
    const atLimit = await crypto.batchEncrypt(request(MAX_MESSAGE_BYTES));
    expect(atLimit.results.map((r) => r.result.case)).toEqual(Array(16).fill("ciphertext"));

    const beyond = request(MAX_MESSAGE_BYTES + 1);
    // gRPC: refused from the message's length prefix, before its bytes are buffered.
    await expectFailure(
      crypto.batchEncrypt(beyond),
      Code.ResourceExhausted,
      `message size ${MAX_MESSAGE_BYTES + 1} is larger than configured readMaxBytes ${MAX_MESSAGE_BYTES}`,
    );
    // Connect (a body without Content-Length): refused once the limit is read past.
    const connect = createClient(CryptoService, createConnectTransport({ baseUrl: served.server.url, httpVersion: "2", nodeOptions: owner }));
    await expectFailure(connect.batchEncrypt(beyond), Code.ResourceExhausted, `message size is larger than configured readMaxBytes ${MAX_MESSAGE_BYTES}`);
  });

  it("plaintext: 256 KiB per call or item; one byte more is INVALID_ARGUMENT", async () => {
    expect((await crypto.encrypt({ name: "keys/aes", plaintext: bytes(262_144) })).keyVersion).toBe("keys/aes/versions/1");
    await expectFailure(
      crypto.encrypt({ name: "keys/aes", plaintext: bytes(262_145) }),
      Code.InvalidArgument,
      "plaintext: must be at most 262144 bytes [bytes.max_len]",
    );
  });

  it("associated data: 64 KiB; one byte more is INVALID_ARGUMENT", async () => {
    await crypto.encrypt({ name: "keys/aes", associatedData: bytes(65_536) });
    await expectFailure(
      crypto.encrypt({ name: "keys/aes", associatedData: bytes(65_537) }),
      Code.InvalidArgument,
      "associated_data: must be at most 65536 bytes [bytes.max_len]",
    );
  });

  it("batch items: 1000 per call; 1001 is INVALID_ARGUMENT", async () => {
    const items = (n: number) => Array.from({ length: n }, () => ({ plaintext: bytes(1) }));
    expect((await crypto.batchEncrypt({ name: "keys/aes", items: items(1000) })).results).toHaveLength(1000);
    await expectFailure(
      crypto.batchEncrypt({ name: "keys/aes", items: items(1001) }),
      Code.InvalidArgument,
      "items: must contain no more than 1000 item(s) [repeated.max_items]",
    );
  });

  it("page size: 1000; 1001 is INVALID_ARGUMENT", async () => {
    await keys.listKeys({ pageSize: 1000 });
    await expectFailure(keys.listKeys({ pageSize: 1001 }), Code.InvalidArgument, "page_size: must be greater than or equal to 0 and less than or equal to 1000 [int32.gte_lte]");
  });

  it("key id: 63 characters; 64 is INVALID_ARGUMENT", async () => {
    const aes = { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM };
    expect((await keys.createKey({ keyId: `k${"0".repeat(62)}`, key: aes })).key?.name).toHaveLength("keys/".length + 63);
    await expectFailure(keys.createKey({ keyId: `k${"0".repeat(63)}`, key: aes }), Code.InvalidArgument, "key_id: must be at most 63 characters [string.max_len], and 1 more violation");
  });

  it("secret path depth: 8 segments below the environment; 9 is INVALID_ARGUMENT", async () => {
    await secrets.createSecret({ parent: "secrets/app/prod", secretId: "a/b/c/d/e/f/g/h", secret: { key: "keys/aes" } });
    await expectFailure(
      secrets.createSecret({ parent: "secrets/app/prod", secretId: "a/b/c/d/e/f/g/h/i", secret: { key: "keys/aes" } }),
      Code.InvalidArgument,
      "secret_id: does not match regex pattern `^[a-z0-9][a-z0-9_.-]{0,62}(/[a-z0-9][a-z0-9_.-]{0,62}){0,7}$` [string.pattern]",
    );
  });

  it("secret name: 484 characters; 485 is INVALID_ARGUMENT", async () => {
    // secrets/app/prod/ is 17 characters; the rest in segments of at most 63, "/" between them.
    const path = (length: number) => {
      const segments: string[] = [];
      for (let left = length; left > 0; left -= segments.at(-1)!.length + 1) {
        segments.push("s".repeat(Math.min(63, left)));
      }
      return segments.join("/");
    };
    const id484 = path(484 - "secrets/app/prod/".length);
    expect(`secrets/app/prod/${id484}`).toHaveLength(484);
    await secrets.createSecret({ parent: "secrets/app/prod", secretId: id484, secret: { key: "keys/aes" } });
    const id485 = `${id484.slice(0, -1)}ss`;
    await expectFailure(
      secrets.createSecret({ parent: "secrets/app/prod", secretId: id485, secret: { key: "keys/aes" } }),
      Code.InvalidArgument,
      'the secret\'s name (parent + "/" + secret_id) must be at most 484 characters [create_secret.name_length]',
    );
  });

  it("secret value: 64 KiB; one byte more is INVALID_ARGUMENT", async () => {
    await secrets.addSecretVersion({ parent: "secrets/app/prod/db", payload: { data: bytes(65_536) } });
    await expectFailure(
      secrets.addSecretVersion({ parent: "secrets/app/prod/db", payload: { data: bytes(65_537) } }),
      Code.InvalidArgument,
      "payload.data: must be at most 65536 bytes [bytes.max_len]",
    );
  });

  it("calls in flight per identity: the one beyond KEYWARD_MAX_CALLS_PER_IDENTITY is RESOURCE_EXHAUSTED, audited, and others are still served", async () => {
    const alice = await served.credentials("alice");
    const bob = await served.credentials("bob");
    const aliceHealth = createClient(Health, createGrpcTransport({ baseUrl: served.server.url, nodeOptions: alice }));
    const aliceAccess = createClient(AccessService, createGrpcTransport({ baseUrl: served.server.url, nodeOptions: alice }));
    const bobAccess = createClient(AccessService, createGrpcTransport({ baseUrl: served.server.url, nodeOptions: bob }));

    // Alice holds the limit with Health Watch streams, each open once its first answer arrived.
    const stop = new AbortController();
    const streams = Array.from({ length: CALLS_PER_IDENTITY }, () => aliceHealth.watch({}, { signal: stop.signal })[Symbol.asyncIterator]());
    await Promise.all(streams.map((stream) => stream.next()));
    const drained = streams.map(async (stream) => {
      while (!(await stream.next().catch(() => ({ done: true }))).done) {
        // keep reading until cancelled
      }
    });

    const message = `spiffe://keyward.local/alice already has ${CALLS_PER_IDENTITY} calls in flight, the most one identity may have at once; retry when some have finished`;
    await expectFailure(aliceAccess.getCallerIdentity({}), Code.ResourceExhausted, message);
    expect((await bobAccess.getCallerIdentity({})).identity).toBe("spiffe://keyward.local/bob");

    // The refusal is in the audit log, with its code and message.
    const audit = createClient(AuditService, createGrpcTransport({ baseUrl: served.server.url, nodeOptions: owner }));
    const refused = await eventually(
      () => audit.listAuditEvents({ identity: "spiffe://keyward.local/alice", resultCode: Code.ResourceExhausted }),
      (page) => page.events.length > 0,
      10_000,
      "alice's refusal in the audit log",
    );
    expect(refused.events[0]).toMatchObject({ method: "/keyward.v1.AccessService/GetCallerIdentity", resultCode: Code.ResourceExhausted, resultMessage: message });

    // Once her streams end, alice is served again.
    stop.abort();
    await Promise.all(drained);
    const after = await eventually(() => outcome(aliceAccess.getCallerIdentity({})), (o) => o.code === 0, 10_000, "alice served again");
    expect(after.value?.identity).toBe("spiffe://keyward.local/alice");
  });

  it("flow control: 1 MiB per stream and 4 MiB per connection are granted, not HTTP/2's 64 KiB", async () => {
    const { port } = new URL(served.server.url);
    const connection = await rawHttp2("127.0.0.1", Number(port), owner);
    connection.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
    const connectionWindow = await connection.waitFor((f) => f.type === FRAME.WINDOW_UPDATE && f.streamId === 0, 10_000);
    expect(settingValue(connection.frames, SETTINGS_INITIAL_WINDOW_SIZE)).toBe(STREAM_WINDOW_BYTES);
    // The connection's window starts at 65,535 bytes (RFC 9113 §6.9.2); the update raises it.
    expect(65_535 + connectionWindow.payload.readUInt32BE(0)).toBe(CONNECTION_WINDOW_BYTES);
    connection.destroy();
  });

  it(`concurrent streams per connection: ${MAX_CONCURRENT_STREAMS} are opened, the next one is refused`, async () => {
    const { port } = new URL(served.server.url);
    const connection = await rawHttp2("127.0.0.1", Number(port), owner);
    connection.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
    await connection.waitFor((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0, 10_000);
    expect(settingValue(connection.frames, SETTINGS_MAX_CONCURRENT_STREAMS)).toBe(MAX_CONCURRENT_STREAMS);
    // The server's SETTINGS are deliberately left unacknowledged: a peer
    // that opens streams beyond them at once is the case RFC 9113 §5.1.2
    // answers with REFUSED_STREAM, and a refused stream is safe to retry.

    // Streams whose request never ends (no END_STREAM): each stays open.
    const headers = grpcRequestHeaders("/grpc.health.v1.Health/Check");
    const open = (n: number) => frame(FRAME.HEADERS, FLAG.END_HEADERS, 2 * n + 1, headers);
    connection.write(Buffer.concat(Array.from({ length: MAX_CONCURRENT_STREAMS }, (_, n) => open(n))));
    // A PING answered means every frame before it was processed: no stream was refused.
    connection.write(frame(FRAME.PING, 0, 0, Buffer.alloc(8, 1)));
    await connection.waitFor((f) => f.type === FRAME.PING && (f.flags & FLAG.ACK) !== 0, 10_000);
    expect(connection.frames.filter((f) => f.type === FRAME.RST_STREAM || f.type === FRAME.GOAWAY)).toEqual([]);

    connection.write(open(MAX_CONCURRENT_STREAMS));
    const refusal = await connection.waitFor((f) => f.type === FRAME.GOAWAY || f.type === FRAME.RST_STREAM, 10_000);
    expect({ type: refusal.type, stream: refusal.streamId, code: errorCode(refusal) }).toEqual({
      type: FRAME.RST_STREAM,
      stream: 2 * MAX_CONCURRENT_STREAMS + 1,
      code: H2_ERROR.REFUSED_STREAM,
    });
    connection.destroy();
    // The server itself is unaffected.
    expect((await createClient(AccessService, createGrpcTransport({ baseUrl: served.server.url, nodeOptions: owner })).getCallerIdentity({})).identity).toBe(
      "spiffe://keyward.local/owner",
    );
  });
});
