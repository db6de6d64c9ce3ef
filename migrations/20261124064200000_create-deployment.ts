import type { MigrationBuilder } from "node-pg-migrate";

/**
 * The deployment: one row per database, written on the first start.
 *
 * `root_key_check` lets a server notice at startup that it was given a root key
 * other than the one this database's key material is wrapped with, and refuse
 * to start instead of failing every unwrap later.
 */
export async function up(pgm: MigrationBuilder): Promise<void> {
  pgm.createTable(
    "deployment",
    {
      id: { type: "boolean", primaryKey: true, default: true },
      deployment_id: { type: "uuid", notNull: true },
      created_at: { type: "timestamptz", notNull: true, default: pgm.func("now()") },
      root_key_check: { type: "bytea", notNull: true },
    },
    {
      comment: "Singleton row identifying this Keyward deployment; created on the first start.",
    },
  );
  // A boolean primary key that must be true: the table holds at most one row.
  pgm.addConstraint("deployment", "deployment_singleton", { check: "id" });
  pgm.sql(`COMMENT ON COLUMN deployment.root_key_check IS
    'Key check value of the root key: HMAC-SHA256(root key, ''keyward root key check v1''), '
    'written on the first start. A server whose root key yields a different value refuses to '
    'start. One-way: it reveals nothing about the root key.'`);
}

export async function down(pgm: MigrationBuilder): Promise<void> {
  pgm.dropTable("deployment");
}
