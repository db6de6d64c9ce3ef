import { randomBytes } from "node:crypto";
import http2 from "node:http2";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { issueCertificate, loadDevCertificateAuthority } from "../../src/dev/pki.js";
import { INFRASTRUCTURE_SERVICES, KEYWARD_SERVICES } from "../../src/main.js";
import { LIVENESS_PATH, METRICS_PATH, READINESS_PATH } from "../../src/server/metrics.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type ClientCredentials, type TestKeyward } from "../helpers/keyward.js";

/**
 * The Prometheus endpoint (README "Metrics"): off unless KEYWARD_METRICS_LISTEN
 * is set; when on, it answers the probes too (/readyz, /livez), calls are
 * counted and timed by method and code, the audit, pool, key cache and rewrap
 * figures are there, and no label or line carries an identity, a key or
 * secret name, or anything a caller sent.
 */

/** gRPC's canonical code names (grpc/status.proto), the only values `code` may take. */
const GRPC_CODES = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
  "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];
const SERVED_PATHS = new Set(
  [...KEYWARD_SERVICES, ...INFRASTRUCTURE_SERVICES].flatMap((s) => s.methods.map((m) => `/${s.typeName}/${m.name}`)),
);
/** Every label a keyward_* series may carry, with the values it may take. */
const KEYWARD_LABELS: Record<string, (value: string) => boolean> = {
  method: (v) => v === "unknown" || SERVED_PATHS.has(v),
  code: (v) => GRPC_CODES.includes(v),
  pool: (v) => v === "main" || v === "audit",
  le: (v) => v === "+Inf" || Number.isFinite(Number(v)),
};

interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
  readonly line: string;
}

/** Parses the text exposition format's sample lines. */
function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    expect(match, `not a sample line: ${line}`).not.toBeNull();
    const labels: Record<string, string> = {};
    for (const [, name, value] of match![2]?.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g) ?? []) {
      labels[name!] = value!;
    }
    samples.push({ name: match![1]!, labels, value: Number(match![3]), line });
  }
  return samples;
}

/** The value of the one sample named `name` whose labels include `labels`; undefined when there is none. */
function valueOf(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  expect(found.length, `${name} ${JSON.stringify(labels)}`).toBeLessThanOrEqual(1);
  return found[0]?.value;
}

/** `keyward_rpc_calls_total` as "method code" → count. */
function callCounts(samples: readonly Sample[]): Record<string, number> {
  return Object.fromEntries(
    samples.filter((s) => s.name === "keyward_rpc_calls_total").map((s) => [`${s.labels.method} ${s.labels.code}`, s.value]),
  );
}

async function fetchMetrics(port: number, path = "/metrics", method = "GET"): Promise<Response> {
  return fetch(`http://127.0.0.1:${port}${path}`, { method });
}

/** Sends a gRPC request for `path` over mTLS and returns the HTTP status (the router does not know the path). */
async function rawGrpcStatus(url: string, credentials: ClientCredentials, path: string): Promise<number> {
  const session = http2.connect(url, { ca: credentials.ca, cert: credentials.cert, key: credentials.key });
  try {
    return await new Promise<number>((resolve, reject) => {
      session.once("error", reject);
      const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
      stream.once("response", (headers) => resolve(Number(headers[":status"])));
      stream.once("error", reject);
      stream.resume();
      stream.end(Buffer.alloc(5));
    });
  } finally {
    session.close();
  }
}

describe("metrics endpoint", () => {
  const tag = randomBytes(4).toString("hex");
  const keyId = `metricsmarker-${tag}`;
  const keyName = `keys/${keyId}`;
  const secretParent = "secrets/metricsproj/prod";
  const secretId = `markerpath-${tag}`;
  const secretName = `${secretParent}/${secretId}`;
  const plaintextMarker = `PLAINTEXT-MARKER-${tag}`;
  const secretMarker = `SECRET-VALUE-MARKER-${tag}`;
  const strangerName = `metrics-stranger-${tag}`;
  const forbidden = [
    keyId,
    secretId,
    "metricsproj",
    plaintextMarker,
    Buffer.from(plaintextMarker).toString("base64"),
    Buffer.from(plaintextMarker).toString("hex"),
    secretMarker,
    Buffer.from(secretMarker).toString("base64"),
    Buffer.from(secretMarker).toString("hex"),
    strangerName,
    "keyward.local",
    "spiffe:",
    "MetricsMarkerNoSuchMethod",
  ];

  let keyward: TestKeyward;
  let port: number;
  let keysAdmin: Client<typeof KeysService>;
  let cryptoService: Client<typeof CryptoService>;
  let cryptoAdmin: Client<typeof CryptoService>;
  let cryptoStranger: Client<typeof CryptoService>;
  let secretsAdmin: Client<typeof SecretsService>;
  let secretsService: Client<typeof SecretsService>;
  /** "method code" → how many calls the test made that ended so. */
  const made: Record<string, number> = {};

  /** Runs a call, checks it ends with `code`, and tallies it. */
  async function call<T>(method: string, code: Code | "OK", run: () => Promise<T>): Promise<T | undefined> {
    let result: T | undefined;
    let got: string;
    try {
      result = await run();
      got = "OK";
    } catch (err) {
      got = Code[ConnectError.from(err).code]!;
    }
    expect(got, method).toBe(code === "OK" ? "OK" : Code[code]);
    const expectedName = code === "OK" ? "OK" : GRPC_CODES[code]!;
    const key = `/keyward.v1.${method} ${expectedName}`;
    made[key] = (made[key] ?? 0) + 1;
    return result;
  }

  beforeAll(async () => {
    keyward = await startTestKeyward({
      KEYWARD_METRICS_LISTEN: "127.0.0.1:0",
      // The rewrap job runs once at start and then not again during the
      // test, so the backlog a rotation leaves stays to be seen.
      KEYWARD_SECRET_REWRAP_INTERVAL_MS: "86400000",
    });
    port = keyward.running.metricsAddress!.port;
    const admin = await keyward.credentials("admin");
    const service = await keyward.credentials("service");
    const ca = await loadDevCertificateAuthority(keyward.pki.dir);
    const issued = await issueCertificate(ca, { commonName: strangerName, usage: "client", spiffeId: `spiffe://keyward.local/${strangerName}` });
    const stranger = { ca: admin.ca, cert: Buffer.from(issued.certPem), key: Buffer.from(issued.keyPem) };
    keysAdmin = connectClient(KeysService, keyward.url, admin);
    cryptoService = connectClient(CryptoService, keyward.url, service);
    cryptoAdmin = connectClient(CryptoService, keyward.url, admin);
    cryptoStranger = connectClient(CryptoService, keyward.url, stranger);
    secretsAdmin = connectClient(SecretsService, keyward.url, admin);
    secretsService = connectClient(SecretsService, keyward.url, service);
  });
  afterAll(() => keyward?.close());

  it("listens on the configured loopback address and logs it", () => {
    const address = keyward.running.metricsAddress!;
    expect(address.address).toBe("127.0.0.1");
    expect(address.port).toBeGreaterThan(0);
    expect(address.port).not.toBe(keyward.port);
    const line = keyward.logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => "metricsAddress" in l);
    expect(line?.metricsAddress).toBe(`127.0.0.1:${address.port}`);
  });

  it("serves GET /metrics, /readyz and /livez only", async () => {
    const ok = await fetchMetrics(port, METRICS_PATH);
    expect(ok.status).toBe(200);
    expect(ok.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(await ok.text()).toContain("# TYPE keyward_rpc_calls_total counter");
    expect((await fetchMetrics(port, "/metrics?debug=1")).status).toBe(200);
    // Started: ready (test/e2e/readiness.test.ts covers starting and draining).
    for (const [path, body] of [
      [READINESS_PATH, "ready\n"],
      [LIVENESS_PATH, "ok\n"],
    ] as const) {
      const res = await fetchMetrics(port, path);
      expect(res.status, path).toBe(200);
      expect(res.headers.get("cache-control"), path).toBe("no-store");
      expect(await res.text(), path).toBe(body);
    }
    for (const [path, method] of [
      ["/", "GET"],
      ["/metrics/", "GET"],
      ["/debug", "GET"],
      ["/metrics", "POST"],
      ["/metrics", "DELETE"],
      ["/readyz/", "GET"],
      ["/readyz", "POST"],
      ["/livez", "DELETE"],
      ["/healthz", "GET"],
    ] as const) {
      const res = await fetchMetrics(port, path, method);
      expect(res.status, `${method} ${path}`).toBe(404);
      await res.arrayBuffer();
    }
  });

  it("counts calls by method and code, times them, and shows audit, pool, cache and rewrap figures without leaking names, identities or content", async () => {
    await call("KeysService/CreateKey", "OK", () =>
      keysAdmin.createKey({ keyId, key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM } }),
    );
    const ciphertexts: Uint8Array[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await call("CryptoService/Encrypt", "OK", () =>
        cryptoService.encrypt({ name: keyName, plaintext: Buffer.from(`${plaintextMarker}-${i}`) }),
      );
      ciphertexts.push(res!.ciphertext);
    }
    for (const ciphertext of ciphertexts.slice(0, 2)) {
      const res = await call("CryptoService/Decrypt", "OK", () => cryptoService.decrypt({ name: keyName, ciphertext }));
      expect(Buffer.from(res!.plaintext).toString()).toMatch(new RegExp(`^${plaintextMarker}-`));
    }
    // ADMIN may not use keys; a stranger holds no role at all.
    await call("CryptoService/Encrypt", Code.PermissionDenied, () =>
      cryptoAdmin.encrypt({ name: keyName, plaintext: Buffer.from(plaintextMarker) }),
    );
    await call("CryptoService/Encrypt", Code.PermissionDenied, () =>
      cryptoStranger.encrypt({ name: keyName, plaintext: Buffer.from(plaintextMarker) }),
    );
    await call("CryptoService/Encrypt", Code.InvalidArgument, () =>
      cryptoService.encrypt({ name: `${keyName}/NOT VALID`, plaintext: Buffer.from(plaintextMarker) }),
    );
    await call("CryptoService/Encrypt", Code.NotFound, () =>
      cryptoService.encrypt({ name: `${keyName}-missing`, plaintext: Buffer.from(plaintextMarker) }),
    );

    await call("SecretsService/CreateSecret", "OK", () =>
      secretsAdmin.createSecret({ parent: secretParent, secretId, secret: { key: keyName } }),
    );
    await call("SecretsService/AddSecretVersion", "OK", () =>
      secretsService.addSecretVersion({ parent: secretName, payload: { data: Buffer.from(secretMarker) } }),
    );
    const read = await call("SecretsService/AccessSecretVersion", "OK", () =>
      secretsService.accessSecretVersion({ name: `${secretName}/versions/latest` }),
    );
    expect(Buffer.from(read!.payload!.data).toString()).toBe(secretMarker);
    await call("SecretsService/AccessSecretVersion", Code.PermissionDenied, () =>
      secretsAdmin.accessSecretVersion({ name: `${secretName}/versions/latest` }),
    );

    // A path no service serves never reaches the interceptors: it is not
    // counted, and its name appears nowhere.
    expect(await rawGrpcStatus(keyward.url, await keyward.credentials("service"), "/keyward.v1.KeysService/MetricsMarkerNoSuchMethod")).not.toBe(200);

    const first = parse(await (await fetchMetrics(port)).text());
    expect(callCounts(first)).toEqual(made);

    // The duration histogram: one observation per call, cumulative buckets from 1 ms to 5 s.
    const encrypts = Object.entries(made)
      .filter(([k]) => k.startsWith("/keyward.v1.CryptoService/Encrypt "))
      .reduce((sum, [, n]) => sum + n, 0);
    const method = { method: "/keyward.v1.CryptoService/Encrypt" };
    expect(valueOf(first, "keyward_rpc_duration_seconds_count", method)).toBe(encrypts);
    expect(valueOf(first, "keyward_rpc_duration_seconds_sum", method)).toBeGreaterThan(0);
    const buckets = first.filter((s) => s.name === "keyward_rpc_duration_seconds_bucket" && s.labels.method === method.method);
    expect(buckets.map((s) => s.labels.le)).toEqual(["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"]);
    expect(buckets.at(-1)!.value).toBe(encrypts);
    buckets.slice(1).forEach((bucket, i) => expect(bucket.value).toBeGreaterThanOrEqual(buckets[i]!.value));

    // Audit: every call above except the mutations (which write their event
    // in their own transaction) went through the group committer.
    const groupCommitted = Object.entries(made)
      .filter(([k]) => /CryptoService|AccessSecretVersion| PERMISSION_DENIED| INVALID_ARGUMENT/.test(k))
      .reduce((sum, [, n]) => sum + n, 0);
    expect(valueOf(first, "keyward_audit_queue_depth")).toBe(0);
    const batches = valueOf(first, "keyward_audit_batch_size_count")!;
    expect(batches).toBeGreaterThanOrEqual(1);
    expect(valueOf(first, "keyward_audit_batch_size_sum")).toBeGreaterThanOrEqual(groupCommitted);
    expect(valueOf(first, "keyward_audit_batch_size_bucket", { le: "+Inf" })).toBe(batches);

    // Pools: the main pool has served every call; the audit pool has written batches.
    for (const pool of ["main", "audit"]) {
      expect(valueOf(first, "keyward_db_pool_connections", { pool }), pool).toBeGreaterThanOrEqual(1);
      expect(valueOf(first, "keyward_db_pool_idle_connections", { pool }), pool).toBeGreaterThanOrEqual(0);
      expect(valueOf(first, "keyward_db_pool_waiting_requests", { pool }), pool).toBe(0);
    }
    expect(valueOf(first, "keyward_db_pool_connections", { pool: "main" })).toBeLessThanOrEqual(4);

    // Key cache: every crypto call looks its key up once, so the hits and
    // misses move by exactly the number of calls made between two scrapes.
    expect(valueOf(first, "keyward_key_cache_keys")).toBeGreaterThanOrEqual(1);
    const lookups = (samples: Sample[]) =>
      valueOf(samples, "keyward_key_cache_hits_total")! + valueOf(samples, "keyward_key_cache_misses_total")!;
    expect(valueOf(first, "keyward_key_cache_misses_total")).toBeGreaterThanOrEqual(1);
    for (let i = 0; i < 5; i++) {
      await call("CryptoService/Encrypt", "OK", () => cryptoService.encrypt({ name: keyName, plaintext: Buffer.from(plaintextMarker) }));
    }
    const second = parse(await (await fetchMetrics(port)).text());
    expect(lookups(second) - lookups(first)).toBe(5);
    expect(valueOf(second, "keyward_key_cache_hits_total")).toBeGreaterThan(valueOf(first, "keyward_key_cache_hits_total")!);

    // Rewrap backlog: the stored value is on the primary; rotating the key
    // leaves it one version behind until the rewrap job moves it.
    expect(valueOf(second, "keyward_secret_versions_pending_rewrap")).toBe(0);
    await call("KeysService/RotateKey", "OK", () => keysAdmin.rotateKey({ name: keyName }));
    const third = parse(await (await fetchMetrics(port)).text());
    expect(valueOf(third, "keyward_secret_versions_pending_rewrap")).toBe(1);
    expect(callCounts(third)).toEqual(made);

    // Default process metrics are there too.
    expect(valueOf(third, "process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect(third.some((s) => s.name === "nodejs_eventloop_lag_seconds")).toBe(true);

    for (const samples of [first, second, third]) {
      for (const sample of samples) {
        for (const text of forbidden) {
          expect(sample.line, text).not.toContain(text);
        }
        if (sample.name.startsWith("keyward_")) {
          for (const [label, value] of Object.entries(sample.labels)) {
            expect(KEYWARD_LABELS[label]?.(value), `${sample.name} ${label}="${value}"`).toBe(true);
          }
        }
      }
    }
    // HELP and TYPE lines too: nothing in the whole text.
    const text = await (await fetchMetrics(port)).text();
    for (const value of forbidden) {
      expect(text).not.toContain(value);
    }
  });

  it("leaves the rewrap gauge out of a scrape when the database cannot count in time, and the scrape still answers", async () => {
    const sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 1, applicationName: "keyward-test" });
    const holder = await sql.connect();
    try {
      // Nothing can read the table while this lock is held: the count waits
      // until its statement timeout cancels it.
      await holder.query("BEGIN");
      await holder.query("LOCK TABLE secret_versions IN ACCESS EXCLUSIVE MODE");
      const started = performance.now();
      const res = await fetchMetrics(port);
      const elapsed = performance.now() - started;
      expect(res.status).toBe(200);
      const blocked = parse(await res.text());
      expect(valueOf(blocked, "keyward_secret_versions_pending_rewrap")).toBeUndefined();
      expect(valueOf(blocked, "keyward_db_pool_connections", { pool: "main" })).toBeGreaterThanOrEqual(1);
      expect(elapsed).toBeGreaterThanOrEqual(900);
      expect(elapsed).toBeLessThan(5000);
    } finally {
      await holder.query("ROLLBACK");
      holder.release();
      await sql.end();
    }
    // Once the lock is gone the next scrape counts again, and calls still work.
    const after = parse(await (await fetchMetrics(port)).text());
    expect(valueOf(after, "keyward_secret_versions_pending_rewrap")).toBe(1);
    await call("SecretsService/AccessSecretVersion", "OK", () => secretsService.accessSecretVersion({ name: `${secretName}/versions/latest` }));
  });

  it("is off by default: no port, nothing logged", async () => {
    const plain = await startTestKeyward();
    try {
      expect(plain.running.metricsAddress).toBeUndefined();
      expect(plain.logs.some((line) => line.includes("metricsAddress"))).toBe(false);
    } finally {
      await plain.close();
    }
  });

  it("stops serving when Keyward closes, even with a scraper's connection kept alive", async () => {
    const other = await startTestKeyward({ KEYWARD_METRICS_LISTEN: "127.0.0.1:0" });
    const otherPort = other.running.metricsAddress!.port;
    try {
      const res = await fetchMetrics(otherPort);
      expect(res.status).toBe(200);
      await res.text();
    } finally {
      await other.close();
    }
    await expect(fetchMetrics(otherPort)).rejects.toThrow();
  });
});
