import type pg from "pg";
import type { Role } from "../domain/authz/roles.js";
import type { AuditEvent } from "../domain/audit/event.js";
import type { StoredCheckpoint } from "../storage/pg/audit-repository.js";
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

interface EventRow {
  sequence: string;
  time: Date;
  identity: string;
  roles: string[];
  method: string;
  resources: string[];
  key_version: string;
  result_code: number;
  result_message: string;
  request_id: string;
  peer_address: string;
  policy_digest: string;
  previous_hash: Buffer;
  hash: Buffer;
}

interface CheckpointRow {
  id: string;
  sequence: string;
  hash: Buffer;
  time: Date;
  key_id: string;
  signature: Buffer;
}

const EVENT_COLUMNS =
  "sequence, time, identity, roles, method, resources, key_version, result_code, result_message, request_id, peer_address, policy_digest, previous_hash, hash";

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
          const page = await client.query<EventRow>(
            `SELECT ${EVENT_COLUMNS} FROM audit_events WHERE sequence BETWEEN $1::bigint AND $2::bigint ORDER BY sequence LIMIT $3`,
            [next.toString(), to.toString(), pageSize],
          );
          const last = page.rows.at(-1);
          if (!last) {
            return;
          }
          yield page.rows.map(fromRow);
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

const fromRow = (row: EventRow): AuditEvent => ({
  sequence: BigInt(row.sequence),
  time: row.time,
  identity: row.identity,
  roles: row.roles as Role[],
  method: row.method,
  resources: row.resources,
  keyVersion: row.key_version,
  resultCode: row.result_code,
  resultMessage: row.result_message,
  requestId: row.request_id,
  peerAddress: row.peer_address,
  policyDigest: row.policy_digest,
  previousHash: row.previous_hash,
  hash: row.hash,
});
