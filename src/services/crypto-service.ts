import { Code, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { CryptoService, DataKeySpec } from "../../gen/keyward/v1/crypto_pb.js";
import { DecryptionError, DECRYPTION_FAILED } from "../crypto/aead.js";
import { crc32c } from "../crypto/crc32c.js";
import type { SignInput } from "../crypto/signing.js";
import { DomainError } from "../domain/errors.js";
import type { CryptoOperations } from "../domain/keys/crypto-operations.js";
import { kAuditDetail, kAuditKeyVersion } from "../server/context.js";
import { ERROR_CODES } from "../server/error-codes.js";
import { splitVersionName } from "./key-convert.js";

const EMPTY = new Uint8Array(0);

const DATA_KEY_LENGTHS: Readonly<Record<number, number>> = {
  [DataKeySpec.AES_256]: 32,
  [DataKeySpec.AES_128]: 16,
};

/**
 * A decryption failure becomes the one opaque answer; its precise reason
 * goes to the audit event only (never plaintext or key bytes: the crypto
 * core's reasons name lengths, keys and versions).
 */
function opaque(err: unknown, context: HandlerContext): unknown {
  if (err instanceof DecryptionError) {
    const cause = err.cause instanceof Error ? err.cause.message : "";
    context.values.set(kAuditDetail, cause.slice(0, 300));
    return new DomainError("invalid-argument", DECRYPTION_FAILED);
  }
  return err;
}

function checkCrc(data: Uint8Array, expected: number | undefined, field: string): boolean {
  if (expected === undefined) {
    return false;
  }
  if (crc32c(data) !== expected) {
    throw new DomainError("invalid-argument", `${field} does not match the data received; it was corrupted in transit`);
  }
  return true;
}

function signInput(input: { case: "message" | "digest"; value: Uint8Array } | { case: undefined }): SignInput {
  // Validation requires one of the two.
  return input.case === "digest" ? { digest: input.value } : { message: input.case === "message" ? input.value : EMPTY };
}

/** Batch items report errors as codes and caller-safe messages, like the unary calls would. */
function itemError(err: unknown): { code: number; message: string } {
  if (err instanceof DecryptionError) {
    return { code: Code.InvalidArgument, message: DECRYPTION_FAILED };
  }
  if (err instanceof DomainError) {
    return { code: ERROR_CODES[err.kind], message: err.message.slice(0, 1024) };
  }
  if (err instanceof RangeError) {
    return { code: Code.InvalidArgument, message: "item is out of range" };
  }
  return { code: Code.Internal, message: "internal error" };
}

/** CryptoService: every RPC for role SERVICE; key material never leaves the operations. */
export function createCryptoService(deps: { crypto: CryptoOperations }): ServiceImpl<typeof CryptoService> {
  const { crypto } = deps;
  const used = (context: HandlerContext, keyVersion: string) => context.values.set(kAuditKeyVersion, keyVersion);

  return {
    async encrypt(request, context) {
      const verified = checkCrc(request.plaintext, request.plaintextCrc32c, "plaintext_crc32c");
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.encrypt(keyName, version, request.plaintext, request.associatedData);
      used(context, out.keyVersion);
      return {
        ciphertext: out.ciphertext,
        keyVersion: out.keyVersion,
        ciphertextCrc32c: crc32c(out.ciphertext),
        verifiedPlaintextCrc32c: verified,
      };
    },

    async decrypt(request, context) {
      checkCrc(request.ciphertext, request.ciphertextCrc32c, "ciphertext_crc32c");
      try {
        const out = await crypto.decrypt(request.name, request.ciphertext, request.associatedData);
        used(context, out.keyVersion);
        return { plaintext: out.plaintext, keyVersion: out.keyVersion, plaintextCrc32c: crc32c(out.plaintext) };
      } catch (err) {
        throw opaque(err, context);
      }
    },

    async reEncrypt(request, context) {
      const destination = splitVersionName(request.destinationKey === "" ? request.name : request.destinationKey);
      try {
        const out = await crypto.reEncrypt(request.name, request.ciphertext, request.associatedData, {
          name: destination.keyName,
          version: destination.version,
          aad: request.destinationAssociatedData ?? request.associatedData,
        });
        used(context, `${out.sourceKeyVersion} -> ${out.keyVersion}`);
        return { ciphertext: out.ciphertext, sourceKeyVersion: out.sourceKeyVersion, keyVersion: out.keyVersion };
      } catch (err) {
        throw opaque(err, context);
      }
    },

    async generateDataKey(request, context) {
      const length = request.length.case === "keySpec" ? DATA_KEY_LENGTHS[request.length.value]! : request.length.value!;
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.generateDataKey(keyName, version, length, request.associatedData);
      used(context, out.keyVersion);
      return out;
    },

    async generateDataKeyWithoutPlaintext(request, context) {
      const length = request.length.case === "keySpec" ? DATA_KEY_LENGTHS[request.length.value]! : request.length.value!;
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.generateDataKey(keyName, version, length, request.associatedData);
      out.plaintext.fill(0);
      used(context, out.keyVersion);
      return { ciphertext: out.ciphertext, keyVersion: out.keyVersion };
    },

    async sign(request, context) {
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.sign(keyName, version, signInput(request.input));
      used(context, out.keyVersion);
      return out;
    },

    async verify(request, context) {
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.verify(keyName, version, signInput(request.input), request.signature);
      used(context, out.keyVersion);
      return out;
    },

    async mac(request, context) {
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.mac(keyName, version, request.data);
      used(context, out.keyVersion);
      return out;
    },

    async verifyMac(request, context) {
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.verifyMac(keyName, version, request.data, request.mac);
      used(context, out.keyVersion);
      return out;
    },

    async batchEncrypt(request, context) {
      const { keyName, version } = splitVersionName(request.name);
      const out = await crypto.batchEncrypt(
        keyName,
        version,
        request.items.map((item) => ({ plaintext: item.plaintext, aad: item.associatedData })),
      );
      used(context, out.keyVersion);
      return {
        keyVersion: out.keyVersion,
        results: out.results.map((r) =>
          r.ok ? { result: { case: "ciphertext", value: r.value } } : { result: { case: "error", value: itemError(r.error) } },
        ),
      };
    },

    async batchDecrypt(request, context) {
      const results = await crypto.batchDecrypt(
        request.name,
        request.items.map((item) => ({ ciphertext: item.ciphertext, aad: item.associatedData })),
      );
      const failures = results.filter((r) => !r.ok).length;
      if (failures > 0) {
        context.values.set(kAuditDetail, `${failures} of ${results.length} items failed`);
      }
      const versions = [...new Set(results.flatMap((r) => (r.ok ? [r.keyVersion] : [])))];
      used(context, versions.join(","));
      return {
        results: results.map((r) =>
          r.ok
            ? { keyVersion: r.keyVersion, result: { case: "plaintext", value: r.value } }
            : { result: { case: "error", value: itemError(r.error) } },
        ),
      };
    },
  };
}
