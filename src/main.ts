import cluster from "node:cluster";
import { randomUUID } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { createValidateInterceptor } from "@connectrpc/validate";
import type { Logger } from "pino";
import type pg from "pg";
import { AggregatorRegistry } from "prom-client";
import { AccessService } from "../gen/keyward/v1/access_pb.js";
import { AuditService } from "../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../gen/keyward/v1/crypto_pb.js";
import { KeysService } from "../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../gen/keyward/v1/secrets_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ServerReflectionV1 } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1Alpha } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import type { Config, TlsConfig } from "./config.js";
import { parseRootKey, rootKeyCheck } from "./crypto/root-key.js";
import type { SecretBytes } from "./crypto/secret-bytes.js";
import { ensureDevPolicy, ensureDevRootKey } from "./dev/dev-files.js";
import { devPkiPaths, ensureDevPki } from "./dev/pki.js";
import type { AuditRecord } from "./domain/audit/event.js";
import { createGroupCommitter } from "./domain/audit/group-commit.js";
import { createCryptoOperations, createUsageRecorder } from "./domain/keys/crypto-operations.js";
import type { Clock } from "./domain/keys/clock.js";
import { createKeyCache } from "./domain/keys/key-cache.js";
import { createKeyManager } from "./domain/keys/key-manager.js";
import { createKeyScheduler } from "./domain/keys/scheduler.js";
import { createSecretCache } from "./domain/secrets/secret-cache.js";
import { createSecretManager } from "./domain/secrets/secret-manager.js";
import { createCheckpointSigner } from "./domain/audit/signer.js";
import { createAccessLogInterceptor } from "./server/interceptors/access-log.js";
import { createAuditInterceptor } from "./server/interceptors/audit.js";
import { createAuthenticateInterceptor, createAuthorizeResourceInterceptor } from "./server/interceptors/authorize.js";
import { createCallLimitInterceptor } from "./server/interceptors/call-limit.js";
import { createErrorInterceptor } from "./server/interceptors/errors.js";
import { createMetricsInterceptor } from "./server/interceptors/metrics.js";
import { createMetrics, serveMetrics, STALE_COUNT_TIMEOUT_MS, type Readiness } from "./server/metrics.js";
import { createPolicyStore } from "./server/policy-store.js";
import { createRegexMatch } from "./server/regex-match.js";
import { createKeywardServer, type ServerOptions } from "./server/server.js";
import { loadTlsMaterial, watchTlsFiles } from "./server/tls.js";
import { createAccessService } from "./services/access-service.js";
import { createAuditService } from "./services/audit-service.js";
import { createCryptoService } from "./services/crypto-service.js";
import { createKeysService } from "./services/keys-service.js";
import { createSecretsService } from "./services/secrets-service.js";
import { createHealthService, createHealthStatus } from "./services/health-service.js";
import { createReflectionService } from "./services/reflection-service.js";
import { createPgAuditRepository } from "./storage/pg/audit-repository.js";
import { createPgDeploymentRepository } from "./storage/pg/deployment-repository.js";
import { createPgChangeFeed } from "./storage/pg/change-feed.js";
import { createPgKeyRepository } from "./storage/pg/key-repository.js";
import { countStaleSecretVersions, createPgSecretRepository } from "./storage/pg/secret-repository.js";
import { startEmbeddedPostgres } from "./storage/pg/embedded.js";
import { runPeriodically } from "./periodic.js";
import { migrate } from "./storage/pg/migrate.js";
import { createPool } from "./storage/pg/pool.js";
import { isDatabaseUnavailable } from "./storage/pg/errors.js";
import { waitForDatabase } from "./storage/pg/wait.js";
import { createUnavailableService } from "./services/unavailable-service.js";

/** The Keyward API services, in the order reflection lists them. */
export const KEYWARD_SERVICES: readonly DescService[] = [
  KeysService,
  CryptoService,
  SecretsService,
  AuditService,
  AccessService,
];

/** Health and reflection, served beside the API to every authenticated caller. */
export const INFRASTRUCTURE_SERVICES: readonly DescService[] = [Health, ServerReflectionV1, ServerReflectionV1Alpha];

/** A started Keyward: its address and how to stop it. */
export interface RunningKeyward {
  readonly address: AddressInfo;
  /** Where `GET /metrics`, `/readyz` and `/livez` are served; undefined when KEYWARD_METRICS_LISTEN is unset (no port opened). */
  readonly metricsAddress?: AddressInfo;
  /** Which files the server uses, resolved (dev defaults included). */
  readonly files: { readonly tls: TlsConfig; readonly policyFile: string };
  /** True when any dev default (PKI, policy, root key, embedded database) is in use. */
  readonly development: boolean;
  /** Drains calls in flight (up to the configured grace), then releases everything. */
  close(): Promise<void>;
}

/** Options for {@link startKeyward}. */
export interface StartOptions {
  /**
   * Aborting it while start-up waits for an unreachable database stops what
   * was started and rejects with the signal's reason (SIGTERM before the
   * database ever answered). Default: wait until the database answers.
   */
  readonly signal?: AbortSignal;
}

/**
 * The composition root: config → dev defaults → policy → server → database
 * (waited for) → migrations → root key check → routes → listen. Resolves
 * once every call is served. While the database cannot be reached the server
 * already listens, answering health (NOT_SERVING) and refusing every other
 * call UNAVAILABLE, and `GET /readyz` (when KEYWARD_METRICS_LISTEN is set)
 * answers 503 `starting`: 200 `ready` once resolved, 503 `draining` from the
 * moment `close()` is called. Everything it starts, it stops in `close()`: the
 * listener first (calls in flight drain), the rest in reverse order; a
 * failure half-way stops what was started.
 */
export async function startKeyward(config: Config, log: Logger, options: StartOptions = {}): Promise<RunningKeyward> {
  const cleanups: Array<() => Promise<void> | void> = [];
  // Set once the listener is open.
  let stopServing: (() => Promise<void>) | undefined;
  let closing: Promise<void> | undefined;
  // What GET /readyz answers: "ready" once every route is served, until shutdown.
  let readiness: Readiness = "starting";
  const cleanup = () =>
    (closing ??= (async () => {
      readiness = "draining";
      await stopServing?.();
      for (const step of [...cleanups].reverse()) {
        await step();
      }
    })());
  try {
    const { tls, policyFile, rootKey, dev } = await resolveMaterials(config, log);

    let databaseUrl = config.databaseUrl;
    if (databaseUrl === undefined) {
      const embedded = await startEmbeddedPostgres({
        dataDir: join(config.dataDir, "postgres"),
        log: (message) => log.debug({ component: "embedded-postgres" }, message),
      });
      cleanups.push(() => embedded.stop());
      databaseUrl = embedded.connectionString;
      dev.push("embedded PostgreSQL");
    }

    const policy = createPolicyStore(policyFile, log);
    cleanups.push(() => policy.close());

    const health = createHealthStatus(ServingStatus.NOT_SERVING);
    const draining = new AbortController();
    const served = [...KEYWARD_SERVICES, ...INFRASTRUCTURE_SERVICES];
    const server = createKeywardServer({
      tls: loadTlsMaterial(tls),
      draining,
      limits: config.limits,
      ...startingRoutes({ log, policy, health, draining, served }),
    });
    const tlsFiles = tls;
    cleanups.push(
      watchTlsFiles(tls, () => {
        try {
          server.setSecureContext(loadTlsMaterial(tlsFiles));
          log.info("TLS material reloaded");
        } catch (err) {
          log.error({ error: (err as Error).message }, "TLS reload failed; the previous certificates stay in use");
        }
      }),
    );
    let address: AddressInfo | undefined;
    const listen = async () => {
      address = await server.listen(config.listen.host, config.listen.port);
      stopServing = async () => {
        health.set(ServingStatus.NOT_SERVING);
        await server.shutdown(config.shutdownGraceMs);
      };
      return address;
    };

    // Metrics cost a little on every call (and prom-client's process metrics
    // watch the event loop and GC): nothing is collected unless asked for.
    const metrics = config.metricsListen ? createMetrics() : undefined;
    // Opened before the database is waited for, so that the probes hear
    // "starting" rather than nothing (or a TCP connect that looks ready).
    let metricsAddress: AddressInfo | undefined;
    if (metrics && cluster.isWorker) {
      // The supervisor serves the endpoint, gathering every worker's figures;
      // constructing an aggregator is what makes this worker answer it.
      new AggregatorRegistry();
      AggregatorRegistry.setRegistries([metrics.registry]);
    } else if (metrics && config.metricsListen) {
      const endpoint = await serveMetrics(metrics.registry, config.metricsListen.host, config.metricsListen.port, () => readiness);
      cleanups.push(() => endpoint.close());
      metricsAddress = endpoint.address;
      log.info(
        { metricsAddress: `${metricsAddress.address}:${metricsAddress.port}` },
        "metrics and probes served at GET /metrics, /readyz, /livez (plain HTTP)",
      );
    }

    const migrationsDatabase = databaseUrl;
    const applied = await waitForDatabase(
      () =>
        migrate({
          connectionString: migrationsDatabase,
          schema: config.databaseSchema,
          log: (message) => log.debug({ component: "migrate" }, message),
          connectTimeoutMs: config.databaseTimeoutMs,
        }),
      {
        connectionString: databaseUrl,
        signal: options.signal,
        async onWaiting() {
          const { address: host, port } = await listen();
          log.warn(
            { address: `${host}:${port}` },
            "listening before the database is reachable: health reports NOT_SERVING and other calls fail UNAVAILABLE until it is",
          );
        },
        onRetry: ({ attempt, database, error, retryInMs }) =>
          log.warn({ attempt, database, error, retryInMs }, `database unreachable; retrying in ${retryInMs} ms`),
      },
    );
    if (applied.length > 0) {
      log.info({ migrations: applied }, "migrations applied");
    }
    const pool = createPool({
      connectionString: databaseUrl,
      schema: config.databaseSchema,
      max: config.databasePoolMax,
      applicationName: "keyward",
      // A database that stops answering fails calls (UNAVAILABLE) instead of hanging them.
      connectTimeoutMs: config.databaseTimeoutMs,
      queryTimeoutMs: config.databaseTimeoutMs,
    });
    cleanups.push(() => pool.end());
    const deployment = createPgDeploymentRepository(pool);
    const { deploymentId } = await deployment.ensure(rootKeyCheck(rootKey));

    const { auditLog, auditPool, auditReader, checkpointSigner } = await startAudit(config, {
      databaseUrl,
      pool,
      rootKey,
      log,
      cleanups,
      onAuditBatch: metrics && ((records) => metrics.auditBatchSize.observe(records)),
    });

    const secretRepository = createPgSecretRepository(pool);
    const storedValuesBelow = (keyName: string, version: number) => secretRepository.countBelow(keyName, version);
    const { keys, crypto, cache, feed } = await startKeys(config, {
      databaseUrl,
      pool,
      rootKey,
      log,
      cleanups,
      auditReader,
      policy,
      storedValuesBelow,
    });
    const secrets = createSecretManager({
      repository: secretRepository,
      keys,
      crypto,
      clock: SYSTEM_CLOCK,
      cache: createSecretCache({ repository: secretRepository, feed }),
    });
    startRewrap(config, secrets, log, cleanups);
    metrics?.watch({
      pools: { main: pool, audit: auditPool },
      auditQueue: auditLog,
      keyCache: cache,
      countStaleSecretVersions: () => countStaleSecretVersions(pool, STALE_COUNT_TIMEOUT_MS),
    });

    const healthProbe = setInterval(() => {
      deployment.ping().then(
        () => {
          if (health.get() === ServingStatus.NOT_SERVING) {
            log.info("database reachable again; reporting SERVING");
          }
          health.set(ServingStatus.SERVING);
        },
        (err: unknown) => {
          if (health.get() === ServingStatus.SERVING) {
            log.error({ error: (err as Error).message }, "database unreachable; reporting NOT_SERVING");
          }
          health.set(ServingStatus.NOT_SERVING);
        },
      );
    }, 2000);
    healthProbe.unref();
    cleanups.push(() => clearInterval(healthProbe));

    server.setRoutes({
      interceptors: [
        ...(metrics ? [createMetricsInterceptor(metrics, served)] : []),
        createAccessLogInterceptor(log),
        createAuditInterceptor({
          audit: auditLog,
          policy,
          appendWithin: (tx, records) => auditReader.appendWithin(tx as pg.ClientBase, records),
        }),
        createErrorInterceptor(log, { isUnavailable: isDatabaseUnavailable }),
        createAuthenticateInterceptor(policy),
        createCallLimitInterceptor(config.limits.maxCallsPerIdentity),
        createValidateInterceptor({ validator: createValidator({ regexMatch: createRegexMatch() }) }),
        createAuthorizeResourceInterceptor(policy),
      ],
      routes(router) {
        router.service(AccessService, createAccessService({ policy }));
        router.service(
          AuditService,
          createAuditService({
            reader: auditReader,
            signer: checkpointSigner,
            shutdown: draining.signal,
            onReadError: (err) => log.error({ error: (err as Error).message }, "audit log read failed"),
          }),
        );
        router.service(KeysService, createKeysService({ keys, policy, storedValuesBelow }));
        router.service(CryptoService, createCryptoService({ crypto }));
        router.service(SecretsService, createSecretsService({ secrets, policy }));
        router.service(Health, createHealthService(health, served.map((s) => s.typeName), draining.signal));
        router.service(ServerReflectionV1, createReflectionService(ServerReflectionV1, served));
        router.service(ServerReflectionV1Alpha, createReflectionService(ServerReflectionV1Alpha, served));
      },
    });
    health.set(ServingStatus.SERVING);
    const listening = address ?? (await listen());
    log.info(
      { address: `${listening.address}:${listening.port}`, deploymentId, policyDigest: policy.current().policy.digest },
      "keyward listening",
    );
    readiness = "ready";
    if (dev.length > 0) {
      log.warn({ development: dev }, "DEVELOPMENT defaults in use; configure them for production (see README)");
    }
    return {
      address: listening,
      metricsAddress,
      files: { tls, policyFile },
      development: dev.length > 0,
      close: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/**
 * What the server answers before it is ready (the database not reachable
 * yet): health, reporting `health`'s status (NOT_SERVING), and reflection;
 * every API method fails UNAVAILABLE without touching anything. Callers are
 * still authenticated and gated by role, as always. These calls are logged
 * but not audited: there is no audit log to write to yet, and nothing is
 * read, changed or revealed.
 */
function startingRoutes(deps: {
  log: Logger;
  policy: ReturnType<typeof createPolicyStore>;
  health: ReturnType<typeof createHealthStatus>;
  draining: AbortController;
  served: readonly DescService[];
}): Pick<ServerOptions, "routes" | "interceptors"> {
  const { log, policy, health, draining, served } = deps;
  const message = "keyward is starting: the database is not reachable yet";
  return {
    interceptors: [createAccessLogInterceptor(log), createErrorInterceptor(log), createAuthenticateInterceptor(policy)],
    routes(router) {
      for (const service of KEYWARD_SERVICES) {
        router.service(service, createUnavailableService(service, message));
      }
      router.service(Health, createHealthService(health, served.map((s) => s.typeName), draining.signal));
      router.service(ServerReflectionV1, createReflectionService(ServerReflectionV1, served));
      router.service(ServerReflectionV1Alpha, createReflectionService(ServerReflectionV1Alpha, served));
    },
  };
}

/**
 * The TLS files, policy file and root key in force: the configured ones, or
 * development defaults created in the data folder on first use (and named in
 * `dev`, so that the server can say loudly that it runs on them).
 */
export async function resolveMaterials(config: Config, log: Logger) {
  // Searchable but not listable by others: an embedded PostgreSQL running as
  // the "postgres" user must reach <data>/postgres; the PKI and root key inside stay private.
  await mkdir(config.dataDir, { recursive: true, mode: 0o711 });
  const dev: string[] = [];

  let tls = config.tls;
  if (tls === undefined) {
    const pki = devPkiPaths(join(config.dataDir, "pki"));
    if (await ensureDevPki(pki.dir)) {
      log.warn({ dir: pki.dir }, "created a DEVELOPMENT PKI (CA, server and client certificates); not for production");
    }
    tls = { certFile: pki.serverCert, keyFile: pki.serverKey, clientCaFile: pki.caCert, crlFile: undefined };
    dev.push("TLS certificates");
  }

  let policyFile = config.policyFile;
  if (policyFile === undefined) {
    policyFile = join(config.dataDir, "policy.yaml");
    if (await ensureDevPolicy(policyFile)) {
      log.warn({ policyFile }, "created a DEVELOPMENT policy granting each dev identity its role on everything");
    }
    dev.push("policy");
  }

  const { rootKey, devFile, created } = await resolveRootKey(config, { createDevKey: true });
  if (created) {
    log.warn({ rootKeyFile: devFile }, "created a DEVELOPMENT root key file; keep it secret, do not use it in production");
  }
  if (devFile !== undefined) {
    dev.push("root key");
  }
  return { tls, policyFile, rootKey, dev };
}

/** The root key in force and where it came from; see {@link resolveRootKey}. */
export interface ResolvedRootKey {
  readonly rootKey: SecretBytes;
  /** The dev root key file `<data>/root.key` when that is the source; undefined when configured. */
  readonly devFile: string | undefined;
  /** True when this call wrote a fresh dev root key file. */
  readonly created: boolean;
}

/**
 * The root key as the server resolves it: KEYWARD_ROOT_KEY_FILE, else
 * KEYWARD_ROOT_KEY, else the dev root key file `<data>/root.key`. Shared by
 * the server and the offline tools, so that both always agree on which key
 * is "current".
 *
 * @param options.createDevKey write a fresh dev key file when it is missing
 *   (the server's first start); tools that must use an existing key pass false.
 * @throws RootKeyError when the material is malformed; the file system's error
 *   when the file cannot be read (ENOENT for a missing dev key without createDevKey).
 */
export async function resolveRootKey(config: Config, options: { createDevKey: boolean }): Promise<ResolvedRootKey> {
  if (config.rootKey === undefined) {
    const file = join(config.dataDir, "root.key");
    const created = options.createDevKey && (await ensureDevRootKey(file));
    return { rootKey: parseRootKey(await readFile(file)), devFile: file, created };
  }
  if ("file" in config.rootKey) {
    return { rootKey: parseRootKey(await readFile(config.rootKey.file)), devFile: undefined, created: false };
  }
  return { rootKey: config.rootKey.key, devFile: undefined, created: false };
}

/**
 * The audit log: a group committer writing through a pool of its own, a
 * reader on the main pool, and the checkpoint signer with its periodic run.
 * What it starts goes into `cleanups`.
 */
async function startAudit(
  config: Config,
  deps: {
    databaseUrl: string;
    pool: pg.Pool;
    rootKey: SecretBytes;
    log: Logger;
    cleanups: Array<() => Promise<void> | void>;
    /** Told the size of each audit batch (metrics); absent: nobody is. */
    onAuditBatch: ((records: number) => void) | undefined;
  },
) {
  const { databaseUrl, pool, rootKey, log, cleanups, onAuditBatch } = deps;
  // The audit log writes through a pool of its own, with client-side
  // timeouts: a database that stops answering fails appends (and so calls)
  // instead of hanging them, and busy request handlers cannot starve it.
  const auditPool = createPool({
    connectionString: databaseUrl,
    schema: config.databaseSchema,
    max: 2,
    applicationName: "keyward-audit",
    connectTimeoutMs: config.audit.timeoutMs,
    queryTimeoutMs: config.audit.timeoutMs + 1000,
  });
  cleanups.push(() => auditPool.end());
  const auditRepository = createPgAuditRepository(auditPool);
  const auditLog = createGroupCommitter({
    writeBatch: (records) => auditRepository.append(records),
    maxBatch: config.audit.batchMax,
    maxPending: config.audit.queueMax,
    timeoutMs: config.audit.timeoutMs,
    onWriteError: (err, records) =>
      log.error({ error: (err as Error).message, records }, "audit write failed; the calls waiting for it fail UNAVAILABLE"),
    onBatch: onAuditBatch,
  });
  cleanups.push(() => auditLog.close());

  // Reading, verifying and signing the log go through the main pool: a long
  // verification or many open tails must not take the writers' connections.
  const auditReader = createPgAuditRepository(pool);
  const checkpointSigner = await createCheckpointSigner({ store: auditReader, rootKey });
  log.info({ keyId: checkpointSigner.keyId }, "audit checkpoint key loaded");
  if (config.audit.checkpointIntervalMs > 0) {
    cleanups.push(
      runPeriodically(config.audit.checkpointIntervalMs, () =>
        checkpointSigner
          .signIfMoved()
          .catch((err: unknown) => log.warn({ error: (err as Error).message }, "periodic audit checkpoint failed")),
      ),
    );
  }
  return { auditLog, auditPool, auditReader, checkpointSigner };
}

/** The wall clock, for the domain's Clock port (tests of the pure parts pass their own). */
const SYSTEM_CLOCK: Clock = { now: () => new Date() };

/** How often usage counters are written: GetKey/ListKeyVersions may lag by this much. */
const USAGE_FLUSH_MS = 2000;

/**
 * Keys: the repository, the change feed that keeps every replica's cache
 * honest, the cache, the lifecycle manager, the crypto operations, usage
 * counters and the rotation/destruction scheduler. What it starts goes into
 * `cleanups`.
 */
async function startKeys(
  config: Config,
  deps: {
    databaseUrl: string;
    pool: pg.Pool;
    rootKey: SecretBytes;
    log: Logger;
    cleanups: Array<() => Promise<void> | void>;
    auditReader: ReturnType<typeof createPgAuditRepository>;
    policy: ReturnType<typeof createPolicyStore>;
    storedValuesBelow: (keyName: string, version: number) => Promise<number>;
  },
) {
  const { databaseUrl, pool, rootKey, log, cleanups, auditReader, policy, storedValuesBelow } = deps;
  const clock = SYSTEM_CLOCK;
  const repository = createPgKeyRepository(pool);
  const { rows } = await pool.query<{ schema: string }>("SELECT current_schema() AS schema");
  const feed = createPgChangeFeed(databaseUrl, rows[0]!.schema, {
    onError: (err) => log.warn({ error: err.message }, "key change feed lost; serving keys uncached until it is back"),
  });
  cleanups.push(() => feed.close());
  // Not waiting forever: the cache serves uncached (always fresh) until the feed is live.
  await Promise.race([feed.ready, new Promise((resolve) => setTimeout(resolve, 5000).unref())]);

  const cache = createKeyCache({ repository, feed, rootKey });
  const usage = createUsageRecorder();
  const flushUsage = () => {
    const deltas = usage.drain();
    return repository.recordUsage(deltas).catch((err: unknown) => {
      usage.restore(deltas);
      log.warn({ error: (err as Error).message }, "key usage not recorded yet; kept for the next flush");
    });
  };
  const stopFlushing = runPeriodically(USAGE_FLUSH_MS, flushUsage);
  cleanups.push(async () => {
    await stopFlushing();
    await flushUsage();
  });

  const keys = createKeyManager({
    repository,
    rootKey,
    clock,
    minPendingWindowMs: config.keys.minPendingWindowMs,
    storedValuesBelow,
    // This replica sees its own changes at once; the others on the notice.
    onChanged: (name) => cache.invalidate(name),
  });
  const crypto = createCryptoOperations({ cache, usage });

  const scheduler = createKeyScheduler({
    keys,
    repository,
    clock,
    audit: (name, outcome) => (tx) => {
      const record: AuditRecord = {
        time: new Date(),
        identity: "keyward/scheduler",
        roles: [],
        method: outcome === "rotated" ? "/keyward.v1.KeysService/RotateKey" : "keyward/scheduler/DestroyKey",
        resources: [name],
        keyVersion: "",
        resultCode: 0,
        resultMessage: outcome === "rotated" ? "automatic rotation" : "scheduled destruction",
        requestId: randomUUID(),
        peerAddress: "",
        policyDigest: policy.current().policy.digest,
      };
      log.info({ keyName: name, outcome }, outcome === "rotated" ? "key rotated automatically" : "key destroyed as scheduled");
      return auditReader.appendWithin(tx as pg.ClientBase, [record]).then(() => {});
    },
    onError: (err, name) => log.warn({ keyName: name, error: (err as Error).message }, "key scheduler run failed"),
  });
  cleanups.push(
    runPeriodically(config.keys.schedulerIntervalMs, () =>
      scheduler.runOnce().catch((err: unknown) => log.warn({ error: (err as Error).message }, "key scheduler run failed")),
    ),
  );
  return { keys, crypto, cache, feed };
}

/** Stored values re-encrypted per transaction by the rewrap job. */
const REWRAP_BATCH = 200;

/**
 * The rewrap job: after a key rotation, re-encrypts stored secret values
 * with the key's new primary version, in bounded batches. Every replica runs
 * it; rows another replica holds are skipped, and a crash loses nothing
 * (the job finds what is left from the data itself).
 */
function startRewrap(
  config: Config,
  secrets: ReturnType<typeof createSecretManager>,
  log: Logger,
  cleanups: Array<() => Promise<void> | void>,
) {
  cleanups.push(
    runPeriodically(config.secrets.rewrapIntervalMs, () =>
      secrets
        .rewrapStale(REWRAP_BATCH)
        .then((n) => n > 0 && log.info({ secretVersions: n }, "secret versions re-encrypted with their key's primary version"))
        .catch((err: unknown) => log.warn({ error: (err as Error).message }, "secret rewrap failed; retrying later")),
    ),
  );
}
