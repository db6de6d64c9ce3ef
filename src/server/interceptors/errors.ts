import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { DomainError } from "../../domain/errors.js";
import { answerable } from "../caller-errors.js";
import { kRequestId } from "../context.js";
import { ERROR_CODES } from "../error-codes.js";
import { withOutcome } from "./outcome.js";

/**
 * Maps failures to gRPC codes once, at the edge. DomainErrors become their
 * code with their (caller-safe) message; ConnectErrors pass through, bounded
 * to fit in trailers and with a request that failed to decode answered
 * INVALID_ARGUMENT (see answerable); a failure after the peer reset the
 * call is CANCELED, logged at debug level; an
 * error `isUnavailable` recognises (the database unreachable: storage
 * decides, see storage/pg/errors.ts) is the "unavailable" kind with a fixed
 * message; anything else is a bug: logged with its stack at error level and
 * answered INTERNAL with a fixed message, so no internal detail (SQL, paths,
 * bytes) reaches the caller.
 */
export function createErrorInterceptor(
  log: Logger,
  options: { isUnavailable?: (err: unknown) => boolean } = {},
): Interceptor {
  const map = (err: unknown, requestId: string, inputType: string, ended: boolean): ConnectError => {
    if (err instanceof ConnectError) {
      // Bounded to fit in trailers; a stream's undecodable request is the caller's fault.
      return answerable(err, inputType);
    }
    if (ended && !(err instanceof DomainError)) {
      // The peer reset the stream or went away (ERR_STREAM_PREMATURE_CLOSE,
      // ERR_HTTP2_INVALID_STREAM on a write): nobody is left to answer, and
      // it is no bug of ours.
      log.debug({ requestId, error: (err as Error)?.message }, "call ended by the peer");
      return new ConnectError("the call ended before it was answered", Code.Canceled, undefined, undefined, err);
    }
    if (!(err instanceof DomainError) && options.isUnavailable?.(err)) {
      // Expected while the database is away (the health probe reports it
      // once); the caller retries later.
      log.debug({ requestId, error: (err as Error).message }, "database unavailable");
      err = new DomainError("unavailable", "database unavailable", { cause: err });
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
      failed: (err) => map(err, req.contextValues.get(kRequestId), req.method.input.typeName, req.signal.aborted),
    });
}
