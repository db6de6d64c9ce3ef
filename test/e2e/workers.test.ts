import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { Code, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { connectClient } from "../helpers/clients.js";
import { createScratch } from "../helpers/database.js";
import { eventually } from "../helpers/expect.js";
import { devCredentials, type ClientCredentials } from "../helpers/keyward.js";
import { keywardCli, killServerProcesses, logLines, serveKeyward, type ServerProcess } from "../helpers/keyward-process.js";

/**
 * KEYWARD_WORKERS=2: one supervisor and two server processes sharing one
 * port. Connections are spread over both workers, a change made through one
 * holds on the other, the metrics endpoint sums both, one audit chain
 * verifies, a killed worker is replaced, and SIGTERM drains both.
 */

const databaseUrl = inject("databaseUrl");
const scratch = createScratch("keyward-workers-");
const CONNECTIONS = 8;

interface Connection {
  readonly access: Client<typeof AccessService>;
  readonly crypto: Client<typeof CryptoService>;
}

describe("KEYWARD_WORKERS=2", () => {
  let server: ServerProcess;
  let env: Record<string, string>;
  let admin: ClientCredentials;
  let connections: Connection[];
  let metricsUrl: string;
  let calls = 0;

  /** The supervisor's line, written once every worker listens. */
  const supervisorLine = () => logLines(server).find((e) => e.msg === "keyward workers listening");
  /** Which worker logged each finished call, by request method. */
  const workersServing = (method: string) =>
    new Set(
      logLines(server)
        .filter((e) => e.msg === "call" && e.method === method)
        .map((e) => e.worker),
    );

  beforeAll(async () => {
    const dataDir = await scratch.tempDir();
    env = {
      KEYWARD_DATA_DIR: dataDir,
      DATABASE_URL: databaseUrl,
      KEYWARD_DB_SCHEMA: scratch.freshSchema(),
      KEYWARD_DB_POOL_MAX: "4",
      KEYWARD_WORKERS: "2",
      KEYWARD_METRICS_LISTEN: "127.0.0.1:0",
    };
    server = await serveKeyward(env);
    const line = await eventually(async () => supervisorLine(), (l) => l !== undefined, 30_000, "the supervisor's listening line");
    metricsUrl = `http://${line!.metricsAddress as string}/metrics`;
    admin = await devCredentials(dataDir, "admin");
    const service = await devCredentials(dataDir, "service");
    // One transport each: its own HTTP/2 connection, which the supervisor
    // hands to the next worker in turn.
    connections = Array.from({ length: CONNECTIONS }, () => ({
      access: connectClient(AccessService, server.url, service),
      crypto: connectClient(CryptoService, server.url, service),
    }));
  }, 60_000);

  afterAll(async () => {
    killServerProcesses();
    await scratch.cleanup();
  });

  it("listens on one port with both workers, and spreads connections over them", async () => {
    expect(supervisorLine()).toMatchObject({ workers: 2, address: server.url.replace("https://", "") });
    for (const c of connections) {
      await c.access.getCallerIdentity({});
      calls++;
    }
    await eventually(async () => workersServing("/keyward.v1.AccessService/GetCallerIdentity"), (w) => w.size === 2, 5000, "calls served by both workers");
    expect([...workersServing("/keyward.v1.AccessService/GetCallerIdentity")].sort()).toEqual([1, 2]);
  });

  it("a key disabled through one worker is refused by every connection within a second", async () => {
    const keys = connectClient(KeysService, server.url, admin);
    const { key } = await keys.createKey({
      keyId: `workers-${randomBytes(4).toString("hex")}`,
      key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM },
    });
    calls++;
    const name = key!.name;
    const plaintext = randomBytes(32);
    // Every worker opens and caches the key.
    for (const c of connections) {
      await c.crypto.encrypt({ name, plaintext });
      calls++;
    }
    await keys.disableKey({ name });
    calls++;
    const disabledAt = performance.now();
    for (const c of connections) {
      await eventually(
        async () => c.crypto.encrypt({ name, plaintext }).then(() => 0, (err: { code: Code }) => err.code),
        (code) => {
          calls++;
          return code === Code.FailedPrecondition;
        },
        3000,
        "Encrypt refused on every connection",
        5,
      );
    }
    expect(performance.now() - disabledAt).toBeLessThan(1000);
  });

  it("serves metrics summed over both workers from the supervisor", async () => {
    const text = await (await fetch(metricsUrl)).text();
    const total = [...text.matchAll(/^keyward_rpc_calls_total\{[^}]*\} (\d+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
    expect(total).toBe(calls);
  });

  it("writes one audit chain from both workers, and it verifies", async () => {
    const verify = await keywardCli(["audit", "verify", "--json"], env);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const report = JSON.parse(verify.stdout) as { intact: boolean; verified_count: number };
    expect(report.intact).toBe(true);
    expect(report.verified_count).toBeGreaterThanOrEqual(calls);
  });

  it("replaces a worker that dies, and keeps serving", async () => {
    // The supervisor's children that run the CLI (not tsx's esbuild service).
    const workers = execFileSync("pgrep", ["-P", String(server.child.pid), "-f", "src/cli.ts"], { encoding: "utf8" })
      .trim()
      .split("\n")
      .map(Number);
    expect(workers).toHaveLength(2);
    process.kill(workers[0]!, "SIGKILL");
    await eventually(
      async () => server.lines().some((l) => l.includes('"worker":3') && l.includes('"msg":"keyward listening"')),
      Boolean,
      20_000,
      "a third worker listening",
    );
    expect(server.output()).toContain("worker exited; starting another");
    const fresh = connectClient(AccessService, server.url, admin);
    for (let i = 0; i < CONNECTIONS; i++) {
      expect((await connectClient(AccessService, server.url, admin).getCallerIdentity({})).identity).toBe("spiffe://keyward.local/admin");
    }
    expect((await fresh.getCallerIdentity({})).identity).toBe("spiffe://keyward.local/admin");
  });

  it("drains both workers on SIGTERM and exits 0", async () => {
    server.child.kill("SIGTERM");
    const { code } = await server.exited;
    expect(code, server.output()).toBe(0);
    const stopped = server.lines().filter((l) => l.includes('"msg":"stopped"'));
    expect(stopped).toHaveLength(2);
  });
});
