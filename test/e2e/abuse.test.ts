import http2 from "node:http2";
import { connect as tcpConnect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { connect as tlsConnect } from "node:tls";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { createScratch } from "../helpers/database.js";
import { serveWithIdentities, type IdentitiesServer } from "../helpers/identities-server.js";
import type { ClientCredentials } from "../helpers/keyward.js";
import { killServerProcesses } from "../helpers/keyward-process.js";
import { MAX_CONCURRENT_STREAMS } from "../../src/server/connection-limits.js";
import { errorCode, FLAG, FRAME, frame, grpcRequestHeaders, H2_ERROR, PREFACE, rawHttp2 } from "../helpers/raw-http2.js";

/**
 * What a broken or hostile client can do below the RPC layer, against a
 * `keyward serve` process: bytes that are not protobuf in every protocol,
 * a length prefix claiming 4 GiB, connections that stall half-way
 * (slow loris), and floods of streams on one connection. Each must get a
 * precise answer or be cut off, while the server stays up, keeps its memory
 * and keeps serving everybody else.
 */

const scratch = createScratch("keyward-abuse-");
const IDLE_TIMEOUT_MS = 1500;
/** Generous: what the server may gain in resident memory through one of these tests. */
const RSS_GROWTH_BOUND = 150 * 1024 * 1024;

interface Answer {
  readonly status: number | undefined;
  /** grpc-status and grpc-message (decoded), from headers or trailers. */
  readonly grpc: readonly [string | undefined, string | undefined];
  readonly body: Buffer;
}

describe("hostile clients", () => {
  let served: IdentitiesServer;
  let caller: ClientCredentials;
  let port: number;

  beforeAll(async () => {
    served = await serveWithIdentities(
      scratch,
      ["owner"],
      [{ name: "owner", identities: ["spiffe://keyward.local/owner"], roles: ["ADMIN", "SERVICE", "AUDITOR"], resources: ["**"] }],
      { KEYWARD_IDLE_TIMEOUT_MS: String(IDLE_TIMEOUT_MS) },
    );
    caller = await served.credentials("owner");
    port = Number(new URL(served.server.url).port);
  }, 60_000);

  afterAll(async () => {
    killServerProcesses();
    await scratch.cleanup();
  });

  /** The server still answers a well-behaved caller on a fresh connection. */
  const stillServing = async () => {
    const access = createClient(AccessService, createGrpcTransport({ baseUrl: served.server.url, nodeOptions: caller }));
    expect((await access.getCallerIdentity({})).identity).toBe("spiffe://keyward.local/owner");
    expect(served.server.child.exitCode).toBeNull();
  };

  /** One HTTP/2 request with exactly these headers and body bytes. */
  async function send(path: string, headers: Record<string, string>, body: Buffer): Promise<Answer> {
    const session = http2.connect(served.server.url, { ca: caller.ca, cert: caller.cert, key: caller.key });
    try {
      return await new Promise<Answer>((resolve, reject) => {
        const stream = session.request({ ":method": "POST", ":path": path, ...headers });
        const chunks: Buffer[] = [];
        let head: http2.IncomingHttpHeaders = {};
        let tail: http2.IncomingHttpHeaders = {};
        stream.on("response", (h) => (head = h));
        stream.on("trailers", (t) => (tail = t));
        stream.on("data", (chunk: Buffer) => chunks.push(chunk));
        stream.on("error", reject);
        stream.on("close", () => {
          const status = (head["grpc-status"] ?? tail["grpc-status"]) as string | undefined;
          const message = (head["grpc-message"] ?? tail["grpc-message"]) as string | undefined;
          resolve({ status: Number(head[":status"]), grpc: [status, message === undefined ? undefined : decodeURIComponent(message)], body: Buffer.concat(chunks) });
        });
        stream.end(body);
      });
    } finally {
      session.close();
    }
  }

  const envelope = (flags: number, data: Buffer) => {
    const header = Buffer.alloc(5);
    header[0] = flags;
    header.writeUInt32BE(data.length, 1);
    return Buffer.concat([header, data]);
  };
  const GRPC = { "content-type": "application/grpc", te: "trailers" };
  const GARBAGE = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]);

  it("answers bytes that are not protobuf INVALID_ARGUMENT in every protocol, naming the message type", async () => {
    const notGetKey = "the request is not a valid keyward.v1.GetKeyRequest message";
    expect((await send("/keyward.v1.KeysService/GetKey", GRPC, envelope(0, GARBAGE))).grpc).toEqual([
      "3",
      `${notGetKey}: illegal tag: field no 536870911 wire type 7`,
    ]);
    // A string field (name) that is not UTF-8.
    expect((await send("/keyward.v1.KeysService/GetKey", GRPC, envelope(0, Buffer.from([0x0a, 0x03, 0xff, 0xfe, 0xc0])))).grpc).toEqual([
      "3",
      `${notGetKey}: The encoded data was not valid for encoding utf-8`,
    ]);
    // Field 1 (a string) sent as a varint.
    expect((await send("/keyward.v1.KeysService/GetKey", GRPC, envelope(0, Buffer.from([0x08, 0x01])))).grpc).toEqual(["3", `${notGetKey}: premature EOF`]);
    // Streaming RPCs decode inside the interceptors: same answer, and audited.
    expect((await send("/keyward.v1.AuditService/TailAuditEvents", GRPC, envelope(0, GARBAGE))).grpc).toEqual([
      "3",
      "the request is not a valid keyward.v1.TailAuditEventsRequest message: illegal tag: field no 536870911 wire type 7",
    ]);
    expect((await send("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", GRPC, envelope(0, GARBAGE))).grpc).toEqual([
      "3",
      "the request is not a valid grpc.reflection.v1.ServerReflectionRequest message: illegal tag: field no 536870911 wire type 7",
    ]);
    // A message flagged as compressed, with no compression negotiated.
    expect((await send("/keyward.v1.KeysService/GetKey", GRPC, envelope(1, Buffer.from([1, 2, 3])))).grpc).toEqual([
      "3",
      "the request message is flagged as compressed, but no compression was negotiated",
    ]);
    // An envelope cut short, and none at all.
    expect((await send("/keyward.v1.KeysService/GetKey", GRPC, Buffer.from([0, 0, 0, 0, 10, 1, 2]))).grpc).toEqual(["3", "protocol error: incomplete envelope"]);
    expect((await send("/keyward.v1.KeysService/GetKey", GRPC, Buffer.alloc(0))).grpc).toEqual([
      "12",
      "protocol error: missing input message for unary method",
    ]);

    // gRPC-Web: the status is in the trailer frame at the end of the body.
    const web = await send("/keyward.v1.KeysService/GetKey", { "content-type": "application/grpc-web+proto" }, envelope(0, GARBAGE));
    expect(web.body.subarray(5).toString("latin1")).toContain(`grpc-status: 3\r\n`);
    expect(decodeURIComponent(/grpc-message: (.*)\r\n/.exec(web.body.toString("latin1"))![1]!)).toBe(
      `${notGetKey}: illegal tag: field no 536870911 wire type 7`,
    );

    // Connect unary, binary and JSON; Connect streaming (end-of-stream message).
    const connectBinary = await send("/keyward.v1.KeysService/GetKey", { "content-type": "application/proto", "connect-protocol-version": "1" }, GARBAGE);
    expect({ status: connectBinary.status, body: JSON.parse(connectBinary.body.toString()) }).toEqual({
      status: 400,
      body: { code: "invalid_argument", message: `${notGetKey}: illegal tag: field no 536870911 wire type 7` },
    });
    const connectJson = await send("/keyward.v1.KeysService/GetKey", { "content-type": "application/json" }, Buffer.from("{nope"));
    expect(connectJson.status).toBe(400);
    expect(JSON.parse(connectJson.body.toString())).toMatchObject({ code: "invalid_argument", message: expect.stringMatching(/^cannot decode message keyward\.v1\.GetKeyRequest from JSON/) });
    const connectStream = await send("/keyward.v1.AuditService/TailAuditEvents", { "content-type": "application/connect+proto" }, envelope(0, GARBAGE));
    expect(JSON.parse(connectStream.body.subarray(5).toString())).toMatchObject({
      error: { code: "invalid_argument", message: "the request is not a valid keyward.v1.TailAuditEventsRequest message: illegal tag: field no 536870911 wire type 7" },
    });

    // No "unexpected error" was logged for any of it.
    expect(served.server.lines().filter((line) => /"level":"(error|fatal)"/.test(line))).toEqual([]);
    await stillServing();
  });

  it("refuses a length prefix claiming 4 GiB at once, without allocating it", async () => {
    const before = served.rssBytes();
    const answers = await Promise.all(
      Array.from({ length: 20 }, () => send("/keyward.v1.KeysService/GetKey", GRPC, Buffer.from([0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]))),
    );
    for (const answer of answers) {
      expect(answer.grpc).toEqual(["8", "message size 4294967295 is larger than configured readMaxBytes 4194304"]);
    }
    expect(served.rssBytes() - before).toBeLessThan(RSS_GROWTH_BOUND);
    await stillServing();
  });

  it("closes connections that stall before TLS, in the HTTP/2 preface, in HEADERS, in a request body, or in HTTP/1.1 headers", async () => {
    const before = served.rssBytes();
    const closedWithin = (socket: Socket) => {
      const started = Date.now();
      return new Promise<number>((resolve) => socket.once("close", () => resolve(Date.now() - started)));
    };
    const tls = (alpn: string) =>
      new Promise<Socket>((resolve, reject) => {
        const socket = tlsConnect({ host: "127.0.0.1", port, ca: caller.ca, cert: caller.cert, key: caller.key, ALPNProtocols: [alpn], servername: "localhost" });
        // Read (and drop) what the server sends, so that its close is seen.
        socket.resume();
        socket.once("secureConnect", () => resolve(socket));
        socket.once("error", reject);
      });
    const stalled: Array<Promise<number>> = [];
    const sockets: Socket[] = [];
    for (let i = 0; i < 40; i++) {
      // TCP only: never a ClientHello.
      const tcp = tcpConnect({ host: "127.0.0.1", port });
      tcp.on("error", () => {});
      tcp.resume();
      sockets.push(tcp);
      stalled.push(closedWithin(tcp));
      // Half an HTTP/2 preface.
      const preface = await tls("h2");
      preface.on("error", () => {});
      preface.write(PREFACE.subarray(0, 10));
      sockets.push(preface);
      stalled.push(closedWithin(preface));
      // A whole preface, then a HEADERS frame without END_HEADERS whose CONTINUATION never comes.
      const headers = await tls("h2");
      headers.on("error", () => {});
      headers.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0), frame(FRAME.HEADERS, 0, 1, grpcRequestHeaders("/grpc.health.v1.Health/Check").subarray(0, 8))]));
      sockets.push(headers);
      stalled.push(closedWithin(headers));
      // HTTP/1.1 request headers, never finished.
      const http1 = await tls("http/1.1");
      http1.on("error", () => {});
      http1.write("POST /keyward.v1.AccessService/GetCallerIdentity HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n");
      sockets.push(http1);
      stalled.push(closedWithin(http1));
    }
    // Meanwhile others are served.
    await stillServing();
    const waited = await Promise.race([Promise.all(stalled), sleep(30_000).then(() => undefined)]);
    sockets.forEach((socket) => socket.destroy());
    expect(waited, "every stalled connection closed by the server within 30 s").toBeDefined();
    // Closed after the idle timeout, not at once.
    expect(Math.min(...waited!)).toBeGreaterThanOrEqual(IDLE_TIMEOUT_MS - 200);
    expect(served.rssBytes() - before).toBeLessThan(RSS_GROWTH_BOUND);

    // A request whose body never comes: the stream is cancelled, the connection stays usable.
    const connection = await rawHttp2("127.0.0.1", port, caller);
    connection.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0), frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, grpcRequestHeaders("/grpc.health.v1.Health/Check"))]));
    const reset = await connection.waitFor((f) => f.type === FRAME.RST_STREAM && f.streamId === 1, IDLE_TIMEOUT_MS * 4);
    expect(errorCode(reset)).toBe(H2_ERROR.CANCEL);
    connection.destroy();
    await stillServing();
  }, 60_000);

  it("cuts off a connection that floods streams beyond its limit, and one that opens and resets streams in a loop", async () => {
    const before = served.rssBytes();
    const headers = grpcRequestHeaders("/grpc.health.v1.Health/Check");

    // 5000 streams at once, none of them ending.
    const flood = await rawHttp2("127.0.0.1", port, caller);
    flood.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
    await flood.waitFor((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0, 10_000);
    for (let n = 0; n < 5000; n++) {
      flood.write(frame(FRAME.HEADERS, FLAG.END_HEADERS, 2 * n + 1, headers));
    }
    // Streams past the limit are refused, then the server closes the connection.
    expect(await Promise.race([flood.closed.then(() => "closed by the server"), sleep(15_000).then(() => "still open")])).toBe("closed by the server");
    const refused = flood.frames.filter((f) => f.type === FRAME.RST_STREAM && errorCode(f) === H2_ERROR.REFUSED_STREAM).length;
    expect(refused).toBeGreaterThan(0);
    expect(refused).toBeLessThan(5000 - MAX_CONCURRENT_STREAMS);
    flood.destroy();

    // Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, 20,000 times.
    const resets = await rawHttp2("127.0.0.1", port, caller);
    resets.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0), frame(FRAME.SETTINGS, FLAG.ACK, 0)]));
    const cancel = Buffer.alloc(4);
    cancel.writeUInt32BE(H2_ERROR.CANCEL);
    for (let n = 0; n < 20_000 && !resets.socket.destroyed; n++) {
      resets.write(Buffer.concat([frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 2 * n + 1, headers), frame(FRAME.RST_STREAM, 0, 2 * n + 1, cancel)]));
      if (n % 500 === 0) {
        await sleep(1);
      }
    }
    await Promise.race([resets.closed, sleep(5000)]);
    resets.destroy();

    await stillServing();
    expect(served.rssBytes() - before).toBeLessThan(RSS_GROWTH_BOUND);
  }, 60_000);
});
