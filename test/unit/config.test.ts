import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";

const KEY_B64 = Buffer.alloc(32, 7).toString("base64");

describe("loadConfig", () => {
  it("applies documented defaults and freezes the result", () => {
    const config = loadConfig({}, "/srv/app");
    expect(config.listen).toEqual({ host: "127.0.0.1", port: 8443 });
    expect(config.metricsListen).toBeUndefined();
    expect(config.dataDir).toBe("/srv/app/.keyward");
    expect(config.databaseUrl).toBeUndefined();
    expect(config.tls).toBeUndefined();
    expect(config.rootKey).toBeUndefined();
    expect(config.logLevel).toBe("info");
    expect(config.shutdownGraceMs).toBe(8000);
    expect(config.databaseTimeoutMs).toBe(5000);
    expect(config.audit).toEqual({ timeoutMs: 2000, queueMax: 20000, batchMax: 1000, checkpointIntervalMs: 60000 });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.audit)).toBe(true);
    expect(Object.isFrozen(config.listen)).toBe(true);
  });

  it("reads every variable", () => {
    const config = loadConfig(
      {
        KEYWARD_LISTEN: "[::1]:0",
        KEYWARD_METRICS_LISTEN: "127.0.0.1:9464",
        KEYWARD_DATA_DIR: "data",
        DATABASE_URL: "postgres://u@db/keyward",
        KEYWARD_DB_POOL_MAX: "25",
        KEYWARD_TLS_CERT: "/tls/server.crt",
        KEYWARD_TLS_KEY: "/tls/server.key",
        KEYWARD_TLS_CLIENT_CA: "/tls/ca.crt",
        KEYWARD_TLS_CRL: "/tls/ca.crl",
        KEYWARD_POLICY_FILE: "/etc/keyward/policy.yaml",
        KEYWARD_ROOT_KEY_FILE: "/run/secrets/root.key",
        KEYWARD_LOG_LEVEL: "debug",
        KEYWARD_SHUTDOWN_GRACE_MS: "100",
      },
      "/srv",
    );
    expect(config).toMatchObject({
      listen: { host: "::1", port: 0 },
      metricsListen: { host: "127.0.0.1", port: 9464 },
      dataDir: "/srv/data",
      databaseUrl: "postgres://u@db/keyward",
      databasePoolMax: 25,
      tls: { certFile: "/tls/server.crt", keyFile: "/tls/server.key", clientCaFile: "/tls/ca.crt", crlFile: "/tls/ca.crl" },
      policyFile: "/etc/keyward/policy.yaml",
      rootKey: { file: "/run/secrets/root.key" },
      logLevel: "debug",
      shutdownGraceMs: 100,
    });
    expect(Object.isFrozen(config.metricsListen)).toBe(true);
  });

  it("takes a base64 root key from KEYWARD_ROOT_KEY without ever showing it", () => {
    const config = loadConfig({ KEYWARD_ROOT_KEY: KEY_B64 });
    expect(config.rootKey && "key" in config.rootKey && config.rootKey.key.length).toBe(32);
    expect(JSON.stringify(config)).not.toContain(KEY_B64);
    expect(String(config.rootKey && "key" in config.rootKey && config.rootKey.key)).toBe("SecretBytes(32 bytes)");
  });

  it.each([
    [{ KEYWARD_LISTEN: "8443" }, "KEYWARD_LISTEN must be host:port"],
    [{ KEYWARD_LISTEN: "localhost:70000" }, "KEYWARD_LISTEN must be host:port"],
    [{ KEYWARD_METRICS_LISTEN: "9464" }, "KEYWARD_METRICS_LISTEN must be host:port"],
    [{ KEYWARD_METRICS_LISTEN: "metrics.internal:99999" }, "KEYWARD_METRICS_LISTEN must be host:port"],
    [{ KEYWARD_METRICS_LISTEN: "http://127.0.0.1:9464" }, "KEYWARD_METRICS_LISTEN must be host:port"],
    [{ KEYWARD_LISTEN: "127.0.0.1:8443", KEYWARD_METRICS_LISTEN: "127.0.0.1:8443" }, "KEYWARD_METRICS_LISTEN must differ from KEYWARD_LISTEN"],
    [{ DATABASE_URL: "mysql://secret-password@db" }, "DATABASE_URL must be a postgres:// or postgresql:// URL"],
    [{ KEYWARD_DB_POOL_MAX: "0" }, "KEYWARD_DB_POOL_MAX must be an integer from 1 to 500"],
    [{ KEYWARD_DB_POOL_MAX: "ten" }, "KEYWARD_DB_POOL_MAX must be an integer from 1 to 500"],
    [{ KEYWARD_DB_TIMEOUT_MS: "99" }, "KEYWARD_DB_TIMEOUT_MS must be an integer from 100 to 600000"],
    [{ KEYWARD_TLS_CERT: "/a" }, "KEYWARD_TLS_CERT, KEYWARD_TLS_KEY and KEYWARD_TLS_CLIENT_CA must be set together"],
    [{ KEYWARD_TLS_CRL: "/crl" }, "KEYWARD_TLS_CRL needs"],
    [{ KEYWARD_ROOT_KEY: "not-a-key-but-a-secret-0123456789ab" }, "KEYWARD_ROOT_KEY must be the base64 encoding of 32 bytes"],
    [{ KEYWARD_ROOT_KEY: "abcdefghijklmnopqrstuvwxyz012345" }, "KEYWARD_ROOT_KEY must be the base64 encoding of 32 bytes"],
    [{ KEYWARD_ROOT_KEY: KEY_B64, KEYWARD_ROOT_KEY_FILE: "/k" }, "set only one of KEYWARD_ROOT_KEY_FILE and KEYWARD_ROOT_KEY"],
    [{ KEYWARD_LOG_LEVEL: "loud" }, "KEYWARD_LOG_LEVEL must be one of"],
    [{ KEYWARD_SHUTDOWN_GRACE_MS: "-1" }, "KEYWARD_SHUTDOWN_GRACE_MS must be an integer from 0 to 60000"],
    [{ KEYWARD_AUDIT_TIMEOUT_MS: "10" }, "KEYWARD_AUDIT_TIMEOUT_MS must be an integer from 50 to 60000"],
    [{ KEYWARD_AUDIT_QUEUE_MAX: "0" }, "KEYWARD_AUDIT_QUEUE_MAX must be an integer from 1 to 1000000"],
    [{ KEYWARD_AUDIT_BATCH_MAX: "1e3" }, "KEYWARD_AUDIT_BATCH_MAX must be an integer from 1 to 10000"],
    [{ KEYWARD_DB_SCHEMA: "Robert'); DROP TABLE" }, "KEYWARD_DB_SCHEMA must be a lower-case SQL identifier"],
  ])("refuses %j, naming the variable and not echoing the value", (env, message) => {
    let error: unknown;
    try {
      loadConfig(env);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const text = (error as Error).message;
    expect(text).toContain(message);
    for (const value of Object.values(env)) {
      if (value.length > 4) {
        expect(text).not.toContain(value);
      }
    }
  });
});
