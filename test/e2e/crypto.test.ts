import { createHash, randomBytes } from "node:crypto";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type pg from "pg";
import { CryptoService, DataKeySpec } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService, KeyState } from "../../gen/keyward/v1/keys_pb.js";
import { crc32c } from "../../src/crypto/crc32c.js";
import { devSpiffeId } from "../../src/dev/pki.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { expectFailure, failure } from "../helpers/expect.js";
import { issueDevClient, policyFileEnv, startTestKeyward, type TestKeyward } from "../helpers/keyward.js";
import { policyText } from "../helpers/policy.js";

/*
 * Every CryptoService RPC over real mTLS against a real PostgreSQL. The
 * admin manages keys through KeysService; "service" uses them. "narrow"
 * holds SERVICE on keys/narrow-* only, to show that ReEncrypt needs the role
 * on both keys it touches.
 */

const DECRYPTION_FAILED = "decryption failed";
const MAX_PLAINTEXT = 262_144;

const POLICY = policyText([
  { name: "admins", identities: [devSpiffeId("admin")], roles: ["ADMIN"], resources: ["**"] },
  { name: "service", identities: [devSpiffeId("service")], roles: ["SERVICE"], resources: ["**"] },
  { name: "narrow", identities: [devSpiffeId("narrow")], roles: ["SERVICE"], resources: ["keys/narrow-*"] },
]);

let keyward: TestKeyward;
let admin: Client<typeof KeysService>;
let crypto: Client<typeof CryptoService>;
let narrow: Client<typeof CryptoService>;
let db: pg.Pool;

beforeAll(async () => {
  keyward = await startTestKeyward(async (dataDir) => {
    await issueDevClient(dataDir, "narrow", devSpiffeId("narrow"));
    return {
      ...(await policyFileEnv(dataDir, "crypto-policy.yaml", POLICY)),
      // Short enough that a scheduled deletion completes within the test.
      KEYWARD_KEY_MIN_PENDING_WINDOW_MS: "1000",
      KEYWARD_KEY_SCHEDULER_INTERVAL_MS: "200",
    };
  });
  admin = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
  crypto = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
  narrow = connectClient(CryptoService, keyward.url, await keyward.credentials("narrow"));
  db = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2 });
});

afterAll(async () => {
  await db?.end().catch(() => {});
  await keyward?.close();
});

const PURPOSE_OF: Record<KeyAlgorithm, KeyPurpose> = {
  [KeyAlgorithm.UNSPECIFIED]: KeyPurpose.UNSPECIFIED,
  [KeyAlgorithm.AES_256_GCM]: KeyPurpose.ENCRYPT_DECRYPT,
  [KeyAlgorithm.CHACHA20_POLY1305]: KeyPurpose.ENCRYPT_DECRYPT,
  [KeyAlgorithm.ED25519]: KeyPurpose.SIGN_VERIFY,
  [KeyAlgorithm.ECDSA_P256_SHA256]: KeyPurpose.SIGN_VERIFY,
  [KeyAlgorithm.ECDSA_P384_SHA384]: KeyPurpose.SIGN_VERIFY,
  [KeyAlgorithm.RSA_PSS_2048_SHA256]: KeyPurpose.SIGN_VERIFY,
  [KeyAlgorithm.RSA_PSS_3072_SHA256]: KeyPurpose.SIGN_VERIFY,
  [KeyAlgorithm.RSA_PSS_4096_SHA256]: KeyPurpose.SIGN_VERIFY,
  [KeyAlgorithm.HMAC_SHA256]: KeyPurpose.MAC,
  [KeyAlgorithm.HMAC_SHA512]: KeyPurpose.MAC,
};

let keyCounter = 0;
const purposes = new Map<string, KeyPurpose>();

/** Creates a key with a fresh id starting with `prefix`; returns its name. */
async function createKey(prefix: string, algorithm: KeyAlgorithm): Promise<string> {
  const keyId = `${prefix}-${++keyCounter}`;
  const { key } = await admin.createKey({ keyId, key: { purpose: PURPOSE_OF[algorithm], algorithm } });
  expect(key?.name).toBe(`keys/${keyId}`);
  purposes.set(key!.name, PURPOSE_OF[algorithm]);
  return key!.name;
}

/**
 * Rotates `name` and waits until the server's key cache serves the new
 * primary version: the cache learns of the rotation through LISTEN/NOTIFY,
 * asynchronously, as it would from another replica.
 */
async function rotate(name: string): Promise<string> {
  const { key } = await admin.rotateKey({ name });
  const primary = `${name}/versions/${key!.primaryVersion}`;
  const probe = async (): Promise<string> => {
    switch (purposes.get(name)) {
      case KeyPurpose.ENCRYPT_DECRYPT:
        return (await crypto.encrypt({ name, plaintext: new Uint8Array(0) })).keyVersion;
      case KeyPurpose.SIGN_VERIFY:
        return (await crypto.sign({ name, input: { case: "message", value: new Uint8Array(0) } })).keyVersion;
      default:
        return (await crypto.mac({ name, data: new Uint8Array(0) })).keyVersion;
    }
  };
  await eventually(async () => {
    expect(await probe()).toBe(primary);
  });
  return primary;
}

/** The one answer to any ciphertext that does not open. */
const expectOpaque = (call: Promise<unknown>) => expectFailure(call, Code.InvalidArgument, DECRYPTION_FAILED);

const expectPrecondition = (call: Promise<unknown>, message: string) => expectFailure(call, Code.FailedPrecondition, message);

/**
 * Repeats `check` until it passes or 3 s have gone by. Key changes reach the
 * server's key cache through LISTEN/NOTIFY, asynchronously (the API promises
 * within a second), so the first call after a change may still see the old
 * state.
 */
async function eventually(check: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + 3000;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) {
        throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

const text = (bytes: Uint8Array) => Buffer.from(bytes).toString("utf8");

const setMinDecryptionVersion = (name: string, minDecryptionVersion: number) =>
  admin.updateKey({ key: { name, minDecryptionVersion }, updateMask: { paths: ["min_decryption_version"] } });

/** A copy of `bytes` with the byte at `index` xor-ed with `mask`. */
function flipped(bytes: Uint8Array, index: number, mask = 0x01): Uint8Array {
  const copy = Uint8Array.from(bytes);
  copy[index]! ^= mask;
  return copy;
}

/** Ciphertext layout (src/crypto/envelope.ts): header 7+n, wrapped-key length 2, wrapped key 60, nonce 12, data, tag 16. */
function layout(keyName: string) {
  const n = Buffer.byteLength(keyName);
  return { overhead: 97 + n, versionOffset: 3 + n, wrappedOffset: 9 + n, nonceOffset: 69 + n, dataOffset: 81 + n };
}

describe("Encrypt and Decrypt", () => {
  const algorithms = [
    ["AES_256_GCM", KeyAlgorithm.AES_256_GCM],
    ["CHACHA20_POLY1305", KeyAlgorithm.CHACHA20_POLY1305],
  ] as const;

  describe.each(algorithms)("%s", (_label, algorithm) => {
    it.each([
      ["without associated data", new Uint8Array(0)],
      ["with associated data", Buffer.from("orders/42")],
    ])("round-trips %s", async (_case, associatedData) => {
      const name = await createKey("enc", algorithm);
      const plaintext = Buffer.from("the quick brown fox jumps over the lazy dog");
      const enc = await crypto.encrypt({ name, plaintext, associatedData });
      expect(enc.keyVersion).toBe(`${name}/versions/1`);
      expect(enc.ciphertext.length).toBe(plaintext.length + layout(name).overhead);
      expect(Buffer.from(enc.ciphertext).includes(plaintext)).toBe(false);
      expect(enc.ciphertextCrc32c).toBe(crc32c(enc.ciphertext));
      expect(enc.verifiedPlaintextCrc32c).toBe(false);

      const dec = await crypto.decrypt({ name, ciphertext: enc.ciphertext, associatedData });
      expect(text(dec.plaintext)).toBe(plaintext.toString());
      expect(dec.keyVersion).toBe(`${name}/versions/1`);
      expect(dec.plaintextCrc32c).toBe(crc32c(plaintext));

      // The associated data is bound: anything else, including none or some, fails opaquely.
      const other = associatedData.length === 0 ? Buffer.from("x") : new Uint8Array(0);
      await expectOpaque(crypto.decrypt({ name, ciphertext: enc.ciphertext, associatedData: other }));
    });

    it("encrypts the same plaintext differently each time, and empty plaintexts too", async () => {
      const name = await createKey("enc", algorithm);
      const a = await crypto.encrypt({ name, plaintext: Buffer.from("same") });
      const b = await crypto.encrypt({ name, plaintext: Buffer.from("same") });
      expect(Buffer.from(a.ciphertext).equals(Buffer.from(b.ciphertext))).toBe(false);
      const empty = await crypto.encrypt({ name, plaintext: new Uint8Array(0) });
      expect(empty.ciphertext.length).toBe(layout(name).overhead);
      const dec = await crypto.decrypt({ name, ciphertext: empty.ciphertext });
      expect(dec.plaintext.length).toBe(0);
      expect(dec.plaintextCrc32c).toBe(0);
    });
  });

  it("checks plaintext_crc32c before encrypting and says whether it did", async () => {
    const name = await createKey("crc", KeyAlgorithm.AES_256_GCM);
    const plaintext = Buffer.from("123456789");
    const ok = await crypto.encrypt({ name, plaintext, plaintextCrc32c: 0xe3069283 });
    expect(ok.verifiedPlaintextCrc32c).toBe(true);
    expect(ok.ciphertextCrc32c).toBe(crc32c(ok.ciphertext));
    // 0 is a checksum like any other: set means checked.
    const empty = await crypto.encrypt({ name, plaintext: new Uint8Array(0), plaintextCrc32c: 0 });
    expect(empty.verifiedPlaintextCrc32c).toBe(true);
    const unset = await crypto.encrypt({ name, plaintext });
    expect(unset.verifiedPlaintextCrc32c).toBe(false);
    await expectFailure(
      crypto.encrypt({ name, plaintext, plaintextCrc32c: 0xe3069282 }),
      Code.InvalidArgument,
      "plaintext_crc32c does not match the data received; it was corrupted in transit",
    );
  });

  it("checks ciphertext_crc32c before decrypting, distinctly from a decryption failure", async () => {
    const name = await createKey("crc", KeyAlgorithm.CHACHA20_POLY1305);
    const enc = await crypto.encrypt({ name, plaintext: Buffer.from("payload") });
    const dec = await crypto.decrypt({ name, ciphertext: enc.ciphertext, ciphertextCrc32c: enc.ciphertextCrc32c });
    expect(text(dec.plaintext)).toBe("payload");
    expect(dec.plaintextCrc32c).toBe(crc32c(Buffer.from("payload")));
    await expectFailure(
      crypto.decrypt({ name, ciphertext: enc.ciphertext, ciphertextCrc32c: (enc.ciphertextCrc32c + 1) >>> 0 }),
      Code.InvalidArgument,
      "ciphertext_crc32c does not match the data received; it was corrupted in transit",
    );
    // Corrupted in transit, with the checksum of the original: caught by the checksum.
    await expectFailure(
      crypto.decrypt({ name, ciphertext: flipped(enc.ciphertext, enc.ciphertext.length - 1), ciphertextCrc32c: enc.ciphertextCrc32c }),
      Code.InvalidArgument,
      "ciphertext_crc32c does not match the data received; it was corrupted in transit",
    );
  });

  it("encrypts up to 262144 bytes and refuses one more", async () => {
    const name = await createKey("big", KeyAlgorithm.AES_256_GCM);
    const largest = randomBytes(MAX_PLAINTEXT);
    const enc = await crypto.encrypt({ name, plaintext: largest, plaintextCrc32c: crc32c(largest) });
    expect(enc.ciphertext.length).toBe(MAX_PLAINTEXT + layout(name).overhead);
    const dec = await crypto.decrypt({ name, ciphertext: enc.ciphertext });
    expect(Buffer.from(dec.plaintext).equals(largest)).toBe(true);

    await expectFailure(
      crypto.encrypt({ name, plaintext: randomBytes(MAX_PLAINTEXT + 1) }),
      Code.InvalidArgument,
      "plaintext: must be at most 262144 bytes [bytes.max_len]",
    );
    await expectFailure(
      crypto.batchEncrypt({ name, items: [{ plaintext: Buffer.from("ok") }, { plaintext: randomBytes(MAX_PLAINTEXT + 1) }] }),
      Code.InvalidArgument,
      "items[1].plaintext: must be at most 262144 bytes [bytes.max_len]",
    );
  });

  it("encrypts with a named version, and fails NOT_FOUND for a key or version that does not exist", async () => {
    const name = await createKey("ver", KeyAlgorithm.AES_256_GCM);
    await rotate(name);
    const v1 = await crypto.encrypt({ name: `${name}/versions/1`, plaintext: Buffer.from("old") });
    expect(v1.keyVersion).toBe(`${name}/versions/1`);
    const primary = await crypto.encrypt({ name, plaintext: Buffer.from("new") });
    expect(primary.keyVersion).toBe(`${name}/versions/2`);
    expect((await crypto.decrypt({ name, ciphertext: v1.ciphertext })).keyVersion).toBe(`${name}/versions/1`);

    await expectFailure(
      crypto.encrypt({ name: `${name}/versions/3`, plaintext: Buffer.from("x") }),
      Code.NotFound,
      `${name}/versions/3 not found`,
    );
    await expectFailure(
      crypto.encrypt({ name: "keys/no-such-key", plaintext: Buffer.from("x") }),
      Code.NotFound,
      "keys/no-such-key not found",
    );
    await expectFailure(
      crypto.decrypt({ name: "keys/no-such-key", ciphertext: v1.ciphertext }),
      Code.NotFound,
      "keys/no-such-key not found",
    );
  });

  it("fails every kind of corrupted ciphertext as the one opaque INVALID_ARGUMENT", async () => {
    const name = await createKey("corrupt", KeyAlgorithm.AES_256_GCM);
    const associatedData = Buffer.from("aad");
    const { ciphertext } = await crypto.encrypt({ name, plaintext: Buffer.from("sixteen bytes!!!"), associatedData });
    const at = layout(name);
    const cases: [string, Uint8Array][] = [
      ["format version", flipped(ciphertext, 0)],
      ["key name length", flipped(ciphertext, 2)],
      ["key name", flipped(ciphertext, 5)],
      ["key version (to one that does not exist)", flipped(ciphertext, at.versionOffset + 3, 0x08)],
      ["key version 0", flipped(ciphertext, at.versionOffset + 3)],
      ["wrapped key length", flipped(ciphertext, at.wrappedOffset - 1)],
      ["wrapped key nonce", flipped(ciphertext, at.wrappedOffset)],
      ["wrapped key tag", flipped(ciphertext, at.nonceOffset - 1)],
      ["data nonce", flipped(ciphertext, at.nonceOffset)],
      ["encrypted data", flipped(ciphertext, at.dataOffset)],
      ["data tag", flipped(ciphertext, ciphertext.length - 1, 0x80)],
      ["truncated by one byte", ciphertext.subarray(0, ciphertext.length - 1)],
      ["truncated to the header", ciphertext.subarray(0, at.wrappedOffset)],
      ["extended by one byte", Buffer.concat([ciphertext, Buffer.from([0])])],
      ["a single byte", Buffer.from([1])],
      ["random bytes", randomBytes(ciphertext.length)],
    ];
    for (const [label, bad] of cases) {
      const err = await failure(crypto.decrypt({ name, ciphertext: bad, associatedData }));
      expect({ label, code: Code[err.code], message: err.rawMessage }).toEqual({
        label,
        code: "InvalidArgument",
        message: DECRYPTION_FAILED,
      });
    }
    // The original still opens: the failures above were the corruptions'.
    expect(text((await crypto.decrypt({ name, ciphertext, associatedData })).plaintext)).toBe("sixteen bytes!!!");
  });

  it("refuses a ciphertext of key A presented as one of key B, as a decryption failure", async () => {
    const a = await createKey("owner", KeyAlgorithm.AES_256_GCM);
    const b = await createKey("owner", KeyAlgorithm.AES_256_GCM);
    const enc = await crypto.encrypt({ name: a, plaintext: Buffer.from("for a") });
    await expectOpaque(crypto.decrypt({ name: b, ciphertext: enc.ciphertext }));
    // Rewriting the key name in the header (same length) does not make B accept it either.
    const forged = Buffer.from(enc.ciphertext);
    Buffer.from(b).copy(forged, 3);
    expect(forged.subarray(3, 3 + b.length).toString()).toBe(b);
    await expectOpaque(crypto.decrypt({ name: b, ciphertext: forged }));
    expect(text((await crypto.decrypt({ name: a, ciphertext: enc.ciphertext })).plaintext)).toBe("for a");
  });
});

describe("ReEncrypt", () => {
  it("moves a ciphertext to the primary version after a rotation", async () => {
    const name = await createKey("rewrap", KeyAlgorithm.AES_256_GCM);
    const associatedData = Buffer.from("ctx");
    const old = await crypto.encrypt({ name, plaintext: Buffer.from("secret"), associatedData });
    await rotate(name);
    const re = await crypto.reEncrypt({ name, ciphertext: old.ciphertext, associatedData });
    expect(re.sourceKeyVersion).toBe(`${name}/versions/1`);
    expect(re.keyVersion).toBe(`${name}/versions/2`);
    const dec = await crypto.decrypt({ name, ciphertext: re.ciphertext, associatedData });
    expect(text(dec.plaintext)).toBe("secret");
    expect(dec.keyVersion).toBe(`${name}/versions/2`);
    // The associated data carries over when destination_associated_data is unset.
    await expectOpaque(crypto.decrypt({ name, ciphertext: re.ciphertext }));
    // Wrong associated data for the source fails as Decrypt would.
    await expectOpaque(crypto.reEncrypt({ name, ciphertext: old.ciphertext }));
  });

  it("moves a ciphertext to another key, which alone can then decrypt it", async () => {
    const source = await createKey("src", KeyAlgorithm.AES_256_GCM);
    const destination = await createKey("dst", KeyAlgorithm.CHACHA20_POLY1305);
    const enc = await crypto.encrypt({ name: source, plaintext: Buffer.from("moving"), associatedData: Buffer.from("a1") });
    const re = await crypto.reEncrypt({
      name: source,
      ciphertext: enc.ciphertext,
      associatedData: Buffer.from("a1"),
      destinationKey: destination,
      destinationAssociatedData: Buffer.from("a2"),
    });
    expect(re.sourceKeyVersion).toBe(`${source}/versions/1`);
    expect(re.keyVersion).toBe(`${destination}/versions/1`);
    const dec = await crypto.decrypt({ name: destination, ciphertext: re.ciphertext, associatedData: Buffer.from("a2") });
    expect(text(dec.plaintext)).toBe("moving");
    expect(dec.keyVersion).toBe(`${destination}/versions/1`);
    await expectOpaque(crypto.decrypt({ name: destination, ciphertext: re.ciphertext, associatedData: Buffer.from("a1") }));
    await expectOpaque(crypto.decrypt({ name: source, ciphertext: re.ciphertext, associatedData: Buffer.from("a2") }));
  });

  it("takes destination_associated_data set to empty bytes as exactly that", async () => {
    const source = await createKey("src", KeyAlgorithm.AES_256_GCM);
    const destination = await createKey("dst", KeyAlgorithm.AES_256_GCM);
    await rotate(destination);
    const enc = await crypto.encrypt({ name: source, plaintext: Buffer.from("bare"), associatedData: Buffer.from("a1") });
    const re = await crypto.reEncrypt({
      name: source,
      ciphertext: enc.ciphertext,
      associatedData: Buffer.from("a1"),
      destinationKey: `${destination}/versions/1`,
      destinationAssociatedData: new Uint8Array(0),
    });
    expect(re.keyVersion).toBe(`${destination}/versions/1`);
    expect(text((await crypto.decrypt({ name: destination, ciphertext: re.ciphertext })).plaintext)).toBe("bare");
    await expectOpaque(crypto.decrypt({ name: destination, ciphertext: re.ciphertext, associatedData: Buffer.from("a1") }));
  });

  it("needs SERVICE on both the source and the destination key", async () => {
    const source = await createKey("narrow-src", KeyAlgorithm.AES_256_GCM);
    const inside = await createKey("narrow-dst", KeyAlgorithm.AES_256_GCM);
    const outside = await createKey("wide", KeyAlgorithm.AES_256_GCM);
    const enc = await narrow.encrypt({ name: source, plaintext: Buffer.from("p") });
    const ok = await narrow.reEncrypt({ name: source, ciphertext: enc.ciphertext, destinationKey: inside });
    expect(ok.keyVersion).toBe(`${inside}/versions/1`);
    const denied = `permission denied: no rule grants SERVICE on "${outside}"`;
    await expectFailure(
      narrow.reEncrypt({ name: source, ciphertext: enc.ciphertext, destinationKey: outside }),
      Code.PermissionDenied,
      denied,
    );
    // Same the other way round: the caller holds the destination but not the source.
    const wide = await crypto.encrypt({ name: outside, plaintext: Buffer.from("p") });
    await expectFailure(
      narrow.reEncrypt({ name: outside, ciphertext: wide.ciphertext, destinationKey: inside }),
      Code.PermissionDenied,
      denied,
    );
    // With SERVICE on everything the same move succeeds.
    const moved = await crypto.reEncrypt({ name: source, ciphertext: enc.ciphertext, destinationKey: outside });
    expect(text((await crypto.decrypt({ name: outside, ciphertext: moved.ciphertext })).plaintext)).toBe("p");
  });

  it("refuses a destination that cannot encrypt", async () => {
    const source = await createKey("src", KeyAlgorithm.AES_256_GCM);
    const mac = await createKey("mac", KeyAlgorithm.HMAC_SHA256);
    const enc = await crypto.encrypt({ name: source, plaintext: Buffer.from("p") });
    await expectFailure(
      crypto.reEncrypt({ name: source, ciphertext: enc.ciphertext, destinationKey: mac }),
      Code.FailedPrecondition,
      `${mac} has purpose MAC, not ENCRYPT_DECRYPT`,
    );
    await expectFailure(
      crypto.reEncrypt({ name: source, ciphertext: enc.ciphertext, destinationKey: "keys/no-such-destination" }),
      Code.NotFound,
      "keys/no-such-destination not found",
    );
  });
});

describe("GenerateDataKey", () => {
  it.each([
    ["key_spec AES_256", { case: "keySpec", value: DataKeySpec.AES_256 } as const, 32],
    ["key_spec AES_128", { case: "keySpec", value: DataKeySpec.AES_128 } as const, 16],
    ["number_of_bytes 1", { case: "numberOfBytes", value: 1 } as const, 1],
    ["number_of_bytes 24", { case: "numberOfBytes", value: 24 } as const, 24],
    ["number_of_bytes 1024", { case: "numberOfBytes", value: 1024 } as const, 1024],
  ])("returns a data key of %s whose ciphertext Decrypt opens", async (_label, length, bytes) => {
    const name = await createKey("dek", KeyAlgorithm.AES_256_GCM);
    const associatedData = Buffer.from("bucket/object");
    const out = await crypto.generateDataKey({ name, length, associatedData });
    expect(out.plaintext.length).toBe(bytes);
    expect(out.keyVersion).toBe(`${name}/versions/1`);
    expect(out.ciphertext.length).toBe(bytes + layout(name).overhead);
    const dec = await crypto.decrypt({ name, ciphertext: out.ciphertext, associatedData });
    expect(Buffer.from(dec.plaintext).equals(Buffer.from(out.plaintext))).toBe(true);
    await expectOpaque(crypto.decrypt({ name, ciphertext: out.ciphertext }));
  });

  it("generates a different key each time", async () => {
    const name = await createKey("dek", KeyAlgorithm.CHACHA20_POLY1305);
    const a = await crypto.generateDataKey({ name, length: { case: "keySpec", value: DataKeySpec.AES_256 } });
    const b = await crypto.generateDataKey({ name, length: { case: "keySpec", value: DataKeySpec.AES_256 } });
    expect(Buffer.from(a.plaintext).equals(Buffer.from(b.plaintext))).toBe(false);
    expect(Buffer.from(a.plaintext).equals(Buffer.alloc(32))).toBe(false);
  });

  it("without plaintext returns only the ciphertext, which Decrypt opens to a key of the requested length", async () => {
    const name = await createKey("dek", KeyAlgorithm.AES_256_GCM);
    await rotate(name);
    const out = await crypto.generateDataKeyWithoutPlaintext({
      name,
      length: { case: "numberOfBytes", value: 48 },
      associatedData: Buffer.from("x"),
    });
    expect(out.keyVersion).toBe(`${name}/versions/2`);
    const dec = await crypto.decrypt({ name, ciphertext: out.ciphertext, associatedData: Buffer.from("x") });
    expect(dec.plaintext.length).toBe(48);
    expect(dec.keyVersion).toBe(`${name}/versions/2`);
    const v1 = await crypto.generateDataKeyWithoutPlaintext({
      name: `${name}/versions/1`,
      length: { case: "keySpec", value: DataKeySpec.AES_128 },
    });
    expect(v1.keyVersion).toBe(`${name}/versions/1`);
    expect((await crypto.decrypt({ name, ciphertext: v1.ciphertext })).plaintext.length).toBe(16);
  });

  it("refuses a missing or out-of-range length", async () => {
    const name = await createKey("dek", KeyAlgorithm.AES_256_GCM);
    const range = "number_of_bytes: must be greater than or equal to 1 and less than or equal to 1024 [int32.gte_lte]";
    const cases = [
      [{ case: undefined }, "length: exactly one field is required in oneof [required]"],
      [{ case: "numberOfBytes", value: 0 }, range],
      [{ case: "numberOfBytes", value: 1025 }, range],
    ] as const;
    for (const [length, message] of cases) {
      await expectFailure(crypto.generateDataKey({ name, length }), Code.InvalidArgument, message);
      await expectFailure(crypto.generateDataKeyWithoutPlaintext({ name, length }), Code.InvalidArgument, message);
    }
  });
});

const SIGNING = [
  ["ED25519", KeyAlgorithm.ED25519],
  ["ECDSA_P256_SHA256", KeyAlgorithm.ECDSA_P256_SHA256],
  ["ECDSA_P384_SHA384", KeyAlgorithm.ECDSA_P384_SHA384],
  ["RSA_PSS_2048_SHA256", KeyAlgorithm.RSA_PSS_2048_SHA256],
] as const;

describe("Sign and Verify", () => {
  describe.each(SIGNING)("%s", (label, algorithm) => {
    let name: string;
    beforeAll(async () => {
      name = await createKey("sig", algorithm);
    });

    it("signs a message that Verify accepts, and rejects tampering as valid=false", async () => {
      const message = Buffer.from(`release ${label} 1.2.3`);
      const { signature, keyVersion } = await crypto.sign({ name, input: { case: "message", value: message } });
      expect(keyVersion).toBe(`${name}/versions/1`);
      if (label === "ED25519") {
        expect(signature.length).toBe(64);
      } else if (label === "RSA_PSS_2048_SHA256") {
        expect(signature.length).toBe(256);
      } else {
        expect(signature[0]).toBe(0x30); // DER SEQUENCE
        expect(signature.length).toBeLessThanOrEqual(104);
      }
      const verify = (input: Uint8Array, sig: Uint8Array, key = keyVersion) =>
        crypto.verify({ name: key, input: { case: "message", value: input }, signature: sig });
      expect(await verify(message, signature)).toMatchObject({ valid: true, keyVersion: `${name}/versions/1` });
      expect((await verify(message, signature, name)).valid).toBe(true);
      expect((await verify(Buffer.from(`release ${label} 1.2.4`), signature)).valid).toBe(false);
      for (const index of [0, signature.length >> 1, signature.length - 1]) {
        expect((await verify(message, flipped(signature, index))).valid).toBe(false);
      }
      expect((await verify(message, signature.subarray(0, signature.length - 1))).valid).toBe(false);
      expect((await verify(message, Buffer.concat([signature, Buffer.from([0])]))).valid).toBe(false);
    });

    it("keeps verifying with the version that signed after a rotation", async () => {
      const own = await createKey("sig-rot", algorithm);
      const message = Buffer.from("before rotation");
      const { signature } = await crypto.sign({ name: own, input: { case: "message", value: message } });
      await rotate(own);
      const after = await crypto.sign({ name: own, input: { case: "message", value: message } });
      expect(after.keyVersion).toBe(`${own}/versions/2`);
      const v1 = await crypto.verify({ name: `${own}/versions/1`, input: { case: "message", value: message }, signature });
      expect(v1).toMatchObject({ valid: true, keyVersion: `${own}/versions/1` });
      // The key's name means its primary version now, which did not sign it.
      const primary = await crypto.verify({ name: own, input: { case: "message", value: message }, signature });
      expect(primary).toMatchObject({ valid: false, keyVersion: `${own}/versions/2` });
    });

    if (label === "RSA_PSS_2048_SHA256") {
      it("signs and verifies a SHA-256 digest interchangeably with the message", async () => {
        const message = Buffer.from("digest me");
        const digest = createHash("sha256").update(message).digest();
        const fromDigest = await crypto.sign({ name, input: { case: "digest", value: digest } });
        expect(fromDigest.signature.length).toBe(256);
        const valid = async (input: { case: "message" | "digest"; value: Uint8Array }, signature: Uint8Array) =>
          (await crypto.verify({ name, input, signature })).valid;
        expect(await valid({ case: "message", value: message }, fromDigest.signature)).toBe(true);
        expect(await valid({ case: "digest", value: digest }, fromDigest.signature)).toBe(true);
        const fromMessage = await crypto.sign({ name, input: { case: "message", value: message } });
        expect(await valid({ case: "digest", value: digest }, fromMessage.signature)).toBe(true);
        expect(await valid({ case: "digest", value: flipped(digest, 0) }, fromMessage.signature)).toBe(false);
        await expectFailure(
          crypto.sign({ name, input: { case: "digest", value: createHash("sha384").update(message).digest() } }),
          Code.InvalidArgument,
          "digest for RSA_PSS_2048_SHA256 must be 32 bytes (sha256), got 48",
        );
        await expectFailure(
          crypto.verify({ name, input: { case: "digest", value: Buffer.alloc(33) }, signature: fromMessage.signature }),
          Code.InvalidArgument,
          "digest for RSA_PSS_2048_SHA256 must be 32 bytes (sha256), got 33",
        );
      });
    } else {
      it("refuses a digest, for Sign and for Verify", async () => {
        const digest = createHash(label === "ECDSA_P384_SHA384" ? "sha384" : "sha256").update("m").digest();
        const message =
          label === "ED25519"
            ? "ED25519 signs messages only, not digests"
            : `${label} signs messages only here: node:crypto cannot sign or verify a precomputed ECDSA digest`;
        await expectFailure(crypto.sign({ name, input: { case: "digest", value: digest } }), Code.InvalidArgument, message);
        const { signature } = await crypto.sign({ name, input: { case: "message", value: Buffer.from("m") } });
        await expectFailure(crypto.verify({ name, input: { case: "digest", value: digest }, signature }), Code.InvalidArgument, message);
      });
    }
  });

  it("needs one of message and digest", async () => {
    const name = await createKey("sig", KeyAlgorithm.ED25519);
    const message = "input: exactly one field is required in oneof [required]";
    await expectFailure(crypto.sign({ name, input: { case: undefined } }), Code.InvalidArgument, message);
    await expectFailure(crypto.verify({ name, input: { case: undefined }, signature: Buffer.alloc(64) }), Code.InvalidArgument, message);
  });
});

describe("Mac and VerifyMac", () => {
  it.each([
    ["HMAC_SHA256", KeyAlgorithm.HMAC_SHA256, 32],
    ["HMAC_SHA512", KeyAlgorithm.HMAC_SHA512, 64],
  ] as const)("%s computes MACs that VerifyMac accepts and nothing else", async (_label, algorithm, length) => {
    const name = await createKey("mac", algorithm);
    const data = Buffer.from("GET /v1/orders/42");
    const { mac, keyVersion } = await crypto.mac({ name, data });
    expect(mac.length).toBe(length);
    expect(keyVersion).toBe(`${name}/versions/1`);
    // HMAC is deterministic: the same data gives the same MAC.
    expect(Buffer.from((await crypto.mac({ name, data })).mac).equals(Buffer.from(mac))).toBe(true);
    expect(await crypto.verifyMac({ name: keyVersion, data, mac })).toMatchObject({ valid: true, keyVersion });
    expect((await crypto.verifyMac({ name, data, mac })).valid).toBe(true);
    expect((await crypto.verifyMac({ name, data: Buffer.from("GET /v1/orders/43"), mac })).valid).toBe(false);
    expect((await crypto.verifyMac({ name, data, mac: flipped(mac, length - 1) })).valid).toBe(false);
    expect((await crypto.verifyMac({ name, data, mac: mac.subarray(0, length - 1) })).valid).toBe(false);
    // Another key of the same algorithm computes another MAC.
    const other = await createKey("mac", algorithm);
    expect((await crypto.verifyMac({ name: other, data, mac })).valid).toBe(false);
    expect(Buffer.from((await crypto.mac({ name: other, data })).mac).equals(Buffer.from(mac))).toBe(false);
  });
});

describe("BatchEncrypt and BatchDecrypt", () => {
  it("keeps the order of the items and reports a bad item without affecting the others", async () => {
    const name = await createKey("batch", KeyAlgorithm.AES_256_GCM);
    const other = await createKey("batch", KeyAlgorithm.AES_256_GCM);
    const items = Array.from({ length: 6 }, (_, i) => ({
      plaintext: Buffer.from(`item ${i} `.repeat(i + 1)),
      associatedData: Buffer.from(i % 2 === 0 ? `aad-${i}` : ""),
    }));
    const enc = await crypto.batchEncrypt({ name, items });
    expect(enc.keyVersion).toBe(`${name}/versions/1`);
    expect(enc.results).toHaveLength(items.length);
    const ciphertexts = enc.results.map((r) => {
      expect(r.result.case).toBe("ciphertext");
      return r.result.value as Uint8Array;
    });
    // Each batch ciphertext is an ordinary one.
    const third = await crypto.decrypt({ name, ciphertext: ciphertexts[2]!, associatedData: items[2]!.associatedData });
    expect(text(third.plaintext)).toBe(items[2]!.plaintext.toString());

    const foreign = await crypto.encrypt({ name: other, plaintext: Buffer.from("foreign") });
    const request: { ciphertext: Uint8Array; associatedData: Uint8Array }[] = items.map((item, i) => ({
      ciphertext: ciphertexts[i]!,
      associatedData: item.associatedData,
    }));
    request[1] = { ...request[1]!, ciphertext: flipped(request[1]!.ciphertext, request[1]!.ciphertext.length - 5) };
    request[3] = { ...request[3]!, associatedData: Buffer.from("not the same") };
    request.push({ ciphertext: foreign.ciphertext, associatedData: new Uint8Array(0) });
    const dec = await crypto.batchDecrypt({ name, items: request });
    expect(dec.results).toHaveLength(request.length);
    const summary = dec.results.map((r) =>
      r.result.case === "plaintext"
        ? { plaintext: text(r.result.value), keyVersion: r.keyVersion }
        : { code: r.result.value?.code, message: r.result.value?.message, keyVersion: r.keyVersion },
    );
    const failed = { code: Code.InvalidArgument, message: DECRYPTION_FAILED, keyVersion: "" };
    expect(summary).toEqual([
      { plaintext: items[0]!.plaintext.toString(), keyVersion: `${name}/versions/1` },
      failed,
      { plaintext: items[2]!.plaintext.toString(), keyVersion: `${name}/versions/1` },
      failed,
      { plaintext: items[4]!.plaintext.toString(), keyVersion: `${name}/versions/1` },
      { plaintext: items[5]!.plaintext.toString(), keyVersion: `${name}/versions/1` },
      failed,
    ]);
  });

  it("reports an item whose version may not decrypt with that version's precise FAILED_PRECONDITION", async () => {
    const name = await createKey("batch", KeyAlgorithm.CHACHA20_POLY1305);
    const old = await crypto.encrypt({ name, plaintext: Buffer.from("v1") });
    await rotate(name);
    const fresh = await crypto.encrypt({ name, plaintext: Buffer.from("v2") });
    await admin.disableKeyVersion({ name: `${name}/versions/1` });
    await eventually(async () => {
      const dec = await crypto.batchDecrypt({ name, items: [{ ciphertext: old.ciphertext }, { ciphertext: fresh.ciphertext }] });
      expect(dec.results.map((r) => r.result)).toEqual([
        { case: "error", value: expect.objectContaining({ code: Code.FailedPrecondition, message: `version 1 of ${name} is DISABLED` }) },
        { case: "plaintext", value: new Uint8Array(Buffer.from("v2")) },
      ]);
      expect(dec.results[1]!.keyVersion).toBe(`${name}/versions/2`);
    });
  });

  it("takes 1000 items and refuses 1001 or none", async () => {
    const name = await createKey("batch", KeyAlgorithm.AES_256_GCM);
    const items = Array.from({ length: 1000 }, (_, i) => ({ plaintext: Buffer.from(String(i)) }));
    const enc = await crypto.batchEncrypt({ name, items });
    expect(enc.results).toHaveLength(1000);
    const dec = await crypto.batchDecrypt({ name, items: enc.results.map((r) => ({ ciphertext: r.result.value as Uint8Array })) });
    const plaintexts = dec.results.map((r) => (r.result.case === "plaintext" ? text(r.result.value) : "error"));
    expect(plaintexts).toEqual(items.map((_, i) => String(i)));

    const tooMany = "items: must contain no more than 1000 item(s) [repeated.max_items]";
    await expectFailure(crypto.batchEncrypt({ name, items: [...items, { plaintext: Buffer.from("x") }] }), Code.InvalidArgument, tooMany);
    const ciphertext = enc.results[0]!.result.value as Uint8Array;
    const decryptItems = Array.from({ length: 1001 }, () => ({ ciphertext }));
    await expectFailure(crypto.batchDecrypt({ name, items: decryptItems }), Code.InvalidArgument, tooMany);
    const none = "items: must contain at least 1 item(s) [repeated.min_items]";
    await expectFailure(crypto.batchEncrypt({ name, items: [] }), Code.InvalidArgument, none);
    await expectFailure(crypto.batchDecrypt({ name, items: [] }), Code.InvalidArgument, none);
  });

  it("fails the whole call for a key that may not be used", async () => {
    const name = await createKey("batch", KeyAlgorithm.AES_256_GCM);
    const mac = await createKey("batch-mac", KeyAlgorithm.HMAC_SHA256);
    const { ciphertext } = await crypto.encrypt({ name, plaintext: Buffer.from("x") });
    await expectPrecondition(
      crypto.batchEncrypt({ name: mac, items: [{ plaintext: Buffer.from("x") }] }),
      `${mac} has purpose MAC, not ENCRYPT_DECRYPT`,
    );
    await expectPrecondition(crypto.batchDecrypt({ name: mac, items: [{ ciphertext }] }), `${mac} has purpose MAC, not ENCRYPT_DECRYPT`);
    await expectFailure(
      crypto.batchDecrypt({ name: "keys/no-such-batch", items: [{ ciphertext }] }),
      Code.NotFound,
      "keys/no-such-batch not found",
    );
    await admin.disableKey({ name });
    await eventually(async () => {
      await expectPrecondition(crypto.batchEncrypt({ name, items: [{ plaintext: Buffer.from("x") }] }), `key ${name} is DISABLED`);
      await expectPrecondition(crypto.batchDecrypt({ name, items: [{ ciphertext }] }), `key ${name} is DISABLED`);
    });
  });
});

describe("purpose", () => {
  it("refuses an operation the key's purpose does not allow, with FAILED_PRECONDITION", async () => {
    const enc = await createKey("purpose-enc", KeyAlgorithm.AES_256_GCM);
    const sig = await createKey("purpose-sig", KeyAlgorithm.ECDSA_P256_SHA256);
    const mac = await createKey("purpose-mac", KeyAlgorithm.HMAC_SHA512);
    const message = { case: "message", value: Buffer.from("m") } as const;
    const { ciphertext } = await crypto.encrypt({ name: enc, plaintext: Buffer.from("m") });
    const cases: [string, () => Promise<unknown>, string][] = [
      [
        "Sign with an ENCRYPT_DECRYPT key",
        () => crypto.sign({ name: enc, input: message }),
        `${enc} has purpose ENCRYPT_DECRYPT, not SIGN_VERIFY`,
      ],
      [
        "Verify with an ENCRYPT_DECRYPT key",
        () => crypto.verify({ name: enc, input: message, signature: Buffer.alloc(64) }),
        `${enc} has purpose ENCRYPT_DECRYPT, not SIGN_VERIFY`,
      ],
      [
        "Encrypt with a MAC key",
        () => crypto.encrypt({ name: mac, plaintext: Buffer.from("m") }),
        `${mac} has purpose MAC, not ENCRYPT_DECRYPT`,
      ],
      [
        "GenerateDataKey with a SIGN_VERIFY key",
        () => crypto.generateDataKey({ name: sig, length: { case: "numberOfBytes", value: 8 } }),
        `${sig} has purpose SIGN_VERIFY, not ENCRYPT_DECRYPT`,
      ],
      ["Mac with a SIGN_VERIFY key", () => crypto.mac({ name: sig, data: Buffer.from("m") }), `${sig} has purpose SIGN_VERIFY, not MAC`],
      [
        "VerifyMac with an ENCRYPT_DECRYPT key",
        () => crypto.verifyMac({ name: enc, data: Buffer.from("m"), mac: Buffer.alloc(32) }),
        `${enc} has purpose ENCRYPT_DECRYPT, not MAC`,
      ],
      ["Decrypt with a MAC key", () => crypto.decrypt({ name: mac, ciphertext }), `${mac} has purpose MAC, not ENCRYPT_DECRYPT`],
      [
        "ReEncrypt from a SIGN_VERIFY key",
        () => crypto.reEncrypt({ name: sig, ciphertext, destinationKey: enc }),
        `${sig} has purpose SIGN_VERIFY, not ENCRYPT_DECRYPT`,
      ],
    ];
    for (const [label, call, message] of cases) {
      const err = await failure(call());
      expect({ label, code: Code[err.code], message: err.rawMessage }).toEqual({ label, code: "FailedPrecondition", message });
    }
  });
});

describe("key and version state", () => {
  it("refuses a DISABLED key with its precise FAILED_PRECONDITION, and serves it again once enabled", async () => {
    const name = await createKey("state", KeyAlgorithm.AES_256_GCM);
    const sig = await createKey("state-sig", KeyAlgorithm.ED25519);
    const { ciphertext } = await crypto.encrypt({ name, plaintext: Buffer.from("kept") });
    const { signature } = await crypto.sign({ name: sig, input: { case: "message", value: Buffer.from("m") } });
    await admin.disableKey({ name });
    await admin.disableKey({ name: sig });
    await eventually(async () => {
      await expectPrecondition(crypto.encrypt({ name, plaintext: Buffer.from("x") }), `key ${name} is DISABLED`);
      await expectPrecondition(crypto.decrypt({ name, ciphertext }), `key ${name} is DISABLED`);
      await expectPrecondition(crypto.reEncrypt({ name, ciphertext }), `key ${name} is DISABLED`);
      await expectPrecondition(crypto.generateDataKey({ name, length: { case: "numberOfBytes", value: 8 } }), `key ${name} is DISABLED`);
      await expectPrecondition(crypto.sign({ name: sig, input: { case: "message", value: Buffer.from("m") } }), `key ${sig} is DISABLED`);
      await expectFailure(
        crypto.verify({ name: sig, input: { case: "message", value: Buffer.from("m") }, signature }),
        Code.FailedPrecondition,
        `key ${sig} is DISABLED`,
      );
    });
    // The key's own state comes first, whatever the ciphertext: no ciphertext,
    // sound or not, can be decrypted by a DISABLED key.
    const corrupted = flipped(ciphertext, ciphertext.length - 1);
    await expectPrecondition(crypto.decrypt({ name, ciphertext: corrupted }), `key ${name} is DISABLED`);
    await expectPrecondition(crypto.decrypt({ name, ciphertext: randomBytes(200) }), `key ${name} is DISABLED`);

    await admin.enableKey({ name });
    await eventually(async () => {
      expect(text((await crypto.decrypt({ name, ciphertext })).plaintext)).toBe("kept");
    });
    await expectOpaque(crypto.decrypt({ name, ciphertext: corrupted }));
  });

  it("refuses a DISABLED version for decryption but keeps the others", async () => {
    const name = await createKey("state", KeyAlgorithm.CHACHA20_POLY1305);
    const old = await crypto.encrypt({ name, plaintext: Buffer.from("old") });
    await rotate(name);
    const fresh = await crypto.encrypt({ name, plaintext: Buffer.from("new") });
    await admin.disableKeyVersion({ name: `${name}/versions/1` });
    await eventually(async () => {
      await expectPrecondition(crypto.decrypt({ name, ciphertext: old.ciphertext }), `version 1 of ${name} is DISABLED`);
    });
    await expectPrecondition(
      crypto.encrypt({ name: `${name}/versions/1`, plaintext: Buffer.from("x") }),
      `version 1 of ${name} is DISABLED`,
    );
    await expectPrecondition(crypto.reEncrypt({ name, ciphertext: old.ciphertext }), `version 1 of ${name} is DISABLED`);
    expect(text((await crypto.decrypt({ name, ciphertext: fresh.ciphertext })).plaintext)).toBe("new");
    // Corrupting a ciphertext of a usable version is still the opaque failure.
    await expectOpaque(crypto.decrypt({ name, ciphertext: flipped(fresh.ciphertext, fresh.ciphertext.length - 1) }));

    await admin.enableKeyVersion({ name: `${name}/versions/1` });
    await eventually(async () => {
      expect(text((await crypto.decrypt({ name, ciphertext: old.ciphertext })).plaintext)).toBe("old");
    });
  });

  it("refuses versions below min_decryption_version, for decryption, verification and MAC checks", async () => {
    const name = await createKey("min", KeyAlgorithm.AES_256_GCM);
    const sig = await createKey("min-sig", KeyAlgorithm.ECDSA_P256_SHA256);
    const mac = await createKey("min-mac", KeyAlgorithm.HMAC_SHA256);
    const message = { case: "message", value: Buffer.from("m") } as const;
    const old = await crypto.encrypt({ name, plaintext: Buffer.from("old") });
    const oldSig = await crypto.sign({ name: sig, input: message });
    const oldMac = await crypto.mac({ name: mac, data: Buffer.from("m") });
    for (const key of [name, sig, mac]) {
      await rotate(key);
      const { key: updated } = await setMinDecryptionVersion(key, 2);
      expect(updated?.minDecryptionVersion).toBe(2);
    }
    const fresh = await crypto.encrypt({ name, plaintext: Buffer.from("new") });
    expect(fresh.keyVersion).toBe(`${name}/versions/2`);
    // Three keys changed: each reaches the cache on its own notification.
    await eventually(async () => {
      await expectPrecondition(
        crypto.decrypt({ name, ciphertext: old.ciphertext }),
        `version 1 of ${name} is below min_decryption_version 2`,
      );
      await expectPrecondition(
        crypto.verify({ name: oldSig.keyVersion, input: message, signature: oldSig.signature }),
        `version 1 of ${sig} is below min_decryption_version 2`,
      );
      await expectPrecondition(
        crypto.verifyMac({ name: oldMac.keyVersion, data: Buffer.from("m"), mac: oldMac.mac }),
        `version 1 of ${mac} is below min_decryption_version 2`,
      );
    });
    await expectPrecondition(
      crypto.reEncrypt({ name, ciphertext: old.ciphertext }),
      `version 1 of ${name} is below min_decryption_version 2`,
    );
    // Nor may new data be produced that could not be decrypted.
    await expectPrecondition(
      crypto.encrypt({ name: `${name}/versions/1`, plaintext: Buffer.from("x") }),
      `version 1 of ${name} is below min_decryption_version 2`,
    );
    await expectPrecondition(
      crypto.sign({ name: oldSig.keyVersion, input: message }),
      `version 1 of ${sig} is below min_decryption_version 2`,
    );
    // The primary version of each still works.
    const current = await crypto.mac({ name: mac, data: Buffer.from("m") });
    expect(current.keyVersion).toBe(`${mac}/versions/2`);
    expect((await crypto.verifyMac({ name: mac, data: Buffer.from("m"), mac: current.mac })).valid).toBe(true);
    expect(text((await crypto.decrypt({ name, ciphertext: fresh.ciphertext })).plaintext)).toBe("new");
    await expectOpaque(crypto.decrypt({ name, ciphertext: flipped(fresh.ciphertext, fresh.ciphertext.length - 1) }));
  });

  it("rotation: old ciphertexts decrypt, new ones name the new primary, and retiring or destroying the key ends decryption", async () => {
    const name = await createKey("life", KeyAlgorithm.AES_256_GCM);
    const v1 = await crypto.encrypt({ name, plaintext: Buffer.from("one") });
    await rotate(name);
    const v2 = await crypto.encrypt({ name, plaintext: Buffer.from("two") });
    expect(v2.keyVersion).toBe(`${name}/versions/2`);
    await rotate(name);
    const v3 = await crypto.encrypt({ name, plaintext: Buffer.from("three") });
    expect(v3.keyVersion).toBe(`${name}/versions/3`);
    for (const [enc, plaintext, version] of [[v1, "one", 1], [v2, "two", 2], [v3, "three", 3]] as const) {
      const dec = await crypto.decrypt({ name, ciphertext: enc.ciphertext });
      expect({ plaintext: text(dec.plaintext), keyVersion: dec.keyVersion }).toEqual({
        plaintext,
        keyVersion: `${name}/versions/${version}`,
      });
    }

    await setMinDecryptionVersion(name, 3);
    await eventually(async () => {
      await expectPrecondition(
        crypto.decrypt({ name, ciphertext: v1.ciphertext }),
        `version 1 of ${name} is below min_decryption_version 3`,
      );
    });
    await expectPrecondition(crypto.decrypt({ name, ciphertext: v2.ciphertext }), `version 2 of ${name} is below min_decryption_version 3`);
    expect(text((await crypto.decrypt({ name, ciphertext: v3.ciphertext })).plaintext)).toBe("three");

    // Lowering the minimum again brings the old versions back: raising it destroyed nothing.
    await setMinDecryptionVersion(name, 1);
    await eventually(async () => {
      expect(text((await crypto.decrypt({ name, ciphertext: v1.ciphertext })).plaintext)).toBe("one");
    });

    const { key: pending } = await admin.scheduleKeyDeletion({ name, pendingWindow: { seconds: 1n } });
    expect(pending?.state).toBe(KeyState.PENDING_DELETION);
    await eventually(async () => {
      await expectPrecondition(crypto.decrypt({ name, ciphertext: v3.ciphertext }), `key ${name} is PENDING_DELETION`);
    });

    const deadline = Date.now() + 15_000;
    for (;;) {
      const { key } = await admin.getKey({ name });
      if (key?.state === KeyState.DESTROYED) {
        break;
      }
      expect(Date.now(), `${name} still ${KeyState[key!.state]}`).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const { keyVersions } = await admin.listKeyVersions({ parent: name });
    expect(keyVersions.map((v) => v.destroyTime !== undefined)).toEqual([true, true, true]);
    await eventually(async () => {
      for (const enc of [v1, v2, v3]) {
        await expectPrecondition(crypto.decrypt({ name, ciphertext: enc.ciphertext }), `key ${name} is DESTROYED`);
      }
    });
    await expectPrecondition(crypto.encrypt({ name, plaintext: Buffer.from("x") }), `key ${name} is DESTROYED`);
    // Even with the key's state set aside, the material is gone from the database.
    const { rows } = await db.query<{ n: string }>(
      "SELECT count(*) AS n FROM key_versions WHERE key_name = $1 AND wrapped_material IS NOT NULL",
      [name],
    );
    expect(rows[0]!.n).toBe("0");
  }, 30_000);
});

interface AuditRow {
  method: string;
  identity: string;
  resources: string[];
  result_code: number;
  result_message: string;
}

describe("audit", () => {
  it("records the precise reason of a failed Decrypt while the caller sees only \"decryption failed\"", async () => {
    const a = await createKey("audited", KeyAlgorithm.AES_256_GCM);
    const b = await createKey("audited", KeyAlgorithm.AES_256_GCM);
    const { ciphertext } = await crypto.encrypt({ name: a, plaintext: Buffer.from("p"), associatedData: Buffer.from("right") });
    const cases = [
      ["another key", { name: b, ciphertext, associatedData: Buffer.from("right") }, `ciphertext is for another key (${a})`],
      ["other associated data", { name: a, ciphertext, associatedData: Buffer.from("wrong") }, "data key does not unwrap"],
      [
        "too short",
        { name: a, ciphertext: ciphertext.subarray(0, 50), associatedData: Buffer.from("right") },
        "malformed ciphertext (50 bytes): too short",
      ],
    ] as const;
    for (const [label, request, reason] of cases) {
      const requestId = `crypto-audit-${randomBytes(6).toString("hex")}`;
      const err = await failure(crypto.decrypt(request, { headers: { "x-request-id": requestId } }));
      expect({ label, code: Code[err.code], message: err.rawMessage }).toEqual({
        label,
        code: "InvalidArgument",
        message: DECRYPTION_FAILED,
      });
      const { rows } = await db.query<AuditRow>(
        "SELECT method, identity, resources, result_code, result_message FROM audit_events WHERE request_id = $1",
        [requestId],
      );
      expect({ label, rows }).toEqual({
        label,
        rows: [
          {
            method: "/keyward.v1.CryptoService/Decrypt",
            identity: devSpiffeId("service"),
            resources: [request.name],
            result_code: Code.InvalidArgument,
            result_message: `${DECRYPTION_FAILED} (${reason})`,
          },
        ],
      });
    }
  });

  it("records a ciphertext's claimed key name with its control characters escaped, so the event is written", async () => {
    // The audit log cannot hold a NUL: unescaped, this ciphertext failed its
    // own audit event, and every call of the same group commit, UNAVAILABLE.
    const name = await createKey("audited", KeyAlgorithm.AES_256_GCM);
    const { ciphertext } = await crypto.encrypt({ name, plaintext: Buffer.from("p") });
    const forged = Buffer.from(ciphertext);
    forged[3 + 6] = 0x00;
    const claimed = `${name.slice(0, 6)}\\u0000${name.slice(7)}`;
    const requestId = `crypto-audit-nul-${randomBytes(6).toString("hex")}`;
    const bystanders = Array.from({ length: 20 }, () => crypto.encrypt({ name, plaintext: Buffer.from("bystander") }));
    await expectOpaque(crypto.decrypt({ name, ciphertext: forged }, { headers: { "x-request-id": requestId } }));
    for (const result of await Promise.allSettled(bystanders)) {
      expect(result.status === "fulfilled" ? "OK" : ConnectError.from(result.reason).rawMessage).toBe("OK");
    }
    const { rows } = await db.query<AuditRow>("SELECT result_message FROM audit_events WHERE request_id = $1", [requestId]);
    expect(rows.map((r) => r.result_message)).toEqual([`${DECRYPTION_FAILED} (ciphertext is for another key (${claimed}))`]);
  });

  it("records a request whose resource name holds a NUL: refused by validation, audited with the NUL escaped", async () => {
    const name = await createKey("nul-name", KeyAlgorithm.AES_256_GCM);
    const requestId = `crypto-audit-nul-name-${randomBytes(6).toString("hex")}`;
    const bystanders = Array.from({ length: 20 }, () => crypto.encrypt({ name, plaintext: Buffer.from("bystander") }));
    const refused = await crypto
      .encrypt({ name: "keys/a\u0000b", plaintext: Buffer.from("p") }, { headers: { "x-request-id": requestId } })
      .then(() => undefined, (err: unknown) => ConnectError.from(err));
    expect(refused?.code).toBe(Code.InvalidArgument);
    for (const result of await Promise.allSettled(bystanders)) {
      expect(result.status === "fulfilled" ? "OK" : ConnectError.from(result.reason).rawMessage).toBe("OK");
    }
    const { rows } = await db.query<{ resources: string[]; result_code: number }>(
      "SELECT resources, result_code FROM audit_events WHERE request_id = $1",
      [requestId],
    );
    expect(rows).toEqual([{ resources: ["keys/a\\u0000b"], result_code: Code.InvalidArgument }]);
  });
});
