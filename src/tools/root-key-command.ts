import { randomUUID, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Writable } from "node:stream";
import { parseArgs } from "node:util";
import type pg from "pg";
import type { Config } from "../config.js";
import { unwrapKey, wrapKey } from "../crypto/key-wrap.js";
import { parseRootKey, rootKeyCheck, RootKeyError } from "../crypto/root-key.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import { signingKeyBinding } from "../domain/audit/signer.js";
import { keyVersionName } from "../domain/keys/key.js";
import { rewrapMaterial } from "../domain/keys/material.js";
import { createPgAuditRepository } from "../storage/pg/audit-repository.js";
import { migrate } from "../storage/pg/migrate.js";
import { withTransaction } from "../storage/pg/transaction.js";
import { UsageError, withOfflineDatabase } from "./offline-database.js";

/** The `root-key` lines of `keyward help`. */
export const ROOT_KEY_USAGE = `  root-key rotate               re-wrap every key version's material and the audit checkpoint key under a
                                new root key, in one transaction; run it with the servers stopped, then
                                start them with the new key. The current key is read like the server's
                                (KEYWARD_ROOT_KEY_FILE, KEYWARD_ROOT_KEY or <data>/root.key); key files are
                                never modified. Exit 0 done, 1 failed, 2 usage error or wrong current key
      --new-key-file <file>     the new root key: 32 raw bytes or their base64
`;

/** Where the command writes; the process's streams by default. */
export interface RootKeyCommandIo {
  readonly stdout: Writable;
  readonly stderr: Writable;
}


/** How many versions are re-wrapped per statement: bounds memory, not correctness (one transaction either way). */
const REWRAP_BATCH = 500;

/**
 * How long the rotation waits for a table lock before failing: a server
 * still running against the database holds row locks only briefly, so a
 * longer wait means something is stuck and the operator should look.
 */
const LOCK_TIMEOUT = "10s";

/**
 * `keyward root-key rotate --new-key-file <file>`: returns the exit code, 0
 * when rotated, 1 when the rotation failed, 2 for a usage or configuration
 * error, a current root key that does not match the database included. The
 * configuration is loaded only once the arguments are valid.
 */
export async function rootKeyCommand(
  args: readonly string[],
  config: () => Config,
  io: RootKeyCommandIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const [action, ...rest] = args;
  try {
    if (action !== "rotate") {
      throw new UsageError(action === undefined ? "root-key needs a command: rotate" : `unknown root-key command "${action}"`);
    }
    return await rotateCommand(rest, config, io);
  } catch (err) {
    if (err instanceof UsageError || isParseArgsError(err)) {
      io.stderr.write(`keyward: ${(err as Error).message}\nusage:\n${ROOT_KEY_USAGE}`);
      return 2;
    }
    throw err;
  }
}

/** What a rotation found; only `rotated` changed anything. */
export type RootKeyRotation =
  | { readonly kind: "rotated"; readonly deploymentId: string; readonly versions: number; readonly signingKeys: number }
  | { readonly kind: "mismatch"; readonly deploymentId: string }
  | { readonly kind: "no-deployment" };

/**
 * Re-wraps everything the root key protects from `current` to `next`, in
 * one transaction on `pool` (whose schema must be migrated):
 *
 * 1. locks the deployment row and checks that its root key check is
 *    `current`'s; if not, returns `mismatch` and writes nothing;
 * 2. locks `key_versions` and `audit_signing_keys` against writers, so no
 *    version created or destroyed meanwhile escapes the rotation;
 * 3. re-wraps every version that still has material (same binding, fresh
 *    nonce) and every audit signing key's private key;
 * 4. stores `next`'s root key check and appends an audit event saying so.
 *
 * Key bytes exist unwrapped only for one re-wrap at a time and are zeroed
 * right after; nothing here logs or returns them.
 *
 * @throws KeyUnwrapError-caused errors naming the row when stored material
 *   does not open with `current` (corruption), and whatever the database
 *   throws; in both cases the transaction is rolled back.
 */
export async function rotateRootKey(pool: pg.Pool, current: SecretBytes, next: SecretBytes): Promise<RootKeyRotation> {
  const audit = createPgAuditRepository(pool);
  return withTransaction(pool, async (client) => {
    await client.query(`SET LOCAL lock_timeout = '${LOCK_TIMEOUT}'`);
    const deployment = await client.query<{ deployment_id: string; root_key_check: Buffer }>(
      "SELECT deployment_id, root_key_check FROM deployment WHERE id FOR UPDATE",
    );
    const row = deployment.rows[0];
    if (row === undefined) {
      return { kind: "no-deployment" };
    }
    const currentCheck = rootKeyCheck(current);
    if (row.root_key_check.length !== currentCheck.length || !timingSafeEqual(row.root_key_check, currentCheck)) {
      return { kind: "mismatch", deploymentId: row.deployment_id };
    }
    // SHARE ROW EXCLUSIVE: readers go on, but no INSERT, UPDATE or DELETE
    // (and no other rotation) until COMMIT.
    await client.query("LOCK TABLE key_versions, audit_signing_keys IN SHARE ROW EXCLUSIVE MODE");

    const versions = await rewrapVersions(client, current, next);
    const signingKeys = await rewrapSigningKeys(client, current, next);
    await client.query("UPDATE deployment SET root_key_check = $1 WHERE id", [rootKeyCheck(next)]);
    await audit.appendWithin(client, [
      {
        time: new Date(),
        identity: "keyward/cli",
        roles: [],
        method: "keyward/cli/RotateRootKey",
        resources: [],
        keyVersion: "",
        resultCode: 0,
        resultMessage: `root key rotated: ${plural(versions, "key version")} and ${plural(signingKeys, "audit signing key")} re-wrapped`,
        requestId: randomUUID(),
        peerAddress: "",
        policyDigest: "",
      },
    ]);
    return { kind: "rotated", deploymentId: row.deployment_id, versions, signingKeys };
  });
}

async function rewrapVersions(client: pg.ClientBase, current: SecretBytes, next: SecretBytes): Promise<number> {
  let count = 0;
  let after: { keyName: string; version: number } = { keyName: "", version: 0 };
  for (;;) {
    const { rows } = await client.query<{ key_name: string; version: number; algorithm: string; wrapped_material: Buffer }>(
      `SELECT v.key_name, v.version, k.algorithm, v.wrapped_material
         FROM key_versions v JOIN keys k ON k.name = v.key_name
        WHERE v.wrapped_material IS NOT NULL AND (v.key_name, v.version) > ($1, $2)
        ORDER BY v.key_name, v.version
        LIMIT ${REWRAP_BATCH}`,
      [after.keyName, after.version],
    );
    if (rows.length === 0) {
      return count;
    }
    const rewrapped = rows.map((r) => {
      try {
        return rewrapMaterial(current, next, r.key_name, r.version, r.algorithm, r.wrapped_material);
      } catch (err) {
        throw new Error(`${keyVersionName(r.key_name, r.version)} does not unwrap with the current root key`, { cause: err });
      }
    });
    const updated = await client.query(
      `UPDATE key_versions v SET wrapped_material = u.wrapped
         FROM unnest($1::text[], $2::integer[], $3::bytea[]) AS u (key_name, version, wrapped)
        WHERE v.key_name = u.key_name AND v.version = u.version`,
      [rows.map((r) => r.key_name), rows.map((r) => r.version), rewrapped],
    );
    if (updated.rowCount !== rows.length) {
      throw new Error(`re-wrapped ${rows.length} key versions but updated ${updated.rowCount}`);
    }
    count += rows.length;
    const last = rows.at(-1)!;
    after = { keyName: last.key_name, version: last.version };
  }
}

async function rewrapSigningKeys(client: pg.ClientBase, current: SecretBytes, next: SecretBytes): Promise<number> {
  const { rows } = await client.query<{ key_id: string; algorithm: string; wrapped_private_key: Buffer }>(
    "SELECT key_id, algorithm, wrapped_private_key FROM audit_signing_keys ORDER BY key_id",
  );
  for (const row of rows) {
    const binding = signingKeyBinding(row.key_id, row.algorithm);
    let material: SecretBytes;
    try {
      material = unwrapKey(current, row.wrapped_private_key, binding);
    } catch (err) {
      throw new Error(`audit signing key ${row.key_id} does not unwrap with the current root key`, { cause: err });
    }
    let rewrapped: Buffer;
    try {
      rewrapped = wrapKey(next, material, binding);
    } finally {
      material.expose().fill(0);
    }
    // The table's trigger allows exactly this: an UPDATE of the wrapped key alone.
    await client.query("UPDATE audit_signing_keys SET wrapped_private_key = $2 WHERE key_id = $1", [row.key_id, rewrapped]);
  }
  return rows.length;
}

async function rotateCommand(args: string[], config: () => Config, io: RootKeyCommandIo): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: { "new-key-file": { type: "string" } },
  });
  if (values["new-key-file"] === undefined) {
    throw new UsageError("root-key rotate needs --new-key-file <file>");
  }
  const newKeyFile = resolve(values["new-key-file"]);
  const next = await readRootKeyFile(newKeyFile, `--new-key-file ${newKeyFile}`);

  const settings = config();
  const source = describeSource(settings);
  // Loaded here so that the other commands do not load the whole server.
  const { resolveRootKey } = await import("../main.js");
  const resolved = await resolveRootKey(settings, { createDevKey: false }).catch((err: unknown) => {
    throw new UsageError(
      err instanceof RootKeyError ? `the current root key (${source}): ${err.message}` : `cannot read the current root key (${source})`,
    );
  });
  const current = resolved.rootKey;
  if (current.equals(next)) {
    throw new UsageError(`--new-key-file ${newKeyFile} holds the current root key (${source}): nothing to rotate`);
  }

  let outcome: RootKeyRotation | undefined;
  try {
    await withOfflineDatabase(settings, "keyward-root-key", async (pool, connectionString) => {
      await assertKeywardSchema(pool, settings);
      // The trigger change that allows re-wrapping the audit signing key may
      // not be applied yet if the servers ran an older release.
      const applied = await migrate({ connectionString, schema: settings.databaseSchema });
      if (applied.length > 0) {
        io.stderr.write(`applied migrations: ${applied.join(", ")}\n`);
      }
      outcome = await rotateRootKey(pool, current, next);
    });
  } catch (err) {
    if (err instanceof UsageError) {
      throw err;
    }
    const cause = (err as Error).cause instanceof Error ? ` (${((err as Error).cause as Error).message})` : "";
    io.stderr.write(
      outcome === undefined
        ? `keyward: root key rotation failed, nothing was changed: ${(err as Error).message}${cause}\n` +
            "(the rotation is one transaction: the database still matches the current root key)\n"
        : `keyward: the rotation finished (${outcome.kind}), but closing the database failed: ${(err as Error).message}\n`,
    );
    return 1;
  }
  if (outcome === undefined) {
    throw new Error("the rotation returned no outcome");
  }

  switch (outcome.kind) {
    case "no-deployment":
      throw new UsageError(`no Keyward deployment in ${where(settings)}: no server has started on it, nothing to rotate`);
    case "mismatch":
      io.stderr.write(
        `keyward: the current root key (${source}) does not match deployment ${outcome.deploymentId} in ${where(settings)}: ` +
          "configure the root key the servers run with; nothing was changed\n",
      );
      return 2;
    case "rotated":
      io.stdout.write(
        `root key rotated for deployment ${outcome.deploymentId}: re-wrapped ${plural(outcome.versions, "key version")} and ` +
          `${plural(outcome.signingKeys, "audit signing key")}; the database now accepts only the new root key\n` +
          nextSteps(settings, resolved.devFile, newKeyFile),
      );
      return 0;
  }
}

/**
 * What the operator does next. Key files are never written: a dev root key
 * file overwritten in place would lose the only key that opens backups
 * taken before the rotation, so the new key stays where the operator put it
 * and the servers are pointed at it.
 */
function nextSteps(config: Config, devFile: string | undefined, newKeyFile: string): string {
  let step: string;
  if (devFile !== undefined) {
    step =
      `The current key was the dev root key ${devFile}; it was left unchanged and no longer opens anything in this ` +
      `database. Start every server with KEYWARD_ROOT_KEY_FILE=${newKeyFile}: without it a server reads ${devFile} ` +
      "and refuses to start.";
  } else if (config.rootKey !== undefined && "file" in config.rootKey) {
    step = `Start every server with KEYWARD_ROOT_KEY_FILE=${newKeyFile} (it was ${config.rootKey.file}).`;
  } else {
    step = `Start every server with KEYWARD_ROOT_KEY_FILE=${newKeyFile} and without KEYWARD_ROOT_KEY.`;
  }
  return (
    `${step}\n` +
    "A server still running with the old root key must be restarted with the new one.\n" +
    "Keep the old root key for as long as you keep database backups taken before this rotation: they need it.\n"
  );
}

function describeSource(config: Config): string {
  if (config.rootKey === undefined) {
    return `the dev root key ${join(config.dataDir, "root.key")}, as KEYWARD_ROOT_KEY_FILE is unset`;
  }
  return "file" in config.rootKey ? `KEYWARD_ROOT_KEY_FILE ${config.rootKey.file}` : "KEYWARD_ROOT_KEY";
}

function where(config: Config): string {
  const schema = config.databaseSchema ?? "public";
  return config.databaseUrl === undefined ? `the embedded database, schema ${schema}` : `DATABASE_URL, schema ${schema}`;
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;

async function readRootKeyFile(file: string, label: string): Promise<SecretBytes> {
  const material = await readFile(file).catch(() => {
    throw new UsageError(`cannot read ${label}`);
  });
  try {
    return parseRootKey(material);
  } catch (err) {
    // RootKeyError messages give lengths only, never bytes.
    throw new UsageError(`${label}: ${(err as Error).message}`);
  } finally {
    material.fill(0);
  }
}

/**
 * Refuses a schema without Keyward's tables before migrating: migrating
 * would create them, and a mistyped KEYWARD_DB_SCHEMA should not leave an
 * empty deployment behind.
 */
async function assertKeywardSchema(pool: pg.Pool, config: Config): Promise<void> {
  const { rows } = await pool.query<{ present: boolean }>("SELECT to_regclass('deployment') IS NOT NULL AS present");
  if (!rows[0]?.present) {
    throw new UsageError(`no Keyward tables in ${where(config)}: check DATABASE_URL and KEYWARD_DB_SCHEMA`);
  }
}

/**
 * Opens the configured database for `fn`: DATABASE_URL, else the embedded
 * cluster in `<data>/postgres`, started for the command and stopped after.
 * Never creates a cluster, and refuses to start one that is running:
 * startEmbeddedPostgres would shut down a live server's database, and a
 * running server must not be left with the old root key anyway.
 */

function isParseArgsError(err: unknown): boolean {
  return err instanceof TypeError && String((err as NodeJS.ErrnoException).code ?? "").startsWith("ERR_PARSE_ARGS_");
}
