/**
 * The three roles. Separation of duties is the default: ADMIN manages
 * lifecycles but does not use keys or read values; SERVICE uses keys and
 * values within its grants; AUDITOR reads the audit log and metadata.
 */
export const ROLES = ["ADMIN", "SERVICE", "AUDITOR"] as const;

export type Role = (typeof ROLES)[number];

export function isRole(value: unknown): value is Role {
  return typeof value === "string" && (ROLES as readonly string[]).includes(value);
}
