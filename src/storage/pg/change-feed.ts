import pg from "pg";
import type { ChangeFeed } from "../../domain/change-feed.js";

/**
 * The channel every replica listens on; the payload is `<schema> <resource
 * name>`. Triggers on the keys and secrets tables send the notices
 * (migrations/20261201010000000_notify-changes.ts), so a change made by any
 * path, hand edits included, reaches every cache.
 */
export const CHANGES_CHANNEL = "keyward_changes";

/**
 * Listens for changes in `schema` (as `current_schema()` names it on
 * the pool's connections) on a connection of its own, reconnecting with
 * backoff. While the connection is down — or silent: it must answer a
 * heartbeat query every 400 ms within 600 ms — `live` is false and
 * listeners were told (with `undefined`) that changes may have been missed.
 */
/** How often the listening connection must prove it is alive, and how long it may take. */
const HEARTBEAT_MS = 400;
const HEARTBEAT_TIMEOUT_MS = 600;

export function createPgChangeFeed(
  connectionString: string,
  schema: string,
  options: { onError?: (err: Error) => void } = {},
): ChangeFeed & { ready: Promise<void> } {
  const prefix = `${schema} `;
  const listeners: Array<(name: string | undefined) => void> = [];
  let live = false;
  let closed = false;
  let client: pg.Client | undefined;
  let retryMs = 100;
  let timer: NodeJS.Timeout | undefined;
  let resolveReady!: () => void;
  const ready = new Promise<void>((resolve) => (resolveReady = resolve));

  const lost = (err?: Error) => {
    if (err) options.onError?.(err);
    const wasLive = live;
    live = false;
    client?.removeAllListeners();
    client?.on("error", () => {});
    client?.end().catch(() => {});
    client = undefined;
    if (wasLive) listeners.forEach((l) => l(undefined));
    if (!closed) {
      timer = setTimeout(connect, retryMs);
      timer.unref();
      retryMs = Math.min(retryMs * 2, 2000);
    }
  };

  // A connection that died silently (a NAT or load balancer dropping it, a
  // failover) raises no error for hours; every notice sent meanwhile would
  // be missed while caches kept serving. So the connection must answer a
  // query every HEARTBEAT_MS within HEARTBEAT_TIMEOUT_MS, or it counts as lost.
  let beating = false;
  const heartbeat = setInterval(() => {
    const c = client;
    if (!live || c === undefined || beating) return;
    beating = true;
    let timeout: NodeJS.Timeout | undefined;
    Promise.race([
      c.query("SELECT 1"),
      new Promise((_, reject) => {
        timeout = setTimeout(() => reject(new Error(`change feed silent for ${HEARTBEAT_TIMEOUT_MS} ms`)), HEARTBEAT_TIMEOUT_MS);
      }),
    ])
      .catch((err: Error) => client === c && lost(err))
      .finally(() => {
        clearTimeout(timeout);
        beating = false;
      });
  }, HEARTBEAT_MS);
  heartbeat.unref();

  const connect = () => {
    if (closed) return;
    const c = new pg.Client({ connectionString, connectionTimeoutMillis: 5000, keepAlive: true, keepAliveInitialDelayMillis: 10_000 });
    client = c;
    c.on("error", (err) => lost(err));
    c.on("end", () => client === c && lost());
    c.on("notification", (message) => {
      const payload = message.payload ?? "";
      if (message.channel === CHANGES_CHANNEL && payload.startsWith(prefix)) {
        const name = payload.slice(prefix.length);
        listeners.forEach((l) => l(name));
      }
    });
    c.connect()
      .then(() => c.query(`LISTEN ${CHANGES_CHANNEL}`))
      .then(() => {
        if (client !== c) return;
        // Anything cached before now may be stale: start from a clean slate.
        listeners.forEach((l) => l(undefined));
        live = true;
        retryMs = 100;
        resolveReady();
      })
      .catch((err: Error) => client === c && lost(err));
  };
  connect();

  return {
    ready,
    get live() {
      return live;
    },
    subscribe: (listener) => void listeners.push(listener),
    async close() {
      closed = true;
      clearTimeout(timer);
      clearInterval(heartbeat);
      live = false;
      const c = client;
      client = undefined;
      c?.removeAllListeners();
      c?.on("error", () => {});
      await c?.end().catch(() => {});
    },
  };
}
