/**
 * Prometheus metrics: a registry of Keyward's own (never prom-client's
 * global one, so two servers in one process never mix their figures), and
 * the plain-HTTP endpoint that serves it.
 *
 * Every label value comes from a bounded set fixed by the code: method paths
 * of served RPCs, gRPC code names, the pool names `main` and `audit`. No
 * metric carries an identity, a key or secret name, or request content, so
 * the endpoint can be scraped without authentication.
 *
 * The same endpoint answers the orchestrator's probes (`/readyz`, `/livez`):
 * the gRPC port cannot serve them, since every connection there needs a
 * client certificate and every call is audited.
 *
 * @module
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

/** Buckets of `keyward_rpc_duration_seconds`: 1 ms to 5 s, about three per decade. */
export const RPC_DURATION_BUCKETS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** Buckets of `keyward_audit_batch_size`, up to the largest KEYWARD_AUDIT_BATCH_MAX accepted. */
export const AUDIT_BATCH_BUCKETS: readonly number[] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

/**
 * How long a scrape waits for the rewrap backlog count. A scrape must not
 * hang on a slow or saturated database: past this the gauge is left out of
 * that scrape, and the statement is cancelled by the server soon after.
 */
export const STALE_COUNT_TIMEOUT_MS = 1000;

/** What the pool gauges read: node-postgres `Pool` has these counters. */
export interface PoolCounts {
  /** Connections open, idle or in use. */
  readonly totalCount: number;
  readonly idleCount: number;
  /** Queries waiting for a connection. */
  readonly waitingCount: number;
}

/** What the gauges read at scrape time. */
export interface MetricSources {
  readonly pools: { readonly main: PoolCounts; readonly audit: PoolCounts };
  /** The audit group committer: events queued or being written. */
  readonly auditQueue: { readonly pending: number };
  /** The key cache: keys held, and metadata lookups served from memory or not since start. */
  readonly keyCache: { readonly size: number; readonly stats: { readonly hits: number; readonly misses: number } };
  /** Stored secret versions still encrypted with an older version of their key; see {@link countStaleSecretVersions}. */
  countStaleSecretVersions(): Promise<number>;
}

/** Keyward's metrics; see {@link createMetrics}. */
export interface KeywardMetrics {
  readonly registry: Registry;
  /** Finished calls by `method` (served path or `unknown`) and `code` (gRPC code name). */
  readonly rpcCalls: Counter<"method" | "code">;
  /** Call durations in seconds by `method`; streams count until their last message. */
  readonly rpcDuration: Histogram<"method">;
  /** Events per audit group commit. */
  readonly auditBatchSize: Histogram;
  /**
   * Connects the scrape-time gauges to what they read. Call it before
   * serving the registry: until then those gauges are not updated.
   */
  watch(sources: MetricSources): void;
}

/**
 * Creates the registry with every Keyward metric and prom-client's default
 * process and Node.js metrics (`process_*`, `nodejs_*`):
 *
 * - `keyward_rpc_calls_total{method,code}`, `keyward_rpc_duration_seconds{method}`
 * - `keyward_audit_queue_depth`, `keyward_audit_batch_size`
 * - `keyward_key_cache_keys`, `keyward_key_cache_hits_total`, `keyward_key_cache_misses_total`
 * - `keyward_db_pool_connections{pool}`, `keyward_db_pool_idle_connections{pool}`,
 *   `keyward_db_pool_waiting_requests{pool}` with `pool` = `main` | `audit`
 * - `keyward_secret_versions_pending_rewrap`
 *
 * Reading them never fails a scrape: a source that cannot answer leaves its
 * series out of that scrape.
 */
export function createMetrics(): KeywardMetrics {
  const registry = new Registry();
  const registers = [registry];
  collectDefaultMetrics({ register: registry });
  let sources: MetricSources | undefined;

  const rpcCalls = new Counter({
    name: "keyward_rpc_calls_total",
    help: "Finished RPCs by method path and gRPC status code.",
    labelNames: ["method", "code"] as const,
    registers,
  });
  const rpcDuration = new Histogram({
    name: "keyward_rpc_duration_seconds",
    help: "RPC duration in seconds, from the call reaching the interceptors to its last response message.",
    labelNames: ["method"] as const,
    buckets: [...RPC_DURATION_BUCKETS],
    registers,
  });

  new Gauge({
    name: "keyward_audit_queue_depth",
    help: "Audit events waiting to be made durable (queued or in the batch being written).",
    registers,
    collect() {
      if (sources) this.set(sources.auditQueue.pending);
    },
  });
  const auditBatchSize = new Histogram({
    name: "keyward_audit_batch_size",
    help: "Audit events per group commit.",
    buckets: [...AUDIT_BATCH_BUCKETS],
    registers,
  });

  new Gauge({
    name: "keyward_key_cache_keys",
    help: "Keys held in the key cache.",
    registers,
    collect() {
      if (sources) this.set(sources.keyCache.size);
    },
  });
  // The cache keeps its own running totals; each scrape copies them.
  new Counter({
    name: "keyward_key_cache_hits_total",
    help: "Key metadata lookups served from the key cache.",
    registers,
    collect() {
      if (sources) {
        this.reset();
        this.inc(sources.keyCache.stats.hits);
      }
    },
  });
  new Counter({
    name: "keyward_key_cache_misses_total",
    help: "Key metadata lookups that read the database (not cached, or the change feed not live).",
    registers,
    collect() {
      if (sources) {
        this.reset();
        this.inc(sources.keyCache.stats.misses);
      }
    },
  });

  const poolGauge = (name: string, help: string, read: (pool: PoolCounts) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["pool"] as const,
      registers,
      collect() {
        if (sources) {
          this.set({ pool: "main" }, read(sources.pools.main));
          this.set({ pool: "audit" }, read(sources.pools.audit));
        }
      },
    });
  poolGauge("keyward_db_pool_connections", "Open database connections (idle or in use) by pool.", (pool) => pool.totalCount);
  poolGauge("keyward_db_pool_idle_connections", "Idle database connections by pool.", (pool) => pool.idleCount);
  poolGauge("keyward_db_pool_waiting_requests", "Queries waiting for a database connection by pool.", (pool) => pool.waitingCount);

  // One count at a time: scrapes that come while one runs share it, so a
  // slow database never collects a queue of them.
  let counting: Promise<number> | undefined;
  new Gauge({
    name: "keyward_secret_versions_pending_rewrap",
    help: "Stored secret versions still encrypted with an older version of their key (the rewrap job's backlog).",
    registers,
    // Every worker of a cluster counts the same rows: summing would multiply them.
    aggregator: "max",
    async collect() {
      if (!sources) return;
      const current = (counting ??= sources.countStaleSecretVersions().finally(() => {
        counting = undefined;
      }));
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), STALE_COUNT_TIMEOUT_MS + 500);
      });
      const count = await Promise.race([current, timedOut]).catch(() => undefined);
      clearTimeout(timer);
      // Absent rather than a stale or made-up figure: "0" would read as "done".
      if (count === undefined) {
        this.remove();
      } else {
        this.set(count);
      }
    },
  });

  return {
    registry,
    rpcCalls,
    rpcDuration,
    auditBatchSize,
    watch(next) {
      sources = next;
    },
  };
}

/** What the endpoint serves: a registry, or the figures of every worker of a cluster summed. */
export interface MetricsText {
  metrics(): Promise<string>;
  readonly contentType: string;
}

/** Where the endpoint serves Prometheus metrics. */
export const METRICS_PATH = "/metrics";
/** Where the endpoint answers readiness probes; see {@link Readiness}. */
export const READINESS_PATH = "/readyz";
/** Where the endpoint answers liveness probes: 200 whenever the event loop gets to answer. */
export const LIVENESS_PATH = "/livez";

/**
 * Whether the server should be sent calls, as `GET /readyz` tells it: the
 * state is the body, `ready` answers 200 and the others 503.
 *
 * - `starting`: start-up has not finished (the database not reached yet,
 *   migrations, the root key check); API calls would fail UNAVAILABLE.
 * - `ready`: every route is served. It stays so through a later database
 *   outage: every replica shares that database, so failing readiness then
 *   would take them all out of the load balancer at once and turn
 *   UNAVAILABLE answers (which clients retry) into connections refused,
 *   without making anything work sooner. grpc.health.v1 reports the outage.
 * - `draining`: shutdown has begun; calls in flight finish, new ones go elsewhere.
 */
export type Readiness = "starting" | "ready" | "draining";

/** The running metrics endpoint. */
export interface MetricsServer {
  readonly address: AddressInfo;
  /** Stops listening and closes open connections (scrapers keep them alive). */
  close(): Promise<void>;
}

/**
 * Serves over plain HTTP on `host:port` (port 0 picks a free one):
 *
 * - `GET /metrics`: `registry`'s text;
 * - `GET /readyz`: 200 `ready`, or 503 `starting` / `draining`, from `readiness()`;
 * - `GET /livez`: 200 `ok`. Answering at all is the proof: the process's
 *   event loop runs (a TCP connect would succeed on a blocked one, since the
 *   kernel accepts it).
 *
 * Every other method or path gets 404. No TLS, no authentication, nothing
 * logged or audited: no answer carries a secret, a name or anything a caller
 * sent, and none changes anything. Bind it where only the scraper and the
 * probes reach.
 *
 * @throws the listen error (EADDRINUSE, EADDRNOTAVAIL, …).
 */
export async function serveMetrics(
  registry: MetricsText,
  host: string,
  port: number,
  readiness: () => Readiness,
): Promise<MetricsServer> {
  const text = (res: http.ServerResponse, status: number, body: string) =>
    res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" }).end(`${body}\n`);
  const server = http.createServer((req, res) => {
    const path = req.method === "GET" ? (req.url ?? "").split("?", 1)[0] : undefined;
    if (path === READINESS_PATH) {
      const state = readiness();
      text(res, state === "ready" ? 200 : 503, state);
      return;
    }
    if (path === LIVENESS_PATH) {
      text(res, 200, "ok");
      return;
    }
    if (path !== METRICS_PATH) {
      text(res, 404, "not found");
      return;
    }
    registry.metrics().then(
      (body) => {
        res.writeHead(200, { "content-type": registry.contentType, "cache-control": "no-store" }).end(body);
      },
      () => text(res, 500, "metrics unavailable"),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return {
    address: server.address() as AddressInfo,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
