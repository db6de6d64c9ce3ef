import type { StreamResponse, UnaryResponse } from "@connectrpc/connect";

/** How a call ended: `failed` returns the error to throw in place of the original. */
export interface OutcomeHooks {
  succeeded(): void;
  failed(error: unknown): unknown;
}

/**
 * Runs `call` and reports its outcome once: for a unary call when the
 * response is ready, for a streaming response when its last message has been
 * produced or it fails part-way. Interceptors that log, audit or map errors
 * share it so that streams are never reported as done before they are.
 */
export async function withOutcome<R extends UnaryResponse | StreamResponse>(
  call: () => Promise<R>,
  hooks: OutcomeHooks,
): Promise<R> {
  let res: R;
  try {
    res = await call();
  } catch (err) {
    throw hooks.failed(err);
  }
  if (!res.stream) {
    hooks.succeeded();
    return res;
  }
  const messages = res.message;
  return {
    ...res,
    message: (async function* () {
      try {
        yield* messages;
      } catch (err) {
        throw hooks.failed(err);
      }
      hooks.succeeded();
    })(),
  };
}
