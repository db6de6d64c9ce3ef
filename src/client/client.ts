import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { isRetryable } from "./retry-policy.js";

/** How the client retries calls that fail UNAVAILABLE (only those retry-policy.ts allows). */
export interface RetryOptions {
  /** Attempts per call, the first included; 1 turns retries off. Default 4. */
  readonly maxAttempts: number;
  /** Pause before the first retry, before jitter, in ms. Default 100. */
  readonly initialBackoffMs: number;
  /** Longest pause between attempts, before jitter, in ms. Default 2000. */
  readonly maxBackoffMs: number;
}

/** Options of {@link createKeywardClient}. */
export interface KeywardClientOptions {
  /**
   * Where Keyward listens: `host:port` or `https://host:port`. Given several
   * (replicas), calls go to each in turn, and a retry goes to the next one.
   */
  readonly address: string | readonly string[];
  /** CA certificates (PEM) the server's certificate must chain to. */
  readonly ca: string | Buffer;
  /** The client certificate chain (PEM): the caller's identity. */
  readonly cert: string | Buffer;
  /** The client certificate's private key (PEM). */
  readonly key: string | Buffer;
  /**
   * Deadline of a unary call that sets no `timeoutMs` of its own, in ms,
   * retries included. Default 10000; 0: none. Streams (TailAuditEvents) get
   * a deadline only from their own `timeoutMs`.
   */
  readonly defaultTimeoutMs?: number;
  /** Retry settings; see {@link RetryOptions} for the defaults. */
  readonly retry?: Partial<RetryOptions>;
  /** Connect interceptors, run for every attempt (so a retried call passes through them again). */
  readonly interceptors?: Interceptor[];
}

/** Typed clients of Keyward's five services over one set of connections. */
export interface KeywardClient {
  readonly keys: Client<typeof KeysService>;
  readonly crypto: Client<typeof CryptoService>;
  readonly secrets: Client<typeof SecretsService>;
  readonly audit: Client<typeof AuditService>;
  readonly access: Client<typeof AccessService>;
  /** Closes every connection: calls in flight and later calls fail CANCELED. */
  close(): void;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_RETRY: RetryOptions = { maxAttempts: 4, initialBackoffMs: 100, maxBackoffMs: 2000 };

/**
 * A Keyward client over gRPC (HTTP/2, mTLS, no compression: the server
 * does not compress either). Unary calls get a default deadline and are
 * retried after UNAVAILABLE when retry-policy.ts says repeating them is
 * safe, with exponential backoff and jitter, within the call's deadline.
 * Per call, `timeoutMs` and `signal` work as in any Connect client.
 */
export function createKeywardClient(options: KeywardClientOptions): KeywardClient {
  const addresses = typeof options.address === "string" ? [options.address] : [...options.address];
  if (addresses.length === 0) {
    throw new Error("createKeywardClient: address is empty");
  }
  const retry = { ...DEFAULT_RETRY, ...options.retry };
  if (!Number.isInteger(retry.maxAttempts) || retry.maxAttempts < 1) {
    throw new Error("createKeywardClient: retry.maxAttempts must be an integer of at least 1");
  }
  const tls = { ca: options.ca, cert: options.cert, key: options.key };
  const sessions: Http2SessionManager[] = [];
  const transports = addresses.map((address) => {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(address) && !address.startsWith("https://")) {
      throw new Error("createKeywardClient: address must be host:port or https://host:port");
    }
    const baseUrl = address.startsWith("https://") ? address : `https://${address}`;
    const sessionManager = new Http2SessionManager(baseUrl, {}, tls);
    sessions.push(sessionManager);
    return createGrpcTransport({ baseUrl, sessionManager, acceptCompression: [], interceptors: options.interceptors ?? [] });
  });
  const transport = spreadingTransport(transports, options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS, retry);
  let closed = false;
  const open = (): Transport => {
    if (closed) {
      throw new ConnectError("the Keyward client is closed", Code.Canceled);
    }
    return transport;
  };
  const guarded: Transport = {
    unary: (...args) => open().unary(...args),
    stream: (...args) => open().stream(...args),
  };
  return {
    keys: createClient(KeysService, guarded),
    crypto: createClient(CryptoService, guarded),
    secrets: createClient(SecretsService, guarded),
    audit: createClient(AuditService, guarded),
    access: createClient(AccessService, guarded),
    close() {
      closed = true;
      for (const session of sessions) {
        session.abort(new ConnectError("the Keyward client is closed", Code.Canceled));
      }
    },
  };
}

/**
 * Sends each call, and each retry, through the next transport in turn.
 * The deadline covers every attempt: each gets what is left of it.
 */
function spreadingTransport(transports: Transport[], defaultTimeoutMs: number, retry: RetryOptions): Transport {
  let turn = 0;
  const next = () => transports[turn++ % transports.length]!;
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      const budget = timeoutMs ?? defaultTimeoutMs;
      const deadline = budget > 0 ? performance.now() + budget : Infinity;
      for (let attempt = 1; ; attempt++) {
        const left = deadline === Infinity ? undefined : Math.max(1, Math.ceil(deadline - performance.now()));
        try {
          return await next().unary(method, signal, left, header, input, contextValues);
        } catch (err) {
          const error = ConnectError.from(err);
          if (error.code !== Code.Unavailable || attempt >= retry.maxAttempts || !isRetryable(method, input)) {
            throw error;
          }
          const pause = backoffMs(attempt, retry);
          // A retry that could not start before the deadline would only turn
          // the real cause into DEADLINE_EXCEEDED.
          if (performance.now() + pause >= deadline) {
            throw error;
          }
          try {
            await sleep(pause, undefined, { signal });
          } catch {
            throw new ConnectError("the call was canceled while waiting to retry", Code.Canceled, undefined, undefined, signal?.reason);
          }
        }
      }
    },
    stream(method, signal, timeoutMs, header, input, contextValues) {
      return next().stream(method, signal, timeoutMs, header, input, contextValues);
    },
  };
}

/**
 * Pause before retry number `retry` (1, 2, …): the cap doubles from
 * initialBackoffMs up to maxBackoffMs, and the pause is drawn uniformly from
 * [cap/2, cap] ("equal jitter"), so clients that failed together do not
 * come back together, yet each still waits at least half the cap.
 */
function backoffMs(retry: number, options: Pick<RetryOptions, "initialBackoffMs" | "maxBackoffMs">): number {
  const cap = Math.min(options.maxBackoffMs, options.initialBackoffMs * 2 ** (retry - 1));
  return cap / 2 + Math.random() * (cap / 2);
}
