import type pg from "pg";
import type { Key, KeyAlgorithm, KeyPurpose, KeyState, KeyVersion, KeyVersionState } from "../../domain/keys/key.js";
import type {
  KeyFilter,
  KeyRepository,
  KeyWrite,
  NewKeyVersion,
  StoredKey,
  UsageDelta,
} from "../../domain/keys/repository.js";
import { DomainError } from "../../domain/errors.js";
import { withTransaction } from "./transaction.js";


const KEY_COLUMNS = `name, purpose, algorithm, state, primary_version, min_decryption_version, rotation_period_ms,
  next_rotation_time, deletion_time, description, labels, create_time, update_time, etag`;
const VERSION_COLUMNS = "key_name, version, state, create_time, destroy_time, operation_count, last_used_time";

interface KeyRow {
  name: string;
  purpose: string;
  algorithm: string;
  state: string;
  primary_version: number;
  min_decryption_version: number;
  rotation_period_ms: string | null;
  next_rotation_time: Date | null;
  deletion_time: Date | null;
  description: string;
  labels: Record<string, string>;
  create_time: Date;
  update_time: Date;
  etag: string;
}

interface VersionRow {
  key_name: string;
  version: number;
  state: string;
  create_time: Date;
  destroy_time: Date | null;
  operation_count: string;
  last_used_time: Date | null;
}

function keyFromRow(row: KeyRow): Key {
  return Object.freeze({
    name: row.name,
    purpose: row.purpose as KeyPurpose,
    algorithm: row.algorithm as KeyAlgorithm,
    state: row.state as KeyState,
    primaryVersion: row.primary_version,
    minDecryptionVersion: row.min_decryption_version,
    rotationPeriodMs: row.rotation_period_ms === null ? null : Number(row.rotation_period_ms),
    nextRotationTime: row.next_rotation_time,
    deletionTime: row.deletion_time,
    description: row.description,
    labels: Object.freeze({ ...row.labels }),
    createTime: row.create_time,
    updateTime: row.update_time,
    etag: row.etag,
  });
}

function versionFromRow(row: VersionRow): KeyVersion {
  return Object.freeze({
    keyName: row.key_name,
    version: row.version,
    state: row.state as KeyVersionState,
    createTime: row.create_time,
    destroyTime: row.destroy_time,
    usage: Object.freeze({ operationCount: Number(row.operation_count), lastUsedTime: row.last_used_time }),
  });
}

function keyValues(key: Key): unknown[] {
  return [
    key.name,
    key.purpose,
    key.algorithm,
    key.state,
    key.primaryVersion,
    key.minDecryptionVersion,
    key.rotationPeriodMs,
    key.nextRotationTime,
    key.deletionTime,
    key.description,
    JSON.stringify(key.labels),
    key.createTime,
    key.updateTime,
    key.etag,
  ];
}

async function insertVersion(client: pg.ClientBase, created: NewKeyVersion): Promise<void> {
  const v = created.version;
  await client.query(
    `INSERT INTO key_versions (key_name, version, state, create_time, destroy_time, wrapped_material, public_key_pem)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [v.keyName, v.version, v.state, v.createTime, v.destroyTime, created.wrapped, created.publicKeyPem],
  );
}

async function readKey(client: pg.ClientBase | pg.Pool, name: string, lock: boolean): Promise<StoredKey | undefined> {
  const keys = await client.query<KeyRow>({
    name: lock ? "keys-get-for-update" : "keys-get",
    text: `SELECT ${KEY_COLUMNS} FROM keys WHERE name = $1${lock ? " FOR UPDATE" : ""}`,
    values: [name],
  });
  const row = keys.rows[0];
  if (row === undefined) {
    return undefined;
  }
  const versions = await client.query<VersionRow>({
    name: "key-versions-of",
    text: `SELECT ${VERSION_COLUMNS} FROM key_versions WHERE key_name = $1 ORDER BY version`,
    values: [name],
  });
  return Object.freeze({ key: keyFromRow(row), versions: Object.freeze(versions.rows.map(versionFromRow)) });
}

async function applyWrite(client: pg.ClientBase, write: KeyWrite): Promise<void> {
  if (write.key !== undefined) {
    await client.query(
      `UPDATE keys SET purpose = $2, algorithm = $3, state = $4, primary_version = $5, min_decryption_version = $6,
         rotation_period_ms = $7, next_rotation_time = $8, deletion_time = $9, description = $10, labels = $11,
         create_time = $12, update_time = $13, etag = $14
       WHERE name = $1`,
      keyValues(write.key),
    );
  }
  if (write.newVersion !== undefined) {
    await insertVersion(client, write.newVersion);
  }
  for (const v of write.versions ?? []) {
    // Destroying a version deletes its material: what it protected is gone for good.
    await client.query(
      `UPDATE key_versions SET state = $3, destroy_time = $4,
         wrapped_material = CASE WHEN $3 = 'DESTROYED' THEN NULL ELSE wrapped_material END
       WHERE key_name = $1 AND version = $2`,
      [v.keyName, v.version, v.state, v.destroyTime],
    );
  }
}

export function createPgKeyRepository(pool: pg.Pool): KeyRepository {

  return {
    get: (name) => readKey(pool, name, false),

    async material(name, version) {
      const { rows } = await pool.query<{ wrapped_material: Buffer | null; public_key_pem: string | null }>({
        name: "key-material",
        text: "SELECT wrapped_material, public_key_pem FROM key_versions WHERE key_name = $1 AND version = $2",
        values: [name, version],
      });
      const row = rows[0];
      return row && { wrapped: row.wrapped_material, publicKeyPem: row.public_key_pem };
    },

    async create(key, version, within) {
      await withTransaction(pool, async (client) => {
        const inserted = await client.query(
          `INSERT INTO keys (${KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
           ON CONFLICT (name) DO NOTHING`,
          keyValues(key),
        );
        if (inserted.rowCount === 0) {
          throw new DomainError("already-exists", `${key.name} already exists or existed (key ids are never reused)`);
        }
        await insertVersion(client, version);
        await within(client);
      });
    },

    async mutate(name, decide, within) {
      return withTransaction(pool, async (client) => {
        const current = await readKey(client, name, true);
        if (current === undefined) {
          throw new DomainError("not-found", `${name} not found`);
        }
        const { write, result } = await decide(current);
        if (write !== undefined) {
          await applyWrite(client, write);
        }
        await within(client);
        return result;
      });
    },

    async list(filter: KeyFilter, after, limit) {
      const where = ["name > $1"];
      const values: unknown[] = [after];
      const param = (value: unknown) => {
        values.push(value);
        return `$${values.length}`;
      };
      if (filter.state !== undefined) where.push(`state = ${param(filter.state)}`);
      if (filter.purpose !== undefined) where.push(`purpose = ${param(filter.purpose)}`);
      if (filter.algorithm !== undefined) where.push(`algorithm = ${param(filter.algorithm)}`);
      if (filter.labels !== undefined && Object.keys(filter.labels).length > 0) {
        where.push(`labels @> ${param(JSON.stringify(filter.labels))}::jsonb`);
      }
      const { rows } = await pool.query<KeyRow>(
        `SELECT ${KEY_COLUMNS} FROM keys WHERE ${where.join(" AND ")} ORDER BY name LIMIT ${param(limit)}`,
        values,
      );
      return rows.map(keyFromRow);
    },

    async due(now, limit) {
      const { rows } = await pool.query<{ name: string }>(
        `SELECT name FROM keys
          WHERE (state = 'ENABLED' AND next_rotation_time <= $1) OR (state = 'PENDING_DELETION' AND deletion_time <= $1)
          ORDER BY name LIMIT $2`,
        [now, limit],
      );
      return rows.map((row) => row.name);
    },

    async recordUsage(deltas: readonly UsageDelta[]) {
      if (deltas.length === 0) {
        return;
      }
      await pool.query(
        `UPDATE key_versions v SET operation_count = v.operation_count + d.count,
           last_used_time = GREATEST(v.last_used_time, d.last_used)
         FROM unnest($1::text[], $2::int[], $3::bigint[], $4::timestamptz[]) AS d(key_name, version, count, last_used)
         WHERE v.key_name = d.key_name AND v.version = d.version`,
        [
          deltas.map((d) => d.keyName),
          deltas.map((d) => d.version),
          deltas.map((d) => d.count),
          deltas.map((d) => d.lastUsedTime),
        ],
      );
    },
  };
}
