import { DomainError } from "../domain/errors.js";

/**
 * Free text stored as metadata (descriptions): PostgreSQL text cannot hold
 * a NUL, and control characters only serve to mislead whoever reads the
 * metadata later. Tabs and line breaks included; descriptions are one line.
 *
 * @throws DomainError "invalid-argument" naming the field, never quoting it.
 */
export function requirePlainText(field: string, value: string): string {
  if (/[\u0000-\u001f\u007f]/.test(value)) {
    throw new DomainError("invalid-argument", `${field} must not contain control characters`);
  }
  return value;
}
