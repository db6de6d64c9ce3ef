import { constants, createPrivateKey, createPublicKey, verify as verifySignature } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Writable } from "node:stream";
import { ScalarType, toBinary, toJsonString, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import pino from "pino";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import {
  KeyAlgorithm,
  KeyPurpose,
  KeyState,
  KeyVersionState,
  KeysService,
  type Key,
  type KeyVersion,
} from "../../gen/keyward/v1/keys_pb.js";
import { loadConfig } from "../../src/config.js";
import { REDACT_PATHS } from "../../src/log.js";
import { unwrapKey } from "../../src/crypto/key-wrap.js";
import { parseRootKey } from "../../src/crypto/root-key.js";
import { materialBinding } from "../../src/domain/keys/material.js";
import { startKeyward, type RunningKeyward } from "../../src/main.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { eventually, expectFailure, expectViolation, failure } from "../helpers/expect.js";
import { issueDevClient, policyFileEnv, startTestKeyward, testKeywardEnv, type TestKeyward } from "../helpers/keyward.js";
import { policyText } from "../helpers/policy.js";

/**
 * Every KeysService RPC end to end: real mTLS, real PostgreSQL, the real
 * scheduler (1 s minimum pending window, 200 ms interval, so scheduled
 * destruction and automatic rotation happen within the test), and a second
 * server on the same schema and data folder, as a replica, whose scheduler
 * races the first one's. Failures are checked by code and exact message: the messages
 * are part of the contract callers and operators read.
 */

const LISTER = "spiffe://keyward.local/lister";

// The dev identities keep their one role everywhere; "lister" may list keys
// and read those named list-a*, except list-a3 (deny wins), so ListKeys can
// be shown to list only what the caller is granted, gaps and all.
const POLICY = policyText([
  { name: "admin", identities: ["spiffe://keyward.local/admin"], roles: ["ADMIN"], resources: ["**"] },
  { name: "service", identities: ["spiffe://keyward.local/service"], roles: ["SERVICE"], resources: ["**"] },
  { name: "auditor", identities: ["spiffe://keyward.local/auditor"], roles: ["AUDITOR"], resources: ["**"] },
  { name: "lister-team-a", identities: [LISTER], roles: ["AUDITOR"], resources: ["keys", "keys/list-a*"] },
  { name: "lister-not-a3", effect: "deny", identities: [LISTER], roles: ["AUDITOR"], resources: ["keys/list-a3"] },
]);

const DAY_MS = 86_400_000;
const HOUR = { seconds: BigInt(3600), nanos: 0 };
const PLAINTEXT = new TextEncoder().encode("attack at dawn");

/** Every algorithm but RSA-PSS 3072/4096, whose key generation takes seconds and adds nothing the 2048 case does not test. */
const ALGORITHMS: ReadonlyArray<readonly [KeyPurpose, KeyAlgorithm]> = [
  [KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
  [KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.CHACHA20_POLY1305],
  [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519],
  [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ECDSA_P256_SHA256],
  [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ECDSA_P384_SHA384],
  [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.RSA_PSS_2048_SHA256],
  [KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256],
  [KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA512],
];

const algorithmKeyId = (algorithm: KeyAlgorithm) => `alg-${KeyAlgorithm[algorithm].toLowerCase().replaceAll("_", "-")}`;

/**
 * Crypto calls read keys through each server's cache, which drops a key when
 * the NOTIFY of its change arrives, on the server that made the change as on
 * the others: keys.proto promises that a change holds everywhere within one
 * second, not that it holds at once. So what a crypto call answers after a
 * lifecycle call is awaited for up to that second.
 */
const PROPAGATION_MS = 1_000;

/** What a call ended with: its response, or its code and message. */
type Outcome<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly code: string; readonly message: string };

async function outcomeOf<T>(call: Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await call };
  } catch (err) {
    const error = ConnectError.from(err);
    return { ok: false, code: Code[error.code], message: error.rawMessage };
  }
}

/** The call fails with this code and message within {@link PROPAGATION_MS}. */
async function expectFailureSoon(call: () => Promise<unknown>, code: Code, message: string): Promise<void> {
  const expected = { ok: false, code: Code[code], message };
  const outcome = await eventually(
    () => outcomeOf(call()),
    (o) => !o.ok && o.code === expected.code && o.message === message,
    PROPAGATION_MS,
    `${expected.code} "${message}"`,
  );
  expect(outcome).toEqual(expected);
}

/** The call succeeds with a response `accept` takes within {@link PROPAGATION_MS}. */
async function expectSuccessSoon<T>(call: () => Promise<T>, accept: (value: T) => boolean, what: string): Promise<T> {
  const outcome = await eventually(() => outcomeOf(call()), (o) => o.ok && accept(o.value), PROPAGATION_MS, what);
  return (outcome as { value: T }).value;
}

const msOf = (t: Timestamp | undefined): number | undefined => (t === undefined ? undefined : timestampDate(t).getTime());

/** Every response a recorded client received, with its schema, for the key-material check at the end. */
const responses: Array<{ method: string; schema: DescMessage; message: unknown }> = [];

/** The client, recording each response it receives. */
function recording<S extends DescService>(service: S, client: Client<S>): Client<S> {
  const calls = client as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  const wrapped: Record<string, unknown> = {};
  for (const method of service.methods) {
    const call = calls[method.localName]!;
    wrapped[method.localName] = async (...args: unknown[]) => {
      const response = await call(...args);
      responses.push({ method: method.name, schema: method.output, message: response });
      return response;
    };
  }
  return wrapped as unknown as Client<S>;
}

describe("KeysService lifecycle over mTLS", () => {
  let keyward: TestKeyward;
  let pool: pg.Pool;
  let admin: Client<typeof KeysService>;
  let auditor: Client<typeof KeysService>;
  let lister: Client<typeof KeysService>;
  let serviceKeys: Client<typeof KeysService>;
  let crypto: Client<typeof CryptoService>;

  beforeAll(async () => {
    keyward = await startTestKeyward(async (dataDir) => {
      await issueDevClient(dataDir, "lister", LISTER);
      return {
        ...(await policyFileEnv(dataDir, "lifecycle-policy.yaml", POLICY)),
        KEYWARD_KEY_MIN_PENDING_WINDOW_MS: "1000",
        KEYWARD_KEY_SCHEDULER_INTERVAL_MS: "200",
      };
    });
    pool = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2, applicationName: "keyward-test" });
    admin = recording(KeysService, connectClient(KeysService, keyward.url, await keyward.credentials("admin")));
    auditor = recording(KeysService, connectClient(KeysService, keyward.url, await keyward.credentials("auditor")));
    lister = recording(KeysService, connectClient(KeysService, keyward.url, await keyward.credentials("lister")));
    serviceKeys = recording(KeysService, connectClient(KeysService, keyward.url, await keyward.credentials("service")));
    crypto = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
  });
  afterAll(async () => {
    await pool?.end();
    await keyward?.close();
  });

  const createAes = async (keyId: string, extra: Partial<Pick<Key, "labels" | "description">> & { rotationPeriod?: typeof HOUR } = {}) =>
    (await admin.createKey({ keyId, key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM, ...extra } })).key!;
  // GetKey alone adds read-time figures (usage, rewrap progress); without
  // them its key compares equal to what the other RPCs return.
  const stateOf = (key: Key): Key => ({ ...key, usage: undefined, secretVersionsToRewrap: BigInt(0) });
  const getKey = async (name: string) => stateOf((await admin.getKey({ name })).key!);
  const versionsOf = async (parent: string) => (await admin.listKeyVersions({ parent })).keyVersions;
  const encrypt = (name: string) => crypto.encrypt({ name, plaintext: PLAINTEXT });
  const decrypt = (name: string, ciphertext: Uint8Array) => crypto.decrypt({ name, ciphertext });
  const schedulerEvents = async (method: string, name: string) =>
    (
      await pool.query<{ identity: string; roles: string[]; result_code: number; result_message: string }>(
        "SELECT identity, roles, result_code, result_message FROM audit_events WHERE method = $1 AND resources = $2 ORDER BY sequence",
        [method, [name]],
      )
    ).rows;

  it("CreateKey makes an ENABLED key with primary version 1 for every algorithm of every purpose, and its material works", async () => {
    for (const [purpose, algorithm] of ALGORITHMS) {
      const keyId = algorithmKeyId(algorithm);
      const name = `keys/${keyId}`;
      const label = KeyAlgorithm[algorithm];
      const before = Date.now();
      const { key } = await admin.createKey({
        keyId,
        key: { purpose, algorithm, description: `a ${label} key`, labels: { suite: "algorithms" } },
      });
      const after = Date.now();
      expect(key, label).toMatchObject({
        name,
        purpose,
        algorithm,
        state: KeyState.ENABLED,
        primaryVersion: 1,
        minDecryptionVersion: 0,
        description: `a ${label} key`,
        labels: { suite: "algorithms" },
        etag: "1",
      });
      expect([key!.rotationPeriod, key!.nextRotationTime, key!.deletionTime], label).toEqual([undefined, undefined, undefined]);
      expect(msOf(key!.createTime), label).toBeGreaterThanOrEqual(before);
      expect(msOf(key!.createTime), label).toBeLessThanOrEqual(after);
      expect(msOf(key!.updateTime), label).toBe(msOf(key!.createTime));
      // What GetKey reads back from the database is what CreateKey answered.
      expect(stateOf((await auditor.getKey({ name })).key!), label).toEqual(key);

      const versions = (await serviceKeys.listKeyVersions({ parent: name })).keyVersions;
      expect(versions, label).toHaveLength(1);
      expect(versions[0], label).toMatchObject({
        name: `${name}/versions/1`,
        version: 1,
        state: KeyVersionState.ENABLED,
        algorithm,
        usage: { operationCount: BigInt(0) },
      });
      expect([versions[0]!.destroyTime, versions[0]!.usage!.lastUsedTime], label).toEqual([undefined, undefined]);
      expect(msOf(versions[0]!.createTime), label).toBe(msOf(key!.createTime));

      // The generated material is real and of the right kind.
      if (purpose === KeyPurpose.ENCRYPT_DECRYPT) {
        const sealed = await encrypt(name);
        expect(sealed.keyVersion).toBe(`${name}/versions/1`);
        expect(Buffer.from((await decrypt(name, sealed.ciphertext)).plaintext)).toEqual(Buffer.from(PLAINTEXT));
      } else if (purpose === KeyPurpose.SIGN_VERIFY) {
        const input = { case: "message", value: PLAINTEXT } as const;
        const { signature } = await crypto.sign({ name, input });
        expect((await crypto.verify({ name, input, signature })).valid, label).toBe(true);
      } else {
        const { mac } = await crypto.mac({ name, data: PLAINTEXT });
        expect(mac.length, label).toBe(algorithm === KeyAlgorithm.HMAC_SHA256 ? 32 : 64);
        expect((await crypto.verifyMac({ name, data: PLAINTEXT, mac })).valid, label).toBe(true);
      }
    }
  });

  it("CreateKey refuses a reused id, an algorithm of another purpose, and rotation_period on a key that does not encrypt", async () => {
    await createAes("taken");
    await expectFailure(
      admin.createKey({ keyId: "taken", key: { purpose: KeyPurpose.MAC, algorithm: KeyAlgorithm.HMAC_SHA256 } }),
      Code.AlreadyExists,
      "keys/taken already exists or existed (key ids are never reused)",
    );
    const mismatch =
      "key: algorithm does not belong to purpose (ENCRYPT_DECRYPT: AES_256_GCM, CHACHA20_POLY1305; SIGN_VERIFY: ED25519, ECDSA_*, RSA_PSS_*; MAC: HMAC_*) [key.algorithm_purpose]";
    for (const [purpose, algorithm] of [
      [KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.ED25519],
      [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.HMAC_SHA512],
      [KeyPurpose.MAC, KeyAlgorithm.AES_256_GCM],
      [KeyPurpose.MAC, KeyAlgorithm.RSA_PSS_4096_SHA256],
    ] as const) {
      await expectViolation(admin.createKey({ keyId: "mismatched", key: { purpose, algorithm } }), "key.algorithm_purpose", mismatch);
    }
    for (const [purpose, algorithm] of [
      [KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519],
      [KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256],
    ] as const) {
      await expectViolation(
        admin.createKey({ keyId: "mismatched", key: { purpose, algorithm, rotationPeriod: HOUR } }),
        "key.rotation_period_purpose",
        "key: rotation_period is only supported for purpose ENCRYPT_DECRYPT [key.rotation_period_purpose]",
      );
    }
    await expectViolation(
      admin.createKey({ keyId: "mismatched", key: { algorithm: KeyAlgorithm.AES_256_GCM } }),
      "create_key.purpose_algorithm_required",
      "key.purpose and key.algorithm are required [create_key.purpose_algorithm_required]",
    );
    await expectViolation(
      admin.createKey({ keyId: "mismatched", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM, rotationPeriod: { seconds: BigInt(3599), nanos: 0 } } }),
      "duration.gte_lte",
      "key.rotation_period: must be greater than or equal to 3600s and less than or equal to 315360000s [duration.gte_lte]",
    );
    await expectViolation(
      admin.createKey({ keyId: "mismatched", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM, minDecryptionVersion: 2 } }),
      "create_key.min_decryption_version",
      "key: min_decryption_version must be 0 or 1 for a new key [create_key.min_decryption_version]",
    );
    await expectFailure(
      admin.createKey({ keyId: "mismatched", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM, rotationPeriod: { seconds: BigInt(3600), nanos: 500_000_000 } } }),
      Code.InvalidArgument,
      "rotation_period must be a whole number of seconds",
    );
    // None of the refused calls created anything.
    await expectFailure(admin.getKey({ name: "keys/mismatched" }), Code.NotFound, "keys/mismatched not found");
    // Creating is ADMIN's: SERVICE is refused before the request is looked at.
    await expectFailure(
      serviceKeys.createKey({ keyId: "by-service", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } }),
      Code.PermissionDenied,
      "spiffe://keyward.local/service may not call keyward.v1.KeysService/CreateKey: it requires the ADMIN role",
    );
  });

  it("GetKey answers NOT_FOUND for a key that does not exist and INVALID_ARGUMENT for a malformed name", async () => {
    await expectFailure(admin.getKey({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
    await expectFailure(serviceKeys.getKey({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
    for (const name of ["keys/Upper", "keys/x/versions/1", "secrets/a/b/c"]) {
      await expectViolation(
        admin.getKey({ name }),
        "string.pattern",
        `name: does not match regex pattern \`^keys/[a-z][a-z0-9-]{0,62}$\` [string.pattern]`,
      );
    }
  });

  describe("ListKeys", () => {
    beforeAll(async () => {
      const make = async (keyId: string, purpose: KeyPurpose, algorithm: KeyAlgorithm, team: string) =>
        admin.createKey({ keyId, key: { purpose, algorithm, labels: { suite: "list", team } } });
      // Created out of name order: the listing sorts.
      await make("list-b2", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM, "b");
      await make("list-a3", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519, "a");
      await make("list-a1", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM, "a");
      await make("list-b1", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519, "b");
      await make("list-a4", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.CHACHA20_POLY1305, "a");
      await make("list-a2", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256, "a");
      await admin.disableKey({ name: "keys/list-a4" });
      await admin.scheduleKeyDeletion({ name: "keys/list-b2" });
    });

    const names = async (client: Client<typeof KeysService>, filter: string) =>
      (await client.listKeys({ filter })).keys.map((k) => k.name.slice("keys/".length));

    it("filters by state, purpose, algorithm and labels, combined with AND, in ascending order of name", async () => {
      const all = ["list-a1", "list-a2", "list-a3", "list-a4", "list-b1", "list-b2"];
      expect(await names(admin, "labels.suite=list")).toEqual(all);
      expect(await names(auditor, "labels.suite=list")).toEqual(all);
      expect(await names(admin, "labels.suite=list AND labels.team=b")).toEqual(["list-b1", "list-b2"]);
      expect(await names(admin, "labels.suite=list AND purpose=KEY_PURPOSE_ENCRYPT_DECRYPT")).toEqual(["list-a1", "list-a4", "list-b2"]);
      expect(await names(admin, "purpose=KEY_PURPOSE_MAC AND labels.team=a")).toEqual(["list-a2"]);
      expect(await names(admin, "labels.suite=list AND algorithm=KEY_ALGORITHM_ED25519")).toEqual(["list-a3", "list-b1"]);
      expect(await names(admin, "labels.suite=list AND state=KEY_STATE_ENABLED")).toEqual(["list-a1", "list-a2", "list-a3", "list-b1"]);
      expect(await names(admin, "state=KEY_STATE_DISABLED AND labels.suite=list")).toEqual(["list-a4"]);
      expect(await names(admin, "state=KEY_STATE_PENDING_DELETION AND labels.suite=list")).toEqual(["list-b2"]);
      expect(await names(admin, "labels.suite=list AND labels.team=c")).toEqual([]);
      // Unfiltered, every key is listed, in order, the ones above included.
      const everything = await names(admin, "");
      expect(everything).toEqual([...everything].sort());
      expect(everything).toEqual(expect.arrayContaining([...all, "taken", "alg-aes-256-gcm"]));
      // A listed key carries its full metadata.
      const [a4] = (await admin.listKeys({ filter: "state=KEY_STATE_DISABLED AND labels.suite=list" })).keys;
      expect(a4).toEqual(await getKey("keys/list-a4"));

      await expectFailure(admin.listKeys({ filter: "state=KEY_STATE_MELTED" }), Code.InvalidArgument, "filter: unknown state KEY_STATE_MELTED");
      await expectFailure(
        admin.listKeys({ filter: "state=KEY_STATE_UNSPECIFIED" }),
        Code.InvalidArgument,
        "filter: unknown state KEY_STATE_UNSPECIFIED",
      );
      await expectFailure(
        admin.listKeys({ filter: "algorithm=KEY_ALGORITHM_DES" }),
        Code.InvalidArgument,
        "filter: unknown algorithm KEY_ALGORITHM_DES",
      );
      const malformed = await failure(admin.listKeys({ filter: "name=keys/x" }));
      expect(malformed.code).toBe(Code.InvalidArgument);
      expect(malformed.findDetails(ViolationsSchema)[0]?.violations.map((v) => v.ruleId)).toEqual(["string.pattern"]);
    });

    it("pages with page_size and page_token; a token only works with the filter it was issued for", async () => {
      const filter = "labels.suite=list";
      const pages: string[][] = [];
      let pageToken = "";
      do {
        const page = await admin.listKeys({ filter, pageSize: 2, pageToken });
        pages.push(page.keys.map((k) => k.name));
        pageToken = page.nextPageToken;
      } while (pageToken !== "" && pages.length < 10);
      expect(pages).toEqual([
        ["keys/list-a1", "keys/list-a2"],
        ["keys/list-a3", "keys/list-a4"],
        ["keys/list-b1", "keys/list-b2"],
      ]);

      const first = await admin.listKeys({ filter, pageSize: 4 });
      expect(first.keys.map((k) => k.name)).toEqual(["keys/list-a1", "keys/list-a2", "keys/list-a3", "keys/list-a4"]);
      expect(first.nextPageToken).not.toBe("");
      // page_size may change between pages, the filter may not.
      const rest = await admin.listKeys({ filter, pageSize: 100, pageToken: first.nextPageToken });
      expect(rest.keys.map((k) => k.name)).toEqual(["keys/list-b1", "keys/list-b2"]);
      expect(rest.nextPageToken).toBe("");
      for (const other of ["labels.suite=list AND labels.team=a", "", "labels.suite=lists"]) {
        await expectFailure(
          admin.listKeys({ filter: other, pageSize: 4, pageToken: first.nextPageToken }),
          Code.InvalidArgument,
          "page_token was issued for a different filter",
        );
      }
      await expectFailure(admin.listKeys({ filter, pageToken: "not-a-token" }), Code.InvalidArgument, "page_token is malformed");
      await expectViolation(
        admin.listKeys({ filter, pageSize: 1001 }),
        "int32.gte_lte",
        "page_size: must be greater than or equal to 0 and less than or equal to 1000 [int32.gte_lte]",
      );
    });

    it("lists only the keys the caller is granted, across pages, and refuses callers without the role", async () => {
      // Granted keys/list-a*, denied keys/list-a3, nothing on the rest.
      expect(await names(lister, "")).toEqual(["list-a1", "list-a2", "list-a4"]);
      expect(await names(lister, "labels.suite=list")).toEqual(["list-a1", "list-a2", "list-a4"]);
      expect(await names(lister, "labels.team=b")).toEqual([]);
      const pages: Array<{ names: string[]; more: boolean }> = [];
      let pageToken = "";
      do {
        const page = await lister.listKeys({ filter: "labels.suite=list", pageSize: 1, pageToken });
        pages.push({ names: page.keys.map((k) => k.name), more: page.nextPageToken !== "" });
        pageToken = page.nextPageToken;
      } while (pageToken !== "" && pages.length < 10);
      // list-a3 (denied) is skipped within a page; list-b* (not granted) after
      // the last granted key leave no dangling token behind.
      expect(pages).toEqual([
        { names: ["keys/list-a1"], more: true },
        { names: ["keys/list-a2"], more: true },
        { names: ["keys/list-a4"], more: false },
      ]);
      expect((await lister.getKey({ name: "keys/list-a1" })).key?.name).toBe("keys/list-a1");
      await expectFailure(
        lister.getKey({ name: "keys/list-a3" }),
        Code.PermissionDenied,
        'permission denied: denied on "keys/list-a3" by rule "lister-not-a3"',
      );
      await expectFailure(
        serviceKeys.listKeys({}),
        Code.PermissionDenied,
        "spiffe://keyward.local/service may not call keyward.v1.KeysService/ListKeys: it requires the ADMIN or AUDITOR role",
      );
    });
  });

  it("UpdateKey changes only the fields in update_mask, checks the etag, and refuses what the key cannot take", async () => {
    const created = await createAes("updated", { description: "first", labels: { team: "payments" } });
    // Only labels are in the mask: the description sent along is ignored.
    const { key: labelled } = await admin.updateKey({
      key: { name: created.name, description: "ignored", labels: { team: "billing", tier: "gold" } },
      updateMask: { paths: ["labels"] },
    });
    expect(labelled).toMatchObject({ description: "first", labels: { team: "billing", tier: "gold" }, etag: "2", state: KeyState.ENABLED });
    expect(msOf(labelled!.updateTime)).toBeGreaterThanOrEqual(msOf(created.updateTime)!);
    expect(msOf(labelled!.createTime)).toBe(msOf(created.createTime));
    expect(await getKey(created.name)).toEqual(labelled);

    // A stale etag is ABORTED and changes nothing; the current one is accepted.
    await expectFailure(
      admin.updateKey({ key: { name: created.name, description: "stale", etag: "1" }, updateMask: { paths: ["description"] } }),
      Code.Aborted,
      'the etag of keys/updated is no longer "1"; read the key again',
    );
    expect((await getKey(created.name)).description).toBe("first");
    const { key: described } = await admin.updateKey({
      key: { name: created.name, description: "second", etag: "2" },
      updateMask: { paths: ["description"] },
    });
    expect(described).toMatchObject({ description: "second", labels: { team: "billing", tier: "gold" }, etag: "3" });

    // An update that changes nothing is a no-op: same etag, same update time.
    const { key: same } = await admin.updateKey({ key: { name: created.name, description: "second" }, updateMask: { paths: ["description"] } });
    expect(same).toEqual(described);

    // rotation_period: the next rotation is due one period after the primary version was created; unset turns it off.
    const [v1] = await versionsOf(created.name);
    const { key: rotating } = await admin.updateKey({ key: { name: created.name, rotationPeriod: HOUR }, updateMask: { paths: ["rotation_period"] } });
    expect(rotating?.rotationPeriod?.seconds).toBe(BigInt(3600));
    expect(msOf(rotating!.nextRotationTime)).toBe(msOf(v1!.createTime)! + 3_600_000);
    const { key: still } = await admin.updateKey({ key: { name: created.name }, updateMask: { paths: ["rotation_period"] } });
    expect([still!.rotationPeriod, still!.nextRotationTime, still!.etag]).toEqual([undefined, undefined, "5"]);

    // min_decryption_version: at most the primary version.
    await expectFailure(
      admin.updateKey({ key: { name: created.name, minDecryptionVersion: 2 }, updateMask: { paths: ["min_decryption_version"] } }),
      Code.FailedPrecondition,
      "min_decryption_version 2 is greater than the primary version 1 of keys/updated",
    );
    await admin.rotateKey({ name: created.name });
    const { key: raised } = await admin.updateKey({
      key: { name: created.name, minDecryptionVersion: 2 },
      updateMask: { paths: ["min_decryption_version"] },
    });
    expect(raised).toMatchObject({ minDecryptionVersion: 2, primaryVersion: 2 });

    // rotation_period on a MAC key passes validation (purpose is not sent) and is refused by the key.
    await admin.createKey({ keyId: "updated-mac", key: { purpose: KeyPurpose.MAC, algorithm: KeyAlgorithm.HMAC_SHA512 } });
    await expectFailure(
      admin.updateKey({ key: { name: "keys/updated-mac", rotationPeriod: HOUR }, updateMask: { paths: ["rotation_period"] } }),
      Code.FailedPrecondition,
      "rotation_period is only supported for purpose ENCRYPT_DECRYPT; keys/updated-mac has purpose MAC",
    );

    await expectFailure(
      admin.updateKey({ key: { name: "keys/never-created", description: "x" }, updateMask: { paths: ["description"] } }),
      Code.NotFound,
      "keys/never-created not found",
    );
    const maskRule =
      "update_mask: update_mask must name at least one of description, labels, rotation_period, min_decryption_version [update_key.update_mask]";
    await expectViolation(admin.updateKey({ key: { name: created.name }, updateMask: { paths: [] } }), "update_key.update_mask", maskRule);
    for (const path of ["purpose", "algorithm", "state", "*"]) {
      await expectViolation(admin.updateKey({ key: { name: created.name }, updateMask: { paths: [path] } }), "update_key.update_mask", maskRule);
    }
    await expectViolation(
      admin.updateKey({ key: { description: "x" }, updateMask: { paths: ["description"] } }),
      "update_key.name_required",
      "key: key.name is required [update_key.name_required]",
    );
  });

  it("RotateKey makes a new primary; ListKeyVersions lists newest first, paginated; old versions still decrypt down to min_decryption_version", async () => {
    const created = await createAes("rotated");
    const sealedBy = [await encrypt(created.name)];
    let etag = created.etag;
    for (const n of [2, 3, 4]) {
      const before = Date.now();
      const { key, keyVersion } = await admin.rotateKey({ name: created.name });
      expect(key).toMatchObject({ name: created.name, primaryVersion: n, state: KeyState.ENABLED });
      expect(key!.etag).not.toBe(etag);
      etag = key!.etag;
      expect(keyVersion).toMatchObject({
        name: `keys/rotated/versions/${n}`,
        version: n,
        state: KeyVersionState.ENABLED,
        algorithm: KeyAlgorithm.AES_256_GCM,
        usage: { operationCount: BigInt(0) },
      });
      expect(msOf(keyVersion!.createTime)).toBeGreaterThanOrEqual(before);
      expect(msOf(key!.updateTime)).toBe(msOf(keyVersion!.createTime));
      const sealed = await expectSuccessSoon(
        () => encrypt(created.name),
        (r) => r.keyVersion === `keys/rotated/versions/${n}`,
        `encrypt with version ${n}`,
      );
      sealedBy.push(sealed);
    }

    const all = await versionsOf(created.name);
    expect(all.map((v) => [v.version, v.name, v.state])).toEqual([
      [4, "keys/rotated/versions/4", KeyVersionState.ENABLED],
      [3, "keys/rotated/versions/3", KeyVersionState.ENABLED],
      [2, "keys/rotated/versions/2", KeyVersionState.ENABLED],
      [1, "keys/rotated/versions/1", KeyVersionState.ENABLED],
    ]);
    const first = await auditor.listKeyVersions({ parent: created.name, pageSize: 3 });
    expect(first.keyVersions.map((v) => v.version)).toEqual([4, 3, 2]);
    expect(first.nextPageToken).not.toBe("");
    const second = await auditor.listKeyVersions({ parent: created.name, pageSize: 3, pageToken: first.nextPageToken });
    expect(second.keyVersions.map((v) => v.version)).toEqual([1]);
    expect(second.nextPageToken).toBe("");
    const exact = await auditor.listKeyVersions({ parent: created.name, pageSize: 4 });
    expect([exact.keyVersions.length, exact.nextPageToken]).toEqual([4, ""]);
    await createAes("rotated-other");
    await expectFailure(
      admin.listKeyVersions({ parent: "keys/rotated-other", pageToken: first.nextPageToken }),
      Code.InvalidArgument,
      "page_token was issued for a different filter",
    );
    await expectFailure(admin.listKeyVersions({ parent: "keys/never-created" }), Code.NotFound, "keys/never-created not found");

    // Every version still decrypts what it encrypted, and says which it used.
    for (const [i, sealed] of sealedBy.entries()) {
      const opened = await decrypt(created.name, sealed.ciphertext);
      expect([opened.keyVersion, Buffer.from(opened.plaintext).toString()]).toEqual([`keys/rotated/versions/${i + 1}`, "attack at dawn"]);
    }
    await admin.updateKey({ key: { name: created.name, minDecryptionVersion: 3 }, updateMask: { paths: ["min_decryption_version"] } });
    await expectFailureSoon(
      () => decrypt(created.name, sealedBy[1]!.ciphertext),
      Code.FailedPrecondition,
      "version 2 of keys/rotated is below min_decryption_version 3",
    );
    expect((await decrypt(created.name, sealedBy[2]!.ciphertext)).keyVersion).toBe("keys/rotated/versions/3");

    await expectFailure(admin.rotateKey({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
    await admin.disableKey({ name: created.name });
    await expectFailure(
      admin.rotateKey({ name: created.name }),
      Code.FailedPrecondition,
      "cannot rotate key keys/rotated: key is DISABLED; only an ENABLED key can be rotated",
    );
    expect((await getKey(created.name)).primaryVersion).toBe(4);
  });

  it("usage counters count each version's successful operations, with last_used_time, a few seconds later", async () => {
    const created = await createAes("used");
    const counted = new Map<string, number>();
    const count = (keyVersion: string) => counted.set(keyVersion, (counted.get(keyVersion) ?? 0) + 1);
    const started = Date.now();
    const sealed = await encrypt(created.name);
    count(sealed.keyVersion);
    await admin.rotateKey({ name: created.name });
    for (let i = 0; i < 3; i++) {
      count((await encrypt(created.name)).keyVersion);
    }
    for (let i = 0; i < 2; i++) {
      count((await decrypt(created.name, sealed.ciphertext)).keyVersion);
    }
    const ended = Date.now();
    // Version 1 did at least the first encrypt and both decrypts; each call is
    // counted on the version its response names.
    expect(counted.get("keys/used/versions/1")).toBeGreaterThanOrEqual(3);
    const expected = (v: KeyVersion) => BigInt(counted.get(v.name) ?? 0);
    const versions = await eventually(
      () => versionsOf(created.name),
      (vs) => vs.length === 2 && vs.every((v) => v.usage?.operationCount === expected(v)),
      6_000,
      `usage counters ${JSON.stringify([...counted])}`,
    );
    for (const v of versions) {
      const lastUsed = msOf(v.usage?.lastUsedTime);
      if (expected(v) === BigInt(0)) {
        expect(lastUsed, `version ${v.version}`).toBeUndefined();
        continue;
      }
      // Stamped when the counters are flushed, every 2 s.
      expect(lastUsed, `version ${v.version}`).toBeGreaterThanOrEqual(started);
      expect(lastUsed, `version ${v.version}`).toBeLessThanOrEqual(ended + 2_500);
    }
    // GetKey sums the versions' counters and shows the latest use.
    const { key } = await admin.getKey({ name: created.name });
    expect(key?.usage?.operationCount).toBe(versions.reduce((sum, v) => sum + expected(v), BigInt(0)));
    expect(msOf(key?.usage?.lastUsedTime)).toBe(Math.max(...versions.map((v) => msOf(v.usage?.lastUsedTime) ?? 0)));

    // Refused operations are not counted.
    await admin.disableKey({ name: created.name });
    await eventually(
      async () => {
        const outcome = await outcomeOf(encrypt(created.name));
        if (outcome.ok) count(outcome.value.keyVersion);
        return outcome;
      },
      (o) => !o.ok,
      PROPAGATION_MS,
      "encrypt refused",
    );
    for (let i = 0; i < 3; i++) {
      await expectFailure(decrypt(created.name, sealed.ciphertext), Code.FailedPrecondition, "key keys/used is DISABLED");
    }
    await sleep(2_300);
    expect((await versionsOf(created.name)).map((v) => [v.version, v.usage?.operationCount])).toEqual(
      versions.map((v) => [v.version, expected(v)]),
    );
  });

  it("DisableKey and EnableKey move the key between DISABLED and ENABLED, repeating either is a no-op, and a disabled key cannot encrypt", async () => {
    const created = await createAes("toggled");
    await encrypt(created.name); // cached now: the disable must reach the cache

    const { key: disabled } = await admin.disableKey({ name: created.name });
    expect(disabled).toMatchObject({ state: KeyState.DISABLED, etag: "2" });
    await expectFailureSoon(() => encrypt(created.name), Code.FailedPrecondition, "key keys/toggled is DISABLED");
    const { key: again } = await admin.disableKey({ name: created.name });
    expect(again).toEqual(disabled);

    const { key: enabled } = await admin.enableKey({ name: created.name });
    expect(enabled).toMatchObject({ state: KeyState.ENABLED, etag: "3" });
    await expectSuccessSoon(() => encrypt(created.name), (r) => r.keyVersion === "keys/toggled/versions/1", "encrypt once enabled");
    const { key: enabledAgain } = await admin.enableKey({ name: created.name });
    expect(enabledAgain).toEqual(enabled);
    expect(await getKey(created.name)).toEqual(enabled);

    await expectFailure(admin.disableKey({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
    await expectFailure(admin.enableKey({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
    await expectFailure(
      serviceKeys.disableKey({ name: created.name }),
      Code.PermissionDenied,
      "spiffe://keyward.local/service may not call keyward.v1.KeysService/DisableKey: it requires the ADMIN role",
    );
  });

  it("DisableKeyVersion and EnableKeyVersion change one version; the primary cannot be disabled", async () => {
    const created = await createAes("versioned");
    const sealedBy1 = await encrypt(created.name);
    await expectFailure(
      admin.disableKeyVersion({ name: "keys/versioned/versions/1" }),
      Code.FailedPrecondition,
      "cannot disable version 1 of key keys/versioned: it is the primary version; rotate the key first",
    );
    const { key: rotated } = await admin.rotateKey({ name: created.name });
    await expectFailure(
      admin.disableKeyVersion({ name: "keys/versioned/versions/2" }),
      Code.FailedPrecondition,
      "cannot disable version 2 of key keys/versioned: it is the primary version; rotate the key first",
    );

    const { keyVersion: off } = await admin.disableKeyVersion({ name: "keys/versioned/versions/1" });
    expect(off).toMatchObject({ name: "keys/versioned/versions/1", version: 1, state: KeyVersionState.DISABLED, algorithm: KeyAlgorithm.AES_256_GCM });
    expect((await admin.disableKeyVersion({ name: "keys/versioned/versions/1" })).keyVersion?.state).toBe(KeyVersionState.DISABLED);
    await expectFailureSoon(() => decrypt(created.name, sealedBy1.ciphertext), Code.FailedPrecondition, "version 1 of keys/versioned is DISABLED");
    await expectFailureSoon(
      () => crypto.encrypt({ name: "keys/versioned/versions/1", plaintext: PLAINTEXT }),
      Code.FailedPrecondition,
      "version 1 of keys/versioned is DISABLED",
    );
    // The key itself is untouched: a version's state is not the key's metadata.
    expect(await getKey(created.name)).toEqual(rotated);
    expect((await versionsOf(created.name)).map((v) => [v.version, v.state])).toEqual([
      [2, KeyVersionState.ENABLED],
      [1, KeyVersionState.DISABLED],
    ]);

    const { keyVersion: on } = await admin.enableKeyVersion({ name: "keys/versioned/versions/1" });
    expect(on).toMatchObject({ version: 1, state: KeyVersionState.ENABLED });
    expect((await admin.enableKeyVersion({ name: "keys/versioned/versions/1" })).keyVersion?.state).toBe(KeyVersionState.ENABLED);
    await expectSuccessSoon(
      () => decrypt(created.name, sealedBy1.ciphertext),
      (r) => r.keyVersion === "keys/versioned/versions/1",
      "decrypt once version 1 is enabled",
    );

    await expectFailure(admin.enableKeyVersion({ name: "keys/versioned/versions/9" }), Code.NotFound, "keys/versioned/versions/9 not found");
    await expectFailure(admin.disableKeyVersion({ name: "keys/never-created/versions/1" }), Code.NotFound, "keys/never-created not found");
    await expectViolation(
      admin.disableKeyVersion({ name: "keys/versioned" }),
      "string.pattern",
      "name: does not match regex pattern `^keys/[a-z][a-z0-9-]{0,62}/versions/[1-9][0-9]{0,8}$` [string.pattern]",
    );
    // A DISABLED key's versions may still be changed.
    await admin.disableKey({ name: created.name });
    expect((await admin.disableKeyVersion({ name: "keys/versioned/versions/1" })).keyVersion?.state).toBe(KeyVersionState.DISABLED);
  });

  it("ScheduleKeyDeletion waits 30 days by default, CancelKeyDeletion leaves the key DISABLED, and each illegal transition says why", async () => {
    const created = await createAes("doomed");
    await encrypt(created.name);
    await expectFailure(
      admin.cancelKeyDeletion({ name: created.name }),
      Code.FailedPrecondition,
      "cannot cancel deletion of key keys/doomed: key is ENABLED; no deletion is scheduled",
    );

    const { key: pending } = await admin.scheduleKeyDeletion({ name: created.name });
    expect(pending).toMatchObject({ state: KeyState.PENDING_DELETION, etag: "2" });
    expect(msOf(pending!.deletionTime)).toBe(msOf(pending!.updateTime)! + 30 * DAY_MS);
    expect(await getKey(created.name)).toEqual(pending);
    await expectFailureSoon(() => encrypt(created.name), Code.FailedPrecondition, "key keys/doomed is PENDING_DELETION");

    const refusals: Array<[string, () => Promise<unknown>, string]> = [
      ["rotate", () => admin.rotateKey({ name: created.name }), "cannot rotate key keys/doomed: key is PENDING_DELETION; only an ENABLED key can be rotated"],
      ["enable", () => admin.enableKey({ name: created.name }), "cannot enable key keys/doomed: key is PENDING_DELETION; call CancelKeyDeletion first"],
      [
        "disable",
        () => admin.disableKey({ name: created.name }),
        "cannot disable key keys/doomed: key is PENDING_DELETION; call CancelKeyDeletion, which leaves it DISABLED",
      ],
      [
        "schedule again",
        () => admin.scheduleKeyDeletion({ name: created.name, pendingWindow: { seconds: BigInt(2 * 86_400), nanos: 0 } }),
        "cannot schedule deletion of key keys/doomed: key is PENDING_DELETION; its deletion is already scheduled",
      ],
      [
        "enable version",
        () => admin.enableKeyVersion({ name: "keys/doomed/versions/1" }),
        "cannot enable version 1 of key keys/doomed: key is PENDING_DELETION; call CancelKeyDeletion first",
      ],
      [
        "disable version",
        () => admin.disableKeyVersion({ name: "keys/doomed/versions/1" }),
        "cannot disable version 1 of key keys/doomed: key is PENDING_DELETION; call CancelKeyDeletion first",
      ],
    ];
    for (const [what, call, message] of refusals) {
      const err = await failure(call());
      expect({ what, code: Code[err.code], message: err.rawMessage }).toEqual({ what, code: Code[Code.FailedPrecondition], message });
    }
    // None of them changed the key; its metadata stays editable.
    expect(await getKey(created.name)).toEqual(pending);
    const { key: edited } = await admin.updateKey({ key: { name: created.name, description: "going away" }, updateMask: { paths: ["description"] } });
    expect(edited).toMatchObject({ state: KeyState.PENDING_DELETION, description: "going away", etag: "3" });

    const { key: cancelled } = await admin.cancelKeyDeletion({ name: created.name });
    expect(cancelled).toMatchObject({ state: KeyState.DISABLED, etag: "4", description: "going away" });
    expect(cancelled!.deletionTime).toBeUndefined();
    await expectFailure(
      admin.cancelKeyDeletion({ name: created.name }),
      Code.FailedPrecondition,
      "cannot cancel deletion of key keys/doomed: key is DISABLED; no deletion is scheduled",
    );
    await expectFailureSoon(() => encrypt(created.name), Code.FailedPrecondition, "key keys/doomed is DISABLED");
    expect((await admin.enableKey({ name: created.name })).key?.state).toBe(KeyState.ENABLED);
    await expectSuccessSoon(() => encrypt(created.name), (r) => r.keyVersion === "keys/doomed/versions/1", "encrypt once enabled");

    // A DISABLED key may be scheduled too, with an explicit window; windows are checked before the key.
    await admin.disableKey({ name: created.name });
    const window = { seconds: BigInt(7 * 86_400), nanos: 0 };
    const { key: again } = await admin.scheduleKeyDeletion({ name: created.name, pendingWindow: window });
    expect(msOf(again!.deletionTime)).toBe(msOf(again!.updateTime)! + 7 * DAY_MS);
    await expectFailure(
      admin.scheduleKeyDeletion({ name: created.name, pendingWindow: { seconds: BigInt(1), nanos: 500_000_000 } }),
      Code.InvalidArgument,
      "pending_window must be a whole number of seconds",
    );
    await expectViolation(
      admin.scheduleKeyDeletion({ name: created.name, pendingWindow: { seconds: BigInt(366 * 86_400), nanos: 0 } }),
      "duration.gt_lte",
      "pending_window: must be greater than 0s and less than or equal to 31536000s [duration.gt_lte]",
    );
    await expectFailure(admin.scheduleKeyDeletion({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
    await expectFailure(admin.cancelKeyDeletion({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
  });

  it("a key scheduled with a 1 s window is destroyed by the scheduler: every version DESTROYED, material deleted, ciphertext unrecoverable, audited", async () => {
    const created = await createAes("destroyed");
    const old = await encrypt(created.name);
    await admin.rotateKey({ name: created.name });
    const newer = await encrypt(created.name);
    await admin.disableKeyVersion({ name: "keys/destroyed/versions/1" });
    await admin.createKey({ keyId: "destroyed-signer", key: { purpose: KeyPurpose.SIGN_VERIFY, algorithm: KeyAlgorithm.ECDSA_P256_SHA256 } });

    const second = { seconds: BigInt(1), nanos: 0 };
    const { key: pending } = await admin.scheduleKeyDeletion({ name: created.name, pendingWindow: second });
    await admin.scheduleKeyDeletion({ name: "keys/destroyed-signer", pendingWindow: second });
    const due = msOf(pending!.deletionTime)!;
    expect(due).toBe(msOf(pending!.updateTime)! + 1000);

    const destroyed = await eventually(
      () => getKey(created.name),
      (k) => k.state === KeyState.DESTROYED,
      5_000,
      "scheduled destruction",
    );
    expect(destroyed).toMatchObject({ state: KeyState.DESTROYED, primaryVersion: 2 });
    expect(msOf(destroyed.deletionTime)).toBe(due);
    expect(destroyed.nextRotationTime).toBeUndefined();
    const versions = await versionsOf(created.name);
    expect(versions.map((v) => [v.version, v.state])).toEqual([
      [2, KeyVersionState.DESTROYED],
      [1, KeyVersionState.DESTROYED],
    ]);
    for (const v of versions) {
      expect(msOf(v.destroyTime), `version ${v.version}`).toBeGreaterThanOrEqual(due);
      expect(msOf(v.destroyTime), `version ${v.version}`).toBe(msOf(destroyed.updateTime));
    }

    const rows = await pool.query<{ version: number; state: string; has_material: boolean }>(
      "SELECT version, state, wrapped_material IS NOT NULL AS has_material FROM key_versions WHERE key_name = $1 ORDER BY version",
      [created.name],
    );
    expect(rows.rows).toEqual([
      { version: 1, state: "DESTROYED", has_material: false },
      { version: 2, state: "DESTROYED", has_material: false },
    ]);
    for (const sealed of [old, newer]) {
      await expectFailureSoon(() => decrypt(created.name, sealed.ciphertext), Code.FailedPrecondition, "key keys/destroyed is DESTROYED");
    }
    await expectFailureSoon(() => encrypt(created.name), Code.FailedPrecondition, "key keys/destroyed is DESTROYED");

    // One audit event per destruction, by the scheduler, in the same chain as every call.
    expect(await schedulerEvents("keyward/scheduler/DestroyKey", created.name)).toEqual([
      { identity: "keyward/scheduler", roles: [], result_code: 0, result_message: "scheduled destruction" },
    ]);

    // DESTROYED is terminal: every lifecycle call is refused, with the state machine's reason.
    const terminal = "key is DESTROYED; a destroyed key is terminal";
    const refusals: Array<[() => Promise<unknown>, string]> = [
      [() => admin.rotateKey({ name: created.name }), `cannot rotate key keys/destroyed: ${terminal}`],
      [() => admin.enableKey({ name: created.name }), `cannot enable key keys/destroyed: ${terminal}`],
      [() => admin.disableKey({ name: created.name }), `cannot disable key keys/destroyed: ${terminal}`],
      [() => admin.scheduleKeyDeletion({ name: created.name }), `cannot schedule deletion of key keys/destroyed: ${terminal}`],
      [() => admin.cancelKeyDeletion({ name: created.name }), `cannot cancel deletion of key keys/destroyed: ${terminal}`],
      [
        () => admin.updateKey({ key: { name: created.name, description: "x" }, updateMask: { paths: ["description"] } }),
        `cannot update key keys/destroyed: ${terminal}`,
      ],
      [() => admin.enableKeyVersion({ name: "keys/destroyed/versions/1" }), `cannot enable version 1 of key keys/destroyed: ${terminal}`],
      [() => admin.disableKeyVersion({ name: "keys/destroyed/versions/2" }), `cannot disable version 2 of key keys/destroyed: ${terminal}`],
    ];
    for (const [call, message] of refusals) {
      await expectFailure(call(), Code.FailedPrecondition, message);
    }
    // The id stays taken for good, whatever the new key would be.
    await expectFailure(
      admin.createKey({ keyId: "destroyed", key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } }),
      Code.AlreadyExists,
      "keys/destroyed already exists or existed (key ids are never reused)",
    );

    const signer = await eventually(() => getKey("keys/destroyed-signer"), (k) => k.state === KeyState.DESTROYED, 3_000, "signer destruction");
    expect(signer.state).toBe(KeyState.DESTROYED);
    await expectFailure(admin.getPublicKey({ name: "keys/destroyed-signer" }), Code.FailedPrecondition, "key keys/destroyed-signer is DESTROYED");
    await expectFailureSoon(
      () => crypto.sign({ name: "keys/destroyed-signer", input: { case: "message", value: PLAINTEXT } }),
      Code.FailedPrecondition,
      "key keys/destroyed-signer is DESTROYED",
    );
    const signerRows = await pool.query("SELECT 1 FROM key_versions WHERE key_name = $1 AND wrapped_material IS NOT NULL", ["keys/destroyed-signer"]);
    expect(signerRows.rowCount).toBe(0);
  });

  it("the scheduler rotates a key whose rotation is due, once, and moves next_rotation_time one period ahead", async () => {
    const created = await createAes("auto-rotated", { rotationPeriod: HOUR });
    expect(created.rotationPeriod?.seconds).toBe(BigInt(3600));
    expect(msOf(created.nextRotationTime)).toBe(msOf(created.createTime)! + 3_600_000);
    const sealed = await encrypt(created.name);
    // Not due: a few scheduler runs leave it alone.
    await sleep(500);
    expect((await getKey(created.name)).primaryVersion).toBe(1);

    await pool.query("UPDATE keys SET next_rotation_time = now() - interval '1 second' WHERE name = $1", [created.name]);
    const rotated = await eventually(() => getKey(created.name), (k) => k.primaryVersion === 2, 3_000, "automatic rotation");
    const versions = await versionsOf(created.name);
    expect(versions.map((v) => [v.version, v.state])).toEqual([
      [2, KeyVersionState.ENABLED],
      [1, KeyVersionState.ENABLED],
    ]);
    expect(msOf(rotated.nextRotationTime)).toBe(msOf(versions[0]!.createTime)! + 3_600_000);
    expect(msOf(rotated.updateTime)).toBe(msOf(versions[0]!.createTime));
    expect(rotated.state).toBe(KeyState.ENABLED);
    await expectSuccessSoon(() => encrypt(created.name), (r) => r.keyVersion === "keys/auto-rotated/versions/2", "encrypt with version 2");
    expect((await decrypt(created.name, sealed.ciphertext)).keyVersion).toBe("keys/auto-rotated/versions/1");
    // Further runs see the new next_rotation_time and do nothing more.
    await sleep(600);
    expect((await getKey(created.name)).primaryVersion).toBe(2);
    expect(await schedulerEvents("/keyward.v1.KeysService/RotateKey", created.name)).toEqual([
      { identity: "keyward/scheduler", roles: [], result_code: 0, result_message: "automatic rotation" },
    ]);
  });

  it("GetPublicKey returns a PEM SubjectPublicKeyInfo that verifies Sign's signatures, per version, and only for enabled SIGN_VERIFY versions", async () => {
    const expectations: Record<number, { type: string; check: (k: ReturnType<typeof createPublicKey>) => unknown }> = {
      [KeyAlgorithm.ED25519]: { type: "ed25519", check: () => undefined },
      [KeyAlgorithm.ECDSA_P256_SHA256]: { type: "ec", check: (k) => expect(k.asymmetricKeyDetails?.namedCurve).toBe("prime256v1") },
      [KeyAlgorithm.ECDSA_P384_SHA384]: { type: "ec", check: (k) => expect(k.asymmetricKeyDetails?.namedCurve).toBe("secp384r1") },
      [KeyAlgorithm.RSA_PSS_2048_SHA256]: { type: "rsa", check: (k) => expect(k.asymmetricKeyDetails?.modulusLength).toBe(2048) },
    };
    for (const [purpose, algorithm] of ALGORITHMS) {
      if (purpose !== KeyPurpose.SIGN_VERIFY) continue;
      const name = `keys/${algorithmKeyId(algorithm)}`;
      const label = KeyAlgorithm[algorithm];
      const got = await serviceKeys.getPublicKey({ name });
      expect({ algorithm: got.algorithm, keyVersion: got.keyVersion }, label).toEqual({ algorithm, keyVersion: `${name}/versions/1` });
      expect(got.pem, label).toMatch(/^-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+-----END PUBLIC KEY-----\n?$/);
      expect(got.pem.length, label).toBeLessThanOrEqual(1024);
      const publicKey = createPublicKey(got.pem);
      expect(publicKey.type, label).toBe("public");
      const expected = expectations[algorithm]!;
      expect(publicKey.asymmetricKeyType === "rsa-pss" ? "rsa" : publicKey.asymmetricKeyType, label).toBe(expected.type);
      expected.check(publicKey);
      // A signature made by Keyward verifies offline with the public key alone.
      const { signature } = await crypto.sign({ name, input: { case: "message", value: PLAINTEXT } });
      const verifyOffline = (data: Uint8Array): boolean => {
        if (algorithm === KeyAlgorithm.ED25519) {
          return verifySignature(null, data, publicKey, signature);
        }
        if (algorithm === KeyAlgorithm.RSA_PSS_2048_SHA256) {
          return verifySignature("sha256", data, { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, signature);
        }
        const hash = algorithm === KeyAlgorithm.ECDSA_P256_SHA256 ? "sha256" : "sha384";
        return verifySignature(hash, data, { key: publicKey, dsaEncoding: "der" }, signature);
      };
      expect(verifyOffline(PLAINTEXT), label).toBe(true);
      expect(verifyOffline(new TextEncoder().encode("attack at dusk")), label).toBe(false);
    }

    // Versions: the key name means the primary; each version keeps its own public key.
    const name = `keys/${algorithmKeyId(KeyAlgorithm.ED25519)}`;
    const v1 = await auditor.getPublicKey({ name });
    await admin.rotateKey({ name });
    const primary = await auditor.getPublicKey({ name });
    expect(primary.keyVersion).toBe(`${name}/versions/2`);
    expect(primary.pem).not.toBe(v1.pem);
    expect(await auditor.getPublicKey({ name: `${name}/versions/1` })).toEqual(v1);
    expect(await auditor.getPublicKey({ name: `${name}/versions/2` })).toEqual(primary);
    const { signature } = await crypto.sign({ name: `${name}/versions/1`, input: { case: "message", value: PLAINTEXT } });
    expect(verifySignature(null, PLAINTEXT, v1.pem, signature)).toBe(true);
    expect(verifySignature(null, PLAINTEXT, primary.pem, signature)).toBe(false);

    await admin.disableKeyVersion({ name: `${name}/versions/1` });
    await expectFailure(auditor.getPublicKey({ name: `${name}/versions/1` }), Code.FailedPrecondition, `version 1 of ${name} is DISABLED`);
    await expectFailure(auditor.getPublicKey({ name: `${name}/versions/7` }), Code.NotFound, `${name}/versions/7 not found`);
    await expectFailure(
      auditor.getPublicKey({ name: "keys/alg-aes-256-gcm" }),
      Code.FailedPrecondition,
      "keys/alg-aes-256-gcm has purpose ENCRYPT_DECRYPT, not SIGN_VERIFY",
    );
    await expectFailure(
      auditor.getPublicKey({ name: "keys/alg-hmac-sha256/versions/1" }),
      Code.FailedPrecondition,
      "keys/alg-hmac-sha256 has purpose MAC, not SIGN_VERIFY",
    );
    await expectFailure(auditor.getPublicKey({ name: "keys/never-created" }), Code.NotFound, "keys/never-created not found");
    await admin.disableKey({ name: "keys/alg-ecdsa-p384-sha384" });
    await expectFailure(
      auditor.getPublicKey({ name: "keys/alg-ecdsa-p384-sha384" }),
      Code.FailedPrecondition,
      "key keys/alg-ecdsa-p384-sha384 is DISABLED",
    );
    await admin.enableKey({ name: "keys/alg-ecdsa-p384-sha384" });
  });

  describe("with a second server on the same schema", () => {
    let second: RunningKeyward;
    let secondAdmin: Client<typeof KeysService>;
    let secondCrypto: Client<typeof CryptoService>;
    let secondDir: string;
    const secondLogs: string[] = [];

    beforeAll(async () => {
      secondDir = await mkdtemp(join(tmpdir(), "keyward-second-"));
      const sink = new Writable({
        write(chunk, _encoding, done) {
          secondLogs.push(...String(chunk).split("\n").filter(Boolean));
          done();
        },
      });
      // Same data folder (dev PKI, dev root key) and schema; its own policy
      // file and the default 1-day minimum pending window, but the same
      // scheduler interval, so the two schedulers race.
      second = await startKeyward(
        loadConfig({
          ...testKeywardEnv(keyward.dataDir, keyward.schema),
          KEYWARD_SHUTDOWN_GRACE_MS: "1000",
          ...(await policyFileEnv(secondDir, "policy.yaml", POLICY)),
          KEYWARD_KEY_SCHEDULER_INTERVAL_MS: "200",
        }),
        pino({ level: "info", redact: { paths: REDACT_PATHS, censor: "[redacted]" } }, sink),
      );
      const url = `https://127.0.0.1:${second.address.port}`;
      secondAdmin = recording(KeysService, connectClient(KeysService, url, await keyward.credentials("admin")));
      secondCrypto = connectClient(CryptoService, url, await keyward.credentials("service"));
    });
    afterAll(async () => {
      await second?.close();
      await rm(secondDir, { recursive: true, force: true });
    });

    it("two schedulers racing on the same due keys rotate each exactly once", async () => {
      const names = Array.from({ length: 8 }, (_, i) => `keys/race-${i}`);
      for (const name of names) {
        await createAes(name.slice("keys/".length), { rotationPeriod: HOUR });
      }
      // Only these keys are due from here on, so every rotation either server
      // logs from now is one of theirs.
      const rotatedLines = (lines: string[], from: number) =>
        lines.slice(from).filter((l) => (JSON.parse(l) as { msg?: string }).msg === "key rotated automatically").length;
      const [firstFrom, secondFrom] = [keyward.logs.length, secondLogs.length];

      // Make the keys due shortly, and hold their row locks until both
      // schedulers have found them due and wait on the first one: when the
      // locks go, the two decide on the same keys at the same time.
      await pool.query("UPDATE keys SET next_rotation_time = now() + interval '300 milliseconds' WHERE name = ANY($1)", [names]);
      const holder = await pool.connect();
      try {
        await holder.query("BEGIN");
        await holder.query("SELECT name FROM keys WHERE name = ANY($1) ORDER BY name FOR UPDATE", [names]);
        const { rows: me } = await holder.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
        await eventually(
          async () =>
            (
              // The first waiter waits on this transaction, the second on the first.
              await pool.query<{ n: string }>(
                `SELECT count(*) AS n FROM pg_stat_activity a
                  WHERE $1 = ANY(pg_blocking_pids(a.pid))
                     OR EXISTS (SELECT 1 FROM pg_stat_activity b
                                 WHERE $1 = ANY(pg_blocking_pids(b.pid)) AND b.pid = ANY(pg_blocking_pids(a.pid)))`,
                [me[0]!.pid],
              )
            ).rows[0]!.n,
          (n) => n === "2",
          3_000,
          "both schedulers waiting on the due keys",
        );
        expect((await pool.query("SELECT 1 FROM keys WHERE name = ANY($1) AND primary_version = 1", [names])).rowCount).toBe(names.length);
      } finally {
        await holder.query("COMMIT");
        holder.release();
      }

      await eventually(
        async () => (await pool.query<{ n: string }>("SELECT count(*) AS n FROM keys WHERE name = ANY($1) AND primary_version = 2", [names])).rows[0]!.n,
        (n) => n === String(names.length),
        3_000,
        "racing rotations",
      );
      // Several more runs of both schedulers: nothing is rotated twice.
      await sleep(600);
      const { rows } = await pool.query<{ name: string; primary_version: number; versions: string }>(
        `SELECT k.name, k.primary_version, (SELECT count(*) FROM key_versions v WHERE v.key_name = k.name) AS versions
           FROM keys k WHERE k.name = ANY($1) ORDER BY k.name`,
        [names],
      );
      expect(rows).toEqual(names.map((name) => ({ name, primary_version: 2, versions: "2" })));
      for (const name of names) {
        expect(await schedulerEvents("/keyward.v1.KeysService/RotateKey", name), name).toEqual([
          { identity: "keyward/scheduler", roles: [], result_code: 0, result_message: "automatic rotation" },
        ]);
      }
      // Between them, the two servers logged one rotation per key.
      expect(rotatedLines(keyward.logs, firstFrom) + rotatedLines(secondLogs, secondFrom)).toBe(names.length);
      // Both servers see the rotated keys alike.
      for (const name of names) {
        const key = await getKey(name);
        expect(key.primaryVersion).toBe(2);
        expect(stateOf((await secondAdmin.getKey({ name })).key!)).toEqual(key);
      }
    });

    it("a pending window below that server's configured minimum is INVALID_ARGUMENT naming the minimum", async () => {
      await createAes("short-window");
      await expectFailure(
        secondAdmin.scheduleKeyDeletion({ name: "keys/short-window", pendingWindow: HOUR }),
        Code.InvalidArgument,
        "pending_window 3600s is shorter than the minimum 86400s",
      );
      expect((await getKey("keys/short-window")).state).toBe(KeyState.ENABLED);
      const { key } = await secondAdmin.scheduleKeyDeletion({ name: "keys/short-window", pendingWindow: { seconds: BigInt(86_400), nanos: 0 } });
      expect(msOf(key!.deletionTime)).toBe(msOf(key!.updateTime)! + DAY_MS);
    });

    it("a key disabled on one server stops working on the other within a second", async () => {
      const created = await createAes("replicated");
      const sealed = await secondCrypto.encrypt({ name: created.name, plaintext: PLAINTEXT }); // cached on the second server
      await admin.disableKey({ name: created.name });
      await expectFailureSoon(
        () => secondCrypto.decrypt({ name: created.name, ciphertext: sealed.ciphertext }),
        Code.FailedPrecondition,
        "key keys/replicated is DISABLED",
      );
      await admin.enableKey({ name: created.name });
      await expectSuccessSoon(
        () => secondCrypto.decrypt({ name: created.name, ciphertext: sealed.ciphertext }),
        (r) => Buffer.from(r.plaintext).equals(Buffer.from(PLAINTEXT)),
        "enable seen by the other server",
      );
    });
  });

  // Runs last, over every KeysService response this file received.
  it("no KeysService response carries key material: no bytes field exists, and no version's secret appears in any response", async () => {
    // Statically: no field of any response, however nested, is of type bytes
    // (the public key travels as a PEM string).
    const bytesFields: string[] = [];
    const visit = (message: DescMessage, seen: Set<string>) => {
      if (seen.has(message.typeName)) return;
      seen.add(message.typeName);
      for (const field of message.fields) {
        const container = field.fieldKind === "list" || field.fieldKind === "map";
        const scalar = field.fieldKind === "scalar" || container ? field.scalar : undefined;
        if (scalar === ScalarType.BYTES) bytesFields.push(`${message.typeName}.${field.name}`);
        const nested = field.fieldKind === "message" || container ? field.message : undefined;
        if (nested) visit(nested, seen);
      }
    };
    const seen = new Set<string>();
    for (const method of KeysService.methods) visit(method.output, seen);
    expect(bytesFields).toEqual([]);
    expect(seen.size).toBeGreaterThanOrEqual(KeysService.methods.length);

    // Dynamically: every version's secret (the raw symmetric key, the
    // private parts of an asymmetric one) and its wrapped form, searched in
    // every response in binary and JSON form.
    const rootKey = parseRootKey(await readFile(join(keyward.dataDir, "root.key")));
    const { rows } = await pool.query<{ key_name: string; version: number; algorithm: string; wrapped_material: Buffer }>(
      `SELECT v.key_name, v.version, k.algorithm, v.wrapped_material
         FROM key_versions v JOIN keys k ON k.name = v.key_name WHERE v.wrapped_material IS NOT NULL`,
    );
    expect(rows.length).toBeGreaterThan(40);
    const needles: Buffer[] = [];
    for (const row of rows) {
      const material = Buffer.from(unwrapKey(rootKey, row.wrapped_material, materialBinding(row.key_name, row.version, row.algorithm)).expose());
      needles.push(row.wrapped_material);
      if (["AES_256_GCM", "CHACHA20_POLY1305", "HMAC_SHA256", "HMAC_SHA512"].includes(row.algorithm)) {
        needles.push(material);
      } else {
        const jwk = createPrivateKey({ key: material, format: "der", type: "pkcs8" }).export({ format: "jwk" });
        for (const part of [jwk.d, jwk.p, jwk.q]) {
          if (part !== undefined) needles.push(Buffer.from(part, "base64url"));
        }
      }
    }
    expect(responses.length).toBeGreaterThan(150);
    const methods = new Set(responses.map((r) => r.method));
    expect([...KeysService.methods.map((m) => m.name)].filter((m) => !methods.has(m))).toEqual([]);
    const binaries = responses.map((r) => Buffer.from(toBinary(r.schema, r.message as never)));
    const json = responses.map((r) => toJsonString(r.schema, r.message as never)).join("\n");
    for (const needle of needles) {
      // Any 16-byte window of a secret would do; the first one suffices to catch a copy.
      const head = needle.subarray(0, 16);
      for (const binary of binaries) {
        expect(binary.includes(head)).toBe(false);
      }
      for (const encoded of [needle.toString("base64"), needle.toString("base64url"), needle.toString("hex")]) {
        expect(json.includes(encoded.slice(0, 20))).toBe(false);
      }
    }
  });
});
