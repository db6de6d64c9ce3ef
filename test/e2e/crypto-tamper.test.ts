import { Code, ConnectError, type Client } from "@connectrpc/connect";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/*
 * Properties of Encrypt and Decrypt through the real RPCs: whatever the
 * plaintext and associated data, a ciphertext round-trips; and whatever is
 * done to it (one byte changed anywhere, cut short, lengthened, other
 * associated data), Decrypt answers INVALID_ARGUMENT "decryption failed":
 * never another message that would tell what was wrong, never INTERNAL.
 *
 * Each key has two ENABLED versions, so a changed version number can name a
 * version that exists (and must still not open the ciphertext).
 */

const NUM_RUNS = 150;
const DECRYPTION_FAILED = "decryption failed";

let keyward: TestKeyward;
let crypto: Client<typeof CryptoService>;
const keyNames: string[] = [];

beforeAll(async () => {
  keyward = await startTestKeyward();
  const admin = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
  crypto = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
  for (const [keyId, algorithm] of [
    ["tamper-aes", KeyAlgorithm.AES_256_GCM],
    ["tamper-chacha", KeyAlgorithm.CHACHA20_POLY1305],
  ] as const) {
    const { key } = await admin.createKey({ keyId, key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm } });
    await admin.rotateKey({ name: key!.name });
    keyNames.push(key!.name);
  }
  // Rotation reaches the key cache asynchronously; wait until version 2 serves.
  for (const name of keyNames) {
    const deadline = Date.now() + 3000;
    while ((await crypto.encrypt({ name, plaintext: new Uint8Array(0) })).keyVersion !== `${name}/versions/2`) {
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
});

afterAll(() => keyward?.close());

/** A message to encrypt: which key, which version, what plaintext and associated data. */
const sealed = fc.record({
  key: fc.constantFrom(0, 1),
  version: fc.constantFrom(undefined, 1, 2),
  plaintext: fc.uint8Array({ maxLength: 300 }),
  associatedData: fc.uint8Array({ maxLength: 64 }),
});

type Sealed = { key: number; version: number | undefined; plaintext: Uint8Array; associatedData: Uint8Array };

async function encrypt(input: Sealed): Promise<{ name: string; ciphertext: Uint8Array; keyVersion: string }> {
  const name = keyNames[input.key]!;
  const out = await crypto.encrypt({
    name: input.version === undefined ? name : `${name}/versions/${input.version}`,
    plaintext: input.plaintext,
    associatedData: input.associatedData,
  });
  return { name, ciphertext: out.ciphertext, keyVersion: out.keyVersion };
}

/** What Decrypt answered: the plaintext, or the code and message of its error. */
async function decrypt(name: string, ciphertext: Uint8Array, associatedData: Uint8Array) {
  try {
    const out = await crypto.decrypt({ name, ciphertext, associatedData });
    return { ok: true as const, plaintext: Buffer.from(out.plaintext), keyVersion: out.keyVersion };
  } catch (err) {
    const e = ConnectError.from(err);
    return { ok: false as const, code: Code[e.code], message: e.rawMessage };
  }
}

const opaqueFailure = { ok: false, code: "InvalidArgument", message: DECRYPTION_FAILED };

describe("Encrypt and Decrypt over the RPCs", () => {
  it("round-trips any plaintext with any associated data", async () => {
    await fc.assert(
      fc.asyncProperty(sealed, async (input) => {
        const { name, ciphertext, keyVersion } = await encrypt(input);
        expect(keyVersion).toBe(`${name}/versions/${input.version ?? 2}`);
        const out = await decrypt(name, ciphertext, input.associatedData);
        expect(out).toEqual({ ok: true, plaintext: Buffer.from(input.plaintext), keyVersion });
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("fails opaquely when any single byte of the ciphertext changes", async () => {
    // Half the changes land in the framing (format, key name, version, the
    // wrapped data key, the nonce): the bytes a parser reads before any tag.
    // Setting a byte to NUL is drawn on its own: a NUL in the key name the
    // ciphertext claims must not reach the audit log raw.
    const change = fc.record({
      region: fc.constantFrom("framing", "anywhere"),
      at: fc.nat(),
      mask: fc.oneof(fc.integer({ min: 1, max: 255 }), fc.constant("nul" as const)),
    });
    await fc.assert(
      fc.asyncProperty(sealed, change, async (input, { region, at, mask }) => {
        const { name, ciphertext } = await encrypt(input);
        const framing = ciphertext.length - input.plaintext.length - 16;
        const index = at % (region === "framing" ? framing : ciphertext.length);
        const changed = Uint8Array.from(ciphertext);
        const before = changed[index]!;
        changed[index] = mask !== "nul" ? before ^ mask : before === 0 ? 1 : 0;
        expect(await decrypt(name, changed, input.associatedData)).toEqual(opaqueFailure);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("fails opaquely when the ciphertext is cut short", async () => {
    await fc.assert(
      fc.asyncProperty(sealed, fc.nat(), async (input, cut) => {
        const { name, ciphertext } = await encrypt(input);
        // 1..length-1 bytes kept: an empty ciphertext is a missing required
        // field, refused by request validation before it is a ciphertext.
        const kept = 1 + (cut % (ciphertext.length - 1));
        expect(await decrypt(name, ciphertext.subarray(0, kept), input.associatedData)).toEqual(opaqueFailure);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("fails opaquely when bytes are appended to the ciphertext", async () => {
    await fc.assert(
      fc.asyncProperty(sealed, fc.uint8Array({ minLength: 1, maxLength: 64 }), async (input, tail) => {
        const { name, ciphertext } = await encrypt(input);
        const longer = new Uint8Array(ciphertext.length + tail.length);
        longer.set(ciphertext);
        longer.set(tail, ciphertext.length);
        expect(await decrypt(name, longer, input.associatedData)).toEqual(opaqueFailure);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("fails opaquely with any other associated data", async () => {
    const other = fc.oneof(
      // Arbitrary other bytes, empty included.
      fc.uint8Array({ maxLength: 64 }),
      // A near miss: the same bytes with one bit flipped, one byte more or one less.
      fc.record({ kind: fc.constantFrom("flip", "append", "drop"), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    );
    await fc.assert(
      fc.asyncProperty(sealed, other, async (input, variant) => {
        let associatedData: Uint8Array;
        const original = input.associatedData;
        if (variant instanceof Uint8Array) {
          associatedData = variant;
        } else if (variant.kind === "flip" && original.length > 0) {
          associatedData = Uint8Array.from(original);
          associatedData[variant.at % original.length]! ^= 1 << variant.bit;
        } else if (variant.kind === "drop" && original.length > 0) {
          associatedData = original.subarray(0, original.length - 1);
        } else {
          associatedData = Uint8Array.from([...original, variant.at & 0xff]);
        }
        fc.pre(!Buffer.from(associatedData).equals(Buffer.from(original)));
        const { name, ciphertext } = await encrypt(input);
        expect(await decrypt(name, ciphertext, associatedData)).toEqual(opaqueFailure);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("fails opaquely for arbitrary bytes and for a ciphertext of the other key", async () => {
    await fc.assert(
      fc.asyncProperty(sealed, fc.uint8Array({ minLength: 1, maxLength: 512 }), async (input, garbage) => {
        const { ciphertext } = await encrypt(input);
        const otherKey = keyNames[1 - input.key]!;
        expect(await decrypt(otherKey, ciphertext, input.associatedData)).toEqual(opaqueFailure);
        expect(await decrypt(keyNames[input.key]!, garbage, input.associatedData)).toEqual(opaqueFailure);
      }),
      { numRuns: NUM_RUNS },
    );
  });
});
