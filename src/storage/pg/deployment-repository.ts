import { randomUUID, timingSafeEqual } from "node:crypto";
import type pg from "pg";
import { withTransaction } from "./transaction.js";

/** The deployment row: which database this is, and since when. */
export interface Deployment {
  /** Random UUID chosen when the database was first used. */
  deploymentId: string;
  /** When the row was written (server clock). */
  createdAt: Date;
  /** True when this call created the row (first start against this database). */
  created: boolean;
}

/** Thrown by {@link DeploymentRepository.ensure} when the root key is not the one this database was set up with. */
export class RootKeyMismatchError extends Error {
  override name = "RootKeyMismatchError";
}

/** Storage for the singleton `deployment` row. */
export interface DeploymentRepository {
  /**
   * Binds the database to a root key on first use and checks it afterwards.
   *
   * The first call on an empty database writes the deployment row with a fresh
   * random id and `rootKeyCheck`. Later calls compare the stored check value
   * with `rootKeyCheck` in constant time and return the stored row. Concurrent
   * first calls from several replicas agree on one row.
   *
   * @throws RootKeyMismatchError when the stored check value differs; nothing
   *   is written. The message never contains either value.
   */
  ensure(rootKeyCheck: Buffer): Promise<Deployment>;
  /** Resolves when the database answers a trivial query; rejects otherwise. */
  ping(): Promise<void>;
}

interface DeploymentRow {
  deployment_id: string;
  created_at: Date;
}

/** A {@link DeploymentRepository} on the `deployment` table; `pool` must use the migrated schema. */
export function createPgDeploymentRepository(pool: pg.Pool): DeploymentRepository {
  return {
    ensure(rootKeyCheck) {
      return withTransaction(pool, async (client) => {
        // ON CONFLICT DO NOTHING instead of SELECT-then-INSERT: a replica
        // racing us blocks on our uncommitted row, then finds it and falls
        // through to the comparison below.
        const inserted = await client.query<DeploymentRow>(
          `INSERT INTO deployment (id, deployment_id, root_key_check)
           VALUES (true, $1, $2)
           ON CONFLICT (id) DO NOTHING
           RETURNING deployment_id, created_at`,
          [randomUUID(), rootKeyCheck],
        );
        const created = inserted.rows[0];
        if (created !== undefined) {
          return { deploymentId: created.deployment_id, createdAt: created.created_at, created: true };
        }
        const existing = await client.query<DeploymentRow & { root_key_check: Buffer }>(
          "SELECT deployment_id, created_at, root_key_check FROM deployment WHERE id",
        );
        const row = existing.rows[0];
        if (row === undefined) {
          // Only possible if the row was deleted between the two statements.
          throw new Error("deployment row vanished while checking the root key; retry");
        }
        // The length of a check value is not secret; timingSafeEqual needs equal lengths.
        const matches =
          row.root_key_check.length === rootKeyCheck.length &&
          timingSafeEqual(row.root_key_check, rootKeyCheck);
        if (!matches) {
          throw new RootKeyMismatchError(
            `root key does not match this database (deployment ${row.deployment_id}, created ` +
              `${row.created_at.toISOString()}): its key material is wrapped with a different root ` +
              "key; start with the root key this database was created with",
          );
        }
        return { deploymentId: row.deployment_id, createdAt: row.created_at, created: false };
      });
    },
    async ping() {
      await pool.query("SELECT 1");
    },
  };
}
