import { createServer, connect, type AddressInfo, type Socket } from "node:net";

/**
 * A TCP proxy on 127.0.0.1 in front of one upstream port, whose network can
 * be cut: frozen, it forwards nothing in either direction and closes
 * nothing — connections stay open, bytes wait, new connections are accepted
 * and held — as a partition looks to both ends before any timeout fires.
 * Thawed, everything held is delivered in order.
 */
export interface TcpProxy {
  readonly port: number;
  readonly frozen: boolean;
  /** Connections open through the proxy (client side). */
  readonly connections: number;
  freeze(): void;
  thaw(): void;
  /** `connectionString` with its port replaced by the proxy's. */
  rewrite(connectionString: string): string;
  /** Stops listening and destroys every connection. */
  close(): Promise<void>;
}

interface Pair {
  readonly client: Socket;
  upstream: Socket | undefined;
  /** Bytes read while frozen, per direction, delivered on thaw. */
  readonly held: { toUpstream: Buffer[]; toClient: Buffer[] };
}

export async function startTcpProxy(upstreamPort: number): Promise<TcpProxy> {
  const pairs = new Set<Pair>();
  /** Pairs one end closed while frozen: the other end learns it on thaw, as after a partition. */
  const closedWhileFrozen = new Set<Pair>();
  let frozen = false;

  const destroy = (pair: Pair) => {
    if (frozen) {
      closedWhileFrozen.add(pair);
      return;
    }
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream?.destroy();
  };

  const openUpstream = (pair: Pair) => {
    const upstream = connect({ host: "127.0.0.1", port: upstreamPort });
    pair.upstream = upstream;
    upstream.on("data", (chunk: Buffer) => {
      if (frozen) {
        pair.held.toClient.push(chunk);
        upstream.pause();
      } else {
        pair.client.write(chunk);
      }
    });
    upstream.on("error", () => destroy(pair));
    upstream.on("close", () => destroy(pair));
    for (const chunk of pair.held.toUpstream.splice(0)) {
      upstream.write(chunk);
    }
  };

  const server = createServer((client) => {
    const pair: Pair = { client, upstream: undefined, held: { toUpstream: [], toClient: [] } };
    pairs.add(pair);
    client.on("data", (chunk: Buffer) => {
      if (frozen || pair.upstream === undefined) {
        pair.held.toUpstream.push(chunk);
        if (frozen) client.pause();
      } else {
        pair.upstream.write(chunk);
      }
    });
    client.on("error", () => destroy(pair));
    client.on("close", () => destroy(pair));
    if (frozen) {
      client.pause();
    } else {
      openUpstream(pair);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;

  return {
    port,
    get frozen() {
      return frozen;
    },
    get connections() {
      return pairs.size;
    },
    freeze() {
      frozen = true;
    },
    thaw() {
      frozen = false;
      for (const pair of pairs) {
        if (closedWhileFrozen.has(pair)) continue;
        if (pair.upstream === undefined) {
          openUpstream(pair);
        } else {
          for (const chunk of pair.held.toUpstream.splice(0)) pair.upstream.write(chunk);
          pair.upstream.resume();
        }
        for (const chunk of pair.held.toClient.splice(0)) pair.client.write(chunk);
        pair.client.resume();
      }
      for (const pair of closedWhileFrozen) destroy(pair);
      closedWhileFrozen.clear();
    },
    rewrite(connectionString) {
      const url = new URL(connectionString);
      url.port = String(port);
      return url.toString();
    },
    async close() {
      frozen = false;
      for (const pair of [...pairs]) destroy(pair);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
