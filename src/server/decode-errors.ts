import type { ConnectRouter } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";
import { callerFaultMessage } from "./caller-errors.js";

const GRPC_INTERNAL = "13";
const GRPC_INVALID_ARGUMENT = "3";
const TRAILER_FLAG = 0x80; // gRPC-Web: the frame holds the trailers
const END_STREAM_FLAG = 0x02; // Connect streaming: the frame is the end-of-stream message

/**
 * Rewrites, in every handler of `router`, the answer to a unary request
 * Connect could not decode from INTERNAL to INVALID_ARGUMENT (see
 * callerFaultMessage): it fails before any interceptor runs, so the error
 * interceptor never sees it. Each protocol has its own form: gRPC trailers,
 * the gRPC-Web trailer frame, the Connect unary error body and the Connect
 * end-of-stream message. Call it after every service is registered.
 */
export function mapDecodeErrors(router: ConnectRouter): void {
  const handlers = router.handlers as UniversalHandler[];
  for (let i = 0; i < handlers.length; i++) {
    handlers[i] = withDecodeErrorsMapped(handlers[i]!);
  }
}

function withDecodeErrorsMapped(handler: UniversalHandler): UniversalHandler {
  const inputType = handler.method.input.typeName;
  const wrapped = async (req: Parameters<UniversalHandler>[0]): Promise<UniversalServerResponse> => {
    const res = await handler(req);
    const contentType = req.header.get("content-type") ?? "";
    if (res.body === undefined) {
      return res;
    }
    if (contentType.startsWith("application/grpc-web")) {
      return { ...res, body: rewriteFrames(res.body, TRAILER_FLAG, (frame) => rewriteGrpcWebTrailer(frame, inputType)) };
    }
    if (contentType.startsWith("application/grpc")) {
      // Connect has read the request's first message before answering, so a
      // decode failure is already in the trailers: no need to wrap the body
      // of every call.
      fixTrailer(res.trailer, inputType);
      return res;
    }
    if (contentType.startsWith("application/connect+")) {
      return { ...res, body: rewriteFrames(res.body, END_STREAM_FLAG, (frame) => rewriteConnectEndStream(frame, inputType)) };
    }
    if (res.status === 500) {
      return rewriteConnectUnary(res, inputType);
    }
    return res;
  };
  return Object.assign(wrapped, {
    protocolNames: handler.protocolNames,
    service: handler.service,
    method: handler.method,
    requestPath: handler.requestPath,
    allowedMethods: handler.allowedMethods,
    supportedContentType: handler.supportedContentType,
  });
}

/** gRPC: the status is in the trailers. */
function fixTrailer(trailer: Headers | undefined, inputType: string): void {
  if (trailer?.get("grpc-status") !== GRPC_INTERNAL) {
    return;
  }
  const message = callerFaultMessage(inputType, decodeGrpcMessage(trailer.get("grpc-message") ?? ""));
  if (message !== undefined) {
    trailer.set("grpc-status", GRPC_INVALID_ARGUMENT);
    trailer.set("grpc-message", percentEncode(message));
  }
}

/** Passes chunks through, rewriting a frame (5-byte prefix + data, one per chunk) whose flags include `flag`. */
async function* rewriteFrames(
  body: AsyncIterable<Uint8Array>,
  flag: number,
  rewrite: (data: Uint8Array) => Uint8Array | undefined,
) {
  for await (const chunk of body) {
    if (chunk.length >= 5 && (chunk[0]! & flag) === flag) {
      const length = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength).getUint32(1);
      if (length === chunk.length - 5) {
        const data = rewrite(chunk.subarray(5));
        if (data !== undefined) {
          const frame = new Uint8Array(5 + data.length);
          frame[0] = chunk[0]!;
          new DataView(frame.buffer).setUint32(1, data.length);
          frame.set(data, 5);
          yield frame;
          continue;
        }
      }
    }
    yield chunk;
  }
}

function rewriteGrpcWebTrailer(data: Uint8Array, inputType: string): Uint8Array | undefined {
  const lines = new TextDecoder().decode(data).split("\r\n");
  const field = (name: string) => lines.find((line) => line.toLowerCase().startsWith(`${name}:`))?.slice(name.length + 1).trim();
  if (field("grpc-status") !== GRPC_INTERNAL) {
    return undefined;
  }
  const message = callerFaultMessage(inputType, decodeGrpcMessage(field("grpc-message") ?? ""));
  if (message === undefined) {
    return undefined;
  }
  const kept = lines.filter((line) => line !== "" && !/^grpc-(status|message):/i.test(line));
  const text = [`grpc-status: ${GRPC_INVALID_ARGUMENT}`, `grpc-message: ${percentEncode(message)}`, ...kept].join("\r\n") + "\r\n";
  return new TextEncoder().encode(text);
}

function rewriteConnectEndStream(data: Uint8Array, inputType: string): Uint8Array | undefined {
  const end = parseJson(data) as { error?: { code?: string; message?: string } } | undefined;
  const message = end?.error?.code === "internal" ? callerFaultMessage(inputType, end.error.message ?? "") : undefined;
  if (message === undefined) {
    return undefined;
  }
  return new TextEncoder().encode(JSON.stringify({ ...end, error: { code: "invalid_argument", message } }));
}

async function rewriteConnectUnary(res: UniversalServerResponse, inputType: string): Promise<UniversalServerResponse> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of res.body!) {
    chunks.push(chunk);
  }
  const bytes = Buffer.concat(chunks);
  const error = parseJson(bytes) as { code?: string; message?: string } | undefined;
  const message = error?.code === "internal" ? callerFaultMessage(inputType, error.message ?? "") : undefined;
  if (message === undefined) {
    return { ...res, body: oneChunk(bytes) };
  }
  const body = new TextEncoder().encode(JSON.stringify({ code: "invalid_argument", message }));
  const header = new Headers(res.header);
  header.set("content-length", String(body.length));
  return { ...res, status: 400, header, body: oneChunk(body) };
}

async function* oneChunk(bytes: Uint8Array) {
  yield bytes;
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}

/**
 * grpc-message encoding (gRPC over HTTP/2): UTF-8 bytes outside printable
 * ASCII, and `%`, as %XX; everything else as is, so that clients that decode
 * only those (grpc-js uses decodeURI) show the message as written.
 */
function percentEncode(message: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(message)) {
    out += byte < 0x20 || byte > 0x7e || byte === 0x25 ? `%${byte.toString(16).toUpperCase().padStart(2, "0")}` : String.fromCharCode(byte);
  }
  return out;
}

function decodeGrpcMessage(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}
