import type { MigrationBuilder } from "node-pg-migrate";

/**
 * Lets a root key rotation (`keyward root-key rotate`) re-wrap the audit
 * checkpoint key: an UPDATE of `audit_signing_keys` that changes only
 * `wrapped_private_key` is allowed; any other UPDATE, DELETE and TRUNCATE are
 * still refused.
 *
 * This weakens nothing an attacker could use: the wrapped key's associated
 * data binds its key id and algorithm, and the server checks at start that
 * the unwrapped private key matches the stored public key, so a substituted
 * value can only stop the server from starting, never sign as another key.
 * The public key, the key id and everything a verifier relies on stay fixed.
 *
 * The row trigger keeps the name `audit_signing_keys_append_only` so that
 * `ALTER TABLE ... DISABLE TRIGGER audit_signing_keys_append_only` still
 * switches off the guard on UPDATE and DELETE as before. TRUNCATE cannot be
 * checked per row, so it moves to a statement trigger of its own.
 *
 * Comparing the rows as JSON minus that one column, rather than column by
 * column, means a column added later is protected without touching this
 * function.
 */
export async function up(pgm: MigrationBuilder): Promise<void> {
  pgm.sql(`
    CREATE FUNCTION audit_signing_keys_rewrap_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'UPDATE' THEN
        IF to_jsonb(NEW) - 'wrapped_private_key' = to_jsonb(OLD) - 'wrapped_private_key' THEN
          RETURN NEW;
        END IF;
        RAISE EXCEPTION '% is append-only: an UPDATE may change only wrapped_private_key (root key rotation)', TG_TABLE_NAME;
      END IF;
      RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
    END $$;

    DROP TRIGGER audit_signing_keys_append_only ON audit_signing_keys;
    CREATE TRIGGER audit_signing_keys_append_only BEFORE UPDATE OR DELETE ON audit_signing_keys
      FOR EACH ROW EXECUTE FUNCTION audit_signing_keys_rewrap_only();
    CREATE TRIGGER audit_signing_keys_no_truncate BEFORE TRUNCATE ON audit_signing_keys
      FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
  `);
}

export async function down(pgm: MigrationBuilder): Promise<void> {
  pgm.sql(`
    DROP TRIGGER audit_signing_keys_no_truncate ON audit_signing_keys;
    DROP TRIGGER audit_signing_keys_append_only ON audit_signing_keys;
    DROP FUNCTION audit_signing_keys_rewrap_only();
    CREATE TRIGGER audit_signing_keys_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_signing_keys
      FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
  `);
}
