import type pg from "pg";
import type { Role } from "../../domain/authz/roles.js";
import { chainRecords } from "../../domain/audit/chain.js";
import type { AuditEvent, AuditFilter, AuditRecord } from "../../domain/audit/event.js";
import { withTransaction } from "./transaction.js";

/** A stored checkpoint. */
export interface StoredCheckpoint {
  readonly sequence: bigint;
  readonly hash: Buffer;
  readonly time: Date;
  readonly keyId: string;
  readonly signature: Buffer;
}

/** The checkpoint key as stored: public half in the clear, private half wrapped by the root key. */
export interface StoredSigningKey {
  readonly keyId: string;
  readonly algorithm: string;
  readonly publicKeyPem: string;
  readonly wrappedPrivateKey: Buffer;
}

/** The columns of `audit_events`, in the order {@link auditEventFromRow} reads them. */
export const AUDIT_EVENT_COLUMNS =
  "sequence, time, identity, roles, method, resources, key_version, result_code, result_message, request_id, peer_address, policy_digest, previous_hash, hash";

// One statement per batch: the events travel as one JSON array and PostgreSQL
// turns it into rows, so a batch of 500 costs one round trip.
const INSERT_EVENTS = `
  INSERT INTO audit_events (${AUDIT_EVENT_COLUMNS})
  SELECT ${AUDIT_EVENT_COLUMNS} FROM jsonb_to_recordset($1::jsonb) AS e(
    sequence bigint, time timestamptz, identity text, roles text[], method text, resources text[],
    key_version text, result_code smallint, result_message text, request_id text, peer_address text,
    policy_digest text, previous_hash bytea, hash bytea)`;

/** A row of `audit_events` as node-postgres returns it. */
export interface AuditEventRow {
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

/** Maps a row of `audit_events` to the domain event. */
export const auditEventFromRow = (row: AuditEventRow): AuditEvent => ({
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

const toJson = (event: AuditEvent) => ({
  sequence: event.sequence.toString(),
  time: event.time.toISOString(),
  identity: event.identity,
  roles: event.roles,
  method: event.method,
  resources: event.resources,
  key_version: event.keyVersion,
  result_code: event.resultCode,
  result_message: event.resultMessage,
  request_id: event.requestId,
  peer_address: event.peerAddress,
  policy_digest: event.policyDigest,
  previous_hash: `\\x${event.previousHash.toString("hex")}`,
  hash: `\\x${event.hash.toString("hex")}`,
});

/** Audit storage in PostgreSQL. */
export interface AuditRepository {
  /**
   * Appends records to the chain inside the caller's transaction: locks the
   * chain head, so concurrent appenders (in any process) queue, and the
   * events commit or vanish with the caller's other writes.
   */
  appendWithin(client: pg.ClientBase, records: readonly AuditRecord[]): Promise<AuditEvent[]>;
  /** Appends records in a transaction of their own. */
  append(records: readonly AuditRecord[]): Promise<AuditEvent[]>;
  head(): Promise<{ sequence: bigint; hash: Buffer }>;
  /** Events with `from <= sequence <= to`, ascending, at most `limit`. */
  range(from: bigint, to: bigint, limit: number): Promise<AuditEvent[]>;
  /** Events matching `filter`, after (or, newest first, before) `cursor`. */
  list(filter: AuditFilter, options: { after?: bigint; before?: bigint; newestFirst: boolean; limit: number }): Promise<AuditEvent[]>;
  signingKey(): Promise<StoredSigningKey | undefined>;
  /** Stores the key unless one exists; returns the one in force (first writer wins). */
  saveSigningKey(key: StoredSigningKey): Promise<StoredSigningKey>;
  saveCheckpoint(checkpoint: StoredCheckpoint): Promise<void>;
  checkpoints(): Promise<StoredCheckpoint[]>;
  /** The lowest sequence stored beyond the head, read in one snapshot: only a forger puts events there. */
  firstBeyondHead(): Promise<bigint | undefined>;
}

const APPEND_IF_HEAD = `
  WITH moved AS (
    UPDATE audit_head SET sequence = $2, hash = $3 WHERE sequence = $4 AND hash = $5 RETURNING 1
  )
  ${INSERT_EVENTS} WHERE EXISTS (SELECT 1 FROM moved)`;

export function createPgAuditRepository(pool: pg.Pool): AuditRepository {
  /** The head after this process's last append, when it was the last writer it knows of. */
  let knownHead: { sequence: bigint; hash: Buffer } | undefined;
  const appendWithin = async (client: pg.ClientBase, records: readonly AuditRecord[]): Promise<AuditEvent[]> => {
    if (records.length === 0) {
      return [];
    }
    const head = await client.query<{ sequence: string; hash: Buffer }>({
      name: "audit-lock-head",
      text: "SELECT sequence, hash FROM audit_head FOR UPDATE",
    });
    const events = chainRecords({ sequence: BigInt(head.rows[0]!.sequence), hash: head.rows[0]!.hash }, records);
    await client.query({ name: "audit-insert", text: INSERT_EVENTS, values: [JSON.stringify(events.map(toJson))] });
    const last = events.at(-1)!;
    await client.query({
      name: "audit-move-head",
      text: "UPDATE audit_head SET sequence = $1, hash = $2",
      values: [last.sequence.toString(), last.hash],
    });
    return events;
  };

  const signingKey = async (): Promise<StoredSigningKey | undefined> => {
    const { rows } = await pool.query<{ key_id: string; algorithm: string; public_key_pem: string; wrapped_private_key: Buffer }>(
      "SELECT key_id, algorithm, public_key_pem, wrapped_private_key FROM audit_signing_keys ORDER BY created_at LIMIT 1",
    );
    const row = rows[0];
    return row
      ? { keyId: row.key_id, algorithm: row.algorithm, publicKeyPem: row.public_key_pem, wrappedPrivateKey: row.wrapped_private_key }
      : undefined;
  };

  return {
    appendWithin,
    async append(records) {
      if (records.length === 0) {
        return [];
      }
      // Fast path: chain onto the head this process last saw, and move the
      // head only if it is still there — one statement, one round trip, its
      // own transaction. The UPDATE takes the head's row lock; if another
      // writer moved the head meanwhile, PostgreSQL re-checks the WHERE on
      // the new row, nothing is inserted, and the locked path below runs.
      if (knownHead !== undefined) {
        const events = chainRecords(knownHead, records);
        const last = events.at(-1)!;
        const { rowCount } = await pool.query({
          name: "audit-append-if-head",
          text: APPEND_IF_HEAD,
          values: [JSON.stringify(events.map(toJson)), last.sequence.toString(), last.hash, knownHead.sequence.toString(), knownHead.hash],
        });
        if (rowCount === events.length) {
          knownHead = { sequence: last.sequence, hash: last.hash };
          return events;
        }
        knownHead = undefined;
      }
      const events = await withTransaction(pool, (client) => appendWithin(client, records));
      const last = events.at(-1)!;
      knownHead = { sequence: last.sequence, hash: last.hash };
      return events;
    },
    async firstBeyondHead() {
      const { rows } = await pool.query<{ sequence: string | null }>(
        "SELECT min(e.sequence) AS sequence FROM audit_events e, audit_head h WHERE e.sequence > h.sequence",
      );
      return rows[0]?.sequence == null ? undefined : BigInt(rows[0].sequence);
    },
    async head() {
      const { rows } = await pool.query<{ sequence: string; hash: Buffer }>("SELECT sequence, hash FROM audit_head");
      return { sequence: BigInt(rows[0]!.sequence), hash: rows[0]!.hash };
    },
    async range(from, to, limit) {
      const { rows } = await pool.query<AuditEventRow>(
        `SELECT ${AUDIT_EVENT_COLUMNS} FROM audit_events WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence LIMIT $3`,
        [from.toString(), to.toString(), limit],
      );
      return rows.map(auditEventFromRow);
    },
    async list(filter, options) {
      const where: string[] = [];
      const values: unknown[] = [];
      const param = (value: unknown) => {
        values.push(value);
        return `$${values.length}`;
      };
      if (filter.startTime) where.push(`time >= ${param(filter.startTime)}`);
      if (filter.endTime) where.push(`time < ${param(filter.endTime)}`);
      if (filter.identity) where.push(`identity = ${param(filter.identity)}`);
      if (filter.method) {
        where.push(
          filter.method.endsWith("/")
            ? `starts_with(method, ${param(filter.method)})`
            : `method = ${param(filter.method)}`,
        );
      }
      if (filter.resource) {
        const exact = param(filter.resource);
        const below = param(`${filter.resource}/`);
        where.push(`EXISTS (SELECT 1 FROM unnest(resources) r WHERE r = ${exact} OR starts_with(r, ${below}))`);
      }
      if (filter.resultCode !== undefined) where.push(`result_code = ${param(filter.resultCode)}`);
      if (options.after !== undefined) where.push(`sequence > ${param(options.after.toString())}`);
      if (options.before !== undefined) where.push(`sequence < ${param(options.before.toString())}`);
      const { rows } = await pool.query<AuditEventRow>(
        `SELECT ${AUDIT_EVENT_COLUMNS} FROM audit_events ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""}
         ORDER BY sequence ${options.newestFirst ? "DESC" : "ASC"} LIMIT ${param(options.limit)}`,
        values,
      );
      return rows.map(auditEventFromRow);
    },
    signingKey,
    async saveSigningKey(key) {
      // Serialized through the chain head's lock so that replicas starting
      // together agree on one key.
      await withTransaction(pool, async (client) => {
        await client.query("SELECT 1 FROM audit_head FOR UPDATE");
        const existing = await client.query("SELECT 1 FROM audit_signing_keys LIMIT 1");
        if (existing.rowCount === 0) {
          await client.query(
            "INSERT INTO audit_signing_keys (key_id, algorithm, public_key_pem, wrapped_private_key) VALUES ($1, $2, $3, $4)",
            [key.keyId, key.algorithm, key.publicKeyPem, key.wrappedPrivateKey],
          );
        }
      });
      return (await signingKey())!;
    },
    async saveCheckpoint(checkpoint) {
      await pool.query(
        "INSERT INTO audit_checkpoints (sequence, hash, time, key_id, signature) VALUES ($1, $2, $3, $4, $5)",
        [checkpoint.sequence.toString(), checkpoint.hash, checkpoint.time, checkpoint.keyId, checkpoint.signature],
      );
    },
    async checkpoints() {
      const { rows } = await pool.query<{ sequence: string; hash: Buffer; time: Date; key_id: string; signature: Buffer }>(
        "SELECT sequence, hash, time, key_id, signature FROM audit_checkpoints ORDER BY sequence, id",
      );
      return rows.map((row) => ({
        sequence: BigInt(row.sequence),
        hash: row.hash,
        time: row.time,
        keyId: row.key_id,
        signature: row.signature,
      }));
    },
  };
}
