import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/*
 * Signatures from Keyward checked by an independent implementation, the
 * openssl command line, against the public key GetPublicKey publishes; and
 * signatures openssl makes with a key Keyward never saw, which Verify must
 * refuse. Agreement with openssl is what lets callers verify offline.
 */

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function openssl(args: readonly string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile("openssl", args, { encoding: "utf8", timeout: 20_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== "number") {
        reject(err);
        return;
      }
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
  });
}

interface Scheme {
  readonly label: string;
  readonly algorithm: KeyAlgorithm;
  /** What `openssl pkey -pubin -text` prints for such a key. */
  readonly describes: RegExp;
  /** `openssl genpkey` arguments for a key of the same kind. */
  readonly genpkey: readonly string[];
  /** Arguments verifying `sig` over the file `msg` with `pub`. */
  verify(pub: string, msg: string, sig: string): string[];
  /** Arguments signing the file `msg` with the private key `key` into `sig`. */
  sign(key: string, msg: string, sig: string): string[];
  /** What openssl prints on success. */
  readonly ok: string;
}

const PSS = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-sigopt", "rsa_mgf1_md:sha256"];

const SCHEMES: readonly Scheme[] = [
  {
    label: "ED25519",
    algorithm: KeyAlgorithm.ED25519,
    describes: /ED25519 Public-Key/,
    genpkey: ["-algorithm", "ed25519"],
    // PureEdDSA signs the message itself: -rawin, no digest.
    verify: (pub, msg, sig) => ["pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", msg, "-sigfile", sig],
    sign: (key, msg, sig) => ["pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", msg, "-out", sig],
    ok: "Signature Verified Successfully",
  },
  {
    label: "ECDSA_P256_SHA256",
    algorithm: KeyAlgorithm.ECDSA_P256_SHA256,
    describes: /NIST CURVE: P-256/,
    genpkey: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    verify: (pub, msg, sig) => ["dgst", "-sha256", "-verify", pub, "-signature", sig, msg],
    sign: (key, msg, sig) => ["dgst", "-sha256", "-sign", key, "-out", sig, msg],
    ok: "Verified OK",
  },
  {
    label: "ECDSA_P384_SHA384",
    algorithm: KeyAlgorithm.ECDSA_P384_SHA384,
    describes: /NIST CURVE: P-384/,
    genpkey: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    verify: (pub, msg, sig) => ["dgst", "-sha384", "-verify", pub, "-signature", sig, msg],
    sign: (key, msg, sig) => ["dgst", "-sha384", "-sign", key, "-out", sig, msg],
    ok: "Verified OK",
  },
  {
    label: "RSA_PSS_2048_SHA256",
    algorithm: KeyAlgorithm.RSA_PSS_2048_SHA256,
    describes: /Public-Key: \(2048 bit\)/,
    genpkey: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    verify: (pub, msg, sig) => ["dgst", "-sha256", ...PSS, "-verify", pub, "-signature", sig, msg],
    sign: (key, msg, sig) => ["dgst", "-sha256", ...PSS, "-sign", key, "-out", sig, msg],
    ok: "Verified OK",
  },
];

let keyward: TestKeyward;
let keys: Client<typeof KeysService>;
let crypto: Client<typeof CryptoService>;
let dir: string;

beforeAll(async () => {
  keyward = await startTestKeyward();
  keys = connectClient(KeysService, keyward.url, await keyward.credentials("admin"));
  crypto = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
  dir = await mkdtemp(join(tmpdir(), "keyward-openssl-"));
});

afterAll(async () => {
  await keyward?.close();
  if (dir) {
    await rm(dir, { recursive: true, force: true });
  }
});

describe.each(SCHEMES)("$label", (scheme) => {
  const file = (name: string) => join(dir, `${scheme.label}-${name}`);
  let keyName: string;
  let pub: string;

  beforeAll(async () => {
    const { key } = await keys.createKey({
      keyId: `openssl-${scheme.label.toLowerCase().replaceAll("_", "-")}`,
      key: { purpose: KeyPurpose.SIGN_VERIFY, algorithm: scheme.algorithm },
    });
    keyName = key!.name;
    const published = await keys.getPublicKey({ name: keyName });
    expect(published.algorithm).toBe(scheme.algorithm);
    expect(published.keyVersion).toBe(`${keyName}/versions/1`);
    expect(published.pem).toMatch(/^-----BEGIN PUBLIC KEY-----\n[\s\S]+\n-----END PUBLIC KEY-----\n?$/);
    pub = file("keyward.pub.pem");
    await writeFile(pub, published.pem);
  });

  it("publishes a public key openssl reads as the algorithm's kind of key", async () => {
    const run = await openssl(["pkey", "-pubin", "-in", pub, "-text", "-noout"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(scheme.describes);
  });

  it("signs messages that openssl verifies, and openssl refuses them once altered", async () => {
    // The openssl 3.0 command line cannot read an empty file with -rawin
    // ("Could not allocate 0 bytes"), so Ed25519's shortest message here is one byte.
    const shortest = scheme.algorithm === KeyAlgorithm.ED25519 ? Buffer.from([0]) : Buffer.alloc(0);
    const messages = [Buffer.from("hello openssl"), shortest, Buffer.from(Array.from({ length: 4096 }, (_, j) => j % 251))];
    for (const [i, message] of messages.entries()) {
      const msg = file(`msg-${i}`);
      const sig = file(`sig-${i}`);
      await writeFile(msg, message);
      const { signature } = await crypto.sign({ name: keyName, input: { case: "message", value: message } });
      await writeFile(sig, signature);
      const good = await openssl(scheme.verify(pub, msg, sig));
      expect({ i, code: good.code, stdout: good.stdout.trim() }).toEqual({ i, code: 0, stdout: scheme.ok });

      // The same check fails for another message and for a flipped signature
      // bit, so the success above is openssl's judgement, not a formality.
      const otherMsg = file(`msg-${i}-other`);
      await writeFile(otherMsg, Buffer.concat([message, Buffer.from("!")]));
      expect((await openssl(scheme.verify(pub, otherMsg, sig))).code).toBe(1);
      const bad = Buffer.from(signature);
      bad[bad.length - 2]! ^= 0x04;
      await writeFile(file(`sig-${i}-bad`), bad);
      expect((await openssl(scheme.verify(pub, msg, file(`sig-${i}-bad`)))).code).toBe(1);
    }
  });

  if (scheme.algorithm === KeyAlgorithm.RSA_PSS_2048_SHA256) {
    it("signs a caller's SHA-256 digest into a signature openssl verifies over the message", async () => {
      const message = Buffer.from("digest signed, message verified");
      const msg = file("digest-msg");
      const sig = file("digest-sig");
      await writeFile(msg, message);
      const { signature } = await crypto.sign({
        name: keyName,
        input: { case: "digest", value: createHash("sha256").update(message).digest() },
      });
      expect(signature.length).toBe(256);
      await writeFile(sig, signature);
      const run = await openssl(scheme.verify(pub, msg, sig));
      expect({ code: run.code, stdout: run.stdout.trim() }).toEqual({ code: 0, stdout: scheme.ok });
    });
  }

  it("does not accept through Verify a signature made by a key Keyward never saw", async () => {
    const foreignKey = file("foreign.key.pem");
    const foreignPub = file("foreign.pub.pem");
    expect((await openssl(["genpkey", ...scheme.genpkey, "-out", foreignKey])).code).toBe(0);
    expect((await openssl(["pkey", "-in", foreignKey, "-pubout", "-out", foreignPub])).code).toBe(0);
    const message = Buffer.from("signed outside Keyward");
    const msg = file("foreign-msg");
    const sig = file("foreign-sig");
    await writeFile(msg, message);
    const signed = await openssl(scheme.sign(foreignKey, msg, sig));
    expect(signed.code, signed.stderr).toBe(0);
    // A well-formed signature: openssl accepts it with the key that made it.
    const own = await openssl(scheme.verify(foreignPub, msg, sig));
    expect({ code: own.code, stdout: own.stdout.trim() }).toEqual({ code: 0, stdout: scheme.ok });

    const signature = await readFile(sig);
    const verdict = await crypto.verify({ name: keyName, input: { case: "message", value: message }, signature });
    expect(verdict).toMatchObject({ valid: false, keyVersion: `${keyName}/versions/1` });
    if (scheme.algorithm === KeyAlgorithm.RSA_PSS_2048_SHA256) {
      const byDigest = await crypto.verify({
        name: keyName,
        input: { case: "digest", value: createHash("sha256").update(message).digest() },
        signature,
      });
      expect(byDigest.valid).toBe(false);
    }
    // And Keyward's own signature of the same message is accepted, so the refusal is about the key.
    const mine = await crypto.sign({ name: keyName, input: { case: "message", value: message } });
    const accepted = await crypto.verify({ name: keyName, input: { case: "message", value: message }, signature: mine.signature });
    expect(accepted.valid).toBe(true);
    await writeFile(file("mine-sig"), mine.signature);
    expect((await openssl(scheme.verify(foreignPub, msg, file("mine-sig")))).code).toBe(1);
  });
});
