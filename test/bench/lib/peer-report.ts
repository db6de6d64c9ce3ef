/**
 * The peer comparison's plan and results (`npm run bench -- --peer kmip`):
 * the lines the Python driver writes, the table they make, and the KMIP
 * server's configuration. Pure.
 */
import { formatCount, formatMs, table } from "./report.js";

/** The peers `--peer` accepts. */
export const PEERS = ["kmip"] as const;
export type Peer = (typeof PEERS)[number];

/**
 * Operations both servers offer, with the same algorithms: AES-256-GCM of
 * 1 KiB (12-byte nonce, 16-byte tag; Keyward's ciphertext also wraps a data
 * key), and RSA-PSS-2048 with SHA-256 over a 32-byte message.
 */
export const PEER_CASE_IDS = ["encrypt-1k", "decrypt-1k", "sign-rsa2048"] as const;

export type PeerTarget = "keyward" | Peer;

/** One measured phase, as drive.py reports it. */
export interface PeerPhase {
  readonly target: PeerTarget;
  readonly caseId: string;
  readonly concurrency: number;
  /** Calls answered rightly that started and ended inside the window. */
  readonly calls: number;
  readonly callsPerSecond: number;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  /** Failed or wrong answers, warm-up included. */
  readonly errors: number;
  readonly firstError: string | null;
  /** CPU of the server's own processes per answered call; null when none was answered. */
  readonly serverCpuUsPerCall: number | null;
}

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const isNumberOrNull = (v: unknown) => v === null || isNumber(v);

/**
 * One line of drive.py's output.
 *
 * @throws Error naming what is wrong, when the line is not such a phase.
 */
export function parsePeerLine(line: string): PeerPhase {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`peer driver: not JSON: ${line.slice(0, 200)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error(`peer driver: a phase line with bad shape: ${line.slice(0, 200)}`);
  }
  const v = value as Record<string, unknown>;
  const problems = [
    !(v.target === "keyward" || (PEERS as readonly unknown[]).includes(v.target)) && "target",
    typeof v.caseId !== "string" && "caseId",
    !(Number.isInteger(v.concurrency) && (v.concurrency as number) > 0) && "concurrency",
    !(Number.isInteger(v.calls) && (v.calls as number) >= 0) && "calls",
    !isNumber(v.callsPerSecond) && "callsPerSecond",
    !isNumberOrNull(v.p50Ms) && "p50Ms",
    !isNumberOrNull(v.p99Ms) && "p99Ms",
    !(Number.isInteger(v.errors) && (v.errors as number) >= 0) && "errors",
    !(v.firstError === null || typeof v.firstError === "string") && "firstError",
    !isNumberOrNull(v.serverCpuUsPerCall) && "serverCpuUsPerCall",
  ].filter(Boolean);
  if (problems.length > 0) {
    throw new Error(`peer driver: a phase line with bad ${problems.join(", ")}: ${line.slice(0, 200)}`);
  }
  return v as unknown as PeerPhase;
}

const CASE_LABELS: Readonly<Record<string, string>> = {
  "encrypt-1k": "Encrypt 1 KiB, AES-256-GCM",
  "decrypt-1k": "Decrypt 1 KiB, AES-256-GCM",
  "sign-rsa2048": "Sign RSA-PSS-2048 SHA-256",
};

const ratio = (a: number | null | undefined, b: number | null | undefined) =>
  a === null || a === undefined || b === null || b === undefined || b === 0 ? "–" : (a / b).toFixed(2);
const ms = (v: number | null | undefined) => (v === null || v === undefined ? "–" : formatMs(v));
const count = (v: number | null | undefined) => (v === null || v === undefined ? "–" : formatCount(v));

/**
 * One row per case and concurrency: both servers' calls/s, p99 and server
 * CPU per call side by side, and Keyward's calls/s and CPU per call over
 * the peer's.
 */
export function peerTable(phases: readonly PeerPhase[], peer: Peer): string {
  const keys = [...new Set(phases.map((p) => `${p.caseId}\u0000${p.concurrency}`))];
  const rows = keys.map((key) => {
    const [caseId, concurrency] = key.split("\u0000") as [string, string];
    const find = (target: PeerTarget) => phases.find((p) => p.target === target && p.caseId === caseId && p.concurrency === Number(concurrency));
    const k = find("keyward");
    const p = find(peer);
    return [
      CASE_LABELS[caseId] ?? caseId,
      concurrency,
      count(k?.callsPerSecond),
      count(p?.callsPerSecond),
      ratio(k?.callsPerSecond, p?.callsPerSecond),
      ms(k?.p99Ms),
      ms(p?.p99Ms),
      count(k?.serverCpuUsPerCall),
      count(p?.serverCpuUsPerCall),
      ratio(k?.serverCpuUsPerCall, p?.serverCpuUsPerCall),
      `${k?.errors ?? "–"} / ${p?.errors ?? "–"}`,
    ];
  });
  const name = PEER_NAMES[peer];
  return table(
    [
      "case",
      "in flight",
      "Keyward calls/s",
      `${name} calls/s`,
      "Keyward ÷ peer",
      "Keyward p99 ms",
      `${name} p99 ms`,
      "Keyward server µs/call",
      `${name} server µs/call`,
      "Keyward ÷ peer µs/call",
      "errors (Keyward / peer)",
    ],
    ["l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r"],
    rows,
  );
}

/** How each peer is named in tables. */
export const PEER_NAMES: Readonly<Record<Peer, string>> = { kmip: "PyKMIP" };

/** Paths the KMIP server is configured with. */
export interface KmipServerPaths {
  readonly certificate: string;
  readonly key: string;
  readonly ca: string;
  readonly policies: string;
  readonly database: string;
}

/**
 * PyKMIP's server.conf: TLS 1.2 with client certificates from the same CA
 * as Keyward's, the ECDHE-ECDSA AES-GCM suites (the dev PKI's keys are
 * P-256), INFO logging (a line per operation, as Keyward's access log).
 */
export function kmipServerConfig(port: number, paths: KmipServerPaths): string {
  for (const [name, value] of Object.entries(paths)) {
    if (/[\r\n]/.test(value)) throw new Error(`KMIP server ${name} path has a line break`);
  }
  return [
    "[server]",
    "hostname=127.0.0.1",
    `port=${port}`,
    `certificate_path=${paths.certificate}`,
    `key_path=${paths.key}`,
    `ca_path=${paths.ca}`,
    "auth_suite=TLS1.2",
    `policy_path=${paths.policies}`,
    "enable_tls_client_auth=True",
    "tls_cipher_suites=",
    "    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "logging_level=INFO",
    `database_path=${paths.database}`,
    "",
  ].join("\n");
}
