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
    destination,
  );
}

export type { Logger };
