import { readFileSync, unwatchFile, watchFile } from "node:fs";
import type { SecureContextOptions } from "node:tls";
import type { TlsConfig } from "../config.js";

/**
 * Reads the server's TLS material. Read again on every reload, so a renewed
 * certificate or a new CRL takes effect without a restart.
 *
 * @throws Error naming the file that cannot be read (never its content).
 */
export function loadTlsMaterial(tls: TlsConfig): SecureContextOptions {
  const read = (what: string, file: string) => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new Error(`cannot read ${what} ${file} (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
  };
  return {
    cert: read("server certificate", tls.certFile),
    key: read("server private key", tls.keyFile),
    ca: read("client CA certificate", tls.clientCaFile),
    ...(tls.crlFile ? { crl: read("CRL", tls.crlFile) } : {}),
  };
}

/**
 * Calls `onChange` when any TLS file changes (stat polling every `intervalMs`).
 * Returns a function that stops watching.
 */
export function watchTlsFiles(tls: TlsConfig, onChange: () => void, intervalMs = 1000): () => void {
  const files = [tls.certFile, tls.keyFile, tls.clientCaFile, ...(tls.crlFile ? [tls.crlFile] : [])];
  for (const file of files) {
    watchFile(file, { interval: intervalMs, persistent: false }, onChange);
  }
  return () => files.forEach((file) => unwatchFile(file, onChange));
}
