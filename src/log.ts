import pino, { type DestinationStream, type Logger } from "pino";
import type { LogLevel } from "./config.js";

/**
 * Paths pino blanks out wherever they appear one or two levels deep. The
 * code never logs request or response messages; these catch a mistake.
 */
export const REDACT_PATHS = [
  "plaintext",
  "*.plaintext",
  "ciphertext",
  "*.ciphertext",
  "associatedData",
  "*.associatedData",
  "payload",
  "*.payload",
  "data",
  "*.data",
  "key",
  "*.key",
  "rootKey",
  "*.rootKey",
  "password",
  "*.password",
  "authorization",
  "*.authorization",
  "connectionString",
  "*.connectionString",
  "databaseUrl",
  "*.databaseUrl",
];

/**
 * stdout, written asynchronously, shared by every logger of the process.
 * pino writes out what is still queued at process.exit, but not the write
 * in flight, which then lands after it or never: `flushLog` must run first.
 */
let stdout: ReturnType<typeof pino.destination> | undefined;

/** The root logger: JSON lines on stdout (or `destination`), with redaction. */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "keyward" },
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? (stdout ??= pino.destination({ dest: 1, sync: false })),
  );
}

/**
 * Resolves once every line logged to stdout so far is written, or after
 * `timeoutMs` (a reader that stopped reading must not hold the exit).
 */
export function flushLog(timeoutMs = 2_000): Promise<void> {
  const stream = stdout;
  if (!stream) return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      stream.off("drain", finish).off("error", finish);
      resolve();
    };
    const timer = setTimeout(finish, timeoutMs);
    // "drain" comes once nothing is queued or in flight; an empty write
    // makes sure one comes even when the stream is idle already.
    stream.once("drain", finish).once("error", finish);
    stream.write("");
  });
}

export type { Logger };
