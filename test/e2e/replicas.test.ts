import { randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import pg from "pg";
import { afterAll, describe, expect, inject, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { loadConfig } from "../../src/config.js";
import { ensureDevPki } from "../../src/dev/pki.js";
import { generateRootKeyFile } from "../../src/crypto/root-key.js";
import { startKeyward, type RunningKeyward } from "../../src/main.js";
import { connectClient } from "../helpers/clients.js";
import { dropSchema } from "../helpers/database.js";

const MIGRATIONS = readdirSync(join(import.meta.dirname, "../../migrations")).filter((f) => /^\d+_.*\.ts$/.test(f));

describe("replicas on one database", () => {
  const databaseUrl = inject("databaseUrl");
  const schema = `t_${randomBytes(8).toString("hex")}`;
  const started: RunningKeyward[] = [];
  let dataDir: string;

  afterAll(async () => {
    await Promise.all(started.map((running) => running.close()));
    await dropSchema(databaseUrl, schema);
    if (dataDir) {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("start together on an empty schema without racing, and refuse a different root key", async () => {
    dataDir = await mkdtemp(join(tmpdir(), "keyward-replicas-"));
    // Three first starts on one data folder at once must agree on one dev PKI.
    expect((await Promise.all([1, 2, 3].map(() => ensureDevPki(join(dataDir, "pki"))))).filter(Boolean)).toHaveLength(1);
    const rootKey = generateRootKeyFile().toString("latin1").trim();
    const env = {
      KEYWARD_LISTEN: "127.0.0.1:0",
      KEYWARD_DATA_DIR: dataDir,
      DATABASE_URL: databaseUrl,
      KEYWARD_DB_SCHEMA: schema,
      KEYWARD_DB_POOL_MAX: "2",
      KEYWARD_ROOT_KEY: rootKey,
      KEYWARD_SHUTDOWN_GRACE_MS: "1000",
    };
    const log = pino({ level: "silent" });
    const replicas = await Promise.all([1, 2, 3].map(() => startKeyward(loadConfig(env), log)));
    started.push(...replicas);

    const credentials = {
      ca: await readFile(join(dataDir, "pki/ca.crt")),
      cert: await readFile(join(dataDir, "pki/admin.crt")),
      key: await readFile(join(dataDir, "pki/admin.key")),
    };
    for (const replica of replicas) {
      const me = await connectClient(AccessService, `https://127.0.0.1:${replica.address.port}`, credentials).getCallerIdentity({});
      expect(me.identity).toBe("spiffe://keyward.local/admin");
    }

    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      const migrations = await client.query(`SELECT name FROM ${client.escapeIdentifier(schema)}.pgmigrations`);
      expect(migrations.rows.map((row) => `${row.name}.ts`).sort()).toEqual(MIGRATIONS.sort());
      const deployments = await client.query(`SELECT deployment_id FROM ${client.escapeIdentifier(schema)}.deployment`);
      expect(deployments.rowCount).toBe(1);
    } finally {
      await client.end();
    }

    const otherKey = generateRootKeyFile().toString("latin1").trim();
    await expect(startKeyward(loadConfig({ ...env, KEYWARD_ROOT_KEY: otherKey }), log)).rejects.toThrow(
      /root key does not match this database/,
    );
  });
});
