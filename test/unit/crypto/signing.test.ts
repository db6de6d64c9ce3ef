import { execFileSync, spawnSync } from "node:child_process";
import { createHash, createPrivateKey, createPublicKey, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKeyMaterial, loadKey } from "../../../src/crypto/key-material.js";
import { SecretBytes } from "../../../src/crypto/secret-bytes.js";
import {
  createSigner,
  createVerifier,
  digestSigning,
  generateSigningKey,
  SIGNING_ALGORITHMS,
  SignatureInputError,
  type Signer,
  type SigningAlgorithm,
  signingHash,
  type Verifier,
} from "../../../src/crypto/signing.js";
import { ED25519_KNOWN_ANSWERS, ed25519Pkcs8 } from "../../fixtures/crypto/rfc-vectors.js";

const hex = (s: string) => Buffer.from(s, "hex");
const MESSAGE = Buffer.from("transfer 100 EUR to account 42");

interface Pair {
  signer: Signer;
  verifier: Verifier;
  publicKeyPem: string;
  material: SecretBytes;
}

const pairs = new Map<SigningAlgorithm, Pair>();

beforeAll(async () => {
  await Promise.all(
    SIGNING_ALGORITHMS.map(async (algorithm) => {
      const generated = await generateKeyMaterial(algorithm);
      const loaded = loadKey(algorithm, generated.material);
      if (loaded.purpose !== "SIGN_VERIFY") {
        throw new Error("expected a signing key");
      }
      expect(loaded.publicKeyPem).toBe(generated.publicKeyPem);
      pairs.set(algorithm, { ...loaded, material: generated.material });
    }),
  );
}, 60_000);

function pair(algorithm: SigningAlgorithm): Pair {
  return pairs.get(algorithm)!;
}

function digestOf(algorithm: SigningAlgorithm, message: Buffer): Buffer {
  return createHash(signingHash(algorithm) ?? "sha256").update(message).digest();
}

describe("Ed25519 known answers (RFC 8032 §7.1)", () => {
  it.each(ED25519_KNOWN_ANSWERS.map((v) => [v.name, v] as const))("%s", async (_name, v) => {
    const loaded = loadKey("ED25519", new SecretBytes(ed25519Pkcs8(v.secretKey)));
    if (loaded.purpose !== "SIGN_VERIFY") {
      throw new Error("expected a signing key");
    }
    expect((await loaded.signer.sign({ message: v.message })).toString("hex")).toBe(v.signature.toString("hex"));
    expect(await loaded.verifier.verify({ message: v.message }, v.signature)).toBe(true);
    const spki = createPublicKey(loaded.publicKeyPem).export({ type: "spki", format: "der" });
    expect(spki.subarray(-32).toString("hex")).toBe(v.publicKey.toString("hex"));
  });
});

describe.each(SIGNING_ALGORITHMS)("%s", (algorithm) => {
  const sizes: Record<SigningAlgorithm, [number, number]> = {
    ED25519: [64, 64],
    ECDSA_P256_SHA256: [8, 72],
    ECDSA_P384_SHA384: [8, 104],
    RSA_PSS_2048_SHA256: [256, 256],
    RSA_PSS_3072_SHA256: [384, 384],
    RSA_PSS_4096_SHA256: [512, 512],
  };

  it("signs messages that verify, and only those", async () => {
    const { signer, verifier } = pair(algorithm);
    for (const message of [Buffer.alloc(0), MESSAGE, randomBytes(100_000)]) {
      const signature = await signer.sign({ message });
      const [min, max] = sizes[algorithm];
      expect(signature.length).toBeGreaterThanOrEqual(min);
      expect(signature.length).toBeLessThanOrEqual(max);
      expect(await verifier.verify({ message }, signature)).toBe(true);
      expect(await verifier.verify({ message: Buffer.concat([message, Buffer.of(0)]) }, signature)).toBe(false);
    }
  });

  it("does not verify with another key of the same algorithm", async () => {
    const other = await generateSigningKey(algorithm);
    const verifier = createVerifier(algorithm, createPublicKey(other.publicKeyPem));
    expect(await verifier.verify({ message: MESSAGE }, await pair(algorithm).signer.sign({ message: MESSAGE }))).toBe(false);
  });

  it("resolves false, never rejects, for malformed signatures", async () => {
    const { signer, verifier } = pair(algorithm);
    const good = await signer.sign({ message: MESSAGE });
    const malformed: Array<[string, Buffer]> = [
      ["empty", Buffer.alloc(0)],
      ["one byte", Buffer.of(0x30)],
      ["one byte short", good.subarray(0, good.length - 1)],
      ["one byte long", Buffer.concat([good, Buffer.of(0)])],
      ["all zero", Buffer.alloc(good.length)],
      ["all 0xff (at least the modulus, for RSA)", Buffer.alloc(good.length, 0xff)],
      ["an empty DER sequence", hex("3000")],
      ["a DER sequence of zeros", hex("3006020100020100")],
      ["random bytes", randomBytes(good.length)],
      ["huge", randomBytes(70_000)],
    ];
    for (let i = 0; i < good.length; i++) {
      const flipped = Buffer.from(good);
      flipped[i] = flipped[i]! ^ 0x80;
      malformed.push([`bit 7 of byte ${i} flipped`, flipped]);
    }
    for (const [name, signature] of malformed) {
      expect({ name, valid: await verifier.verify({ message: MESSAGE }, signature) }).toEqual({ name, valid: false });
      if (digestSigning(algorithm)) {
        const digest = digestOf(algorithm, MESSAGE);
        expect({ name, valid: await verifier.verify({ digest }, signature) }).toEqual({ name, valid: false });
      }
    }
  });

  it("wants exactly one of message and digest", async () => {
    const { signer, verifier } = pair(algorithm);
    const both = { message: MESSAGE, digest: digestOf(algorithm, MESSAGE) } as never;
    await expect(signer.sign(both)).rejects.toThrow(SignatureInputError);
    await expect(signer.sign({} as never)).rejects.toThrow(SignatureInputError);
    await expect(verifier.verify(both, Buffer.alloc(64))).rejects.toThrow(SignatureInputError);
  });

  it("refuses a key of another algorithm", () => {
    const other = algorithm === "ED25519" ? "ECDSA_P256_SHA256" : "ED25519";
    const key = createPrivateKey({ key: pair(other).material.expose(), format: "der", type: "pkcs8" });
    expect(() => createSigner(algorithm, key)).toThrow(TypeError);
    expect(() => createVerifier(algorithm, key)).toThrow(TypeError);
    expect(() => createSigner(algorithm, createPublicKey(key))).toThrow(TypeError);
  });
});

describe("digests", () => {
  it.each(["ED25519", "ECDSA_P256_SHA256", "ECDSA_P384_SHA384"] as const)(
    "%s signs and verifies messages only",
    async (algorithm) => {
      const { signer, verifier } = pair(algorithm);
      expect(digestSigning(algorithm)).toBeUndefined();
      const digest = digestOf(algorithm, MESSAGE);
      await expect(signer.sign({ digest })).rejects.toThrow(SignatureInputError);
      await expect(verifier.verify({ digest }, await signer.sign({ message: MESSAGE }))).rejects.toThrow(SignatureInputError);
    },
  );

  it.each(["RSA_PSS_2048_SHA256", "RSA_PSS_3072_SHA256", "RSA_PSS_4096_SHA256"] as const)(
    "%s signs a SHA-256 digest as it signs the message",
    async (algorithm) => {
      const { signer, verifier } = pair(algorithm);
      expect(digestSigning(algorithm)).toEqual({ hash: "sha256", length: 32 });
      const digest = digestOf(algorithm, MESSAGE);
      const fromDigest = await signer.sign({ digest });
      const fromMessage = await signer.sign({ message: MESSAGE });
      expect(fromDigest.length).toBe(fromMessage.length);
      for (const signature of [fromDigest, fromMessage]) {
        expect(await verifier.verify({ message: MESSAGE }, signature)).toBe(true);
        expect(await verifier.verify({ digest }, signature)).toBe(true);
        expect(await verifier.verify({ digest: digestOf(algorithm, Buffer.from("other")) }, signature)).toBe(false);
      }
      expect(fromDigest.equals(await signer.sign({ digest }))).toBe(false);
      for (const length of [0, 20, 31, 33, 48, 64]) {
        await expect(signer.sign({ digest: Buffer.alloc(length) })).rejects.toThrow(SignatureInputError);
        await expect(verifier.verify({ digest: Buffer.alloc(length) }, fromDigest)).rejects.toThrow(SignatureInputError);
      }
    },
  );
});

describe("the event loop", () => {
  it("keeps turning while RSA-4096 signs", async () => {
    const { signer, verifier } = pair("RSA_PSS_4096_SHA256");
    // Counts event-loop turns (check phases) until the signatures are done.
    // Signing on the calling thread would settle the promise before any
    // setImmediate callback could run, counting 0 whatever the machine's
    // speed; on the thread pool the loop stays free and at least one turn
    // passes. Eight signatures (about 10 ms each, four pool threads) outlast
    // the first turn even on a fast machine.
    let turns = 0;
    let settled = false;
    const tick = (): void => {
      if (!settled) {
        turns++;
        setImmediate(tick);
      }
    };
    setImmediate(tick);
    const signatures = await Promise.all(Array.from({ length: 8 }, () => signer.sign({ message: MESSAGE })));
    settled = true;
    expect(turns).toBeGreaterThan(0);
    for (const signature of signatures) {
      expect(await verifier.verify({ message: MESSAGE }, signature)).toBe(true);
    }
  });
});

const openssl = spawnSync("openssl", ["version"], { encoding: "utf8" });
const haveOpenssl = openssl.status === 0;

describe.skipIf(!haveOpenssl)("cross-checked with the openssl command line", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "keyward-signing-"));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const file = (name: string, data: Uint8Array | string): string => {
    const path = join(dir, name);
    writeFileSync(path, data);
    return path;
  };
  const run = (args: string[]): { ok: boolean; out: string } => {
    const result = spawnSync("openssl", args, { encoding: "utf8" });
    return { ok: result.status === 0, out: `${result.stdout}${result.stderr}` };
  };
  const PSS = ["rsa_padding_mode:pss", "rsa_pss_saltlen:32", "rsa_mgf1_md:sha256"];

  function opensslVerifies(algorithm: SigningAlgorithm, pem: string, input: { message?: Buffer; digest?: Buffer }, signature: Buffer) {
    const pub = file(`${algorithm}.pub.pem`, pem);
    const sig = file(`${algorithm}.sig`, signature);
    if (input.digest) {
      // pkeyutl without -rawin takes the input as the digest itself.
      return run([
        "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-in", file("digest.bin", input.digest), "-sigfile", sig,
        "-pkeyopt", "digest:sha256", ...PSS.flatMap((o) => ["-pkeyopt", o]),
      ]).ok;
    }
    const msg = file("message.bin", input.message!);
    if (algorithm === "ED25519") {
      return run(["pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", msg, "-sigfile", sig]).ok;
    }
    const pss = algorithm.startsWith("RSA") ? PSS.flatMap((o) => ["-sigopt", o]) : [];
    const result = run(["dgst", `-${signingHash(algorithm)}`, ...pss, "-verify", pub, "-signature", sig, msg]);
    return result.ok && result.out.includes("Verified OK");
  }

  it.each(SIGNING_ALGORITHMS)("openssl verifies what Keyward signs with %s, against GetPublicKey's PEM", async (algorithm) => {
    const { signer, publicKeyPem } = pair(algorithm);
    const signature = await signer.sign({ message: MESSAGE });
    expect(opensslVerifies(algorithm, publicKeyPem, { message: MESSAGE }, signature)).toBe(true);
    expect(opensslVerifies(algorithm, publicKeyPem, { message: Buffer.from("forged") }, signature)).toBe(false);
    if (digestSigning(algorithm)) {
      const digest = digestOf(algorithm, MESSAGE);
      const fromDigest = await signer.sign({ digest });
      expect(opensslVerifies(algorithm, publicKeyPem, { digest }, fromDigest)).toBe(true);
      expect(opensslVerifies(algorithm, publicKeyPem, { message: MESSAGE }, fromDigest)).toBe(true);
    }
  });

  const generators: Record<SigningAlgorithm, string[]> = {
    ED25519: ["-algorithm", "ED25519"],
    ECDSA_P256_SHA256: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ECDSA_P384_SHA384: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    RSA_PSS_2048_SHA256: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    RSA_PSS_3072_SHA256: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
    RSA_PSS_4096_SHA256: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
  };

  it.each(["ED25519", "ECDSA_P256_SHA256", "ECDSA_P384_SHA384", "RSA_PSS_2048_SHA256"] as const)(
    "Keyward verifies what openssl signs with %s, and loads openssl's key",
    async (algorithm) => {
      const keyPem = join(dir, `${algorithm}.openssl.pem`);
      execFileSync("openssl", ["genpkey", ...generators[algorithm], "-out", keyPem], { stdio: "pipe" });
      const pubPem = execFileSync("openssl", ["pkey", "-in", keyPem, "-pubout"], { encoding: "utf8" });
      const msg = file("message.bin", MESSAGE);
      const sig = join(dir, `${algorithm}.openssl.sig`);
      if (algorithm === "ED25519") {
        execFileSync("openssl", ["pkeyutl", "-sign", "-inkey", keyPem, "-rawin", "-in", msg, "-out", sig]);
      } else {
        const pss = algorithm.startsWith("RSA") ? PSS.flatMap((o) => ["-sigopt", o]) : [];
        execFileSync("openssl", ["dgst", `-${signingHash(algorithm)}`, ...pss, "-sign", keyPem, "-out", sig, msg]);
      }
      const signature = readFileSync(sig);
      const verifier = createVerifier(algorithm, createPublicKey(pubPem));
      expect(await verifier.verify({ message: MESSAGE }, signature)).toBe(true);
      if (digestSigning(algorithm)) {
        expect(await verifier.verify({ digest: digestOf(algorithm, MESSAGE) }, signature)).toBe(true);
      }
      // A key Keyward never saw: its signature does not verify against Keyward's key.
      expect(await pair(algorithm).verifier.verify({ message: MESSAGE }, signature)).toBe(false);

      // openssl's private key, as PKCS#8 DER, is usable key material.
      const der = execFileSync("openssl", ["pkcs8", "-topk8", "-nocrypt", "-in", keyPem, "-outform", "DER"]);
      const loaded = loadKey(algorithm, new SecretBytes(der));
      if (loaded.purpose !== "SIGN_VERIFY") {
        throw new Error("expected a signing key");
      }
      expect(loaded.publicKeyPem.trim()).toBe(pubPem.trim());
      expect(opensslVerifies(algorithm, pubPem, { message: MESSAGE }, await loaded.signer.sign({ message: MESSAGE }))).toBe(true);
    },
  );

  it("refuses an RSA-PSS signature with another salt length", async () => {
    const keyPem = file("rsa.pem", pkcs8Pem("RSA_PSS_2048_SHA256"));
    const sig = join(dir, "salt20.sig");
    execFileSync("openssl", [
      "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:20", "-sigopt", "rsa_mgf1_md:sha256",
      "-sign", keyPem, "-out", sig, file("message.bin", MESSAGE),
    ]);
    const { verifier } = pair("RSA_PSS_2048_SHA256");
    expect(await verifier.verify({ message: MESSAGE }, readFileSync(sig))).toBe(false);
    expect(await verifier.verify({ digest: digestOf("RSA_PSS_2048_SHA256", MESSAGE) }, readFileSync(sig))).toBe(false);
  });
});

function pkcs8Pem(algorithm: SigningAlgorithm): string {
  const key = createPrivateKey({ key: pair(algorithm).material.expose(), format: "der", type: "pkcs8" });
  return key.export({ type: "pkcs8", format: "pem" }).toString();
}
