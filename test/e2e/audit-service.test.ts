import { createPrivateKey, createPublicKey, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import pino from "pino";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AccessService, Role } from "../../gen/keyward/v1/access_pb.js";
import { AuditService, type AuditCheckpoint, type AuditEvent } from "../../gen/keyward/v1/audit_pb.js";
import { KeyAlgorithm, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { loadConfig } from "../../src/config.js";
import { unwrapKey } from "../../src/crypto/key-wrap.js";
import { parseRootKey } from "../../src/crypto/root-key.js";
import { checkpointPayload, publicKeyId, verifyCheckpoint } from "../../src/domain/audit/checkpoint.js";
import { startKeyward, type RunningKeyward } from "../../src/main.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, testKeywardEnv, type TestKeyward } from "../helpers/keyward.js";

const ADMIN = "spiffe://keyward.local/admin";
const SERVICE = "spiffe://keyward.local/service";
const AUDITOR = "spiffe://keyward.local/auditor";
const IDENTITY_METHOD = "/keyward.v1.AccessService/GetCallerIdentity";

const requestId = (label: string) => `${label}-${randomBytes(4).toString("hex")}`;
const withId = (id: string) => ({ headers: { "x-request-id": id } });

async function codeOf(call: Promise<unknown>): Promise<Code | 0> {
  try {
    await call;
    return 0;
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

/** Clients for one server, and a SQL pool on its schema (the attacker's access). */
async function connect(keyward: TestKeyward) {
  const [admin, service, auditor] = await Promise.all(["admin", "service", "auditor"].map((name) => keyward.credentials(name)));
  const sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2 });
  return {
    sql,
    credentials: { admin: admin!, service: service!, auditor: auditor! },
    audit: connectClient(AuditService, keyward.url, auditor!),
    adminAccess: connectClient(AccessService, keyward.url, admin!),
  };
}

/** Reads a tail until `done(received)` holds; fails after `timeoutMs` instead of hanging. */
async function readUntil(
  iterator: AsyncIterator<{ event?: AuditEvent }>,
  done: (received: AuditEvent[]) => boolean,
  timeoutMs = 10_000,
): Promise<AuditEvent[]> {
  const received: AuditEvent[] = [];
  const deadline = Date.now() + timeoutMs;
  while (!done(received)) {
    let timer: NodeJS.Timeout | undefined;
    const next = await Promise.race([
      iterator.next(),
      new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()));
      }),
    ]);
    clearTimeout(timer);
    if (next === "timeout") {
      throw new Error(`tail: timed out after ${received.length} events`);
    }
    if (next.done) {
      throw new Error(`tail ended after ${received.length} events`);
    }
    received.push(next.value.event!);
  }
  return received;
}

const expectContiguous = (events: AuditEvent[], from: bigint) =>
  expect(events.map((event) => event.sequence)).toEqual(events.map((_, i) => from + BigInt(i)));

describe("AuditService over mTLS", () => {
  let keyward: TestKeyward;
  let c: Awaited<ReturnType<typeof connect>>;
  let policyDigest: string;
  const ids = { identity: requestId("identity"), denied: requestId("denied"), invalid: requestId("invalid") };
  const testStarted = new Date();

  beforeAll(async () => {
    keyward = await startTestKeyward();
    c = await connect(keyward);
    const service = c.credentials.service;
    const me = await connectClient(AccessService, keyward.url, service).getCallerIdentity({}, withId(ids.identity));
    policyDigest = me.policyDigest;
    const serviceKeys = connectClient(KeysService, keyward.url, service);
    expect(await codeOf(serviceKeys.createKey({ keyId: "payments", key: { purpose: 1, algorithm: 1 } }, withId(ids.denied)))).toBe(
      Code.PermissionDenied,
    );
    const adminKeys = connectClient(KeysService, keyward.url, c.credentials.admin);
    expect(await codeOf(adminKeys.createKey({ keyId: "NOT VALID", key: { purpose: 1, algorithm: 1 } }, withId(ids.invalid)))).toBe(
      Code.InvalidArgument,
    );
  });
  afterAll(async () => {
    await c?.sql.end();
    await keyward?.close();
  });

  const findByRequestId = async (id: string): Promise<AuditEvent> => {
    const { events } = await c.audit.listAuditEvents({ pageSize: 1000, newestFirst: true });
    const matching = events.filter((event) => event.requestId === id);
    expect(matching, id).toHaveLength(1);
    return matching[0]!;
  };

  it("records allowed, denied and invalid calls with who, what, where and under which policy", async () => {
    const identity = await findByRequestId(ids.identity);
    expect(identity).toMatchObject({
      identity: SERVICE,
      roles: [],
      method: IDENTITY_METHOD,
      resources: [],
      keyVersion: "",
      resultCode: 0,
      resultMessage: "",
      requestId: ids.identity,
      policyDigest,
    });
    expect(policyDigest).toMatch(/^[0-9a-f]{64}$/);
    expect(identity.peerAddress).toMatch(/^127\.0\.0\.1:\d{1,5}$/);
    expect(identity.hash).toHaveLength(32);
    expect(identity.previousHash).toHaveLength(32);
    const time = timestampDate(identity.time!).getTime();
    expect(time).toBeGreaterThanOrEqual(testStarted.getTime() - 1000);
    expect(time).toBeLessThanOrEqual(Date.now());

    const denied = await findByRequestId(ids.denied);
    expect(denied).toMatchObject({
      identity: SERVICE,
      roles: [],
      method: "/keyward.v1.KeysService/CreateKey",
      resources: ["keys/payments"],
      resultCode: Code.PermissionDenied,
      requestId: ids.denied,
      policyDigest,
    });
    expect(denied.resultMessage).toContain("requires the ADMIN role");
    expect(denied.peerAddress).toMatch(/^127\.0\.0\.1:\d{1,5}$/);

    const invalid = await findByRequestId(ids.invalid);
    expect(invalid).toMatchObject({
      identity: ADMIN,
      method: "/keyward.v1.KeysService/CreateKey",
      resources: ["keys/NOT VALID"],
      resultCode: Code.InvalidArgument,
      requestId: ids.invalid,
      policyDigest,
    });

    // A call authorized under a role records that role and its resource.
    const listId = requestId("list");
    await c.audit.listAuditEvents({ pageSize: 1 }, withId(listId));
    expect(await findByRequestId(listId)).toMatchObject({
      identity: AUDITOR,
      roles: [Role.AUDITOR],
      method: "/keyward.v1.AuditService/ListAuditEvents",
      resources: ["audit"],
      resultCode: 0,
    });
  });

  it("is closed to SERVICE, open to ADMIN and AUDITOR", async () => {
    const asService = connectClient(AuditService, keyward.url, c.credentials.service);
    expect(await codeOf(asService.listAuditEvents({}))).toBe(Code.PermissionDenied);
    expect(await codeOf(asService.verifyAuditChain({}))).toBe(Code.PermissionDenied);
    expect(await codeOf(asService.getAuditCheckpoint({}))).toBe(Code.PermissionDenied);
    const asAdmin = connectClient(AuditService, keyward.url, c.credentials.admin);
    expect((await asAdmin.verifyAuditChain({})).intact).toBe(true);
  });

  it("filters by time, identity, method, service, resource and result, and pages with tokens", async () => {
    const since = new Date();
    await new Promise((resolve) => setTimeout(resolve, 5));
    const pageIds = Array.from({ length: 7 }, (_, i) => requestId(`page${i}`));
    for (const id of pageIds) {
      await c.adminAccess.getCallerIdentity({}, withId(id));
    }
    const filters = { startTime: timestampFromDate(since), identity: ADMIN, method: IDENTITY_METHOD };

    const pages: string[][] = [];
    let pageToken = "";
    do {
      const page = await c.audit.listAuditEvents({ ...filters, pageSize: 3, pageToken });
      pages.push(page.events.map((event) => event.requestId));
      pageToken = page.nextPageToken;
    } while (pageToken !== "" && pages.length < 10);
    expect(pages).toEqual([pageIds.slice(0, 3), pageIds.slice(3, 6), pageIds.slice(6)]);

    const newest = await c.audit.listAuditEvents({ ...filters, pageSize: 4, newestFirst: true });
    expect(newest.events.map((event) => event.requestId)).toEqual(pageIds.slice(3).reverse());
    const older = await c.audit.listAuditEvents({ ...filters, pageSize: 4, newestFirst: true, pageToken: newest.nextPageToken });
    expect(older.events.map((event) => event.requestId)).toEqual(pageIds.slice(0, 3).reverse());
    expect(older.nextPageToken).toBe("");

    // page_size 0 is the default (100): all seven, no further page.
    const all = await c.audit.listAuditEvents({ ...filters, pageSize: 0 });
    expect(all.events.map((event) => event.requestId)).toEqual(pageIds);
    expect(all.nextPageToken).toBe("");

    // end_time is exclusive: up to (not including) the fourth event's time, only events before it.
    const fourth = all.events[3]!;
    const before = await c.audit.listAuditEvents({ ...filters, endTime: fourth.time });
    expect(before.events.every((event) => timestampDate(event.time!) < timestampDate(fourth.time!))).toBe(true);
    expect(before.events.map((event) => event.requestId)).not.toContain(fourth.requestId);
    expect(before.events.length).toBeGreaterThanOrEqual(1);

    // A token is bound to its filters and order.
    const first = await c.audit.listAuditEvents({ ...filters, pageSize: 3 });
    for (const changed of [{ identity: SERVICE }, { newestFirst: true }, { resultCode: 0 }, { method: "/keyward.v1.AccessService/" }]) {
      const err = await c.audit.listAuditEvents({ ...filters, ...changed, pageSize: 3, pageToken: first.nextPageToken }).catch(ConnectError.from);
      expect(err, JSON.stringify(changed)).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      expect((err as ConnectError).rawMessage).toBe("page_token was issued for different filters");
    }
    // ...but page_size may change between pages.
    expect((await c.audit.listAuditEvents({ ...filters, pageSize: 2, pageToken: first.nextPageToken })).events.map((e) => e.requestId)).toEqual(
      pageIds.slice(3, 5),
    );
    for (const token of ["not-a-token", Buffer.from('{"v":1,"s":"x","f":"y"}').toString("base64url")]) {
      const err = ConnectError.from(await c.audit.listAuditEvents({ pageToken: token }).catch((e: unknown) => e));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).toBe("page_token is malformed");
    }

    // Service prefix, resource (by whole segments) and result code.
    const keysCalls = await c.audit.listAuditEvents({ method: "/keyward.v1.KeysService/", pageSize: 1000 });
    expect(keysCalls.events.map((event) => event.requestId)).toEqual(expect.arrayContaining([ids.denied, ids.invalid]));
    expect(keysCalls.events.every((event) => event.method.startsWith("/keyward.v1.KeysService/"))).toBe(true);
    const payments = await c.audit.listAuditEvents({ resource: "keys/payments", pageSize: 1000 });
    expect(payments.events.map((event) => event.requestId)).toEqual([ids.denied]);
    expect((await c.audit.listAuditEvents({ resource: "keys/pay", pageSize: 1000 })).events).toEqual([]);
    const deniedOnly = await c.audit.listAuditEvents({ resultCode: Code.PermissionDenied, pageSize: 1000 });
    expect(deniedOnly.events.map((event) => event.requestId)).toContain(ids.denied);
    expect(deniedOnly.events.every((event) => event.resultCode === Code.PermissionDenied)).toBe(true);
    const serviceOnly = await c.audit.listAuditEvents({ identity: SERVICE, pageSize: 1000 });
    expect(serviceOnly.events.length).toBeGreaterThanOrEqual(2);
    expect(serviceOnly.events.every((event) => event.identity === SERVICE)).toBe(true);

    // Validation in the proto: bounds and malformed filters.
    expect(await codeOf(c.audit.listAuditEvents({ pageSize: 1001 }))).toBe(Code.InvalidArgument);
    expect(await codeOf(c.audit.listAuditEvents({ method: "CreateKey" }))).toBe(Code.InvalidArgument);
    expect(await codeOf(c.audit.listAuditEvents({ startTime: timestampFromDate(new Date()), endTime: timestampFromDate(since) }))).toBe(
      Code.InvalidArgument,
    );
    // Timestamps outside what a google.protobuf.Timestamp may hold (beyond any
    // Date or SQL timestamp) are the caller's mistake, named as such.
    const refusal = async (call: Promise<unknown>) =>
      call.then(
        () => "OK",
        (err: unknown) => `${Code[ConnectError.from(err).code]}: ${ConnectError.from(err).rawMessage}`,
      );
    expect(await refusal(c.audit.listAuditEvents({ startTime: { seconds: 9_223_372_036_854_775_807n, nanos: 0 } }))).toBe(
      "InvalidArgument: start_time: must be greater than or equal to 0001-01-01T00:00:00Z and less than or equal to 9999-12-31T23:59:59.999999999Z [timestamp.gte_lte]",
    );
    expect(await refusal(c.audit.listAuditEvents({ endTime: { seconds: -62_135_596_801n, nanos: 0 } }))).toMatch(/^InvalidArgument: end_time: must be greater/);
    expect(await refusal(c.audit.listAuditEvents({ endTime: { seconds: 0n, nanos: -1 } }))).toBe(
      "InvalidArgument: end_time: nanos must be within 0..999999999",
    );
    expect(await refusal(c.audit.listAuditEvents({ startTime: { seconds: 0n, nanos: 1_000_000_000 } }))).toBe(
      "InvalidArgument: start_time: nanos must be within 0..999999999",
    );
    // The extremes themselves are valid bounds.
    expect(
      await refusal(
        c.audit.listAuditEvents({
          startTime: { seconds: -62_135_596_800n, nanos: 0 },
          endTime: { seconds: 253_402_300_799n, nanos: 999_999_999 },
          pageSize: 1,
        }),
      ),
    ).toBe("OK");
  });

  it("tails: replays from start_sequence, then follows new events in order", async () => {
    const { events: latest } = await c.audit.listAuditEvents({ pageSize: 3, newestFirst: true });
    const from = latest[2]!.sequence;
    const controller = new AbortController();
    const iterator = c.audit.tailAuditEvents({ startSequence: from }, { signal: controller.signal })[Symbol.asyncIterator]();
    try {
      const replayed = await readUntil(iterator, (received) => received.length === 3);
      expect(replayed.map((event) => event.hash)).toEqual(latest.map((event) => event.hash).reverse());

      const followIds = [requestId("follow0"), requestId("follow1"), requestId("follow2")];
      for (const id of followIds) {
        await c.adminAccess.getCallerIdentity({}, withId(id));
      }
      const followed = await readUntil(iterator, (received) => received.some((event) => event.requestId === followIds[2]));
      const all = [...replayed, ...followed];
      expectContiguous(all, from);
      for (let i = 1; i < all.length; i++) {
        expect(all[i]!.previousHash).toEqual(all[i - 1]!.hash);
      }
      expect(followed.map((event) => event.requestId).filter((id) => followIds.includes(id))).toEqual(followIds);
    } finally {
      controller.abort();
    }
  });

  it("tails without start_sequence: only events committed after the call started", async () => {
    const tailId = requestId("tail");
    const controller = new AbortController();
    const iterator = c.audit
      .tailAuditEvents({}, { signal: controller.signal, headers: { "x-request-id": tailId } })
      [Symbol.asyncIterator]();
    const first = iterator.next();
    try {
      // The tail's own event is written when the stream opens, just before it reads the head.
      let tailEvent: AuditEvent | undefined;
      for (let i = 0; i < 100 && tailEvent === undefined; i++) {
        const { events } = await c.audit.listAuditEvents({ method: "/keyward.v1.AuditService/TailAuditEvents", newestFirst: true });
        tailEvent = events.find((event) => event.requestId === tailId);
        if (tailEvent === undefined) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
      expect(tailEvent).toBeDefined();
      await new Promise((resolve) => setTimeout(resolve, 300));
      const callId = requestId("after-tail");
      await c.adminAccess.getCallerIdentity({}, withId(callId));

      const head = await first;
      expect(head.done).toBe(false);
      const received = [head.value!.event!];
      if (received[0]!.requestId !== callId) {
        received.push(...(await readUntil(iterator, (got) => got.some((event) => event.requestId === callId))));
      }
      expect(received[0]!.sequence).toBeGreaterThan(tailEvent!.sequence);
      expectContiguous(received, received[0]!.sequence);
      expect(received.map((event) => event.requestId)).toContain(callId);
      expect(received.map((event) => event.requestId)).not.toContain(tailId);
    } finally {
      controller.abort();
    }
    // The client's cancel ends the stream.
    const ended = await iterator.next().then(
      () => "not ended",
      (err: unknown) => ConnectError.from(err).code,
    );
    expect(ended).toBe(Code.Canceled);
  });

  it("refuses a start_sequence beyond the next one to be written", async () => {
    const { events } = await c.audit.listAuditEvents({ pageSize: 1, newestFirst: true });
    const iterator = c.audit.tailAuditEvents({ startSequence: events[0]!.sequence + 1000n })[Symbol.asyncIterator]();
    const err = ConnectError.from(await iterator.next().catch((e: unknown) => e));
    expect(err.code).toBe(Code.OutOfRange);
    expect(err.rawMessage).toMatch(/beyond the next sequence to be written/);
    expect(await codeOf(c.audit.tailAuditEvents({ startSequence: 0n })[Symbol.asyncIterator]().next())).toBe(Code.InvalidArgument);
  });

  it("verifies the whole chain or a range, and refuses ranges beyond the head", async () => {
    const whole = await c.audit.verifyAuditChain({});
    expect(whole).toMatchObject({ intact: true, firstBrokenSequence: 0n, reason: "", startSequence: 1n });
    expect(whole.verifiedCount).toBe(whole.endSequence);
    expect(whole.endSequence).toBeGreaterThan(10n);
    const { events } = await c.audit.listAuditEvents({ pageSize: 1000 });
    const last = events.find((event) => event.sequence === whole.endSequence)!;
    expect(Buffer.from(whole.endHash)).toEqual(Buffer.from(last.hash));

    const range = await c.audit.verifyAuditChain({ startSequence: 3n, endSequence: 5n });
    expect(range).toMatchObject({ intact: true, verifiedCount: 3n, startSequence: 3n, endSequence: 5n });
    expect(Buffer.from(range.endHash)).toEqual(Buffer.from(events.find((event) => event.sequence === 5n)!.hash));

    const beyond = ConnectError.from(await c.audit.verifyAuditChain({ endSequence: whole.endSequence + 100n }).catch((e: unknown) => e));
    expect(beyond.code).toBe(Code.OutOfRange);
    expect(await codeOf(c.audit.verifyAuditChain({ startSequence: 5n, endSequence: 3n }))).toBe(Code.InvalidArgument);
  });

  it("signs checkpoints of the head that verify with the public key alone", async () => {
    const { checkpoint } = await c.audit.getAuditCheckpoint({});
    const cp = checkpoint!;
    expect(cp.algorithm).toBe(KeyAlgorithm.ED25519);
    expect(cp.keyId).toMatch(/^[0-9a-f]{64}$/);
    expect(publicKeyId(cp.publicKeyPem)).toBe(cp.keyId);
    expect(createPublicKey(cp.publicKeyPem).asymmetricKeyType).toBe("ed25519");
    const domain = toDomainCheckpoint(cp);
    expect(Buffer.from(cp.signedPayload)).toEqual(checkpointPayload(domain.sequence, domain.hash, domain.time));
    expect(verifyCheckpoint(domain, cp.publicKeyPem)).toBe(true);
    const flipped = Buffer.from(domain.signature);
    flipped[0]! ^= 1;
    expect(verifyCheckpoint({ ...domain, signature: flipped }, cp.publicKeyPem)).toBe(false);
    expect(verifyCheckpoint({ ...domain, sequence: domain.sequence - 1n }, cp.publicKeyPem)).toBe(false);

    // The hash is the stored event's at that sequence.
    const iterator = c.audit.tailAuditEvents({ startSequence: cp.sequence })[Symbol.asyncIterator]();
    const [atSequence] = await readUntil(iterator, (received) => received.length === 1);
    await iterator.return?.();
    expect(atSequence!.sequence).toBe(cp.sequence);
    expect(Buffer.from(atSequence!.hash)).toEqual(Buffer.from(cp.hash));

    const { rows } = await c.sql.query<{ sequence: string; hash: Buffer; key_id: string }>(
      "SELECT sequence, hash, key_id FROM audit_checkpoints WHERE sequence = $1",
      [cp.sequence.toString()],
    );
    expect(rows.map((row) => ({ ...row, hash: row.hash.toString("hex") }))).toContainEqual({
      sequence: cp.sequence.toString(),
      hash: Buffer.from(cp.hash).toString("hex"),
      key_id: cp.keyId,
    });

    // A later checkpoint covers later events with the same key.
    const again = (await c.audit.getAuditCheckpoint({})).checkpoint!;
    expect(again.sequence).toBeGreaterThan(cp.sequence);
    expect(again.keyId).toBe(cp.keyId);
  });

  it("stores the signing key's private half only wrapped by the root key", async () => {
    const { checkpoint } = await c.audit.getAuditCheckpoint({});
    const { rows } = await c.sql.query<{ key_id: string; algorithm: string; public_key_pem: string; wrapped_private_key: Buffer }>(
      "SELECT key_id, algorithm, public_key_pem, wrapped_private_key FROM audit_signing_keys",
    );
    expect(rows).toHaveLength(1);
    const row = rows[0]!;
    expect(row).toMatchObject({ key_id: checkpoint!.keyId, algorithm: "ED25519", public_key_pem: checkpoint!.publicKeyPem });

    const rootKey = parseRootKey(await readFile(join(keyward.dataDir, "root.key")));
    const der = unwrapKey(rootKey, row.wrapped_private_key, `keyward/audit-signing-key/v1|${row.key_id}|ED25519`).expose();
    // It really is the private key of the published public key...
    const derived = createPublicKey(createPrivateKey({ key: der, format: "der", type: "pkcs8" })).export({ type: "spki", format: "pem" });
    expect(derived).toBe(checkpoint!.publicKeyPem);
    // ...and neither the PKCS#8 DER nor the raw 32-byte seed appears in the stored row.
    expect(row.wrapped_private_key.includes(der)).toBe(false);
    expect(row.wrapped_private_key.includes(der.subarray(der.length - 32))).toBe(false);
    // Under another binding it does not open.
    expect(() => unwrapKey(rootKey, row.wrapped_private_key, `keyward/audit-signing-key/v1|${row.key_id}|ECDSA`)).toThrow();
    // No log line shows it either.
    const logs = keyward.logs.join("\n");
    expect(logs).toContain("audit checkpoint key loaded");
    for (const needle of [der.toString("base64"), der.toString("hex"), der.subarray(der.length - 32).toString("base64")]) {
      expect(logs).not.toContain(needle);
    }
  });

  it("a second replica on the same database shares the key, and tails see each other's events", async () => {
    const replica: RunningKeyward = await startKeyward(
      loadConfig({
        ...testKeywardEnv(keyward.dataDir, keyward.schema),
        KEYWARD_DB_POOL_MAX: "2",
        KEYWARD_SHUTDOWN_GRACE_MS: "500",
      }),
      pino({ level: "silent" }),
    );
    try {
      const url = `https://127.0.0.1:${replica.address.port}`;
      const replicaAudit = connectClient(AuditService, url, c.credentials.auditor);
      expect((await replicaAudit.getAuditCheckpoint({})).checkpoint!.keyId).toBe((await c.audit.getAuditCheckpoint({})).checkpoint!.keyId);

      const { events } = await c.audit.listAuditEvents({ pageSize: 1, newestFirst: true });
      const controller = new AbortController();
      const iterator = c.audit.tailAuditEvents({ startSequence: events[0]!.sequence + 1n }, { signal: controller.signal })[Symbol.asyncIterator]();
      try {
        const onReplica = requestId("replica");
        await connectClient(AccessService, url, c.credentials.admin).getCallerIdentity({}, withId(onReplica));
        const received = await readUntil(iterator, (got) => got.some((event) => event.requestId === onReplica));
        expectContiguous(received, events[0]!.sequence + 1n);
      } finally {
        controller.abort();
      }
      expect((await replicaAudit.verifyAuditChain({})).intact).toBe(true);
    } finally {
      await replica.close();
    }
  });
});

function toDomainCheckpoint(cp: AuditCheckpoint) {
  return {
    sequence: cp.sequence,
    hash: Buffer.from(cp.hash),
    time: timestampDate(cp.time!),
    signature: Buffer.from(cp.signature),
    keyId: cp.keyId,
  };
}

/**
 * Tampering done the way an attacker with database rights would: disable
 * the append-only trigger, rewrite, enable it again. Each case on a fresh
 * server and schema: 6 calls (events 1..6), an intact verification (event 7),
 * then the tampering, then VerifyAuditChain.
 */
describe("VerifyAuditChain finds tampering done in SQL", () => {
  async function tampered(
    tamper: (sql: pg.Pool, audit: Client<typeof AuditService>) => Promise<void>,
    then?: (audit: Client<typeof AuditService>) => Promise<void>,
  ): Promise<{ result: Awaited<ReturnType<Client<typeof AuditService>["verifyAuditChain"]>> }> {
    const keyward = await startTestKeyward();
    const c = await connect(keyward);
    try {
      for (let i = 0; i < 6; i++) {
        await c.adminAccess.getCallerIdentity({}, withId(`call-${i + 1}`));
      }
      const before = await c.audit.verifyAuditChain({});
      expect(before).toMatchObject({ intact: true, endSequence: 6n, verifiedCount: 6n });
      await tamper(c.sql, c.audit);
      const result = await c.audit.verifyAuditChain({});
      await then?.(c.audit);
      return { result };
    } finally {
      await c.sql.end();
      await keyward.close();
    }
  }
  const rewrite = async (sql: pg.Pool, statements: string[]) => {
    await sql.query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only");
    for (const statement of statements) {
      await sql.query(statement);
    }
    await sql.query("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only");
  };

  it("a field updated", async () => {
    const { result } = await tampered((sql) => rewrite(sql, ["UPDATE audit_events SET identity = 'spiffe://keyward.local/nobody' WHERE sequence = 3"]));
    expect(result).toMatchObject({ intact: false, firstBrokenSequence: 3n, reason: "hash mismatch", verifiedCount: 2n });
  });

  it("an event deleted", async () => {
    const { result } = await tampered(
      (sql) => rewrite(sql, ["DELETE FROM audit_events WHERE sequence = 4"]),
      async (audit) => {
        // A range after the hole verifies on its own, but not one whose previous event is gone.
        expect(await audit.verifyAuditChain({ startSequence: 6n, endSequence: 7n })).toMatchObject({ intact: true, verifiedCount: 2n });
        expect(await audit.verifyAuditChain({ startSequence: 5n })).toMatchObject({
          intact: false,
          firstBrokenSequence: 4n,
          reason: "missing sequence 4 (the event before the range)",
          verifiedCount: 0n,
        });
      },
    );
    expect(result).toMatchObject({ intact: false, firstBrokenSequence: 4n, reason: "missing sequence 4", verifiedCount: 3n });
  });

  it("a forged event inserted at the tail, chain head moved to it", async () => {
    const { result } = await tampered(async (sql) => {
      // Copies the last event, says it was someone else, links it to the
      // head; the hash is made up (see chain.test.ts for a recomputed one).
      await sql.query(`
        INSERT INTO audit_events
        SELECT sequence + 1, time, 'spiffe://keyward.local/intruder', roles, method, resources, key_version, result_code,
               result_message, 'forged', peer_address, policy_digest, hash, sha256(hash)
        FROM audit_events WHERE sequence = (SELECT sequence FROM audit_head)`);
      await sql.query("UPDATE audit_head SET sequence = sequence + 1, hash = (SELECT hash FROM audit_events WHERE request_id = 'forged')");
    });
    // Events 1..7 are genuine (7: the first verification); the forgery is 8.
    expect(result).toMatchObject({ intact: false, firstBrokenSequence: 8n, reason: "hash mismatch", verifiedCount: 7n });
  });

  it("a forged event stored beyond a head that was not moved", async () => {
    const { result } = await tampered(async (sql) => {
      await sql.query(`
        INSERT INTO audit_events
        SELECT sequence + 5, time, 'spiffe://keyward.local/intruder', roles, method, resources, key_version, result_code,
               result_message, 'forged', peer_address, policy_digest, hash, sha256(hash)
        FROM audit_events WHERE sequence = (SELECT sequence FROM audit_head)`);
    });
    // Head at 7 (the first verification); the forgery sits at 12.
    expect(result).toMatchObject({ intact: false, firstBrokenSequence: 12n, reason: "sequence 12 lies beyond the chain head" });
  });

  it("an old event replayed at the tail (a verbatim copy, hashes included), chain head moved to it", async () => {
    const { result } = await tampered(async (sql) => {
      // Replays event 3 as if the call had been made again: every column as
      // stored, only the sequence new. Its previous_hash still names event 2.
      await sql.query(`
        INSERT INTO audit_events
        SELECT (SELECT sequence FROM audit_head) + 1, time, identity, roles, method, resources, key_version, result_code,
               result_message, request_id, peer_address, policy_digest, previous_hash, hash
        FROM audit_events WHERE sequence = 3`);
      await sql.query("UPDATE audit_head SET sequence = sequence + 1, hash = (SELECT hash FROM audit_events WHERE sequence = 3)");
    });
    // Events 1..7 are genuine (7: the first verification); the replay is 8.
    expect(result).toMatchObject({ intact: false, firstBrokenSequence: 8n, reason: "previous_hash mismatch", verifiedCount: 7n });
  });

  it("two events reordered (their sequences swapped)", async () => {
    const { result } = await tampered((sql) =>
      rewrite(sql, [
        "UPDATE audit_events SET sequence = 1000000 WHERE sequence = 3",
        "UPDATE audit_events SET sequence = 3 WHERE sequence = 4",
        "UPDATE audit_events SET sequence = 4 WHERE sequence = 1000000",
      ]),
    );
    expect(result).toMatchObject({ intact: false, firstBrokenSequence: 3n, reason: "previous_hash mismatch", verifiedCount: 2n });
  });

  it("the tail truncated after a signed checkpoint, chain head moved back", async () => {
    let covered = 0n;
    const { result } = await tampered(async (sql, audit) => {
      covered = (await audit.getAuditCheckpoint({})).checkpoint!.sequence;
      expect(covered).toBe(7n);
      await rewrite(sql, [
        "DELETE FROM audit_events WHERE sequence > 5",
        "UPDATE audit_head SET sequence = 5, hash = (SELECT hash FROM audit_events WHERE sequence = 5)",
      ]);
    });
    expect(result).toMatchObject({
      intact: false,
      firstBrokenSequence: 6n,
      reason: `missing sequence 6: a signed checkpoint covers sequence ${covered}`,
      verifiedCount: 5n,
    });
  });

  it("an unsigned checkpoint row does not make an intact chain look broken", async () => {
    const keyward = await startTestKeyward();
    const c = await connect(keyward);
    try {
      await c.adminAccess.getCallerIdentity({});
      const { checkpoint } = await c.audit.getAuditCheckpoint({});
      await c.sql.query("INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature) VALUES (1000, $1, now(), $2, $3)", [
        Buffer.alloc(32),
        checkpoint!.keyId,
        Buffer.alloc(64),
      ]);
      expect(await c.audit.verifyAuditChain({})).toMatchObject({ intact: true, firstBrokenSequence: 0n });
    } finally {
      await c.sql.end();
      await keyward.close();
    }
  });
});

describe("periodic checkpoints and shutdown", () => {
  it("signs the head every checkpoint interval, and not again while it has not moved", async () => {
    const keyward = await startTestKeyward({ KEYWARD_AUDIT_CHECKPOINT_INTERVAL_MS: "100" });
    const c = await connect(keyward);
    type Row = { sequence: string; hash: Buffer; time: Date; key_id: string; signature: Buffer };
    const rows = async () =>
      (await c.sql.query<Row>("SELECT sequence, hash, time, key_id, signature FROM audit_checkpoints ORDER BY id")).rows;
    try {
      await c.adminAccess.getCallerIdentity({});
      const deadline = Date.now() + 5000;
      while (!(await rows()).some((row) => row.sequence === "1") && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      const signed = await rows();
      // Five intervals passed with the head at 1: it was signed once.
      expect(signed.filter((row) => row.sequence === "1")).toHaveLength(1);
      expect(new Set(signed.map((row) => row.sequence)).size).toBe(signed.length);
      const { rows: keys } = await c.sql.query<{ public_key_pem: string }>("SELECT public_key_pem FROM audit_signing_keys");
      const row = signed.find((r) => r.sequence === "1")!;
      const checkpoint = { sequence: 1n, hash: row.hash, time: row.time, signature: row.signature, keyId: row.key_id };
      expect(verifyCheckpoint(checkpoint, keys[0]!.public_key_pem)).toBe(true);
      const { rows: events } = await c.sql.query<{ hash: Buffer }>("SELECT hash FROM audit_events WHERE sequence = 1");
      expect(row.hash).toEqual(events[0]!.hash);
    } finally {
      await c.sql.end();
      await keyward.close();
    }
  });

  it("a draining server ends open tails with UNAVAILABLE", async () => {
    const keyward = await startTestKeyward();
    const c = await connect(keyward);
    try {
      await c.adminAccess.getCallerIdentity({});
      const iterator = c.audit.tailAuditEvents({ startSequence: 1n })[Symbol.asyncIterator]();
      await readUntil(iterator, (received) => received.length === 1);
      const closing = keyward.close();
      let code: Code | "ended" | undefined;
      for (let i = 0; i < 100 && code === undefined; i++) {
        code = await iterator.next().then(
          (next) => (next.done ? "ended" : undefined),
          (err: unknown) => ConnectError.from(err).code,
        );
      }
      await closing;
      expect(code).toBe(Code.Unavailable);
    } finally {
      await c.sql.end();
      await keyward.close();
    }
  });
});
