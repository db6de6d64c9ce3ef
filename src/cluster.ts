/**
 * KEYWARD_WORKERS > 1: this process supervises that many Keyward servers
 * sharing one listening port (node:cluster hands each new connection to the
 * next worker). Every worker is a whole server — the audit chain, the caches
 * and the schedulers already hold across processes on one database — so the
 * supervisor keeps only what must exist once: the development files, the
 * embedded database and the metrics endpoint, which sums every worker's
 * figures and answers `/readyz` for all of them.
 *
 * @module
 */
import cluster, { type Worker } from "node:cluster";
import { join } from "node:path";
import { AggregatorRegistry } from "prom-client";
import type { Config } from "./config.js";
import type { Logger } from "./log.js";
import { serveMetrics, type Readiness } from "./server/metrics.js";
import { startEmbeddedPostgres } from "./storage/pg/embedded.js";

/** The message a worker takes as its signal to drain and exit. */
export const SHUTDOWN_MESSAGE = "keyward:shutdown";
/** What a worker tells the supervisor once it serves every route. */
export const READY_MESSAGE = "keyward:ready";
/** What a worker tells the supervisor when it begins to drain. */
export const DRAINING_MESSAGE = "keyward:draining";

/** Replacements allowed within {@link RESTART_WINDOW_MS} before the supervisor gives up. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
const RESTART_DELAY_MS = 1000;

/** What the supervisor started, for the banner. */
export interface Supervised {
  readonly address: { readonly address: string; readonly port: number; readonly family: string };
  readonly development: boolean;
}

/**
 * Forks `config.workers` servers and keeps them running until `stop`
 * resolves; a worker that dies is replaced, unless it died before listening
 * or too many die in a row. Resolves with the exit code: 0 when every
 * worker drained and exited cleanly.
 */
export async function superviseWorkers(
  config: Config,
  log: Logger,
  stop: Promise<unknown>,
  onListening: (started: Supervised) => void,
): Promise<number> {
  // Loaded here: the commands that only need the messages above must not load the whole server.
  const { resolveMaterials } = await import("./main.js");
  const { dev } = await resolveMaterials(config, log);
  const env: Record<string, string> = {};
  const embedded = config.databaseUrl
    ? undefined
    : await startEmbeddedPostgres({
        dataDir: join(config.dataDir, "postgres"),
        log: (message) => log.debug({ component: "embedded-postgres" }, message),
      });
  try {
    if (embedded) {
      env.DATABASE_URL = embedded.connectionString;
      dev.push("embedded PostgreSQL");
    }
    const aggregator = new AggregatorRegistry();
    const readiness = createWorkerReadiness();
    const endpoint = config.metricsListen
      ? await serveMetrics(
          { metrics: () => aggregator.clusterMetrics(), contentType: aggregator.contentType },
          config.metricsListen.host,
          config.metricsListen.port,
          readiness.state,
        )
      : undefined;
    try {
      return await runWorkers(config, log, env, stop, readiness, (address) => {
        log.info(
          {
            address: `${address.address}:${address.port}`,
            workers: config.workers,
            ...(endpoint && { metricsAddress: `${endpoint.address.address}:${endpoint.address.port}` }),
          },
          "keyward workers listening",
        );
        onListening({ address, development: dev.length > 0 });
      });
    } finally {
      await endpoint?.close();
    }
  } finally {
    await embedded?.stop();
  }
}

async function runWorkers(
  config: Config,
  log: Logger,
  env: Record<string, string>,
  stop: Promise<unknown>,
  readiness: WorkerReadiness,
  onAllListening: (address: Supervised["address"]) => void,
): Promise<number> {
  const live = new Set<Worker>();
  const listening = new Set<Worker>();
  const restarts: number[] = [];
  let stopping = false;
  let failed = false;
  let announced = false;
  let allExited = () => {};
  const exited = new Promise<void>((resolve) => (allExited = resolve));

  const fork = () => {
    const worker = cluster.fork(env);
    live.add(worker);
    readiness.track(worker);
    worker.on("listening", (address) => {
      listening.add(worker);
      if (!announced && listening.size === config.workers) {
        announced = true;
        onAllListening({
          address: address.address ?? config.listen.host,
          port: address.port,
          family: address.addressType === 6 ? "IPv6" : "IPv4",
        });
      }
    });
    worker.on("exit", (code, signal) => {
      live.delete(worker);
      const served = listening.delete(worker);
      if (!stopping) {
        const now = Date.now();
        restarts.push(now);
        while (restarts[0]! < now - RESTART_WINDOW_MS) restarts.shift();
        if (!served || restarts.length > MAX_RESTARTS) {
          log.fatal(
            { worker: worker.id, code, signal },
            served ? `workers keep exiting (${restarts.length} within a minute); stopping` : "a worker exited before listening; stopping",
          );
          failed = true;
          requestStop();
        } else {
          log.error({ worker: worker.id, code, signal }, "worker exited; starting another");
          setTimeout(() => stopping || fork(), RESTART_DELAY_MS).unref();
        }
      } else if (code !== 0) {
        failed = true;
      }
      if (stopping && live.size === 0) allExited();
    });
  };

  const requestStop = () => {
    if (stopping) return;
    stopping = true;
    readiness.stop();
    for (const worker of live) {
      // A message, not a signal: a worker that got the terminal's SIGINT
      // itself must not take a second one as "exit without draining".
      if (worker.isConnected()) worker.send(SHUTDOWN_MESSAGE);
    }
    // Past the drain grace, a worker that still has not exited is stopped.
    setTimeout(() => {
      for (const worker of live) worker.process.kill("SIGKILL");
    }, config.shutdownGraceMs + 10_000).unref();
    if (live.size === 0) allExited();
  };

  cluster.setupPrimary({ silent: false });
  for (let i = 0; i < config.workers; i++) fork();
  void stop.then(requestStop);
  await exited;
  return failed ? 1 : 0;
}

/** The supervisor's answer to `GET /readyz`; see {@link createWorkerReadiness}. */
interface WorkerReadiness {
  /** Follows a freshly forked worker until it exits. */
  track(worker: Worker): void;
  /** The supervisor is stopping: `draining` from now on. */
  stop(): void;
  state(): Readiness;
}

/**
 * `ready` only while every live worker has said it serves every route
 * ({@link READY_MESSAGE}): the shared socket hands connections to a worker
 * still waiting for its database too, so one starting worker (a replacement
 * included) keeps the whole process `starting`. `draining` once the
 * supervisor stops or any worker drains. A worker that exited no longer
 * counts: until its replacement is forked, the others serve every connection.
 */
function createWorkerReadiness(): WorkerReadiness {
  const workers = new Map<Worker, Readiness>();
  let stopping = false;
  return {
    track(worker) {
      workers.set(worker, "starting");
      worker.on("message", (message) => {
        // Draining is final: a late "ready" does not undo it.
        if (message === READY_MESSAGE && workers.get(worker) === "starting") workers.set(worker, "ready");
        if (message === DRAINING_MESSAGE && workers.has(worker)) workers.set(worker, "draining");
      });
      worker.on("exit", () => workers.delete(worker));
    },
    stop() {
      stopping = true;
    },
    state() {
      const states = [...workers.values()];
      if (stopping || states.includes("draining")) return "draining";
      return states.length > 0 && states.every((state) => state === "ready") ? "ready" : "starting";
    },
  };
}
