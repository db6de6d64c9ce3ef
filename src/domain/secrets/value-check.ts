import { createPrivateKey, X509Certificate } from "node:crypto";
import { parseAllDocuments } from "yaml";
import { DomainError } from "../errors.js";
import type { SecretType } from "./secret.js";

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const invalid = (type: SecretType, what: string) =>
  new DomainError("invalid-argument", `the value is not a valid ${type} secret: ${what}`);

function text(type: SecretType, value: Uint8Array): string {
  try {
    return UTF8.decode(value);
  } catch {
    throw invalid(type, "it is not UTF-8");
  }
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;
const PRIVATE_KEY_LABELS = ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"];

/** More PEM blocks than any certificate chain or key file holds; past it the value is refused unread. */
const MAX_PEM_BLOCKS = 16;

function pemBlocks(type: SecretType, value: string): Array<{ label: string; pem: string }> {
  // Counted before the block pattern runs: its cost grows with the number
  // of BEGIN lines times the length, and a caller chooses both.
  if ((value.match(/-----BEGIN /g)?.length ?? 0) > MAX_PEM_BLOCKS) {
    throw invalid(type, `it holds more than ${MAX_PEM_BLOCKS} PEM blocks`);
  }
  const blocks = [...value.matchAll(PEM_BLOCK)].map((m) => ({ label: m[1]!, pem: m[0] }));
  const rest = value.replace(PEM_BLOCK, "").trim();
  if (rest !== "") {
    throw invalid(type, "it holds text outside PEM blocks");
  }
  return blocks;
}

function parsesAsPrivateKey(pem: string): boolean {
  try {
    createPrivateKey(pem);
    return true;
  } catch {
    return false;
  }
}

/**
 * Checks a value against its secret type (secrets.proto SecretType). The
 * message says what is wrong with the value, by position or kind, and never
 * quotes it.
 *
 * @throws DomainError "invalid-argument"
 */
export function checkValue(type: SecretType, value: Uint8Array): void {
  switch (type) {
    case "OPAQUE":
      return;
    case "PASSWORD": {
      if (value.length > 1024) throw invalid(type, "it is longer than 1024 bytes");
      const s = text(type, value);
      const at = s.search(/[\u0000-\u001f\u007f]/);
      if (at !== -1) throw invalid(type, `it holds a control character at position ${at}`);
      return;
    }
    case "API_KEY": {
      if (value.length > 4096) throw invalid(type, "it is longer than 4096 bytes");
      const at = value.findIndex((b) => b < 0x21 || b > 0x7e);
      if (at !== -1) throw invalid(type, `byte ${at} is not printable ASCII without whitespace`);
      return;
    }
    case "JSON": {
      const s = text(type, value);
      try {
        JSON.parse(s);
      } catch {
        throw invalid(type, "it does not parse as JSON");
      }
      return;
    }
    case "YAML": {
      const docs = parseAllDocuments(text(type, value));
      const list = Array.isArray(docs) ? docs : [docs];
      if (list.length !== 1) throw invalid(type, `it holds ${list.length} YAML documents, not one`);
      const doc = list[0]!;
      if (doc.errors.length > 0) {
        const line = doc.errors[0]!.linePos?.[0]?.line;
        throw invalid(type, `it does not parse as YAML${line === undefined ? "" : ` (line ${line})`}`);
      }
      return;
    }
    case "PEM_CERTIFICATE": {
      const blocks = pemBlocks(type, text(type, value));
      const certificates = blocks.filter((b) => b.label === "CERTIFICATE");
      const keys = blocks.filter((b) => PRIVATE_KEY_LABELS.includes(b.label));
      if (certificates.length === 0) throw invalid(type, "it holds no CERTIFICATE block");
      if (certificates.length + keys.length !== blocks.length) throw invalid(type, "it holds a PEM block that is neither a certificate nor a private key");
      if (keys.length > 1) throw invalid(type, "it holds more than one private key");
      certificates.forEach((c, i) => {
        try {
          new X509Certificate(c.pem);
        } catch {
          throw invalid(type, `certificate ${i + 1} does not parse as X.509`);
        }
      });
      if (keys.length === 1 && !parsesAsPrivateKey(keys[0]!.pem)) throw invalid(type, "its private key does not parse");
      return;
    }
    case "SSH_KEY": {
      const blocks = pemBlocks(type, text(type, value));
      if (blocks.length !== 1) throw invalid(type, "it must hold exactly one private key block");
      const [block] = blocks;
      if (block!.label === "OPENSSH PRIVATE KEY") {
        const body = Buffer.from(block!.pem.split("\n").slice(1, -1).join(""), "base64");
        if (!body.subarray(0, 15).equals(Buffer.from("openssh-key-v1\u0000"))) throw invalid(type, "the OpenSSH key does not start with openssh-key-v1");
        return;
      }
      if (!PRIVATE_KEY_LABELS.includes(block!.label) || !parsesAsPrivateKey(block!.pem)) {
        throw invalid(type, "it is neither an OpenSSH nor a PEM private key");
      }
      return;
    }
  }
}
