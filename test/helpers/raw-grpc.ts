import * as grpc from "@grpc/grpc-js";
import type { DescMethod } from "@bufbuild/protobuf";
import type { ClientCredentials } from "./keyward.js";

/** How a call ended: its gRPC status code (0 for OK) and message. */
export interface RawOutcome {
  readonly code: grpc.status;
  readonly message: string;
}

const identity = (bytes: Buffer) => bytes;

/**
 * A @grpc/grpc-js client that sends request bytes exactly as given (no
 * serialization on the client side), so a test can send what typed stubs
 * never would: bytes that are not protobuf, strings that are not UTF-8,
 * truncated fields. Responses are not decoded. One connection per client.
 */
export function rawGrpcClient(address: string, credentials: ClientCredentials) {
  const client = new grpc.Client(address, grpc.credentials.createSsl(credentials.ca, credentials.key, credentials.cert), {
    "grpc.use_local_subchannel_pool": 1,
    "grpc.max_receive_message_length": -1,
    "grpc.max_send_message_length": -1,
  });
  const path = (method: DescMethod) => `/${method.parent.typeName}/${method.name}`;
  const failed = (err: grpc.ServiceError | grpc.StatusObject): RawOutcome => ({ code: err.code, message: err.details ?? "" });

  return {
    /** A unary call with `request` as the message bytes. */
    unary(method: DescMethod, request: Uint8Array, deadlineMs: number): Promise<RawOutcome> {
      return new Promise((resolve) => {
        client.makeUnaryRequest(
          path(method),
          identity,
          identity,
          Buffer.from(request),
          new grpc.Metadata(),
          { deadline: Date.now() + deadlineMs },
          (err) => resolve(err ? failed(err) : { code: grpc.status.OK, message: "" }),
        );
      });
    },
    /**
     * A server-streaming call: resolves with the status the stream ends with,
     * or OK when it is still open after `openMs` (follow-mode streams run
     * until cancelled; the test then cancels them).
     */
    serverStream(method: DescMethod, request: Uint8Array, openMs: number): Promise<RawOutcome> {
      return new Promise((resolve) => {
        const call = client.makeServerStreamRequest(path(method), identity, identity, Buffer.from(request), new grpc.Metadata(), {
          deadline: Date.now() + openMs + 30_000,
        });
        let settled = false;
        const settle = (outcome: RawOutcome) => {
          if (!settled) {
            settled = true;
            clearTimeout(timer);
            resolve(outcome);
          }
        };
        const timer = setTimeout(() => {
          settle({ code: grpc.status.OK, message: "" });
          call.cancel();
        }, openMs);
        call.on("data", () => {});
        call.on("error", (err: grpc.ServiceError) => settle(failed(err)));
        call.on("status", (status: grpc.StatusObject) => settle(status.code === grpc.status.OK ? { code: 0, message: "" } : failed(status)));
      });
    },
    /** A bidi call: sends `requests`, half-closes, and resolves with the status the stream ends with. */
    bidi(method: DescMethod, requests: readonly Uint8Array[], deadlineMs: number): Promise<RawOutcome> {
      return new Promise((resolve) => {
        const call = client.makeBidiStreamRequest(path(method), identity, identity, new grpc.Metadata(), {
          deadline: Date.now() + deadlineMs,
        });
        let settled = false;
        const settle = (outcome: RawOutcome) => {
          if (!settled) {
            settled = true;
            resolve(outcome);
          }
        };
        call.on("data", () => {});
        call.on("error", (err: grpc.ServiceError) => settle(failed(err)));
        call.on("status", (status: grpc.StatusObject) => settle(status.code === grpc.status.OK ? { code: 0, message: "" } : failed(status)));
        for (const request of requests) {
          call.write(Buffer.from(request));
        }
        call.end();
      });
    },
    close: () => client.close(),
  };
}

export type RawGrpcClient = ReturnType<typeof rawGrpcClient>;
