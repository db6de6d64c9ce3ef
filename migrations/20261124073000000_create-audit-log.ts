import type { MigrationBuilder } from "node-pg-migrate";

/**
 * The audit log: one hash chain per deployment.
 *
 * - `audit_events` holds the chain; `hash` covers every other column but
 *   itself (see src/domain/audit/chain.ts for the encoding).
 * - `audit_head` is the single row every writer locks (`FOR UPDATE`) to
 *   append: it serializes appenders across all server processes, so there is
 *   one chain, without forks or gaps.
 * - `audit_signing_keys` holds the checkpoint key, its private half wrapped
 *   by the root key; `audit_checkpoints` the signed heads.
 * - Triggers refuse UPDATE, DELETE and TRUNCATE on events, checkpoints and
 *   signing keys: rewriting history takes disabling them first, and the
 *   chain and checkpoints show what was rewritten anyway.
 */
export async function up(pgm: MigrationBuilder): Promise<void> {
  pgm.sql(`
    CREATE TABLE audit_events (
      sequence       bigint      PRIMARY KEY CHECK (sequence > 0),
      time           timestamptz NOT NULL,
      identity       text        NOT NULL,
      roles          text[]      NOT NULL,
      method         text        NOT NULL,
      resources      text[]      NOT NULL,
      key_version    text        NOT NULL,
      result_code    smallint    NOT NULL CHECK (result_code BETWEEN 0 AND 16),
      result_message text        NOT NULL,
      request_id     text        NOT NULL,
      peer_address   text        NOT NULL,
      policy_digest  text        NOT NULL,
      previous_hash  bytea       NOT NULL CHECK (length(previous_hash) = 32),
      hash           bytea       NOT NULL CHECK (length(hash) = 32),
      -- The chain hashes whole milliseconds: finer digits would be unprotected.
      CONSTRAINT audit_events_time_ms CHECK (time = date_trunc('milliseconds', time))
    );
    COMMENT ON TABLE audit_events IS 'Hash-chained audit events; append-only. Never holds plaintext, secret values or key material.';
    CREATE INDEX audit_events_time ON audit_events (time);
    CREATE INDEX audit_events_identity ON audit_events (identity, sequence);
    CREATE INDEX audit_events_method ON audit_events (method, sequence);

    CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
    END $$;
    CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
      FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

    CREATE TABLE audit_head (
      id       boolean PRIMARY KEY DEFAULT true CHECK (id),
      sequence bigint  NOT NULL,
      hash     bytea   NOT NULL CHECK (length(hash) = 32)
    );
    COMMENT ON TABLE audit_head IS 'Sequence and hash of the last audit event; locked by every append.';
    INSERT INTO audit_head (sequence, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

    CREATE TABLE audit_signing_keys (
      key_id              text        PRIMARY KEY,
      algorithm           text        NOT NULL,
      public_key_pem      text        NOT NULL,
      wrapped_private_key bytea       NOT NULL,
      created_at          timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON COLUMN audit_signing_keys.wrapped_private_key IS 'PKCS#8 private key wrapped by the root key (AES-256-GCM); never stored in the clear.';

    CREATE TABLE audit_checkpoints (
      id        bigserial   PRIMARY KEY,
      sequence  bigint      NOT NULL,
      hash      bytea       NOT NULL CHECK (length(hash) = 32),
      time      timestamptz NOT NULL,
      key_id    text        NOT NULL REFERENCES audit_signing_keys (key_id),
      signature bytea       NOT NULL
    );
    CREATE INDEX audit_checkpoints_sequence ON audit_checkpoints (sequence);

    -- Checkpoints and keys are evidence too: append-only like the events.
    CREATE TRIGGER audit_signing_keys_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_signing_keys
      FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
    CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
      FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
  `);
}
