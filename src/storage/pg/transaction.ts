import type pg from "pg";
import { isDatabaseUnavailable } from "./errors.js";

/**
 * Runs `fn` inside one transaction on one pooled connection.
 *
 * Guarantees:
 * - `BEGIN` before `fn`, `COMMIT` after it resolves, `ROLLBACK` if it rejects
 *   (or if `COMMIT` itself fails); the connection is always released.
 * - The caller sees `fn`'s own error: a failing `ROLLBACK` does not replace it.
 * - A connection whose state is unknown (rollback failed) is destroyed rather
 *   than returned to the pool, so the next caller never inherits an open or
 *   aborted transaction.
 * - A connection that was lost or stopped answering (a query timed out) is
 *   destroyed without a ROLLBACK, which could only wait out another timeout:
 *   the server rolls back a transaction whose connection ends.
 *
 * Isolation is the server default (READ COMMITTED) unless `fn` changes it as
 * its first statement (`SET TRANSACTION ISOLATION LEVEL ...`).
 *
 * @throws whatever `pool.connect()`, `BEGIN`, `fn` or `COMMIT` throws.
 */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  // Cleared when the connection's state is unknown, so release() destroys it.
  let reusable = true;
  try {
    try {
      await client.query("BEGIN");
    } catch (error) {
      reusable = false;
      throw error;
    }
    try {
      const result = await fn(client);
      await client.query("COMMIT");
      return result;
    } catch (error) {
      if (isDatabaseUnavailable(error)) {
        reusable = false;
        throw error;
      }
      // After a failed COMMIT the transaction is already over; ROLLBACK then
      // only warns, so it is safe to send in both cases.
      await client.query("ROLLBACK").catch(() => {
        reusable = false;
      });
      throw error;
    }
  } finally {
    client.release(!reusable);
  }
}
