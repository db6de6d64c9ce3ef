import { access, constants, readFile, stat } from "node:fs/promises";
import { resolve } from "node:path";
import type { Writable } from "node:stream";
import { parseArgs } from "node:util";
import type { Config } from "../config.js";
import { UsageError, withOfflineDatabase } from "./offline-database.js";
import { exportAuditLog, exportAuditLogToFile, type AuditExportSummary } from "./audit-export.js";
import { MAX_SEQUENCE, NoAuditLogError } from "./audit-snapshot.js";
import {
  summarizeVerification,
  verificationJson,
  verifyAuditDatabase,
  verifyAuditFile,
  VerifyUsageError,
  type AuditVerification,
} from "./audit-verify.js";

/** The `audit` lines of `keyward help`. */
export const AUDIT_USAGE = `  audit export                  write the audit log as JSON lines (format: src/tools/audit-export-format.ts);
                                reads DATABASE_URL (+ KEYWARD_DB_SCHEMA), or the embedded database when the
                                server is not running
      --from <n> --to <m>       only sequences n..m (default: all)
      --out <file>              write to <file>, atomically (default: stdout)
  audit verify                  verify the audit hash chain and its signed checkpoints, offline;
                                exit 0 intact, 1 broken, 2 usage error
      --file <file>             verify an export instead of the database
      --public-key <pem-file>   the checkpoint public key you trust (default: the one in the
                                database or file, which proves internal consistency only)
      --from <n> --to <m>       only sequences n..m (default: all)
      --json                    print the result as JSON on stdout (the summary goes to stderr)
`;

/** Where the command writes; the process's streams by default. */
export interface AuditCommandIo {
  readonly stdout: Writable;
  readonly stderr: Writable;
}


/**
 * `keyward audit <export|verify> [options]`: returns the exit code, 0 when
 * done (verify: intact), 1 when the log is broken or the work failed, 2 for
 * a usage error. The configuration is loaded only when the database is
 * needed, so verifying a file needs no environment at all.
 */
export async function auditCommand(
  args: readonly string[],
  config: () => Config,
  io: AuditCommandIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const [action, ...rest] = args;
  try {
    switch (action) {
      case "export":
        return await exportCommand(rest, config, io);
      case "verify":
        return await verifyCommand(rest, config, io);
      default:
        throw new UsageError(action === undefined ? "audit needs export or verify" : `unknown audit command "${action}"`);
    }
  } catch (err) {
    if (err instanceof UsageError || err instanceof VerifyUsageError || err instanceof NoAuditLogError || isParseArgsError(err)) {
      io.stderr.write(`keyward: ${(err as Error).message}\nusage:\n${AUDIT_USAGE}`);
      return 2;
    }
    throw err;
  }
}

async function exportCommand(args: string[], config: () => Config, io: AuditCommandIo): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: { from: { type: "string" }, to: { type: "string" }, out: { type: "string" } },
  });
  const range = parseRange(values.from, values.to);
  const out = values.out === undefined ? undefined : resolve(values.out);
  const summary = await withOfflineDatabase(config(), "keyward-audit", (pool) =>
    out === undefined
      ? exportAuditLog(pool, io.stdout, range)
      : exportAuditLogToFile(pool, out, range),
  );
  io.stderr.write(`${describeExport(summary)} to ${out ?? "stdout"}\n`);
  return 0;
}

async function verifyCommand(args: string[], config: () => Config, io: AuditCommandIo): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      file: { type: "string" },
      "public-key": { type: "string" },
      from: { type: "string" },
      to: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const range = parseRange(values.from, values.to);
  let publicKeyPem: string | undefined;
  if (values["public-key"] !== undefined) {
    const keyFile = resolve(values["public-key"]);
    publicKeyPem = await readFile(keyFile, "utf8").catch(() => {
      throw new UsageError(`cannot read the --public-key file ${keyFile}`);
    });
  }
  const options = { ...range, publicKeyPem };
  let result: AuditVerification;
  if (values.file !== undefined) {
    const file = resolve(values.file);
    const readable = await access(file, constants.R_OK)
      .then(() => stat(file))
      .then((info) => info.isFile())
      .catch(() => false);
    if (!readable) {
      throw new UsageError(`cannot read the --file ${file}`);
    }
    result = await verifyAuditFile(file, options);
  } else {
    result = await withOfflineDatabase(config(), "keyward-audit", (pool) => verifyAuditDatabase(pool, options));
  }
  const summary = `${summarizeVerification(result)}\n`;
  if (values.json) {
    io.stdout.write(`${JSON.stringify(verificationJson(result))}\n`);
    io.stderr.write(summary);
  } else {
    io.stdout.write(summary);
  }
  return result.intact ? 0 : 1;
}

function parseRange(fromText: string | undefined, toText: string | undefined): { from?: bigint; to?: bigint } {
  const parse = (name: string, text: string | undefined, min: bigint): bigint | undefined => {
    if (text === undefined) {
      return undefined;
    }
    const value = /^\d{1,19}$/.test(text) ? BigInt(text) : -1n;
    if (value < min || value > MAX_SEQUENCE) {
      throw new UsageError(`--${name} must be a sequence number from ${min} to ${MAX_SEQUENCE}`);
    }
    return value;
  };
  const from = parse("from", fromText, 1n);
  const to = parse("to", toText, 1n);
  if (to !== undefined && to < (from ?? 1n)) {
    throw new UsageError("--to must not be below --from");
  }
  return { ...(from !== undefined ? { from } : {}), ...(to !== undefined ? { to } : {}) };
}

function describeExport(summary: AuditExportSummary): string {
  const range = summary.firstSequence === undefined ? "" : ` (sequences ${summary.firstSequence}..${summary.lastSequence})`;
  return (
    `exported ${summary.events} event${summary.events === 1n ? "" : "s"}${range}, ` +
    `${summary.checkpoints} checkpoint${summary.checkpoints === 1 ? "" : "s"} and ` +
    `${summary.signingKeys} signing key${summary.signingKeys === 1 ? "" : "s"}`
  );
}

/**
 * Opens the configured database for `fn`: DATABASE_URL, else the embedded
 * cluster in `<data>/postgres`, started for the command and stopped after.
 * Never creates a cluster (an empty new one would verify as an empty log),
 * and refuses to start one that is already running: startEmbeddedPostgres
 * would shut down the running postmaster, i.e. a live server's database.
 */


function isParseArgsError(err: unknown): boolean {
  return err instanceof TypeError && String((err as NodeJS.ErrnoException).code ?? "").startsWith("ERR_PARSE_ARGS_");
}
