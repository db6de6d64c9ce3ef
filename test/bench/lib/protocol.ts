/** Messages between the bench and its load processes (IPC, structured clone), and their shared clock. */

/**
 * Milliseconds on the machine's monotonic clock (CLOCK_MONOTONIC on Linux,
 * which V8's CPU profiles also use): the same in every process, so the bench
 * can give all load processes one window to measure in.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Keys, secrets and prepared inputs the cases use; made once by the bench. */
export interface Fixtures {
  /** `keys/…` names. */
  readonly keys: {
    readonly aes: string;
    /** ReEncrypt's destination. */
    readonly aesOther: string;
    readonly ed25519: string;
    readonly p256: string;
    readonly rsa2048: string;
    readonly hmac: string;
  };
  /** Random plaintexts by size id ("32b", "1k", "64k"). */
  readonly plaintexts: Readonly<Record<string, Uint8Array>>;
  /** Each plaintext encrypted under keys.aes. */
  readonly ciphertexts: Readonly<Record<string, Uint8Array>>;
  /** The 32-byte message signed. */
  readonly message: Uint8Array;
  /** Its signature by each signing key, by key name. */
  readonly signatures: Readonly<Record<string, Uint8Array>>;
  /** A secret holding one 1 KiB version. */
  readonly readSecret: string;
  /** Secrets AddSecretVersion writes to, one per slot (slot modulo their number). */
  readonly writeSecrets: readonly string[];
}

export interface Credentials {
  readonly ca: Uint8Array;
  readonly cert: Uint8Array;
  readonly key: Uint8Array;
}

export type ToLoad =
  | {
      readonly type: "connect";
      readonly address: string;
      readonly credentials: Credentials;
      /** Connections per service client kind. */
      readonly connections: number;
      readonly fixtures: Fixtures;
    }
  | {
      readonly type: "run";
      readonly phase: number;
      /** Each slot calls these in turn (one id for a measured phase, several for the server warm-up). */
      readonly caseIds: readonly string[];
      /** Calls this process keeps in flight. */
      readonly slots: number;
      /** Number of this process's first slot among all processes' (slots are numbered across processes). */
      readonly firstSlot: number;
      /** Calls start at once; those ending within [startAtMs, endAtMs] are counted. No call starts after endAtMs. */
      readonly startAtMs: number;
      readonly endAtMs: number;
    }
  | { readonly type: "close" };

export type FromLoad =
  /** Sent once, unasked, when the process listens for messages. */
  | { readonly type: "started" }
  /** The answer to "connect". */
  | { readonly type: "ready" }
  | {
      readonly type: "result";
      readonly phase: number;
      /** Answered correctly within the window. */
      readonly calls: number;
      /** Answered correctly at any time during the phase: 0 means the case was never exercised. */
      readonly answered: number;
      /** Failed or answered wrongly at any time during the phase, warm-up included. */
      readonly errors: number;
      readonly errorCodes: Readonly<Record<string, number>>;
      readonly firstError: string | undefined;
      /** Of the counted calls, ascending. */
      readonly latenciesMs: Float64Array;
    }
  | { readonly type: "failed"; readonly message: string };
