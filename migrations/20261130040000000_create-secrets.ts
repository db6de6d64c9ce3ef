import type { MigrationBuilder } from "node-pg-migrate";

/**
 * Secrets and their versions (src/domain/secrets/secret.ts has the vocabulary).
 *
 * - `secret_versions.ciphertext` is the value envelope-encrypted with the
 *   secret's key (src/crypto/envelope.ts), with associated data binding the
 *   secret's uid, name and version (src/domain/secrets/secret.ts
 *   `valueBinding`): a value copied into another row does not decrypt. It is
 *   NULL exactly when the version is DESTROYED.
 * - `key_version` is the key version the ciphertext was made with, so the
 *   rewrap job finds what still depends on older key versions without
 *   reading ciphertexts.
 * - `uid` changes when a deleted secret's name is used again, so values of
 *   the old secret can never be made to decrypt as the new one's.
 */
export async function up(pgm: MigrationBuilder): Promise<void> {
  pgm.sql(`
    CREATE TABLE secrets (
      name            text        COLLATE "C" PRIMARY KEY,
      uid             uuid        NOT NULL UNIQUE,
      type            text        NOT NULL,
      description     text        NOT NULL,
      labels          jsonb       NOT NULL,
      key_name        text        COLLATE "C" NOT NULL REFERENCES keys (name),
      max_versions    integer     NOT NULL CHECK (max_versions BETWEEN 1 AND 1000),
      current_version bigint      NOT NULL CHECK (current_version >= 0),
      create_time     timestamptz NOT NULL,
      update_time     timestamptz NOT NULL,
      creator         text        NOT NULL,
      updater         text        NOT NULL,
      etag            bigint      NOT NULL
    );
    COMMENT ON TABLE secrets IS 'Secret metadata; never a value.';

    CREATE TABLE secret_versions (
      secret_name                 text        COLLATE "C" NOT NULL REFERENCES secrets (name) ON DELETE CASCADE,
      version                     bigint      NOT NULL CHECK (version >= 1),
      state                       text        NOT NULL CHECK (state IN ('ENABLED', 'DISABLED', 'DESTROYED')),
      create_time                 timestamptz NOT NULL,
      creator                     text        NOT NULL,
      destroy_time                timestamptz,
      client_specified_data_crc32c boolean    NOT NULL,
      origin                      text        NOT NULL CHECK (origin IN ('ADDED', 'GENERATED', 'ROLLBACK')),
      source_version              bigint      NOT NULL DEFAULT 0,
      key_name                    text        COLLATE "C" NOT NULL REFERENCES keys (name),
      key_version                 integer,
      ciphertext                  bytea,
      PRIMARY KEY (secret_name, version),
      CONSTRAINT secret_versions_value_until_destroyed CHECK ((state = 'DESTROYED') = (ciphertext IS NULL)),
      CONSTRAINT secret_versions_key_version_with_value CHECK ((ciphertext IS NULL) = (key_version IS NULL))
    );
    COMMENT ON COLUMN secret_versions.ciphertext IS
      'Envelope ciphertext under key_name/key_version, AAD binding secret uid, name and version; NULL once DESTROYED.';
    CREATE INDEX secret_versions_by_key_version ON secret_versions (key_name, key_version) WHERE ciphertext IS NOT NULL;
  `);
}

export async function down(pgm: MigrationBuilder): Promise<void> {
  pgm.sql("DROP TABLE secret_versions; DROP TABLE secrets;");
}
