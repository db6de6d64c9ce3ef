/**
 * A load process of the bench (forked by bench.ts; not run by hand). It opens
 * its own connections with @grpc/grpc-js — each client its own subchannel
 * pool, hence its own HTTP/2 connection — and, for each phase the bench
 * sends, keeps its share of the calls in flight until the window ends.
 */
import { status as Status, type ServiceError } from "@grpc/grpc-js";
import { Health } from "../../../gen/grpc/health/v1/health_pb.js";
import { CryptoService } from "../../../gen/keyward/v1/crypto_pb.js";
import { SecretsService } from "../../../gen/keyward/v1/secrets_pb.js";
import { grpcJsClient } from "../../helpers/clients.js";
import { createOperation, WrongAnswer, type ConnectionStubs } from "./operations.js";
import { monotonicMs, type Credentials, type Fixtures, type FromLoad, type ToLoad } from "./protocol.js";

/** Calls still unanswered this long after the window are reported as hung (an error) rather than awaited. */
const STALL_MS = 30_000;

/**
 * Requests are encoded once (operations.ts builds each once) and answers may
 * use a 4 MiB flow-control window: a BatchEncrypt answer of 280 KiB then
 * arrives without waiting for WINDOW_UPDATEs, as with gRPC's C and Go
 * clients, which size their windows to the connection.
 */
const CLIENT_OPTIONS = { encodeOnce: true, channelOptions: { "grpc-node.flow_control_window": 4 << 20 } };

const send = (message: FromLoad) => process.send!(message);

let connections: ConnectionStubs[] = [];
let closers: Array<() => void> = [];
let fixtures: Fixtures | undefined;

function connect(address: string, credentials: Credentials, count: number, data: Fixtures): void {
  const creds = { ca: Buffer.from(credentials.ca), cert: Buffer.from(credentials.cert), key: Buffer.from(credentials.key) };
  fixtures = data;
  connections = Array.from({ length: count }, () => {
    const health = grpcJsClient(Health, address, creds, CLIENT_OPTIONS);
    const crypto = grpcJsClient(CryptoService, address, creds, CLIENT_OPTIONS);
    const secrets = grpcJsClient(SecretsService, address, creds, CLIENT_OPTIONS);
    closers.push(health.close, crypto.close, secrets.close);
    return { health: health.stubs, crypto: crypto.stubs, secrets: secrets.stubs };
  });
}

function errorName(err: unknown): string {
  if (err instanceof WrongAnswer) return "wrong answer";
  const code = (err as Partial<ServiceError>).code;
  return code === undefined ? "exception" : (Status[code] ?? String(code));
}

async function run(message: Extract<ToLoad, { type: "run" }>): Promise<FromLoad> {
  const { caseIds, slots, firstSlot, startAtMs, endAtMs } = message;
  // One operation per case and connection: requests are built once, not per call.
  const operations = connections.map((stubs) => caseIds.map((id) => createOperation(id, stubs, fixtures!)));
  const latencies: number[] = [];
  const errorCodes: Record<string, number> = {};
  let answered = 0;
  let errors = 0;
  let firstError: string | undefined;
  let inFlight = 0;

  const slot = async (index: number) => {
    const own = operations[index % operations.length]!;
    let turn = index;
    while (monotonicMs() < endAtMs) {
      const op = own[turn++ % own.length]!;
      const t0 = monotonicMs();
      inFlight++;
      try {
        await op(firstSlot + index);
        answered++;
        const t1 = monotonicMs();
        if (t1 >= startAtMs && t1 <= endAtMs) latencies.push(t1 - t0);
      } catch (err) {
        errors++;
        const name = errorName(err);
        errorCodes[name] = (errorCodes[name] ?? 0) + 1;
        firstError ??= `${name}: ${(err as Error).message}`;
      } finally {
        inFlight--;
      }
    }
  };

  let stallTimer: NodeJS.Timeout | undefined;
  const stalled = new Promise<"stalled">((resolve) => {
    stallTimer = setTimeout(() => resolve("stalled"), Math.max(0, endAtMs - monotonicMs()) + STALL_MS);
  });
  const outcome = await Promise.race([Promise.all(Array.from({ length: slots }, (_, i) => slot(i))), stalled]);
  clearTimeout(stallTimer);
  if (outcome === "stalled") {
    errors += inFlight;
    errorCodes.hung = (errorCodes.hung ?? 0) + inFlight;
    firstError ??= `hung: ${inFlight} calls unanswered ${STALL_MS / 1000} s after the window`;
  }
  return {
    type: "result",
    phase: message.phase,
    calls: latencies.length,
    answered,
    errors,
    errorCodes,
    firstError,
    latenciesMs: Float64Array.from(latencies).sort(),
  };
}

process.on("message", (message: ToLoad) => {
  switch (message.type) {
    case "connect":
      connect(message.address, message.credentials, message.connections, message.fixtures);
      send({ type: "ready" });
      return;
    case "run":
      run(message).then(send, (err: unknown) => send({ type: "failed", message: (err as Error).stack ?? String(err) }));
      return;
    case "close":
      for (const close of closers) close();
      closers = [];
      connections = [];
      process.disconnect();
      return;
  }
});
// The bench is gone (killed, or done without saying so): nothing left to do.
process.on("disconnect", () => process.exit(0));
send({ type: "started" });
