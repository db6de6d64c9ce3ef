import { isAbsolute, resolve } from "node:path";
import { parseRootKey, RootKeyError } from "./crypto/root-key.js";
import type { SecretBytes } from "./crypto/secret-bytes.js";

/** Log levels accepted by KEYWARD_LOG_LEVEL. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** TLS material paths. When none is configured the dev PKI in the data folder is used. */
export interface TlsConfig {
  readonly certFile: string;
  readonly keyFile: string;
  readonly clientCaFile: string;
  /** Optional PEM CRL; certificates it lists are refused. Reloaded with the rest. */
  readonly crlFile: string | undefined;
}

/** The whole configuration, read once from the environment, validated and frozen. */
export interface Config {
  readonly listen: { readonly host: string; readonly port: number };
  /**
   * Where the Prometheus endpoint (plain HTTP, `GET /metrics`) listens;
   * absent: no metrics endpoint and no metrics collected.
   */
  readonly metricsListen: { readonly host: string; readonly port: number } | undefined;
  /** Server processes sharing the listening port (node:cluster); 1: this process serves alone. */
  readonly workers: number;
  readonly dataDir: string;
  /** Absent: an embedded PostgreSQL runs in `<dataDir>/postgres`. */
  readonly databaseUrl: string | undefined;
  readonly databasePoolMax: number;
  /**
   * How long a call waits for a database connection, and then for each
   * query's answer, before failing UNAVAILABLE: a database that stops
   * answering (frozen, cut off) fails calls instead of hanging them.
   */
  readonly databaseTimeoutMs: number;
  /** Schema holding Keyward's tables; absent: the connection's default (usually `public`). */
  readonly databaseSchema: string | undefined;
  /** Absent: dev PKI in `<dataDir>/pki`, created on first run. */
  readonly tls: TlsConfig | undefined;
  /** Absent: dev policy `<dataDir>/policy.yaml`, created on first run. */
  readonly policyFile: string | undefined;
  /** Where the root key is read from; absent: dev root key `<dataDir>/root.key`, created on first run. */
  readonly rootKey: { readonly file: string } | { readonly key: SecretBytes } | undefined;
  readonly logLevel: LogLevel;
  /** How long SIGTERM waits for calls in flight before closing connections. */
  readonly shutdownGraceMs: number;
  readonly audit: {
    /** How long a call waits for its audit event to be durable before failing UNAVAILABLE. */
    readonly timeoutMs: number;
    /** Most events waiting to be written; beyond it calls fail UNAVAILABLE at once. */
    readonly queueMax: number;
    /** Most events per group commit. */
    readonly batchMax: number;
    /** How often the chain head is signed; 0: only on demand (GetAuditCheckpoint). */
    readonly checkpointIntervalMs: number;
  };
  readonly keys: {
    /** Shortest pending window ScheduleKeyDeletion accepts. */
    readonly minPendingWindowMs: number;
    /** How often due rotations and destructions are looked for. */
    readonly schedulerIntervalMs: number;
  };
  readonly secrets: {
    /** How often stored values still on older key versions are looked for and re-encrypted. */
    readonly rewrapIntervalMs: number;
  };
  /** Bounds on what one caller can make a server process hold. */
  readonly limits: {
    /** Largest request message accepted, in bytes; a larger one fails RESOURCE_EXHAUSTED unread. */
    readonly maxMessageBytes: number;
    /** Calls one identity may have in flight at once on a server process; more fail RESOURCE_EXHAUSTED. */
    readonly maxCallsPerIdentity: number;
    /**
     * How long a TLS handshake, a connection without calls, or a call whose
     * request has not fully arrived may stay silent before it is closed.
     */
    readonly idleTimeoutMs: number;
  };
}

/** Thrown for a bad environment; names the variable, never echoes its value. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * Every variable Keyward reads, with its default; README's configuration
 * table and deploy/keyward.env.example are written from this list.
 */
export const ENV_VARS = {
  KEYWARD_LISTEN: "127.0.0.1:8443",
  KEYWARD_METRICS_LISTEN: "(unset: no metrics endpoint)",
  KEYWARD_WORKERS: "1",
  KEYWARD_DATA_DIR: "./.keyward",
  DATABASE_URL: "(unset: embedded PostgreSQL in <data>/postgres)",
  KEYWARD_DB_POOL_MAX: "10",
  KEYWARD_DB_TIMEOUT_MS: "5000",
  KEYWARD_DB_SCHEMA: "(unset: the connection's default schema, usually public)",
  KEYWARD_TLS_CERT: "(unset: dev PKI <data>/pki/server.crt)",
  KEYWARD_TLS_KEY: "(unset: dev PKI <data>/pki/server.key)",
  KEYWARD_TLS_CLIENT_CA: "(unset: dev PKI <data>/pki/ca.crt)",
  KEYWARD_TLS_CRL: "(unset: no CRL)",
  KEYWARD_POLICY_FILE: "(unset: dev policy <data>/policy.yaml)",
  KEYWARD_ROOT_KEY_FILE: "(unset: dev root key <data>/root.key)",
  KEYWARD_ROOT_KEY: "(unset; base64 of 32 bytes, prefer KEYWARD_ROOT_KEY_FILE)",
  KEYWARD_LOG_LEVEL: "info",
  KEYWARD_SHUTDOWN_GRACE_MS: "8000",
  KEYWARD_AUDIT_TIMEOUT_MS: "2000",
  KEYWARD_AUDIT_QUEUE_MAX: "20000",
  KEYWARD_AUDIT_BATCH_MAX: "1000",
  KEYWARD_AUDIT_CHECKPOINT_INTERVAL_MS: "60000",
  KEYWARD_KEY_MIN_PENDING_WINDOW_MS: "86400000",
  KEYWARD_KEY_SCHEDULER_INTERVAL_MS: "30000",
  KEYWARD_SECRET_REWRAP_INTERVAL_MS: "10000",
  KEYWARD_MAX_MESSAGE_BYTES: "4194304",
  KEYWARD_MAX_CALLS_PER_IDENTITY: "256",
  KEYWARD_IDLE_TIMEOUT_MS: "30000",
} as const;

/**
 * Reads the configuration from `env` (default `process.env`). Nothing else in
 * Keyward reads the environment.
 *
 * @throws ConfigError naming the first invalid variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): Config {
  const get = (name: keyof typeof ENV_VARS): string | undefined => {
    const value = env[name]?.trim();
    return value === undefined || value === "" ? undefined : value;
  };
  const path = (name: keyof typeof ENV_VARS): string | undefined => {
    const value = get(name);
    return value === undefined ? undefined : isAbsolute(value) ? value : resolve(cwd, value);
  };
  const integer = (name: keyof typeof ENV_VARS, min: number, max: number): number => {
    const text = get(name) ?? ENV_VARS[name];
    const value = /^\d+$/.test(text) ? Number(text) : NaN;
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      throw new ConfigError(`${name} must be an integer from ${min} to ${max}`);
    }
    return value;
  };

  const listen = parseListen("KEYWARD_LISTEN", get("KEYWARD_LISTEN") ?? ENV_VARS.KEYWARD_LISTEN);
  // Plain HTTP without authentication: it is never on unless asked for, and
  // always at an address the operator wrote down (no default host to guess).
  const metricsText = get("KEYWARD_METRICS_LISTEN");
  const metricsListen = metricsText === undefined ? undefined : parseListen("KEYWARD_METRICS_LISTEN", metricsText);
  if (metricsListen && metricsListen.port !== 0 && metricsListen.port === listen.port && metricsListen.host === listen.host) {
    throw new ConfigError("KEYWARD_METRICS_LISTEN must differ from KEYWARD_LISTEN: metrics are served on a port of their own");
  }

  const databaseUrl = get("DATABASE_URL");
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    throw new ConfigError("DATABASE_URL must be a postgres:// or postgresql:// URL");
  }

  const databaseSchema = get("KEYWARD_DB_SCHEMA");
  if (databaseSchema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(databaseSchema)) {
    throw new ConfigError("KEYWARD_DB_SCHEMA must be a lower-case SQL identifier (a-z, 0-9, _; at most 63)");
  }

  const tlsPaths = {
    certFile: path("KEYWARD_TLS_CERT"),
    keyFile: path("KEYWARD_TLS_KEY"),
    clientCaFile: path("KEYWARD_TLS_CLIENT_CA"),
  };
  const tlsSet = Object.values(tlsPaths).filter((value) => value !== undefined).length;
  if (tlsSet !== 0 && tlsSet !== 3) {
    throw new ConfigError("KEYWARD_TLS_CERT, KEYWARD_TLS_KEY and KEYWARD_TLS_CLIENT_CA must be set together");
  }
  const crlFile = path("KEYWARD_TLS_CRL");
  if (tlsSet === 0 && crlFile !== undefined) {
    throw new ConfigError("KEYWARD_TLS_CRL needs KEYWARD_TLS_CERT, KEYWARD_TLS_KEY and KEYWARD_TLS_CLIENT_CA");
  }

  const rootKeyFile = path("KEYWARD_ROOT_KEY_FILE");
  if (rootKeyFile !== undefined && get("KEYWARD_ROOT_KEY") !== undefined) {
    throw new ConfigError("set only one of KEYWARD_ROOT_KEY_FILE and KEYWARD_ROOT_KEY");
  }

  const logLevel = get("KEYWARD_LOG_LEVEL") ?? ENV_VARS.KEYWARD_LOG_LEVEL;
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new ConfigError(`KEYWARD_LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}`);
  }

  const config: Config = {
    listen,
    metricsListen,
    workers: integer("KEYWARD_WORKERS", 1, 64),
    dataDir: path("KEYWARD_DATA_DIR") ?? resolve(cwd, ENV_VARS.KEYWARD_DATA_DIR),
    databaseUrl,
    databasePoolMax: integer("KEYWARD_DB_POOL_MAX", 1, 500),
    databaseTimeoutMs: integer("KEYWARD_DB_TIMEOUT_MS", 100, 600_000),
    databaseSchema,
    tls:
      tlsSet === 3
        ? {
            certFile: tlsPaths.certFile!,
            keyFile: tlsPaths.keyFile!,
            clientCaFile: tlsPaths.clientCaFile!,
            crlFile,
          }
        : undefined,
    policyFile: path("KEYWARD_POLICY_FILE"),
    rootKey: rootKeyFile ? { file: rootKeyFile } : rootKeyFromEnv(get("KEYWARD_ROOT_KEY")),
    logLevel: logLevel as LogLevel,
    shutdownGraceMs: integer("KEYWARD_SHUTDOWN_GRACE_MS", 0, 60_000),
    audit: {
      timeoutMs: integer("KEYWARD_AUDIT_TIMEOUT_MS", 50, 60_000),
      queueMax: integer("KEYWARD_AUDIT_QUEUE_MAX", 1, 1_000_000),
      batchMax: integer("KEYWARD_AUDIT_BATCH_MAX", 1, 10_000),
      checkpointIntervalMs: integer("KEYWARD_AUDIT_CHECKPOINT_INTERVAL_MS", 0, 86_400_000),
    },
    keys: {
      minPendingWindowMs: integer("KEYWARD_KEY_MIN_PENDING_WINDOW_MS", 1000, 31_536_000_000),
      schedulerIntervalMs: integer("KEYWARD_KEY_SCHEDULER_INTERVAL_MS", 100, 86_400_000),
    },
    secrets: {
      rewrapIntervalMs: integer("KEYWARD_SECRET_REWRAP_INTERVAL_MS", 100, 86_400_000),
    },
    limits: {
      // At least 1 MiB, so that every single-item request at its documented
      // maximum (a 256 KiB plaintext with 64 KiB of associated data) fits.
      maxMessageBytes: integer("KEYWARD_MAX_MESSAGE_BYTES", 1_048_576, 67_108_864),
      maxCallsPerIdentity: integer("KEYWARD_MAX_CALLS_PER_IDENTITY", 1, 100_000),
      idleTimeoutMs: integer("KEYWARD_IDLE_TIMEOUT_MS", 1000, 3_600_000),
    },
  };
  return deepFreeze(config);
}

function rootKeyFromEnv(value: string | undefined): { key: SecretBytes } | undefined {
  if (value === undefined) {
    return undefined;
  }
  // Only base64 here: a 32-character string must not pass as 32 raw key bytes.
  try {
    if (!/^[A-Za-z0-9+/]{43}=$/.test(value)) {
      throw new RootKeyError("not base64");
    }
    return { key: parseRootKey(Buffer.from(value, "latin1")) };
  } catch (err) {
    if (err instanceof RootKeyError) {
      throw new ConfigError("KEYWARD_ROOT_KEY must be the base64 encoding of 32 bytes");
    }
    throw err;
  }
}

function parseListen(
  name: "KEYWARD_LISTEN" | "KEYWARD_METRICS_LISTEN",
  text: string,
): { host: string; port: number } {
  const match = /^(?:\[([0-9a-fA-F:]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    const example = name === "KEYWARD_LISTEN" ? "127.0.0.1:8443 or [::1]:8443" : "127.0.0.1:9464 or [::1]:9464";
    throw new ConfigError(`${name} must be host:port, e.g. ${example} (port 0 picks a free one)`);
  }
  return { host: (match[1] ?? match[2])!, port };
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    Object.values(value).forEach(deepFreeze);
    Object.freeze(value);
  }
  return value;
}
