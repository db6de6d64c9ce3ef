import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Writable } from "node:stream";
import type pg from "pg";
import { formatCheckpointLine, formatEventLine, formatSigningKeyLine } from "./audit-export-format.js";
import { DEFAULT_PAGE_SIZE, MAX_SEQUENCE, withAuditSnapshot } from "./audit-snapshot.js";

/** What to export; see audit-export-format.ts for the file format. */
export interface AuditExportOptions {
  /** First sequence exported. Default: 1. */
  readonly from?: bigint;
  /** Last sequence exported. Default: no bound (every stored event, including any beyond `audit_head`). */
  readonly to?: bigint;
  /** Rows per database query. Default: 1000. */
  readonly pageSize?: number;
}

/** What an export wrote. */
export interface AuditExportSummary {
  readonly events: bigint;
  /** Sequences of the first and last event written; absent when none was. */
  readonly firstSequence: bigint | undefined;
  readonly lastSequence: bigint | undefined;
  readonly checkpoints: number;
  readonly signingKeys: number;
}

/**
 * Writes the audit log of the database behind `pool` to `out` in the export
 * format (audit-export-format.ts): the events with sequence in `from..to`,
 * the checkpoints with sequence in `from-1..to`, then the signing keys.
 *
 * Guarantees: everything comes from one database snapshot, so a server
 * appending meanwhile cannot make the file inconsistent; events are read
 * page by page and written with backpressure, so memory stays bounded.
 * `out` is not ended: the caller owns it.
 *
 * @throws whatever the database or `out` throws (an export that threw is incomplete).
 */
export async function exportAuditLog(pool: pg.Pool, out: Writable, options: AuditExportOptions = {}): Promise<AuditExportSummary> {
  const from = options.from ?? 1n;
  const to = options.to ?? MAX_SEQUENCE;
  const writer = createLineWriter(out);
  try {
    return await withAuditSnapshot(
      pool,
      async (snapshot) => {
        let events = 0n;
        let firstSequence: bigint | undefined;
        let lastSequence: bigint | undefined;
        for await (const page of snapshot.eventPages(from, to)) {
          await writer.write(page.map(formatEventLine).join(""));
          events += BigInt(page.length);
          firstSequence ??= page[0]!.sequence;
          lastSequence = page.at(-1)!.sequence;
        }
        let checkpoints = 0;
        for await (const checkpoint of snapshot.checkpoints(from - 1n, to)) {
          await writer.write(formatCheckpointLine(checkpoint));
          checkpoints += 1;
        }
        const keys = await snapshot.signingKeys();
        for (const key of keys) {
          await writer.write(formatSigningKeyLine(key));
        }
        await writer.flush();
        return { events, firstSequence, lastSequence, checkpoints, signingKeys: keys.length };
      },
      options.pageSize ?? DEFAULT_PAGE_SIZE,
    );
  } finally {
    writer.release();
  }
}

/**
 * Exports to `path` atomically: the file is written (mode 0600: the log
 * shows who did what) under a temporary name in the same folder, synced,
 * then renamed over `path`, so a failed export never leaves a partial file
 * that could pass for a complete one.
 */
export async function exportAuditLogToFile(pool: pg.Pool, path: string, options: AuditExportOptions = {}): Promise<AuditExportSummary> {
  const temporary = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.partial`);
  const stream = createWriteStream(temporary, { flags: "wx", mode: 0o600 });
  let done = false;
  try {
    await once(stream, "open");
    const summary = await exportAuditLog(pool, stream, options);
    stream.end();
    await once(stream, "close");
    // fsync through a second descriptor: it flushes the file, whichever descriptor wrote it.
    const file = await open(temporary, "r+");
    try {
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
    done = true;
    return summary;
  } finally {
    if (!done) {
      stream.destroy();
      await rm(temporary, { force: true });
    }
  }
}

/** Writes text honouring backpressure, and surfaces the stream's errors (EPIPE…) to the writer. */
function createLineWriter(out: Writable) {
  let failure: Error | undefined;
  const onError = (error: Error) => {
    failure ??= error;
  };
  out.on("error", onError);
  const check = () => {
    if (failure) {
      throw failure;
    }
  };
  return {
    async write(text: string): Promise<void> {
      check();
      if (!out.write(text)) {
        await once(out, "drain");
      }
      check();
    },
    /** Resolves once everything written so far has been handed to the system. */
    async flush(): Promise<void> {
      check();
      await new Promise<void>((resolve, reject) => out.write("", (error) => (error ? reject(error) : resolve())));
    },
    release(): void {
      out.off("error", onError);
    },
  };
}
