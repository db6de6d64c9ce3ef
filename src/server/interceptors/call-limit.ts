import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { kIdentity } from "../context.js";

/**
 * Bounds the calls one identity has in flight on this server process, so
 * that one noisy caller cannot take every connection slot, database
 * connection and event-loop turn from the others. A call beyond the bound
 * fails at once with RESOURCE_EXHAUSTED; nothing is queued.
 *
 * A unary call counts until its response is ready; a streaming call
 * (TailAuditEvents, Health Watch, reflection) for as long as its stream is
 * open. Placed after authentication, so a caller without an identity takes
 * no slot from anybody, and before validation and the handlers, so a refused
 * call costs almost nothing; the audit and access-log interceptors outside
 * it record the refusal.
 */
export function createCallLimitInterceptor(maxCallsPerIdentity: number): Interceptor {
  const inFlight = new Map<string, number>();
  return (next) => async (req) => {
    const identity = req.contextValues.get(kIdentity);
    if (identity === undefined) {
      return next(req);
    }
    const name = identity.name;
    const current = inFlight.get(name) ?? 0;
    if (current >= maxCallsPerIdentity) {
      throw new ConnectError(
        `${name} already has ${maxCallsPerIdentity} calls in flight, the most one identity may have at once; retry when some have finished`,
        Code.ResourceExhausted,
      );
    }
    inFlight.set(name, current + 1);
    let released = false;
    const release = () => {
      if (released) {
        return;
      }
      released = true;
      const left = (inFlight.get(name) ?? 1) - 1;
      if (left === 0) {
        inFlight.delete(name);
      } else {
        inFlight.set(name, left);
      }
    };
    // The call's signal aborts when the call ends however it ends (Connect
    // aborts it once the response is written), so a stream whose messages
    // are never read still gives its slot back.
    req.signal.addEventListener("abort", release, { once: true });

    let res;
    try {
      res = await next(req);
    } catch (err) {
      release();
      throw err;
    }
    if (!res.stream) {
      release();
      return res;
    }
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } finally {
          release();
        }
      })(),
    };
  };
}
