import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../../gen/grpc/health/v1/health_pb.js";
import { kIdentity } from "../../../src/server/context.js";
import type { Identity } from "../../../src/server/identity.js";
import { createCallLimitInterceptor } from "../../../src/server/interceptors/call-limit.js";

const identity = (name: string) => ({ name, source: "spiffe-id" }) as Identity;

/** Health with a Check that waits until released, behind the call limit, as `name`. */
function setup(limit: number) {
  const releases: Array<() => void> = [];
  const transport = createRouterTransport(
    (router) =>
      router.service(Health, {
        async check() {
          await new Promise<void>((resolve) => releases.push(resolve));
          return { status: Status.SERVING };
        },
        async *watch(_request, context) {
          yield { status: Status.SERVING };
          // Open until the client cancels.
          await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
        },
      }),
    {
      router: {
        interceptors: [
          // Stands in for TLS: the caller's name travels in a header.
          (next) => (req) => {
            req.contextValues.set(kIdentity, identity(req.header.get("x-identity")!));
            return next(req);
          },
          createCallLimitInterceptor(limit),
        ],
      },
    },
  );
  const as = (name: string) => {
    const client = createClient(Health, transport);
    const headers = { "x-identity": name };
    return {
      check: () => client.check({}, { headers }),
      watch: (signal?: AbortSignal) => client.watch({}, { headers, signal }),
    };
  };
  const releaseAll = () => releases.splice(0).forEach((release) => release());
  return { as, releaseAll, waiting: () => releases.length };
}

const until = async (condition: () => boolean) => {
  while (!condition()) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
};

describe("calls in flight per identity", () => {
  it("refuses the call beyond the limit, for that identity only, and frees the slots as calls end", async () => {
    const { as, releaseAll, waiting } = setup(2);
    const held = [as("a").check(), as("a").check()];
    await until(() => waiting() === 2);
    await expect(as("a").check()).rejects.toMatchObject({
      code: Code.ResourceExhausted,
      rawMessage: "a already has 2 calls in flight, the most one identity may have at once; retry when some have finished",
    });
    const other = as("b").check();
    await until(() => waiting() === 3);
    releaseAll();
    await Promise.all([...held, other]);
    const again = as("a").check();
    await until(() => waiting() === 1);
    releaseAll();
    expect((await again).status).toBe(Status.SERVING);
  });

  it("counts a stream for as long as it is open, and frees it when the client cancels", async () => {
    const { as, releaseAll, waiting } = setup(1);
    const stop = new AbortController();
    expect(waiting()).toBe(0);
    const stream = as("a").watch(stop.signal)[Symbol.asyncIterator]();
    await stream.next();
    await expect(as("a").check()).rejects.toBeInstanceOf(ConnectError);
    stop.abort();
    await stream.next().catch(() => undefined);
    const after = as("a").check();
    await until(() => waiting() >= 1);
    releaseAll();
    expect((await after).status).toBe(Status.SERVING);
  });
});
