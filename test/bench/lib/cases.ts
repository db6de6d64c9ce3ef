/**
 * The benchmark's cases: what each one calls, and selecting them by id. Pure.
 * How each case is called lives in operations.ts.
 */

/** One kind of call the bench measures. */
export interface BenchCase {
  /** Stable id, used by `--cases` and in the JSON output. */
  readonly id: string;
  /** What the tables and the chart call it. */
  readonly label: string;
  /** The RPC, `Service/Method`. */
  readonly rpc: string;
  /** Items per call: a batch's size, else 1. items/s = calls/s × this. */
  readonly itemsPerCall: number;
}

/** grpc.health.v1.Health/Check: the transport, TLS, authentication, access log and audit, and nothing else. */
export const BASELINE: BenchCase = {
  id: "baseline",
  label: "Health/Check (baseline)",
  rpc: "grpc.health.v1.Health/Check",
  itemsPerCall: 1,
};

const crypto = (id: string, label: string, method: string, itemsPerCall = 1): BenchCase => ({
  id,
  label,
  rpc: `keyward.v1.CryptoService/${method}`,
  itemsPerCall,
});

/** Every case, in the order they run and are reported. */
export const CASES: readonly BenchCase[] = [
  crypto("encrypt-32b", "Encrypt 32 B", "Encrypt"),
  crypto("encrypt-1k", "Encrypt 1 KiB", "Encrypt"),
  crypto("encrypt-64k", "Encrypt 64 KiB", "Encrypt"),
  crypto("decrypt-32b", "Decrypt 32 B", "Decrypt"),
  crypto("decrypt-1k", "Decrypt 1 KiB", "Decrypt"),
  crypto("decrypt-64k", "Decrypt 64 KiB", "Decrypt"),
  crypto("reencrypt-1k", "ReEncrypt 1 KiB to another key", "ReEncrypt"),
  crypto("generate-data-key", "GenerateDataKey AES-256", "GenerateDataKey"),
  crypto("sign-ed25519", "Sign Ed25519", "Sign"),
  crypto("sign-p256", "Sign ECDSA P-256", "Sign"),
  crypto("sign-rsa2048", "Sign RSA-PSS-2048", "Sign"),
  crypto("verify-ed25519", "Verify Ed25519", "Verify"),
  crypto("verify-p256", "Verify ECDSA P-256", "Verify"),
  crypto("verify-rsa2048", "Verify RSA-PSS-2048", "Verify"),
  crypto("mac-1k", "Mac HMAC-SHA256 1 KiB", "Mac"),
  {
    id: "access-secret-1k",
    label: "AccessSecretVersion 1 KiB",
    rpc: "keyward.v1.SecretsService/AccessSecretVersion",
    itemsPerCall: 1,
  },
  {
    id: "add-secret-version-1k",
    label: "AddSecretVersion 1 KiB",
    rpc: "keyward.v1.SecretsService/AddSecretVersion",
    itemsPerCall: 1,
  },
  crypto("batch-encrypt-1", "BatchEncrypt 1 × 1 KiB", "BatchEncrypt", 1),
  crypto("batch-encrypt-16", "BatchEncrypt 16 × 1 KiB", "BatchEncrypt", 16),
  crypto("batch-encrypt-256", "BatchEncrypt 256 × 1 KiB", "BatchEncrypt", 256),
];

/** `--quick`: the cases with targets, plus one write. */
export const QUICK_CASE_IDS: readonly string[] = [
  "encrypt-1k",
  "decrypt-1k",
  "sign-p256",
  "access-secret-1k",
  "add-secret-version-1k",
  "batch-encrypt-256",
];

/** The case with this id, the baseline included. */
export function caseById(id: string): BenchCase | undefined {
  return id === BASELINE.id ? BASELINE : CASES.find((c) => c.id === id);
}

/** A glob over case ids: `*` any run of characters, `?` one character; anything else is literal. */
export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\*?]/g, (ch) => (ch === "*" ? ".*" : ch === "?" ? "." : `\\${ch}`));
  return new RegExp(`^${body}$`);
}

export type CaseSelection =
  | { readonly kind: "selected"; readonly cases: readonly BenchCase[] }
  | { readonly kind: "invalid"; readonly message: string };

/**
 * The cases whose ids match any of the comma-separated globs in `spec`, in
 * catalogue order. The baseline always runs and is not selectable. A pattern
 * that matches no case is an error (a typo would otherwise silently measure
 * less than asked for).
 */
export function selectCases(spec: string): CaseSelection {
  const patterns = spec
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p !== "");
  if (patterns.length === 0) {
    return { kind: "invalid", message: "--cases needs at least one case id or glob" };
  }
  const chosen = new Set<string>();
  for (const pattern of patterns) {
    const re = globToRegExp(pattern);
    const matches = CASES.filter((c) => re.test(c.id));
    if (matches.length === 0) {
      return {
        kind: "invalid",
        message: `--cases: "${pattern}" matches no case; the cases are: ${CASES.map((c) => c.id).join(", ")}`,
      };
    }
    for (const c of matches) chosen.add(c.id);
  }
  return { kind: "selected", cases: CASES.filter((c) => chosen.has(c.id)) };
}
