import { Code } from "@connectrpc/connect";
import type { DomainErrorKind } from "../domain/errors.js";

/** The only mapping from domain failure kinds to gRPC codes. */
export const ERROR_CODES: Readonly<Record<DomainErrorKind, Code>> = {
  "invalid-argument": Code.InvalidArgument,
  "not-found": Code.NotFound,
  "already-exists": Code.AlreadyExists,
  "failed-precondition": Code.FailedPrecondition,
  aborted: Code.Aborted,
  "out-of-range": Code.OutOfRange,
  "permission-denied": Code.PermissionDenied,
  unauthenticated: Code.Unauthenticated,
  "resource-exhausted": Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  "data-loss": Code.DataLoss,
};
