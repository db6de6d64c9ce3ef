import type pg from "pg";
import { DomainError } from "../../domain/errors.js";
import type { LockedSecret, SecretFilter, SecretRepository, SecretWrite, StoredValue } from "../../domain/secrets/repository.js";
import type { Secret, SecretType, SecretVersion, SecretVersionOrigin, SecretVersionState } from "../../domain/secrets/secret.js";
import { withTransaction } from "./transaction.js";

const SECRET_COLUMNS = `name, uid, type, description, labels, key_name, max_versions, current_version,
  create_time, update_time, creator, updater, etag`;
const VERSION_COLUMNS = `secret_name, version, state, create_time, creator, destroy_time, client_specified_data_crc32c,
  origin, source_version`;

interface SecretRow {
  name: string;
  uid: string;
  type: string;
  description: string;
  labels: Record<string, string>;
  key_name: string;
  max_versions: number;
  current_version: string;
  create_time: Date;
  update_time: Date;
  creator: string;
  updater: string;
  etag: string;
}

interface VersionRow {
  secret_name: string;
  version: string;
  state: string;
  create_time: Date;
  creator: string;
  destroy_time: Date | null;
  client_specified_data_crc32c: boolean;
  origin: string;
  source_version: string;
}

function secretFromRow(row: SecretRow): Secret {
  return Object.freeze({
    name: row.name,
    uid: row.uid,
    type: row.type as SecretType,
    description: row.description,
    labels: Object.freeze({ ...row.labels }),
    keyName: row.key_name,
    maxVersions: row.max_versions,
    currentVersion: Number(row.current_version),
    createTime: row.create_time,
    updateTime: row.update_time,
    creator: row.creator,
    updater: row.updater,
    etag: row.etag,
  });
}

function versionFromRow(row: VersionRow): SecretVersion {
  return Object.freeze({
    secretName: row.secret_name,
    version: Number(row.version),
    state: row.state as SecretVersionState,
    createTime: row.create_time,
    creator: row.creator,
    destroyTime: row.destroy_time,
    clientSpecifiedDataCrc32c: row.client_specified_data_crc32c,
    origin: row.origin as SecretVersionOrigin,
    sourceVersion: Number(row.source_version),
  });
}

function secretValues(s: Secret): unknown[] {
  return [
    s.name,
    s.uid,
    s.type,
    s.description,
    JSON.stringify(s.labels),
    s.keyName,
    s.maxVersions,
    s.currentVersion,
    s.createTime,
    s.updateTime,
    s.creator,
    s.updater,
    s.etag,
  ];
}

const valueOf = (row: { ciphertext: Buffer | null; key_version: number | null }): StoredValue | null =>
  row.ciphertext === null ? null : { ciphertext: row.ciphertext, keyVersion: row.key_version! };

async function applyWrite(client: pg.ClientBase, name: string, write: SecretWrite): Promise<void> {
  if (write.remove) {
    await client.query("DELETE FROM secrets WHERE name = $1", [name]);
    return;
  }
  if (write.newVersion !== undefined) {
    const { version: v, value, keyName } = write.newVersion;
    await client.query(
      `INSERT INTO secret_versions (${VERSION_COLUMNS}, key_name, key_version, ciphertext)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
      [
        v.secretName,
        v.version,
        v.state,
        v.createTime,
        v.creator,
        v.destroyTime,
        v.clientSpecifiedDataCrc32c,
        v.origin,
        v.sourceVersion,
        keyName,
        value.keyVersion,
        value.ciphertext,
      ],
    );
  }
  for (const v of write.versions ?? []) {
    // Destroying a version deletes its value for good.
    await client.query(
      `UPDATE secret_versions SET state = $3, destroy_time = $4,
         ciphertext = CASE WHEN $3 = 'DESTROYED' THEN NULL ELSE ciphertext END,
         key_version = CASE WHEN $3 = 'DESTROYED' THEN NULL ELSE key_version END
       WHERE secret_name = $1 AND version = $2`,
      [v.secretName, v.version, v.state, v.destroyTime],
    );
  }
  if (write.secret !== undefined) {
    await client.query(
      `UPDATE secrets SET description = $2, labels = $3, max_versions = $4, current_version = $5,
         update_time = $6, updater = $7, etag = $8
       WHERE name = $1`,
      [
        name,
        write.secret.description,
        JSON.stringify(write.secret.labels),
        write.secret.maxVersions,
        write.secret.currentVersion,
        write.secret.updateTime,
        write.secret.updater,
        write.secret.etag,
      ],
    );
  }
}

export function createPgSecretRepository(pool: pg.Pool): SecretRepository {
  return {
    async create(secret, within) {
      await withTransaction(pool, async (client) => {
        const inserted = await client.query(
          `INSERT INTO secrets (${SECRET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           ON CONFLICT (name) DO NOTHING`,
          secretValues(secret),
        );
        if (inserted.rowCount === 0) {
          throw new DomainError("already-exists", `${secret.name} already exists`);
        }
        await within(client);
      });
    },

    async get(name) {
      const { rows } = await pool.query<SecretRow>({
        name: "secrets-get",
        text: `SELECT ${SECRET_COLUMNS} FROM secrets WHERE name = $1`,
        values: [name],
      });
      return rows[0] && secretFromRow(rows[0]);
    },

    async read(name, version) {
      const { rows } = await pool.query<SecretRow & VersionRow & { ciphertext: Buffer | null; key_version: number | null; newer: number }>({
        name: version === "latest" ? "secret-read-latest" : "secret-read-version",
        text: `SELECT s.name, s.uid, s.type, s.description, s.labels, s.key_name, s.max_versions, s.current_version,
                 s.create_time, s.update_time, s.creator, s.updater, s.etag,
                 v.secret_name, v.version, v.state, v.create_time AS version_create_time, v.creator AS version_creator,
                 v.destroy_time, v.client_specified_data_crc32c, v.origin, v.source_version, v.ciphertext, v.key_version,
                 (SELECT count(*) FROM secret_versions n WHERE n.secret_name = s.name AND n.version > v.version)::integer AS newer
               FROM secrets s LEFT JOIN LATERAL (
                 SELECT * FROM secret_versions
                  WHERE secret_name = s.name AND ${version === "latest" ? "state = 'ENABLED'" : "version = $2"}
                  ORDER BY version DESC LIMIT 1
               ) v ON true
               WHERE s.name = $1`,
        values: version === "latest" ? [name] : [name, version],
      });
      const row = rows[0] as (SecretRow & VersionRow & { version_create_time: Date; version_creator: string; ciphertext: Buffer | null; key_version: number | null; newer: number }) | undefined;
      if (row === undefined) {
        return undefined;
      }
      if (row.version === null) {
        return { secret: secretFromRow(row), version: undefined };
      }
      return {
        secret: secretFromRow(row),
        version: versionFromRow({ ...row, create_time: row.version_create_time, creator: row.version_creator }),
        value: valueOf(row),
        newer: row.newer,
      };
    },

    async list(prefix, filter: SecretFilter, after, limit) {
      const where = ["name > $1", "(name = $2 OR starts_with(name, $2 || '/'))"];
      const values: unknown[] = [after, prefix];
      const param = (value: unknown) => {
        values.push(value);
        return `$${values.length}`;
      };
      if (filter.type !== undefined) where.push(`type = ${param(filter.type)}`);
      if (filter.labels !== undefined && Object.keys(filter.labels).length > 0) {
        where.push(`labels @> ${param(JSON.stringify(filter.labels))}::jsonb`);
      }
      const { rows } = await pool.query<SecretRow>(
        `SELECT ${SECRET_COLUMNS} FROM secrets WHERE ${where.join(" AND ")} ORDER BY name LIMIT ${param(limit)}`,
        values,
      );
      return rows.map(secretFromRow);
    },

    async listVersions(name, before, limit) {
      const { rows } = await pool.query<VersionRow>(
        `SELECT ${VERSION_COLUMNS} FROM secret_versions WHERE secret_name = $1 AND version < $2 ORDER BY version DESC LIMIT $3`,
        [name, before, limit],
      );
      return rows.map(versionFromRow);
    },

    async mutate(name, decide, within) {
      return withTransaction(pool, async (client) => {
        const { rows } = await client.query<SecretRow>(`SELECT ${SECRET_COLUMNS} FROM secrets WHERE name = $1 FOR UPDATE`, [name]);
        if (rows[0] === undefined) {
          throw new DomainError("not-found", `${name} not found`);
        }
        const live = await client.query<VersionRow>(
          `SELECT ${VERSION_COLUMNS} FROM secret_versions WHERE secret_name = $1 AND state <> 'DESTROYED' ORDER BY version`,
          [name],
        );
        const locked: LockedSecret = {
          secret: secretFromRow(rows[0]),
          live: live.rows.map(versionFromRow),
          async version(version) {
            const found = await client.query<VersionRow>(
              `SELECT ${VERSION_COLUMNS} FROM secret_versions WHERE secret_name = $1 AND version = $2`,
              [name, version],
            );
            return found.rows[0] && versionFromRow(found.rows[0]);
          },
          async keyMinDecryptionVersion() {
            const found = await client.query<{ min_decryption_version: number }>(
              "SELECT k.min_decryption_version FROM keys k JOIN secrets s ON s.key_name = k.name WHERE s.name = $1 FOR SHARE OF k",
              [name],
            );
            return found.rows[0]?.min_decryption_version ?? 0;
          },
          async value(version) {
            const found = await client.query<{ ciphertext: Buffer | null; key_version: number | null }>(
              "SELECT ciphertext, key_version FROM secret_versions WHERE secret_name = $1 AND version = $2",
              [name, version],
            );
            return found.rows[0] ? valueOf(found.rows[0]) : null;
          },
        };
        const { write, result } = await decide(locked);
        if (write !== undefined) {
          await applyWrite(client, name, write);
        }
        await within(client);
        return result;
      });
    },

    async countBelow(keyName, version) {
      const { rows } = await pool.query<{ n: string }>(
        "SELECT count(*) AS n FROM secret_versions WHERE key_name = $1 AND key_version < $2 AND ciphertext IS NOT NULL",
        [keyName, version],
      );
      return Number(rows[0]!.n);
    },

    async keysToRewrap() {
      const { rows } = await pool.query<{ key_name: string }>(
        `SELECT DISTINCT v.key_name FROM secret_versions v JOIN keys k ON k.name = v.key_name
          WHERE v.key_version < k.primary_version AND v.ciphertext IS NOT NULL AND k.state = 'ENABLED'`,
      );
      return rows.map((r) => r.key_name);
    },

    async staleValues(keyName, primary, after, limit) {
      const { rows } = await pool.query<{ name: string; uid: string; version: string; ciphertext: Buffer; key_version: number }>(
        `SELECT s.name, s.uid, v.version, v.ciphertext, v.key_version
           FROM secret_versions v JOIN secrets s ON s.name = v.secret_name
          WHERE v.key_name = $1 AND v.key_version < $2 AND v.ciphertext IS NOT NULL AND (v.secret_name, v.version) > ($3, $4)
          ORDER BY v.secret_name, v.version
          LIMIT $5`,
        [keyName, primary, after?.secretName ?? "", after?.version ?? 0, limit],
      );
      return rows.map((row) => ({
        secret: { name: row.name, uid: row.uid },
        version: Number(row.version),
        value: { ciphertext: row.ciphertext, keyVersion: row.key_version },
      }));
    },

    async replaceValue(secretName, version, expected, value) {
      const { rowCount } = await pool.query(
        `UPDATE secret_versions SET ciphertext = $4, key_version = $5
          WHERE secret_name = $1 AND version = $2 AND ciphertext = $3`,
        [secretName, version, expected, value.ciphertext, value.keyVersion],
      );
      return rowCount === 1;
    },
  };
}

/**
 * Counts stored secret versions whose key has a newer primary version, with
 * a server-side statement timeout (for scrapes: they must not hang).
 *
 * @throws when the pool already has queries waiting for a connection (the
 *   count never competes with calls for a saturated pool), on the timeout, or
 *   on any database error.
 */
export async function countStaleSecretVersions(pool: pg.Pool, timeoutMs: number): Promise<number> {
  if (pool.waitingCount > 0) {
    throw new Error("database pool saturated; rewrap backlog not counted");
  }
  // One simple-protocol round trip: PostgreSQL runs the statements as one
  // implicit transaction, so SET LOCAL bounds only this count and the
  // connection goes back to the pool unchanged, even after a timeout.
  const results = (await pool.query(
    `SET LOCAL statement_timeout = ${Math.trunc(timeoutMs)};
     SELECT count(*)::bigint AS stale FROM secret_versions v JOIN keys k ON k.name = v.key_name WHERE v.key_version < k.primary_version AND v.ciphertext IS NOT NULL`,
  )) as unknown as Array<{ rows: Array<{ stale: string }> }>;
  return Number(results[1]!.rows[0]!.stale);
}
