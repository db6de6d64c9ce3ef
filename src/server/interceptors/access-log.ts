import { randomUUID } from "node:crypto";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { kIdentity, kPeerAddress, kRequestId } from "../context.js";
import { withOutcome } from "./outcome.js";

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Outermost interceptor: assigns the request id (the caller's `x-request-id`
 * when well-formed, else a fresh UUID, echoed in the response header) and
 * writes one access log line per call: request id, identity, method, code,
 * duration. It logs names and codes only, never messages, so no request or
 * response content can reach the log.
 */
export function createAccessLogInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const offered = req.header.get("x-request-id");
    const requestId = offered && REQUEST_ID.test(offered) ? offered : randomUUID();
    req.contextValues.set(kRequestId, requestId);
    const method = `/${req.service.typeName}/${req.method.name}`;

    const write = (error: unknown) => {
      const failure = error === undefined ? undefined : ConnectError.from(error);
      const entry = {
        requestId,
        identity: req.contextValues.get(kIdentity)?.name,
        peer: req.contextValues.get(kPeerAddress),
        method,
        code: failure ? codeName(failure.code) : "ok",
        durationMs: Math.round((performance.now() - started) * 1000) / 1000,
      };
      if (failure === undefined) {
        log.info(entry, "call");
      } else {
        // DATA_LOSS means stored data was altered or moved: someone must look.
        const level = failure.code === Code.Internal || failure.code === Code.Unknown || failure.code === Code.DataLoss ? "error" : "info";
        log[level]({ ...entry, error: failure.rawMessage }, "call failed");
      }
    };

    const res = await withOutcome(() => next(req), {
      succeeded: () => write(undefined),
      failed(err) {
        if (err instanceof ConnectError) {
          err.metadata.set("x-request-id", requestId);
        }
        write(err);
        return err;
      },
    });
    res.header.set("x-request-id", requestId);
    return res;
  };
}

function codeName(code: Code): string {
  return Code[code]!.replace(/[A-Z]/g, (c, i: number) => (i === 0 ? c.toLowerCase() : `_${c.toLowerCase()}`));
}
