import type pg from "pg";
import type { AuditEvent } from "../domain/audit/event.js";
import { AUDIT_EVENT_COLUMNS, auditEventFromRow, type AuditEventRow, type StoredCheckpoint } from "../storage/pg/audit-repository.js";
import { withTransaction } from "../storage/pg/transaction.js";
import type { PublicSigningKey } from "./audit-export-format.js";

/** Rows per query when reading events and checkpoints. */
export const DEFAULT_PAGE_SIZE = 1000;

/** The largest sequence PostgreSQL's bigint holds: "no upper bound". */
export const MAX_SEQUENCE = 2n ** 63n - 1n;

/**
 * A consistent, read-only view of the audit tables: everything read through
 * it comes from one snapshot, so events appended meanwhile by running
 * servers never make the head, the events and the checkpoints disagree.
 */
export interface AuditSnapshot {
  /** `audit_head`: the sequence and hash of the last event appended through the normal path. */
  head(): Promise<{ sequence: bigint; hash: Buffer }>;
  /** Every checkpoint signing key, oldest first, without the private half. */
  signingKeys(): Promise<PublicSigningKey[]>;
  /** Checkpoints with `from <= sequence <= to`, ascending, read page by page. */
  checkpoints(from: bigint, to: bigint): AsyncIterable<StoredCheckpoint>;
  /** Events with `from <= sequence <= to`, ascending by sequence, one page (non-empty array) at a time. */
  eventPages(from: bigint, to: bigint): AsyncIterable<AuditEvent[]>;
}

interface CheckpointRow {
  id: string;
  sequence: string;
  hash: Buffer;
  time: Date;
  key_id: string;
  signature: Buffer;
}

/**
 * Runs `fn` in a REPEATABLE READ, READ ONLY transaction on one connection of
 * `pool` (whose search_path names the Keyward schema).
 *
 * Reads are keyset-paginated (`pageSize` rows per query, default 1000), so
 * memory stays bounded however long the log is.
 *
 * @throws NoAuditLogError when the schema has no audit tables (not migrated,
 *   or the wrong schema), and whatever the database throws.
 */
export async function withAuditSnapshot<T>(
  pool: pg.Pool,
  fn: (snapshot: AuditSnapshot) => Promise<T>,
  pageSize = DEFAULT_PAGE_SIZE,
): Promise<T> {
  return withTransaction(pool, async (client) => {
    await client.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const { rows } = await client.query<{ present: boolean }>(
      "SELECT to_regclass('audit_events') IS NOT NULL AND to_regclass('audit_head') IS NOT NULL AS present",
    );
    if (!rows[0]?.present) {
      throw new NoAuditLogError("no audit tables in this database schema (wrong KEYWARD_DB_SCHEMA, or not migrated?)");
    }
    return fn({
      async head() {
        const head = await client.query<{ sequence: string; hash: Buffer }>("SELECT sequence, hash FROM audit_head");
        const row = head.rows[0];
        if (!row) {
          throw new Error("audit_head has no row");
        }
        return { sequence: BigInt(row.sequence), hash: row.hash };
      },
      async signingKeys() {
        const keys = await client.query<{ key_id: string; algorithm: string; public_key_pem: string }>(
          "SELECT key_id, algorithm, public_key_pem FROM audit_signing_keys ORDER BY created_at, key_id",
        );
        return keys.rows.map((row) => ({ keyId: row.key_id, algorithm: row.algorithm, publicKeyPem: row.public_key_pem }));
      },
      async *checkpoints(from, to) {
        let after = { sequence: from - 1n, id: "9223372036854775807" };
        for (;;) {
          const page = await client.query<CheckpointRow>(
            `SELECT id, sequence, hash, time, key_id, signature FROM audit_checkpoints
             WHERE (sequence, id) > ($1::bigint, $2::bigint) AND sequence <= $3::bigint
             ORDER BY sequence, id LIMIT $4`,
            [after.sequence.toString(), after.id, to.toString(), pageSize],
          );
          for (const row of page.rows) {
            yield { sequence: BigInt(row.sequence), hash: row.hash, time: row.time, keyId: row.key_id, signature: row.signature };
          }
          const last = page.rows.at(-1);
          if (!last || page.rows.length < pageSize) {
            return;
          }
          after = { sequence: BigInt(last.sequence), id: last.id };
        }
      },
      async *eventPages(from, to) {
        let next = from;
        while (next <= to) {
          const page = await client.query<AuditEventRow>(
            `SELECT ${AUDIT_EVENT_COLUMNS} FROM audit_events WHERE sequence BETWEEN $1::bigint AND $2::bigint ORDER BY sequence LIMIT $3`,
            [next.toString(), to.toString(), pageSize],
          );
          const last = page.rows.at(-1);
          if (!last) {
            return;
          }
          yield page.rows.map(auditEventFromRow);
          if (page.rows.length < pageSize) {
            return;
          }
          next = BigInt(last.sequence) + 1n;
        }
      },
    });
  });
}

/** The database holds no audit log to read. */
export class NoAuditLogError extends Error {
  override name = "NoAuditLogError";
}

