import { Writable } from "node:stream";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { AccessService } from "../../../gen/keyward/v1/access_pb.js";
import { Health } from "../../../gen/grpc/health/v1/health_pb.js";
import { DomainError } from "../../../src/domain/errors.js";
import { createAccessLogInterceptor } from "../../../src/server/interceptors/access-log.js";
import { createErrorInterceptor } from "../../../src/server/interceptors/errors.js";

function setup(fail: () => never) {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: "debug" },
    new Writable({
      write(chunk, _encoding, done) {
        lines.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  );
  const transport = createRouterTransport(
    (router) => {
      router.service(AccessService, { getCallerIdentity: fail });
      router.service(Health, {
        async *watch() {
          yield { status: 1 };
          fail();
        },
      });
    },
    { router: { interceptors: [createAccessLogInterceptor(log), createErrorInterceptor(log)] } },
  );
  return { lines, access: createClient(AccessService, transport), health: createClient(Health, transport) };
}

describe("error mapping and access log", () => {
  it.each([
    ["not-found", Code.NotFound],
    ["failed-precondition", Code.FailedPrecondition],
    ["aborted", Code.Aborted],
    ["unavailable", Code.Unavailable],
    ["data-loss", Code.DataLoss],
  ] as const)("maps a %s DomainError to its code with its message", async (kind, code) => {
    const { access, lines } = setup(() => {
      throw new DomainError(kind, `key keys/a is ${kind}`);
    });
    await expect(access.getCallerIdentity({})).rejects.toMatchObject({ code, rawMessage: `key keys/a is ${kind}` });
    // Caller mistakes are info; stored data found altered is an error someone must look at.
    const level = code === Code.DataLoss ? 50 : 30;
    expect(lines.at(-1)).toMatchObject({ msg: "call failed", level, method: "/keyward.v1.AccessService/GetCallerIdentity" });
  });

  it("answers INTERNAL with a fixed message for an unexpected error, and logs it at error level", async () => {
    const { access, lines } = setup(() => {
      throw new Error('duplicate key value violates unique constraint "x" DETAIL: (name)=(hunter2)');
    });
    const error = await access.getCallerIdentity({}).catch((err: unknown) => ConnectError.from(err));
    expect(error).toMatchObject({ code: Code.Internal, rawMessage: "internal error" });
    expect(JSON.stringify(error)).not.toContain("hunter2");
    const unexpected = lines.find((line) => line.msg === "unexpected error");
    expect(unexpected).toMatchObject({ level: 50 });
    expect(lines.at(-1)).toMatchObject({ msg: "call failed", code: "internal", level: 50 });
  });

  it("maps and logs a stream that fails after its first message, when it fails", async () => {
    const { health, lines } = setup(() => {
      throw new DomainError("unavailable", "database unreachable");
    });
    const received: number[] = [];
    const error = await (async () => {
      for await (const response of health.watch({})) {
        received.push(response.status);
      }
    })().catch((err: unknown) => ConnectError.from(err));
    expect(received).toEqual([1]);
    expect(error).toMatchObject({ code: Code.Unavailable, rawMessage: "database unreachable" });
    expect(lines.filter((line) => line.method === "/grpc.health.v1.Health/Watch")).toMatchObject([
      { msg: "call failed", code: "unavailable" },
    ]);
  });
});
