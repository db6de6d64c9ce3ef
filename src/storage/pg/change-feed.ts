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
 * backoff. While the connection is down `live` is false and listeners were
 * told (with `undefined`) that changes may have been missed.
 */
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

  const connect = () => {
    if (closed) return;
    const c = new pg.Client({ connectionString, connectionTimeoutMillis: 5000, keepAlive: true });
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
      live = false;
      const c = client;
      client = undefined;
      c?.removeAllListeners();
      c?.on("error", () => {});
      await c?.end().catch(() => {});
    },
  };
}
