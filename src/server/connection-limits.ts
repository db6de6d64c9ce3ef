import http2, { type Http2SecureServer, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Stream } from "node:http2";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TLSSocket } from "node:tls";

/**
 * Bounds on what one connection can make the server hold. Each is enforced
 * below the RPC layer, before any interceptor runs.
 */
export interface ServerLimits {
  /**
   * Largest request message, in bytes (Connect's `readMaxBytes`): a larger
   * one fails RESOURCE_EXHAUSTED as soon as its length prefix (gRPC) or
   * Content-Length (Connect) is read, before its bytes are buffered.
   */
  readonly maxMessageBytes: number;
  /**
   * How long a TLS handshake, an HTTP/2 connection without an open stream,
   * an HTTP/1.1 connection between requests, or a request whose headers or
   * body have not fully arrived may stay silent before it is closed.
   * Responses may be silent as long as they like (a Watch or Tail stream
   * waiting for news).
   */
  readonly idleTimeoutMs: number;
}

/**
 * Most streams (calls) open at once on one HTTP/2 connection, announced in
 * the server's SETTINGS: as many as one identity may have in flight by
 * default (KEYWARD_MAX_CALLS_PER_IDENTITY), so that a client on one
 * connection can use all of them. Clients queue calls beyond it; a peer that
 * opens more anyway has them refused (RST_STREAM REFUSED_STREAM), and Node
 * closes a connection that keeps doing so.
 */
export const MAX_CONCURRENT_STREAMS = 256;

/**
 * HTTP/2 flow-control windows the server grants, per stream (in SETTINGS)
 * and per connection (a WINDOW_UPDATE on stream 0). HTTP/2's default, 64 KiB
 * for both, makes a 256 KiB request wait for four round trips of
 * WINDOW_UPDATEs, and a connection carrying many calls share 64 KiB between
 * them; gRPC's C and Go implementations grow their windows past 4 MiB for
 * the same reason. Granting more does not let a client make the server hold
 * more: request bodies are read as they arrive, each bounded by
 * KEYWARD_MAX_MESSAGE_BYTES, and Node caps what one session may buffer.
 */
export const STREAM_WINDOW_BYTES = 1 << 20;
export const CONNECTION_WINDOW_BYTES = 4 << 20;

/** Applies `idleTimeoutMs` to every HTTP/2 session, stream and HTTP/1.1 connection of `server`. */
export function enforceIdleTimeouts(server: Http2SecureServer, idleTimeoutMs: number): void {
  server.on("session", (session) => {
    let open = 0;
    session.on("stream", (stream: ServerHttp2Stream) => {
      open += 1;
      stream.once("close", () => (open -= 1));
      // A request that stops arriving half-way holds its stream, its
      // buffers and a call slot: cancel it. A request that has fully
      // arrived may wait on a slow handler or a quiet response stream.
      stream.setTimeout(idleTimeoutMs, () => {
        if (stream.readableEnded) {
          stream.setTimeout(0);
        } else {
          stream.close(http2.constants.NGHTTP2_CANCEL);
        }
      });
    });
    // Fires after idleTimeoutMs without a frame either way: a connection
    // that never finished its preface, or one left idle. One with open
    // streams is left to their own timers.
    session.setTimeout(idleTimeoutMs, () => {
      if (open === 0 && !session.closed) {
        session.close();
        setTimeout(() => session.destroy(), 1000).unref();
      }
    });
  });

  // HTTP/1.1 (allowHTTP1): Node destroys a socket whose timeout fires unless
  // the request or the response in progress handles it.
  server.on("secureConnection", (socket: TLSSocket) => {
    if (socket.alpnProtocol !== "h2") {
      socket.setTimeout(idleTimeoutMs);
    }
  });
  server.on("request", (req: Http2ServerRequest | IncomingMessage, res: Http2ServerResponse | ServerResponse) => {
    if ("stream" in req) {
      return;
    }
    res.on("timeout", () => {
      if (!req.complete) {
        req.socket.destroy();
      }
    });
  });
}
