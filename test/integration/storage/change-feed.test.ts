import { createServer, connect as connectTcp, type Server, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CHANGES_CHANNEL, createPgChangeFeed } from "../../../src/storage/pg/change-feed.js";

/**
 * A TCP relay to the test database that can stop relaying without closing
 * anything: the way a NAT or load balancer silently drops a connection.
 */
async function startRelay(target: URL): Promise<{ url: string; freeze(): void; close(): Promise<void> }> {
  const sockets: Socket[] = [];
  let frozen = false;
  const server: Server = createServer((inbound) => {
    const outbound = connectTcp(Number(target.port || 5432), target.hostname);
    sockets.push(inbound, outbound);
    for (const [from, to] of [
      [inbound, outbound],
      [outbound, inbound],
    ] as const) {
      from.on("data", (chunk) => {
        if (!frozen) to.write(chunk);
      });
      from.on("error", () => {});
      from.on("close", () => to.destroy());
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const relayed = new URL(target);
  relayed.hostname = "127.0.0.1";
  relayed.port = String((server.address() as { port: number }).port);
  return {
    url: relayed.toString(),
    freeze: () => {
      frozen = true;
    },
    close: async () => {
      sockets.forEach((s) => s.destroy());
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("the change feed", () => {
  const databaseUrl = inject("databaseUrl");
  let relay: Awaited<ReturnType<typeof startRelay>>;
  beforeAll(async () => {
    relay = await startRelay(new URL(databaseUrl));
  });
  afterAll(() => relay?.close());

  it("hears notices of its schema only, and counts a connection that went silent as lost within about a second", async () => {
    const feed = createPgChangeFeed(relay.url, "feedtest");
    const heard: Array<string | undefined> = [];
    feed.subscribe((name) => heard.push(name));
    try {
      await feed.ready;
      expect(feed.live).toBe(true);
      const sender = new pg.Client({ connectionString: databaseUrl });
      await sender.connect();
      try {
        await sender.query("SELECT pg_notify($1, 'feedtest keys/a'), pg_notify($1, 'other keys/b')", [CHANGES_CHANNEL]);
      } finally {
        await sender.end();
      }
      const deadline = Date.now() + 2000;
      while (!heard.includes("keys/a") && Date.now() < deadline) await sleep(20);
      expect(heard).toContain("keys/a");
      expect(heard).not.toContain("keys/b");

      heard.length = 0;
      relay.freeze();
      const frozenAt = Date.now();
      while (feed.live && Date.now() - frozenAt < 5000) await sleep(20);
      const noticed = Date.now() - frozenAt;
      expect(feed.live).toBe(false);
      expect(noticed).toBeLessThan(1500);
      // Caches were told that changes may have been missed.
      expect(heard).toContain(undefined);
    } finally {
      await feed.close();
    }
  });
});
