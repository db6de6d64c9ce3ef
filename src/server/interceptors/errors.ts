import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { DomainError } from "../../domain/errors.js";
import { kRequestId } from "../context.js";
import { ERROR_CODES } from "../error-codes.js";
import { withOutcome } from "./outcome.js";

/**
 * Maps failures to gRPC codes once, at the edge. DomainErrors become their
 * code with their (caller-safe) message; ConnectErrors pass through;
 * anything else is a bug: logged with its stack at error level and answered
 * INTERNAL with a fixed message, so no internal detail (SQL, paths, bytes)
 * reaches the caller.
 */
export function createErrorInterceptor(log: Logger): Interceptor {
  const map = (err: unknown, requestId: string): ConnectError => {
    if (err instanceof ConnectError) {
      return err;
    }
    if (err instanceof DomainError) {
      return new ConnectError(err.message, ERROR_CODES[err.kind], undefined, undefined, err);
    }
    log.error({ requestId, err }, "unexpected error");
    return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
  };
  return (next) => (req) =>
    withOutcome(() => next(req), {
      succeeded: () => {},
      failed: (err) => map(err, req.contextValues.get(kRequestId)),
    });
}
