import { generateKeyPairSync, randomBytes } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { createCertificateAuthority, issueCertificate } from "../../../../src/dev/pki.js";
import { DomainError } from "../../../../src/domain/errors.js";
import type { SecretType } from "../../../../src/domain/secrets/secret.js";
import { checkValue } from "../../../../src/domain/secrets/value-check.js";

/**
 * checkValue against secrets.proto's SecretType rules, type by type: values
 * that must pass, values that must fail with INVALID_ARGUMENT and a message
 * saying what is wrong. Every failing value carries a marker, and no message
 * may quote it: the message reaches the caller, the audit log and the
 * access log, none of which may ever hold a secret value.
 */

const MARKER = `mk${randomBytes(8).toString("hex")}`;

const utf8 = (s: string) => Buffer.from(s, "utf8");

/** The DomainError checkValue throws, or undefined when the value passes. */
function failure(type: SecretType, value: Uint8Array): DomainError | undefined {
  try {
    checkValue(type, value);
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(DomainError);
    return err as DomainError;
  }
}

/** Asserts the value fails as INVALID_ARGUMENT, with a message matching `reason` that quotes none of the value. */
function expectInvalid(type: SecretType, value: Uint8Array, reason: RegExp): void {
  const error = failure(type, value);
  expect(error, `${type} accepted a value it must refuse`).toBeDefined();
  expect(error!.kind).toBe("invalid-argument");
  expect(error!.message.startsWith(`the value is not a valid ${type} secret: `), error!.message).toBe(true);
  expect(error!.message).toMatch(reason);
  expectNoQuote(error!.message, value);
}

/** The message holds neither the marker nor any 12-character run of the value's text. */
function expectNoQuote(message: string, value: Uint8Array): void {
  expect(message).not.toContain(MARKER);
  const text = Buffer.from(value).toString("latin1");
  for (let at = 0; at + 12 <= text.length; at += 6) {
    const run = text.slice(at, at + 12);
    if (run.trim().length === 12) {
      expect(message, `message quotes the value: ${JSON.stringify(run)}`).not.toContain(run);
    }
  }
}

function expectValid(type: SecretType, value: Uint8Array): void {
  const error = failure(type, value);
  expect(error?.message, `${type} refused a valid value`).toBeUndefined();
}

// ---------------------------------------------------------------------------
// Fixtures: real certificates and keys, made fresh.

interface Pems {
  caCert: string;
  leafCert: string;
  leafKeyPkcs8: string;
  ecSec1: string;
  rsaPkcs1: string;
  ed25519Pkcs8: string;
  publicKey: string;
  openssh: string;
}
const pem: Pems = {} as Pems;

/** An OpenSSH private key file (openssh-key-v1, unencrypted ed25519), as ssh-keygen writes it. */
function opensshPrivateKey(): string {
  const { privateKey } = generateKeyPairSync("ed25519");
  const jwk = privateKey.export({ format: "jwk" });
  const seed = Buffer.from(jwk.d!, "base64url");
  const pub = Buffer.from(jwk.x!, "base64url");
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const str = (b: Buffer | string) => {
    const bytes = typeof b === "string" ? Buffer.from(b) : b;
    return Buffer.concat([u32(bytes.length), bytes]);
  };
  const publicBlob = Buffer.concat([str("ssh-ed25519"), str(pub)]);
  const check = randomBytes(4).readUInt32BE();
  let privateSection = Buffer.concat([
    u32(check),
    u32(check),
    str("ssh-ed25519"),
    str(pub),
    str(Buffer.concat([seed, pub])),
    str(`${MARKER}@host`),
  ]);
  const padding = Buffer.from(Array.from({ length: (8 - (privateSection.length % 8)) % 8 }, (_, i) => i + 1));
  privateSection = Buffer.concat([privateSection, padding]);
  const body = Buffer.concat([
    Buffer.from("openssh-key-v1\u0000"),
    str("none"),
    str("none"),
    str(""),
    u32(1),
    str(publicBlob),
    str(privateSection),
  ]).toString("base64");
  return `-----BEGIN OPENSSH PRIVATE KEY-----\n${body.match(/.{1,70}/g)!.join("\n")}\n-----END OPENSSH PRIVATE KEY-----\n`;
}

/** A PEM block with the given label around arbitrary bytes. */
function pemBlock(label: string, der: Buffer): string {
  return `-----BEGIN ${label}-----\n${der.toString("base64").match(/.{1,64}/g)!.join("\n")}\n-----END ${label}-----\n`;
}

beforeAll(async () => {
  const ca = await createCertificateAuthority({ commonName: "value-check test CA" });
  const leaf = await issueCertificate(ca, { commonName: "leaf.example", usage: "server", dnsNames: ["leaf.example"] });
  pem.caCert = ca.certPem;
  pem.leafCert = leaf.certPem;
  pem.leafKeyPkcs8 = leaf.keyPem;
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
  pem.ecSec1 = ec.privateKey.export({ format: "pem", type: "sec1" }) as string;
  pem.publicKey = ec.publicKey.export({ format: "pem", type: "spki" }) as string;
  pem.rsaPkcs1 = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "pem", type: "pkcs1" }) as string;
  pem.ed25519Pkcs8 = generateKeyPairSync("ed25519").privateKey.export({ format: "pem", type: "pkcs8" }) as string;
  pem.openssh = opensshPrivateKey();
});

// ---------------------------------------------------------------------------

describe("checkValue: OPAQUE", () => {
  it.each([
    ["text", utf8(`plain ${MARKER}`)],
    ["invalid UTF-8 and NUL bytes", Buffer.from([0xff, 0x00, 0xfe, 0x00, 0x80])],
    ["one byte", Buffer.from([0])],
    ["64 KiB of random bytes", randomBytes(65_536)],
  ])("accepts %s", (_, value) => expectValid("OPAQUE", value));
});

describe("checkValue: PASSWORD (UTF-8 without U+0000..U+001F and U+007F, at most 1024 bytes)", () => {
  it.each([
    ["ASCII with spaces and symbols", utf8(`correct horse battery staple !#$%&'"\\\`~ ${MARKER}`)],
    ["non-ASCII letters and emoji", utf8("pässwörd-€-日本-🔑")],
    ["C1 controls, which the rule does not name", utf8("a\u0080b\u0085c\u009f")],
    ["exactly 1024 bytes", utf8("x".repeat(1024))],
    ["exactly 1024 bytes of 2-byte characters", utf8("é".repeat(512))],
  ])("accepts %s", (_, value) => expectValid("PASSWORD", value));

  it("refuses 1025 bytes, counting bytes, not characters", () => {
    expectInvalid("PASSWORD", utf8(MARKER + "x".repeat(1025 - MARKER.length)), /longer than 1024 bytes/);
    expectInvalid("PASSWORD", utf8(MARKER + "é".repeat(506)), /longer than 1024 bytes/);
  });

  it("refuses bytes that are not UTF-8", () => {
    expectInvalid("PASSWORD", Buffer.concat([utf8(MARKER), Buffer.from([0xc3, 0x28])]), /not UTF-8/);
    expectInvalid("PASSWORD", Buffer.concat([utf8(MARKER), Buffer.from([0xed, 0xa0, 0x80])]), /not UTF-8/);
  });

  const controls = [...Array.from({ length: 0x20 }, (_, c) => c), 0x7f];
  it.each(controls.map((c) => [`U+${c.toString(16).padStart(4, "0")}`, c]))(
    "refuses the control character %s and says where it is",
    (_, c) => {
      const value = utf8(`${MARKER}${String.fromCharCode(c as number)}tail`);
      expectInvalid("PASSWORD", value, new RegExp(`control character at position ${MARKER.length}$`));
    },
  );
});

describe("checkValue: API_KEY (0x21..0x7E only, at most 4096 bytes)", () => {
  const printable = String.fromCharCode(...Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => 0x21 + i));
  it.each([
    ["every printable ASCII character", utf8(printable)],
    ["a typical key", utf8(`sk_live_${MARKER}`)],
    ["exactly 4096 bytes", utf8("k".repeat(4096))],
  ])("accepts %s", (_, value) => expectValid("API_KEY", value));

  it.each([
    ["a space", " ", 0x20],
    ["a tab", "\t", 0x09],
    ["a newline", "\n", 0x0a],
    ["DEL", "\u007f", 0x7f],
    ["a non-ASCII letter", "é", 0xc3],
    ["NUL", "\u0000", 0x00],
  ])("refuses %s and names the byte's position", (_, insert) => {
    expectInvalid("API_KEY", utf8(`${MARKER}${insert}rest`), new RegExp(`byte ${MARKER.length} is not printable ASCII without whitespace`));
  });

  it("refuses 4097 bytes", () => {
    expectInvalid("API_KEY", utf8(MARKER + "k".repeat(4097 - MARKER.length)), /longer than 4096 bytes/);
  });
});

describe("checkValue: JSON (RFC 8259, UTF-8)", () => {
  it.each([
    ["an object", `{"user":"newsbot","password":"${MARKER}","port":5432,"tls":true,"tags":[null,1.5e3]}`],
    ["an array", "[]"],
    ["a string", `"${MARKER}"`],
    ["a number", "42"],
    ["null", "null"],
    ["surrounding whitespace", ' \n\t{"a": {"b": []}}\r\n '],
    ["non-ASCII text", '{"name":"Zoë 日本"}'],
  ])("accepts %s", (_, value) => expectValid("JSON", utf8(value)));

  it.each([
    ["a trailing comma", `{"password":"${MARKER}",}`],
    ["an unquoted key", `{password:"${MARKER}"}`],
    ["single quotes", `{'password':'${MARKER}'}`],
    ["two texts", `{"a":"${MARKER}"} {"b":2}`],
    ["a truncated text", `{"password":"${MARKER}`],
    ["NaN", `{"n":NaN,"m":"${MARKER}"}`],
    ["a comment", `{"a":1} // ${MARKER}`],
    ["only whitespace", "   \n  "],
  ])("refuses %s", (_, value) => expectInvalid("JSON", utf8(value), /does not parse as JSON$/));

  it("refuses bytes that are not UTF-8", () => {
    expectInvalid("JSON", Buffer.concat([utf8(`{"p":"${MARKER}`), Buffer.from([0xff]), utf8('"}')]), /not UTF-8/);
  });
});

describe("checkValue: YAML (one UTF-8 YAML 1.2 document)", () => {
  it.each([
    ["a mapping", `database:\n  user: newsbot\n  password: ${MARKER}\n  port: 5432\n`],
    ["a document with a start marker", `---\nkey: ${MARKER}\n...\n`],
    ["a flow sequence", "[a, b, {c: d}]\n"],
    ["a plain scalar", MARKER],
    ["a block literal", `cert: |\n  line one\n  ${MARKER}\n`],
  ])("accepts %s", (_, value) => expectValid("YAML", utf8(value)));

  it("refuses two documents", () => {
    expectInvalid("YAML", utf8(`a: ${MARKER}\n---\nb: 2\n`), /holds 2 YAML documents, not one$/);
  });

  it("refuses a value holding no document at all (only a comment)", () => {
    expectInvalid("YAML", utf8(`# ${MARKER}\n`), /holds 0 YAML documents, not one$/);
  });

  it.each([
    ["a duplicate key, on line 3", `a: 1\nb: ${MARKER}\na: 2\n`, 3],
    ["an unclosed flow sequence, where the text ends (line 3)", `ok: 1\nlist: [${MARKER}, 2\n`, 3],
    ["a tab used as indentation, on line 2", `a:\n\t- ${MARKER}\n`, 2],
    ["a nested mapping in a compact one, on line 1", `a: ${MARKER}\n  b: 2\n`, 1],
  ])("refuses %s, naming the line but quoting nothing", (_, value, line) => {
    expectInvalid("YAML", utf8(value), new RegExp(`does not parse as YAML \\(line ${line}\\)$`));
  });

  it("refuses bytes that are not UTF-8", () => {
    expectInvalid("YAML", Buffer.concat([utf8(`a: ${MARKER}`), Buffer.from([0xfe])]), /not UTF-8/);
  });
});

describe("checkValue: PEM_CERTIFICATE (CERTIFICATE blocks, optionally one private key)", () => {
  it("accepts one certificate", () => expectValid("PEM_CERTIFICATE", utf8(pem.leafCert)));
  it("accepts a chain, leaf first", () => expectValid("PEM_CERTIFICATE", utf8(pem.leafCert + pem.caCert)));
  it("accepts a certificate with its PKCS#8 private key", () => expectValid("PEM_CERTIFICATE", utf8(pem.leafCert + pem.leafKeyPkcs8)));
  it("accepts a certificate with an EC PRIVATE KEY and with an RSA PRIVATE KEY", () => {
    expectValid("PEM_CERTIFICATE", utf8(pem.ecSec1 + pem.leafCert));
    expectValid("PEM_CERTIFICATE", utf8(pem.leafCert + pem.caCert + pem.rsaPkcs1));
  });
  it("accepts CRLF line endings and surrounding blank lines", () => {
    expectValid("PEM_CERTIFICATE", utf8(`\r\n${pem.leafCert.replace(/\n/g, "\r\n")}\r\n\r\n`));
  });

  it("refuses text that is no PEM at all", () => {
    expectInvalid("PEM_CERTIFICATE", utf8(`certificate: ${MARKER}`), /holds text outside PEM blocks$/);
  });
  it("refuses text between blocks", () => {
    expectInvalid("PEM_CERTIFICATE", utf8(`${pem.leafCert}note: ${MARKER}\n${pem.caCert}`), /holds text outside PEM blocks$/);
  });
  it("refuses a block whose END label does not match its BEGIN", () => {
    const mismatched = pem.leafCert.replace("-----END CERTIFICATE-----", "-----END X509 CRL-----");
    expectInvalid("PEM_CERTIFICATE", utf8(mismatched), /holds text outside PEM blocks$/);
  });
  it("refuses a private key without a certificate", () => {
    expectInvalid("PEM_CERTIFICATE", utf8(pem.leafKeyPkcs8), /holds no CERTIFICATE block$/);
  });
  it("refuses a PUBLIC KEY block next to the certificate", () => {
    expectInvalid("PEM_CERTIFICATE", utf8(pem.leafCert + pem.publicKey), /neither a certificate nor a private key$/);
  });
  it("refuses two private keys", () => {
    expectInvalid("PEM_CERTIFICATE", utf8(pem.leafCert + pem.leafKeyPkcs8 + pem.ecSec1), /more than one private key$/);
  });
  it("refuses a CERTIFICATE block that is not X.509, naming which", () => {
    const bogus = pemBlock("CERTIFICATE", Buffer.concat([utf8(MARKER), randomBytes(200)]));
    expectInvalid("PEM_CERTIFICATE", utf8(pem.leafCert + bogus), /certificate 2 does not parse as X\.509$/);
    expectInvalid("PEM_CERTIFICATE", utf8(bogus), /certificate 1 does not parse as X\.509$/);
  });
  it("refuses a private key block that does not parse", () => {
    const bogus = pemBlock("PRIVATE KEY", Buffer.concat([utf8(MARKER), randomBytes(100)]));
    expectInvalid("PEM_CERTIFICATE", utf8(pem.leafCert + bogus), /its private key does not parse$/);
  });
  it("refuses bytes that are not UTF-8", () => {
    expectInvalid("PEM_CERTIFICATE", Buffer.concat([utf8(pem.leafCert), Buffer.from([0xff])]), /not UTF-8/);
  });
});

describe("checkValue: SSH_KEY (one OpenSSH or PEM private key)", () => {
  it("accepts an OpenSSH private key", () => expectValid("SSH_KEY", utf8(pem.openssh)));
  it.each([
    ["PKCS#8 Ed25519", () => pem.ed25519Pkcs8],
    ["PKCS#8 EC", () => pem.leafKeyPkcs8],
    ["SEC1 EC PRIVATE KEY", () => pem.ecSec1],
    ["PKCS#1 RSA PRIVATE KEY", () => pem.rsaPkcs1],
  ])("accepts a %s key", (_, key) => expectValid("SSH_KEY", utf8(key())));

  it("refuses two keys", () => {
    expectInvalid("SSH_KEY", utf8(pem.openssh + pem.ed25519Pkcs8), /exactly one private key block$/);
  });
  it("refuses no block at all, e.g. a public key line", () => {
    expectInvalid("SSH_KEY", utf8(`ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI ${MARKER}@host`), /holds text outside PEM blocks$/);
  });
  it("refuses an OpenSSH block whose body is not openssh-key-v1", () => {
    const bogus = pemBlock("OPENSSH PRIVATE KEY", Buffer.concat([utf8(`openssh-key-v2\u0000${MARKER}`), randomBytes(64)]));
    expectInvalid("SSH_KEY", utf8(bogus), /does not start with openssh-key-v1$/);
  });
  it.each([
    ["a PUBLIC KEY block", () => pem.publicKey],
    ["a CERTIFICATE block", () => pem.leafCert],
    ["a PRIVATE KEY block that does not parse", () => pemBlock("PRIVATE KEY", Buffer.concat([utf8(MARKER), randomBytes(80)]))],
    ["an ENCRYPTED PRIVATE KEY block", () => pemBlock("ENCRYPTED PRIVATE KEY", Buffer.concat([utf8(MARKER), randomBytes(80)]))],
  ])("refuses %s", (_, value) => {
    expectInvalid("SSH_KEY", utf8(value()), /neither an OpenSSH nor a PEM private key$/);
  });
  it("refuses text around the key", () => {
    expectInvalid("SSH_KEY", utf8(`${pem.openssh}comment: ${MARKER}\n`), /holds text outside PEM blocks$/);
  });
});

describe("PEM values built to be slow", () => {
  it("are refused unread past 16 blocks, at once", () => {
    const value = Buffer.from("-----BEGIN A-----\n".repeat(3_600));
    const started = performance.now();
    expect(() => checkValue("PEM_CERTIFICATE", value)).toThrow("it holds more than 16 PEM blocks");
    expect(() => checkValue("SSH_KEY", value)).toThrow("it holds more than 16 PEM blocks");
    expect(performance.now() - started).toBeLessThan(50);
  });
});
