import type { MigrationBuilder } from "node-pg-migrate";

/**
 * Every change to a key or a secret, whoever makes it — a Keyward replica,
 * the rewrap job, or someone editing rows by hand — is announced on the
 * channel `keyward_changes` with the payload `<schema> <resource name>`, so
 * that every replica drops what it cached of that key or secret
 * (src/storage/pg/change-feed.ts). Notices are sent at commit, and
 * PostgreSQL folds identical ones within a transaction.
 *
 * Usage counters of key versions are left out: they change every few
 * seconds and say nothing a cache holds.
 */
export async function up(pgm: MigrationBuilder): Promise<void> {
  pgm.sql(`
    CREATE FUNCTION keyward_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      name text := to_jsonb(COALESCE(NEW, OLD)) ->> TG_ARGV[0];
      old_name text := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) ->> TG_ARGV[0] END;
    BEGIN
      PERFORM pg_notify('keyward_changes', TG_TABLE_SCHEMA || ' ' || name);
      -- A row moved to another key or secret changes the one it left too.
      IF old_name IS DISTINCT FROM name AND old_name IS NOT NULL THEN
        PERFORM pg_notify('keyward_changes', TG_TABLE_SCHEMA || ' ' || old_name);
      END IF;
      RETURN NULL;
    END
    $$;

    CREATE TRIGGER keys_notify AFTER INSERT OR UPDATE OR DELETE ON keys
      FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('name');
    CREATE TRIGGER key_versions_notify
      AFTER INSERT OR DELETE OR UPDATE OF key_name, version, state, destroy_time, wrapped_material, public_key_pem ON key_versions
      FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('key_name');
    CREATE TRIGGER secrets_notify AFTER INSERT OR UPDATE OR DELETE ON secrets
      FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('name');
    CREATE TRIGGER secret_versions_notify AFTER INSERT OR UPDATE OR DELETE ON secret_versions
      FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('secret_name');
  `);
}

export async function down(pgm: MigrationBuilder): Promise<void> {
  pgm.sql(`
    DROP TRIGGER secret_versions_notify ON secret_versions;
    DROP TRIGGER secrets_notify ON secrets;
    DROP TRIGGER key_versions_notify ON key_versions;
    DROP TRIGGER keys_notify ON keys;
    DROP FUNCTION keyward_notify_change();
  `);
}
