import { connect, type TLSSocket } from "node:tls";
import type { ClientCredentials } from "./keyward.js";

/** The HTTP/2 client connection preface (RFC 9113 §3.4). */
export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export const FRAME = { DATA: 0x0, HEADERS: 0x1, RST_STREAM: 0x3, SETTINGS: 0x4, PING: 0x6, GOAWAY: 0x7, WINDOW_UPDATE: 0x8 } as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;
/** HTTP/2 error codes (RFC 9113 §7). */
export const H2_ERROR = { NO_ERROR: 0x0, PROTOCOL_ERROR: 0x1, CANCEL: 0x8, REFUSED_STREAM: 0x7, ENHANCE_YOUR_CALM: 0xb } as const;
/** SETTINGS_MAX_CONCURRENT_STREAMS. */
export const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
/** SETTINGS_INITIAL_WINDOW_SIZE. */
export const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([header, payload]);
}

const literal = (value: string) => {
  const bytes = Buffer.from(value, "latin1");
  if (bytes.length > 126) {
    throw new Error("header value too long for this encoder");
  }
  return Buffer.concat([Buffer.from([bytes.length]), bytes]);
};

/**
 * An HPACK block (RFC 7541) for a gRPC POST to `path`, using only the static
 * table and literals without indexing, so that every block is independent
 * of the ones before (no dynamic table to keep in step).
 */
export function grpcRequestHeaders(path: string, authority = "127.0.0.1"): Buffer {
  return Buffer.concat([
    Buffer.from([0x83, 0x87]), // :method POST, :scheme https
    Buffer.from([0x04]), // :path, literal value
    literal(path),
    Buffer.from([0x01]), // :authority, literal value
    literal(authority),
    Buffer.from([0x0f, 0x10]), // content-type (static index 31), literal value
    literal("application/grpc"),
    Buffer.from([0x00]), // te: a new name
    literal("te"),
    literal("trailers"),
  ]);
}

/**
 * A TLS connection (ALPN h2, client certificate) that speaks raw HTTP/2
 * frames, for what well-behaved clients never do: stall half-way, open more
 * streams than the server allows, reset streams in a flood. Collects every
 * frame the server sends.
 */
export interface RawHttp2Connection {
  readonly socket: TLSSocket;
  readonly frames: Frame[];
  /** Resolves when the server closes the connection. */
  readonly closed: Promise<void>;
  write(bytes: Buffer): boolean;
  /** Resolves with the first frame (already received or to come) that matches; rejects after `timeoutMs`. */
  waitFor(match: (frame: Frame) => boolean, timeoutMs: number): Promise<Frame>;
  destroy(): void;
}

export function rawHttp2(host: string, port: number, credentials: ClientCredentials): Promise<RawHttp2Connection> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, ca: credentials.ca, cert: credentials.cert, key: credentials.key, ALPNProtocols: ["h2"], servername: "localhost" });
    const frames: Frame[] = [];
    const listeners = new Set<() => void>();
    let pending = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) {
          break;
        }
        frames.push({ type: pending[3]!, flags: pending[4]!, streamId: pending.readUInt32BE(5) & 0x7fffffff, payload: pending.subarray(9, 9 + length) });
        pending = pending.subarray(9 + length);
      }
      listeners.forEach((notify) => notify());
    });
    socket.on("error", () => {});
    const closed = new Promise<void>((done) => socket.once("close", () => done()));
    void closed.then(() => listeners.forEach((notify) => notify()));
    socket.once("secureConnect", () =>
      resolve({
        socket,
        frames,
        closed,
        write: (bytes) => socket.write(bytes),
        waitFor(match, timeoutMs) {
          return new Promise((found, fail) => {
            const timer = setTimeout(() => {
              listeners.delete(check);
              fail(new Error(`no matching frame within ${timeoutMs} ms; got types ${frames.map((f) => f.type).join(",")}`));
            }, timeoutMs);
            function check() {
              const hit = frames.find(match);
              if (hit) {
                clearTimeout(timer);
                listeners.delete(check);
                found(hit);
              }
            }
            listeners.add(check);
            check();
          });
        },
        destroy: () => socket.destroy(),
      }),
    );
    socket.once("error", reject);
  });
}

/** The server's SETTINGS value for `id`, from the first non-ACK SETTINGS frame. */
export function settingValue(frames: readonly Frame[], id: number): number | undefined {
  const settings = frames.find((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0);
  for (let i = 0; settings && i + 6 <= settings.payload.length; i += 6) {
    if (settings.payload.readUInt16BE(i) === id) {
      return settings.payload.readUInt32BE(i + 2);
    }
  }
  return undefined;
}

/** The error code of a RST_STREAM or GOAWAY frame. */
export function errorCode(f: Frame): number {
  return f.type === FRAME.GOAWAY ? f.payload.readUInt32BE(4) : f.payload.readUInt32BE(0);
}
