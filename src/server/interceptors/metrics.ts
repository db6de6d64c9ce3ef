import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { KeywardMetrics } from "../metrics.js";
import { withOutcome } from "./outcome.js";

/**
 * gRPC's canonical status code names, indexed by code (the spelling of
 * grpc/status.proto, which dashboards and alerts expect: CANCELLED, not
 * Connect's "canceled").
 */
export const GRPC_CODE_NAMES: readonly string[] = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/**
 * Counts every call and times it into `metrics`: `method` is the call's path
 * when it is one of `served`'s methods, else "unknown", and `code` its final
 * gRPC code name, so both labels come from sets fixed at start whatever a
 * caller sends. Streams are reported when their last message is produced or
 * they fail. Placed outermost, it sees the code the caller gets and times the
 * whole interceptor chain.
 */
export function createMetricsInterceptor(
  metrics: Pick<KeywardMetrics, "rpcCalls" | "rpcDuration">,
  served: readonly DescService[],
): Interceptor {
  const known = new Set(served.flatMap((service) => service.methods.map((method) => `/${service.typeName}/${method.name}`)));
  return (next) => async (req) => {
    const started = performance.now();
    const path = `/${req.service.typeName}/${req.method.name}`;
    const method = known.has(path) ? path : "unknown";
    const record = (code: Code | undefined) => {
      metrics.rpcCalls.inc({ method, code: code === undefined ? "OK" : (GRPC_CODE_NAMES[code] ?? "UNKNOWN") });
      metrics.rpcDuration.observe({ method }, (performance.now() - started) / 1000);
    };
    return withOutcome(() => next(req), {
      succeeded: () => record(undefined),
      failed(err) {
        record(ConnectError.from(err).code);
        return err;
      },
    });
  };
}
