import { execFile, spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService, SecretType } from "../../gen/keyward/v1/secrets_pb.js";
import { createCertificateAuthority, issueCertificate } from "../../src/dev/pki.js";
import { connectClient } from "../helpers/clients.js";
import { REPO_ROOT } from "../helpers/keyward-process.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/**
 * The programs in examples/ — curl through the Connect protocol, and Python
 * grpcio with stubs generated from the protos — run as child processes
 * against a real Keyward over mTLS: once with their defaults (the file layout
 * `npm start` creates and the names README's recipes create), once with every
 * setting given, and with certificates the server refuses or the policy
 * denies, which must make them fail.
 */

const CURL_EXAMPLE = join(REPO_ROOT, "examples/curl.sh");
const PYTHON = "/usr/bin/python3";
const PYTHON_EXAMPLE = join(REPO_ROOT, "examples/python/keyward_example.py");
const PYTHON_INSTALL_HINT = "apt-get update && apt-get install -y python3-grpcio python3-grpc-tools";
const PYTHON_GRPC = spawnSync(PYTHON, ["-c", "import grpc, grpc_tools"], { stdio: "ignore" }).status === 0;
if (!PYTHON_GRPC) {
  console.warn(`${PYTHON} cannot import grpc and grpc_tools: the Python example's tests are SKIPPED. Install with: ${PYTHON_INSTALL_HINT}`);
}

/** Secret values the examples read: they must never print them. */
const DEMO_VALUE = "demo-token-3f9a1c";
const SHOP_VALUE = "shop-token-77e2b0";

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `command` in `cwd` with exactly `env` plus PATH, so nothing from the runner's environment leaks in. */
function run(command: string, args: readonly string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { cwd, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** The names an example run uses, and what it must print about them. */
interface Expected {
  readonly encryptKey: string;
  readonly signKey: string;
  readonly secretVersion: string;
  /** Size of a signature by signKey, as a regular expression (ECDSA's DER signatures vary). */
  readonly signatureBytes: string;
  readonly secretBytes: number;
}

/** What both examples print when every call succeeds (the ciphertext's size depends on the key's name). */
function expectedOutput(expected: Expected, messageBytes: number): RegExp[] {
  return [
    new RegExp(`^encrypt  ${expected.encryptKey}/versions/1: ${messageBytes} bytes -> \\d+ bytes of ciphertext$`),
    new RegExp(`^decrypt  ${expected.encryptKey}/versions/1: round trip ok$`),
    new RegExp(`^sign     ${expected.signKey}/versions/1: ${expected.signatureBytes} bytes of signature$`),
    new RegExp(`^verify   ${expected.signKey}/versions/1: valid$`),
    new RegExp(`^access   ${expected.secretVersion}: ${expected.secretBytes} bytes \\(value not shown\\)$`),
  ];
}

function expectSuccess(result: Run, expected: RegExp[]): void {
  expect(result.stderr).toBe("");
  expect(result.code).toBe(0);
  const lines = result.stdout.split("\n").filter(Boolean);
  expect(lines).toHaveLength(expected.length);
  lines.forEach((line, i) => expect(line).toMatch(expected[i]!));
  expect(result.stdout).not.toContain(DEMO_VALUE);
  expect(result.stdout).not.toContain(SHOP_VALUE);
}

describe("examples/ against Keyward over mTLS", () => {
  let keyward: TestKeyward;
  /** A folder laid out like a checkout after `npm start`: `.keyward` is the test server's data folder. */
  let checkout: string;
  /** A certificate and key from a CA the server does not trust, for the dev identity `service`. */
  let intruder: { cert: string; key: string };
  /** Settings naming everything explicitly: the second set of keys and secret. */
  let named: { url: string; ca: string; cert: string; key: string; encryptKey: string; signKey: string; secret: string };
  const DEMO: Expected = {
    encryptKey: "keys/demo",
    signKey: "keys/demo-signing",
    secretVersion: "secrets/demo/dev/api-token/versions/1",
    signatureBytes: "64",
    secretBytes: DEMO_VALUE.length,
  };
  const SHOP: Expected = {
    encryptKey: "keys/orders",
    signKey: "keys/releases",
    secretVersion: "secrets/shop/prod/db/token/versions/1",
    // ECDSA P-256 signatures are DER: 70 to 72 bytes.
    signatureBytes: "7[0-2]",
    secretBytes: SHOP_VALUE.length,
  };

  beforeAll(async () => {
    keyward = await startTestKeyward();
    const admin = await keyward.credentials("admin");
    const keys = connectClient(KeysService, keyward.url, admin);
    const secretsAdmin = connectClient(SecretsService, keyward.url, admin);
    const secretsService = connectClient(SecretsService, keyward.url, await keyward.credentials("service"));
    const createKey = (keyId: string, purpose: KeyPurpose, algorithm: KeyAlgorithm) => keys.createKey({ keyId, key: { purpose, algorithm } });
    await createKey("demo", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM);
    await createKey("demo-signing", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ED25519);
    await createKey("orders", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.CHACHA20_POLY1305);
    await createKey("releases", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ECDSA_P256_SHA256);
    for (const [parent, secretId, value] of [
      ["secrets/demo/dev", "api-token", DEMO_VALUE],
      ["secrets/shop/prod", "db/token", SHOP_VALUE],
    ] as const) {
      await secretsAdmin.createSecret({ parent, secretId, secret: { type: SecretType.API_KEY } });
      await secretsService.addSecretVersion({ parent: `${parent}/${secretId}`, payload: { data: Buffer.from(value) } });
    }

    checkout = await mkdtemp(join(tmpdir(), "keyward-examples-"));
    await symlink(keyward.dataDir, join(checkout, ".keyward"));
    const otherCa = await createCertificateAuthority({ commonName: "Some other CA" });
    const issued = await issueCertificate(otherCa, { commonName: "service", usage: "client", spiffeId: "spiffe://keyward.local/service" });
    await mkdir(join(checkout, "intruder"));
    intruder = { cert: join(checkout, "intruder/service.crt"), key: join(checkout, "intruder/service.key") };
    await writeFile(intruder.cert, issued.certPem);
    await writeFile(intruder.key, issued.keyPem, { mode: 0o600 });
    named = {
      url: keyward.url,
      ca: keyward.pki.caCert,
      ...keyward.pki.client("service"),
      encryptKey: SHOP.encryptKey,
      signKey: SHOP.signKey,
      secret: "secrets/shop/prod/db/token",
    };
  });
  afterAll(async () => {
    await keyward?.close();
    if (checkout !== undefined) {
      await rm(checkout, { recursive: true, force: true });
    }
  });

  /** The access log's successful calls by the dev identity `service` since log line `from`, as method names. */
  const serviceCallsSince = (from: number) =>
    keyward.logs
      .slice(from)
      .map((line) => JSON.parse(line) as { msg?: string; method?: string; identity?: string; code?: string })
      .filter((entry) => entry.msg === "call" && entry.identity === "spiffe://keyward.local/service")
      .map((entry) => entry.method);
  const FIVE_CALLS = [
    "/keyward.v1.CryptoService/Encrypt",
    "/keyward.v1.CryptoService/Decrypt",
    "/keyward.v1.CryptoService/Sign",
    "/keyward.v1.CryptoService/Verify",
    "/keyward.v1.SecretsService/AccessSecretVersion",
  ];

  describe("curl.sh (Connect protocol, JSON)", () => {
    const MESSAGE_BYTES = "hello from examples/curl.sh".length;
    const env = (settings: typeof named) => ({
      KEYWARD_URL: settings.url,
      KEYWARD_CA: settings.ca,
      KEYWARD_CERT: settings.cert,
      KEYWARD_KEY: settings.key,
      KEYWARD_ENCRYPT_KEY: settings.encryptKey,
      KEYWARD_SIGN_KEY: settings.signKey,
      KEYWARD_SECRET: settings.secret,
    });

    it("with its defaults, from a checkout where npm start has run, calls all five RPCs as SERVICE", async () => {
      const from = keyward.logs.length;
      // The defaults point at 127.0.0.1:8443; only the port differs here.
      const result = await run(CURL_EXAMPLE, [], checkout, { KEYWARD_URL: keyward.url });
      expectSuccess(result, expectedOutput(DEMO, MESSAGE_BYTES));
      expect(serviceCallsSince(from)).toEqual(FIVE_CALLS);
    });

    it("with every setting from the environment, anywhere", async () => {
      const result = await run(CURL_EXAMPLE, [], tmpdir(), env(named));
      expectSuccess(result, expectedOutput(SHOP, MESSAGE_BYTES));
    });

    it("fails, naming the call, the HTTP status and the Connect code, when the policy denies the identity", async () => {
      const admin = keyward.pki.client("admin");
      const result = await run(CURL_EXAMPLE, [], checkout, { ...env(named), KEYWARD_CERT: admin.cert, KEYWARD_KEY: admin.key });
      expect(result.code).toBe(1);
      expect(result.stdout).toBe("");
      expect(result.stderr).toBe(
        "curl.sh: Encrypt failed: HTTP 403 permission_denied: spiffe://keyward.local/admin may not call keyward.v1.CryptoService/Encrypt: it requires the SERVICE role\n",
      );
    });

    it("fails when the server refuses the client certificate (another CA)", async () => {
      const result = await run(CURL_EXAMPLE, [], checkout, { ...env(named), KEYWARD_CERT: intruder.cert, KEYWARD_KEY: intruder.key });
      expect(result.code).toBe(1);
      expect(result.stdout).toBe("");
      expect(result.stderr).toMatch(new RegExp(`curl.sh: Encrypt: no answer from ${keyward.url}\\n$`));
    });

    it("fails at once when a certificate file is missing", async () => {
      const result = await run(CURL_EXAMPLE, [], join(checkout, "intruder"), { KEYWARD_URL: keyward.url });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/^curl\.sh: cannot read \.keyward\/pki\/ca\.crt /);
    });
  });

  describe("python/keyward_example.py (grpcio)", () => {
    const MESSAGE_BYTES = "hello from examples/python".length;
    const skipped = PYTHON_GRPC ? "" : ` (SKIPPED: ${PYTHON} lacks grpc/grpc_tools; install with: ${PYTHON_INSTALL_HINT})`;
    let stubs: string | undefined;
    const python = (args: readonly string[], cwd: string, env: Record<string, string> = {}) =>
      run(PYTHON, [PYTHON_EXAMPLE, ...args], cwd, { PYTHONPATH: stubs!, ...env });
    const args = (settings: typeof named) => [
      "--url",
      settings.url,
      "--ca",
      settings.ca,
      "--cert",
      settings.cert,
      "--key",
      settings.key,
      "--encrypt-key",
      settings.encryptKey,
      "--sign-key",
      settings.signKey,
      "--secret",
      settings.secret,
    ];

    beforeAll(async () => {
      if (!PYTHON_GRPC) {
        return;
      }
      // As examples/python/README.md says: buf's image of the protos, then the stubs from it.
      stubs = await mkdtemp(join(tmpdir(), "keyward-python-stubs-"));
      const image = join(stubs, "keyward.binpb");
      const build = await run(join(REPO_ROOT, "node_modules/.bin/buf"), ["build", "-o", image], REPO_ROOT, { HOME: process.env.HOME ?? tmpdir() });
      expect(build.stderr).toBe("");
      const generate = await run(PYTHON, [join(REPO_ROOT, "examples/python/generate_stubs.py"), image, stubs], REPO_ROOT);
      expect(generate.stderr).toBe("");
      expect(generate.code).toBe(0);
    });
    afterAll(async () => {
      if (stubs !== undefined) {
        await rm(stubs, { recursive: true, force: true });
      }
    });

    it.skipIf(!PYTHON_GRPC)(`with its defaults, from a checkout where npm start has run, calls all five RPCs as SERVICE${skipped}`, async () => {
      const from = keyward.logs.length;
      // The URL may also be given as host:port; only the port differs from the default.
      const result = await python(["--url", `127.0.0.1:${keyward.port}`], checkout);
      expectSuccess(result, expectedOutput(DEMO, MESSAGE_BYTES));
      expect(serviceCallsSince(from)).toEqual(FIVE_CALLS);
    });

    it.skipIf(!PYTHON_GRPC)(`with every setting as an argument, anywhere${skipped}`, async () => {
      const result = await python(args(named), tmpdir());
      expectSuccess(result, expectedOutput(SHOP, MESSAGE_BYTES));
    });

    it.skipIf(!PYTHON_GRPC)(`reads its settings from the environment${skipped}`, async () => {
      const result = await python([], tmpdir(), {
        KEYWARD_URL: named.url,
        KEYWARD_CA: named.ca,
        KEYWARD_CERT: named.cert,
        KEYWARD_KEY: named.key,
        KEYWARD_ENCRYPT_KEY: named.encryptKey,
        KEYWARD_SIGN_KEY: named.signKey,
        KEYWARD_SECRET: `${named.secret}/versions/1`,
      });
      expect(result.stderr).toBe("");
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/^encrypt  keys\/orders\/versions\/1: /);
      expect(result.stdout).toMatch(/\naccess   secrets\/shop\/prod\/db\/token\/versions\/1: 17 bytes/);
    });

    it.skipIf(!PYTHON_GRPC)(`fails, naming the call and the gRPC code, when the policy denies the identity${skipped}`, async () => {
      const admin = keyward.pki.client("admin");
      const result = await python(args({ ...named, cert: admin.cert, key: admin.key }), checkout);
      expect(result.code).toBe(1);
      expect(result.stdout).toBe("");
      expect(result.stderr).toBe(
        "keyward_example: Encrypt failed: PERMISSION_DENIED: spiffe://keyward.local/admin may not call keyward.v1.CryptoService/Encrypt: it requires the SERVICE role\n",
      );
    });

    it.skipIf(!PYTHON_GRPC)(`fails when the server refuses the client certificate (another CA)${skipped}`, async () => {
      const result = await python(args({ ...named, ...intruder }), checkout);
      expect(result.code).toBe(1);
      expect(result.stdout).toBe("");
      expect(result.stderr).toMatch(/^keyward_example: Encrypt failed: UNAVAILABLE: /);
    });
  });
});
