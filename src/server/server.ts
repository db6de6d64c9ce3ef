import http2, { type Http2SecureServer, type Http2ServerRequest, type Http2Session } from "node:http2";
import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import type { SecureContextOptions, TLSSocket } from "node:tls";
import { createContextValues, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  CONNECTION_WINDOW_BYTES,
  enforceIdleTimeouts,
  MAX_CONCURRENT_STREAMS,
  type ServerLimits,
  STREAM_WINDOW_BYTES,
} from "./connection-limits.js";
import { kAuthenticationRefusal, kIdentity, kPeerAddress } from "./context.js";
import { mapDecodeErrors } from "./decode-errors.js";
import { authenticatePeer, type PeerAuthentication } from "./identity.js";

/** An HTTP/2 + TLS server with the Connect adapter, built but not listening (examples-es `build()`). */
export interface KeywardServer {
  readonly server: Http2SecureServer;
  /** Starts listening; port 0 picks a free port. Resolves with the bound address. */
  listen(host: string, port: number): Promise<AddressInfo>;
  /** Replaces certificate, key, CA and CRL for new connections. */
  setSecureContext(material: SecureContextOptions): void;
  /**
   * Routes calls that start from now on through these routes and
   * interceptors; calls in flight finish where they began. Start-up serves
   * health alone this way while it waits for the database, then everything.
   */
  setRoutes(routing: Pick<ServerOptions, "routes" | "interceptors">): void;
  /**
   * Stops accepting connections, lets calls in flight finish for up to
   * `graceMs`, then closes whatever is left. `draining` is aborted at once,
   * so long-lived streams (health Watch, audit tail) end promptly.
   */
  shutdown(graceMs: number): Promise<void>;
}

export interface ServerOptions {
  readonly tls: SecureContextOptions;
  readonly routes: (router: ConnectRouter) => void;
  /** Outermost first. */
  readonly interceptors: Interceptor[];
  /** Aborted when shutdown begins. */
  readonly draining: AbortController;
  /** Message size and idle timeouts; see {@link ServerLimits}. */
  readonly limits: ServerLimits;
}

/**
 * Builds the server: TLS 1.3 only, a client certificate required and
 * verified by TLS against the configured CA (an unverified or missing one
 * fails the handshake, before any HTTP is spoken); gRPC, gRPC-Web and
 * Connect on one port, over HTTP/2 or HTTP/1.1.
 */
export function createKeywardServer(options: ServerOptions): KeywardServer {
  const identities = new WeakMap<object, PeerAuthentication>();
  const adapterFor = (routes: ServerOptions["routes"], interceptors: Interceptor[]) => connectNodeAdapter({
    routes(router) {
      routes(router);
      mapDecodeErrors(router);
    },
    interceptors,
    readMaxBytes: options.limits.maxMessageBytes,
    // Compressing small protobuf messages costs more CPU than it saves bytes.
    acceptCompression: [],
    contextValues(req) {
      const values = createContextValues();
      const connection = connectionOf(req);
      if (connection === undefined) {
        values.set(kAuthenticationRefusal, "the connection closed before the call was handled");
        return values;
      }
      const { owner, socket } = connection;
      // The certificate is fixed for a connection's life: parse it once.
      let peer = identities.get(owner);
      if (peer === undefined) {
        peer = authenticatePeer(socket);
        identities.set(owner, peer);
      }
      values.set(kIdentity, peer.identity);
      values.set(kAuthenticationRefusal, peer.refusal ?? "");
      values.set(kPeerAddress, `${socket.remoteAddress}:${socket.remotePort}`);
      return values;
    },
  });
  let adapter = adapterFor(options.routes, options.interceptors);

  const server = http2.createSecureServer(
    {
      ...options.tls,
      minVersion: "TLSv1.3",
      requestCert: true,
      rejectUnauthorized: true,
      allowHTTP1: true,
      handshakeTimeout: options.limits.idleTimeoutMs,
      settings: { maxConcurrentStreams: MAX_CONCURRENT_STREAMS, initialWindowSize: STREAM_WINDOW_BYTES },
    },
    (req, res) => adapter(req, res),
  );
  enforceIdleTimeouts(server, options.limits.idleTimeoutMs);

  const sessions = new Set<Http2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    session.once("close", () => sessions.delete(session));
  });
  // HTTP/1.1 connections: track whether a request is in flight, so draining
  // can close idle ones at once and busy ones when their response is done.
  const http1 = new Map<TLSSocket, number>();
  let draining = false;
  server.on("secureConnection", (socket: TLSSocket) => {
    if (socket.alpnProtocol === "h2") {
      return;
    }
    http1.set(socket, 0);
    socket.once("close", () => http1.delete(socket));
  });
  server.on("request", (req: Http2ServerRequest | IncomingMessage, res) => {
    if (!(req.socket && http1.has(req.socket as TLSSocket))) {
      return;
    }
    const socket = req.socket as TLSSocket;
    http1.set(socket, (http1.get(socket) ?? 0) + 1);
    res.once("close", () => {
      const left = (http1.get(socket) ?? 1) - 1;
      http1.set(socket, left);
      if (draining && left === 0) {
        socket.end();
      }
    });
  });

  return {
    server,
    listen(host, port) {
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    setRoutes({ routes, interceptors }) {
      adapter = adapterFor(routes, interceptors);
    },
    setSecureContext(material) {
      server.setSecureContext({ ...material, minVersion: "TLSv1.3" });
    },
    async shutdown(graceMs) {
      draining = true;
      options.draining.abort();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) {
        session.close();
      }
      for (const [socket, inFlight] of http1) {
        if (inFlight === 0) {
          socket.end();
        }
      }
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, graceMs);
        timer.unref();
      });
      await Promise.race([closed, timeout]);
      clearTimeout(timer);
      for (const session of sessions) {
        session.destroy();
      }
      for (const socket of http1.keys()) {
        socket.destroy();
      }
      await closed;
    },
  };
}

function connectionOf(req: Http2ServerRequest | IncomingMessage): { owner: object; socket: TLSSocket } | undefined {
  if ("stream" in req && req.stream) {
    // A stream the peer reset before its request was handled has left its session.
    const session = req.stream.session;
    return session && { owner: session, socket: session.socket as TLSSocket };
  }
  return { owner: req.socket, socket: req.socket as TLSSocket };
}
