import cluster from "node:cluster";
import { mkdir, writeFile } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import { DRAINING_MESSAGE, READY_MESSAGE, SHUTDOWN_MESSAGE } from "./cluster.js";
import { ConfigError, loadConfig, type Config } from "./config.js";
import { DEV_CLIENTS, issueCertificate, loadDevCertificateAuthority } from "./dev/pki.js";
import { createLogger, flushLog } from "./log.js";
import type { RunningKeyward } from "./main.js";
import { migrate } from "./storage/pg/migrate.js";
import { runningPostmaster, startEmbeddedPostgres } from "./storage/pg/embedded.js";
import { AUDIT_USAGE, auditCommand } from "./tools/audit-command.js";
import { DOCTOR_USAGE, doctorCommand } from "./tools/doctor-command.js";
import { ROOT_KEY_USAGE, rootKeyCommand } from "./tools/root-key-command.js";

const USAGE = `usage: keyward <command> [options]

commands:
  serve                         start the server (the default); configured by environment, see README
  migrate                       apply database migrations and exit (DATABASE_URL, or the embedded database)
  dev-pki issue <name>          issue a client certificate from the dev CA in <data>/pki
      --spiffe-id <uri>         put this SPIFFE ID in the certificate (default: spiffe://keyward.local/<name>)
      --cn-only                 no SPIFFE ID: the identity is the subject CN <name>
      --days <n>                validity in days (default 825)
      --out <dir>               where to write <name>.crt and <name>.key (default <data>/pki)
${AUDIT_USAGE}${ROOT_KEY_USAGE}${DOCTOR_USAGE}  help                          this text
`;

async function main(argv: string[]): Promise<number> {
  const [command = "serve", ...rest] = argv;
  switch (command) {
    case "serve":
      return serve(loadConfig());
    case "migrate":
      return migrateCommand(loadConfig());
    case "dev-pki":
      return devPki(loadConfig(), rest);
    case "audit":
      return auditCommand(rest, () => loadConfig());
    case "root-key":
      return rootKeyCommand(rest, () => loadConfig());
    case "doctor":
      return doctorCommand(rest, () => loadConfig());
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return 0;
    default:
      process.stderr.write(`keyward: unknown command "${command}"\n${USAGE}`);
      return 2;
  }
}

async function serve(config: Config): Promise<number> {
  const root = createLogger(config.logLevel);
  const log = cluster.isWorker ? root.child({ worker: cluster.worker!.id }) : root;
  // Listen for signals before starting, so that one arriving during start-up
  // still stops everything started (the embedded database included).
  let signalled: string | undefined;
  let wake = () => {};
  const stopped = new Promise<void>((resolve) => (wake = resolve));
  const stop = (reason: string) => {
    if (!signalled) {
      signalled = reason;
      wake();
    }
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled && !cluster.isWorker) {
      log.warn({ signal }, "second signal: exiting without draining");
      void flushLog(500).then(() => process.exit(1));
    }
    stop(signal);
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  if (cluster.isWorker) {
    process.on("message", (message) => message === SHUTDOWN_MESSAGE && stop("supervisor"));
    // The supervisor is gone: nobody would replace or stop this worker.
    process.on("disconnect", () => stop("supervisor exited"));
  }

  if (cluster.isPrimary && config.workers > 1) {
    try {
      const { superviseWorkers } = await import("./cluster.js");
      return await superviseWorkers(config, log, stopped, (started) => {
        if (started.development && !signalled) process.stderr.write(banner(config, started));
      });
    } catch (err) {
      log.fatal({ error: (err as Error).message }, "keyward failed to start");
      return 1;
    }
  }

  let running: RunningKeyward;
  // A stop while start-up still waits for the database ends the wait.
  const starting = new AbortController();
  void stopped.then(() => starting.abort());
  try {
    // Loaded here so that the other commands do not load the whole server.
    const { startKeyward } = await import("./main.js");
    running = await startKeyward(config, log, { signal: starting.signal });
  } catch (err) {
    if (starting.signal.aborted && (err as Error).name === "AbortError") {
      log.info({ signal: signalled }, "stopped before the database was reachable");
      return 0;
    }
    log.fatal({ error: (err as Error).message }, "keyward failed to start");
    return 1;
  }
  // A worker's readiness is answered by the supervisor's GET /readyz.
  const tellSupervisor = (message: string) => cluster.isWorker && process.connected && process.send!(message);
  tellSupervisor(READY_MESSAGE);
  if (running.development && !signalled && cluster.isPrimary) {
    process.stderr.write(banner(config, running));
  }
  await stopped;
  tellSupervisor(DRAINING_MESSAGE);
  log.info({ signal: signalled, graceMs: config.shutdownGraceMs }, "shutting down: draining calls in flight");
  try {
    await running.close();
  } catch (err) {
    log.error({ error: (err as Error).message }, "error while shutting down");
    return 1;
  }
  log.info("stopped");
  return 0;
}

function banner(config: Config, running: Pick<RunningKeyward, "address">): string {
  const path = (file: string) => {
    const rel = relative(process.cwd(), file);
    return rel.startsWith("..") ? file : rel;
  };
  const pki = join(config.dataDir, "pki");
  const host = running.address.family === "IPv6" ? `[${running.address.address}]` : running.address.address;
  const url = `https://${host}:${running.address.port}`;
  const client = (name: string) => `--cert ${path(join(pki, `${name}.crt`))} --key ${path(join(pki, `${name}.key`))}`;
  return `
  ================================================================================
   Keyward is running at ${url} with DEVELOPMENT defaults:
   dev PKI, dev policy and dev root key in ${path(config.dataDir)}${config.databaseUrl ? "" : ", embedded PostgreSQL"}.
   NOT FOR PRODUCTION. See README for the variables that replace them.

   Try it (identities: ${DEV_CLIENTS.join(", ")}):

     npx buf curl --cacert ${path(join(pki, "ca.crt"))} ${client("admin")} \\
       ${url}/keyward.v1.AccessService/GetCallerIdentity
  ================================================================================

`;
}

async function migrateCommand(config: Config): Promise<number> {
  const log = createLogger(config.logLevel);
  const embeddedDir = join(config.dataDir, "postgres");
  const pid = config.databaseUrl ? undefined : await runningPostmaster(embeddedDir);
  if (pid !== undefined) {
    // A running server has already applied the migrations; starting the
    // cluster here would stop its database.
    process.stderr.write(`keyward: the embedded PostgreSQL in ${embeddedDir} is running (pid ${pid}); a running server migrates at start\n`);
    return 1;
  }
  const embedded = config.databaseUrl ? undefined : await startEmbeddedPostgres({ dataDir: embeddedDir, log: (m) => log.debug(m) });
  try {
    const applied = await migrate({
      connectionString: config.databaseUrl ?? embedded!.connectionString,
      schema: config.databaseSchema,
      log: (message) => log.info({ component: "migrate" }, message),
    });
    log.info({ migrations: applied }, applied.length > 0 ? "migrations applied" : "database is up to date");
    return 0;
  } finally {
    await embedded?.stop();
  }
}

async function devPki(config: Config, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      "spiffe-id": { type: "string" },
      "cn-only": { type: "boolean", default: false },
      days: { type: "string", default: "825" },
      out: { type: "string" },
    },
  });
  const [action, name] = positionals;
  if (action !== "issue" || !name || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
    process.stderr.write(`keyward: dev-pki issue <name> (letters, digits, . _ -)\n${USAGE}`);
    return 2;
  }
  const days = Number(values.days);
  if (!Number.isInteger(days) || days < 1 || days > 3650) {
    process.stderr.write("keyward: --days must be an integer from 1 to 3650\n");
    return 2;
  }
  const spiffeId = values["cn-only"] ? undefined : (values["spiffe-id"] ?? `spiffe://keyward.local/${name}`);
  if (spiffeId !== undefined && !/^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(spiffeId)) {
    process.stderr.write("keyward: --spiffe-id must be spiffe://<trust-domain>/<path>\n");
    return 2;
  }
  const pkiDir = join(config.dataDir, "pki");
  const ca = await loadDevCertificateAuthority(pkiDir).catch(() => undefined);
  if (!ca) {
    process.stderr.write(`keyward: no dev CA in ${pkiDir}; run \`npm start\` once to create it\n`);
    return 1;
  }
  const issued = await issueCertificate(ca, { commonName: name, usage: "client", spiffeId, days });
  const out = resolve(values.out ?? pkiDir);
  await mkdir(out, { recursive: true, mode: 0o700 });
  await writeFile(join(out, `${name}.key`), issued.keyPem, { mode: 0o600 });
  await writeFile(join(out, `${name}.crt`), issued.certPem, { mode: 0o644 });
  process.stdout.write(
    `issued ${join(out, `${name}.crt`)} and ${join(out, `${name}.key`)}\n` +
      `identity: ${spiffeId ?? name} (${spiffeId ? "SPIFFE ID" : "subject CN"}); grant it roles in the policy file\n`,
  );
  return 0;
}

main(process.argv.slice(2)).then(
  async (code) => {
    await flushLog();
    process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`keyward: ${err instanceof ConfigError ? err.message : (err as Error).message}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  },
);
