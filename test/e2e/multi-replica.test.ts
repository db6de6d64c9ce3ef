import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, createKeywardClient, KeyAlgorithm, KeyPurpose, type KeywardClient } from "keyward";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createScratch } from "../helpers/database.js";
import { eventually, outcome, type Outcome } from "../helpers/expect.js";
import { devCredentials, type ClientCredentials } from "../helpers/keyward.js";
import { keywardCli, killServerProcesses, serveKeyward, type ServerProcess } from "../helpers/keyward-process.js";

/**
 * Three `keyward serve` processes on one database schema and one data
 * folder (CA, policy, root key), as replicas behind client-side
 * round-robin: the client library spreads calls over all three, a key
 * rotated or disabled through one is enforced by the other two within one
 * second, and the events all three wrote form one intact audit chain.
 */

const BOUND_MS = 1000;
const scratch = createScratch("keyward-multi-replica-");
const clients: KeywardClient[] = [];
const measured: Record<string, number> = {};

let replicas: ServerProcess[];
let env: Record<string, string>;
let creds: Record<"admin" | "service" | "auditor", ClientCredentials>;

function client(name: keyof typeof creds, address: string | string[]): KeywardClient {
  const made = createKeywardClient({ address, ...creds[name] });
  clients.push(made);
  return made;
}

/** The requestIds of the calls of `method` a replica logged (pino access lines). */
function served(replica: ServerProcess, method: string): string[] {
  return replica
    .lines()
    .map((line) => JSON.parse(line) as { msg?: string; method?: string; requestId?: string })
    .filter((entry) => entry.msg === "call" && entry.method === method)
    .map((entry) => entry.requestId!);
}

/**
 * Polls `probe` until `done` holds; returns how long after `since` the
 * first such answer came. Gives up at three times the bound so a failure
 * shows what the replica kept answering.
 */
async function timeUntil<T>(since: number, probe: () => Promise<Outcome<T>>, done: (o: Outcome<T>) => boolean): Promise<{ ms: number; last: Outcome<T> }> {
  for (;;) {
    const last = await probe();
    const ms = performance.now() - since;
    if (done(last) || ms > 3 * BOUND_MS) {
      return { ms, last };
    }
    await sleep(2);
  }
}

beforeAll(async () => {
  const dataDir = await scratch.tempDir();
  env = { KEYWARD_DATA_DIR: dataDir, DATABASE_URL: inject("databaseUrl"), KEYWARD_DB_SCHEMA: scratch.freshSchema(), KEYWARD_DB_POOL_MAX: "4" };
  // The first creates the dev PKI, policy and root key and migrates; the others share them.
  const first = await serveKeyward(env);
  replicas = [first, ...(await Promise.all([serveKeyward(env), serveKeyward(env)]))];
  creds = {
    admin: await devCredentials(dataDir, "admin"),
    service: await devCredentials(dataDir, "service"),
    auditor: await devCredentials(dataDir, "auditor"),
  };
}, 60_000);

afterAll(async () => {
  for (const made of clients) {
    made.close();
  }
  killServerProcesses();
  await scratch.cleanup();
  console.info(`multi-replica: enforcement delays on the other replicas (ms after the change answered): ${JSON.stringify(measured)}`);
});

describe("three replicas, one database", () => {
  let name: string;
  const plaintext = Buffer.from("replicated");

  it("a client given all three addresses spreads calls round-robin: each replica serves a third", async () => {
    const urls = replicas.map((r) => r.url);
    name = (
      await client("admin", urls).keys.createKey({
        keyId: `spread-${randomBytes(4).toString("hex")}`,
        key: { purpose: KeyPurpose.ENCRYPT_DECRYPT, algorithm: KeyAlgorithm.AES_256_GCM },
      })
    ).key!.name;
    const spreading = client("service", urls);
    const ids = Array.from({ length: 60 }, (_, i) => `spread-${i}`);
    // Concurrent, so the three processes append to the audit chain at the same time.
    const results = await Promise.all(ids.map((id) => spreading.crypto.encrypt({ name, plaintext }, { headers: { "x-request-id": id } })));
    expect(results.every((r) => r.keyVersion === `${name}/versions/1`)).toBe(true);

    const method = "/keyward.v1.CryptoService/Encrypt";
    const perReplica = await eventually(
      async () => replicas.map((r) => served(r, method).filter((id) => id.startsWith("spread-"))),
      (lists) => lists.flat().length >= ids.length,
      5000,
      "access lines of the spread calls",
    );
    expect(perReplica.map((list) => list.length)).toEqual([20, 20, 20]);
    expect(perReplica.flat().sort()).toEqual([...ids].sort());
    // Round-robin: call i went to replica i mod 3.
    perReplica.forEach((list, r) => expect(list.every((id) => Number(id.slice("spread-".length)) % 3 === r)).toBe(true));
  });

  it("RotateKey through replica 1: replicas 2 and 3 encrypt with the new version within 1 s", async () => {
    const [one, two, three] = replicas.map((r) => ({ admin: client("admin", r.url), service: client("service", r.url) }));
    // Every replica has version 1 cached.
    for (const r of [one, two, three]) {
      expect((await r!.service.crypto.encrypt({ name, plaintext })).keyVersion).toBe(`${name}/versions/1`);
    }
    expect((await one!.admin.keys.rotateKey({ name })).key?.primaryVersion).toBe(2);
    const since = performance.now();
    const seen = await Promise.all(
      [two!, three!].map((r) =>
        timeUntil(since, () => outcome(r.service.crypto.encrypt({ name, plaintext })), (o) => o.value?.keyVersion === `${name}/versions/2`),
      ),
    );
    seen.forEach(({ ms, last }, i) => {
      measured[`rotate, replica ${i + 2}`] = Math.round(ms * 10) / 10;
      expect(ms, `replica ${i + 2} still answered ${last.value?.keyVersion ?? Code[last.code]}`).toBeLessThan(BOUND_MS);
    });
  });

  it("DisableKey through replica 2: replicas 1 and 3 refuse Encrypt with FAILED_PRECONDITION within 1 s", async () => {
    const [one, two, three] = replicas.map((r) => ({ admin: client("admin", r.url), service: client("service", r.url) }));
    for (const r of [one, three]) {
      expect((await r!.service.crypto.encrypt({ name, plaintext })).keyVersion).toBe(`${name}/versions/2`);
    }
    await two!.admin.keys.disableKey({ name });
    const since = performance.now();
    const seen = await Promise.all(
      [one!, three!].map((r) => timeUntil(since, () => outcome(r.service.crypto.encrypt({ name, plaintext })), (o) => o.code !== 0)),
    );
    seen.forEach(({ ms, last }, i) => {
      const replica = i === 0 ? 1 : 3;
      measured[`disable, replica ${replica}`] = Math.round(ms * 10) / 10;
      expect(ms, `replica ${replica} still answered ${last.code === 0 ? "OK" : Code[last.code]}`).toBeLessThan(BOUND_MS);
      expect({ code: Code[last.code], message: last.message }).toEqual({ code: Code[Code.FailedPrecondition], message: `key ${name} is DISABLED` });
    });
  });

  it("the events of all three replicas form one intact chain: VerifyAuditChain and `keyward audit verify` agree", async () => {
    const auditor = client("auditor", replicas.map((r) => r.url));
    const listed = await auditor.audit.listAuditEvents({ method: "/keyward.v1.CryptoService/Encrypt", pageSize: 1000 });
    const spread = listed.events.filter((e) => e.requestId.startsWith("spread-"));
    expect(spread).toHaveLength(60);

    const chain = await auditor.audit.verifyAuditChain({});
    expect({ intact: chain.intact, reason: chain.reason, start: chain.startSequence }).toEqual({ intact: true, reason: "", start: 1n });
    expect(chain.verifiedCount).toBe(chain.endSequence);
    // Every spread event lies within the verified range.
    expect(spread.every((e) => e.sequence <= chain.endSequence)).toBe(true);

    const cli = await keywardCli(["audit", "verify", "--json"], env);
    expect(cli.code, cli.stderr).toBe(0);
    const verified = JSON.parse(cli.stdout) as { intact: boolean; verified_count: number };
    expect(verified.intact).toBe(true);
    // The CLI ran later, over the same chain and whatever was appended since.
    expect(verified.verified_count).toBeGreaterThanOrEqual(Number(chain.endSequence));
  });

  it("all three processes stayed up", () => {
    for (const r of replicas) {
      expect(r.child.exitCode, r.output()).toBeNull();
    }
  });
});
