import type { MigrationBuilder } from "node-pg-migrate";

/**
 * Keys and their versions (src/domain/keys/key.ts has the vocabulary).
 *
 * - `keys` rows are never deleted: a destroyed key stays as a tombstone, so
 *   its id can never be reused and a ciphertext naming it can never be
 *   decrypted by a different key of the same name.
 * - `key_versions.wrapped_material` is the version's material wrapped by the
 *   root key (src/crypto/key-wrap.ts) with associated data binding key name,
 *   version and algorithm: material copied into another row does not unwrap.
 *   It is NULL exactly when the version is DESTROYED.
 * - Usage counters are added in batches a few seconds after the operations.
 * - Names sort byte by byte (COLLATE "C"), whatever the database's locale,
 *   so listings and their page tokens agree everywhere.
 */
export async function up(pgm: MigrationBuilder): Promise<void> {
  pgm.sql(`
    CREATE TABLE keys (
      name                   text        COLLATE "C" PRIMARY KEY CHECK (name ~ '^keys/[a-z][a-z0-9-]{0,62}$'),
      purpose                text        NOT NULL CHECK (purpose IN ('ENCRYPT_DECRYPT', 'SIGN_VERIFY', 'MAC')),
      algorithm              text        NOT NULL,
      state                  text        NOT NULL CHECK (state IN ('ENABLED', 'DISABLED', 'PENDING_DELETION', 'DESTROYED')),
      primary_version        integer     NOT NULL CHECK (primary_version >= 1),
      min_decryption_version integer     NOT NULL CHECK (min_decryption_version >= 0),
      rotation_period_ms     bigint      CHECK (rotation_period_ms > 0),
      next_rotation_time     timestamptz,
      deletion_time          timestamptz,
      description            text        NOT NULL,
      labels                 jsonb       NOT NULL,
      create_time            timestamptz NOT NULL,
      update_time            timestamptz NOT NULL,
      etag                   bigint      NOT NULL
    );
    COMMENT ON TABLE keys IS 'Keys (metadata and state); never deleted, so key ids are never reused. No key material.';
    CREATE INDEX keys_rotation_due ON keys (next_rotation_time) WHERE state = 'ENABLED' AND next_rotation_time IS NOT NULL;
    CREATE INDEX keys_deletion_due ON keys (deletion_time) WHERE state = 'PENDING_DELETION';

    CREATE TABLE key_versions (
      key_name         text        COLLATE "C" NOT NULL REFERENCES keys (name),
      version          integer     NOT NULL CHECK (version >= 1),
      state            text        NOT NULL CHECK (state IN ('ENABLED', 'DISABLED', 'DESTROYED')),
      create_time      timestamptz NOT NULL,
      destroy_time     timestamptz,
      wrapped_material bytea,
      public_key_pem   text,
      operation_count  bigint      NOT NULL DEFAULT 0,
      last_used_time   timestamptz,
      PRIMARY KEY (key_name, version),
      CONSTRAINT key_versions_material_until_destroyed CHECK ((state = 'DESTROYED') = (wrapped_material IS NULL))
    );
    COMMENT ON COLUMN key_versions.wrapped_material IS
      'AES-256-GCM under the root key, AAD binding key name, version and algorithm; NULL once DESTROYED.';
  `);
}

export async function down(pgm: MigrationBuilder): Promise<void> {
  pgm.sql("DROP TABLE key_versions; DROP TABLE keys;");
}
