import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/grpc/health/v1/health_pb.js";

/** The serving status shared by Check and Watch; changes wake every watcher. */
export interface HealthStatus {
  get(): Status;
  set(status: Status): void;
  /** Resolves at the next change, or when `signal` aborts. */
  changed(signal: AbortSignal): Promise<void>;
}

export function createHealthStatus(initial: Status): HealthStatus {
  let status = initial;
  let waiters: Array<() => void> = [];
  return {
    get: () => status,
    set(next) {
      if (next !== status) {
        status = next;
        const woken = waiters;
        waiters = [];
        woken.forEach((wake) => wake());
      }
    },
    changed(signal) {
      return new Promise((resolve) => {
        if (signal.aborted) {
          return resolve();
        }
        const done = () => {
          signal.removeEventListener("abort", done);
          resolve();
        };
        waiters.push(done);
        signal.addEventListener("abort", done, { once: true });
      });
    },
  };
}

/**
 * grpc.health.v1: the empty service name and every served service report
 * one status (SERVING while the server is up and PostgreSQL answers);
 * unknown names are NOT_FOUND, as the protocol asks. Watch streams end when
 * the server starts draining, so they never hold a shutdown up.
 */
export function createHealthService(
  status: HealthStatus,
  services: readonly string[],
  draining: AbortSignal,
): ServiceImpl<typeof Health> {
  const known = new Set(["", ...services]);
  const check = (service: string) => {
    if (!known.has(service)) {
      throw new ConnectError(`unknown service ${service}`, Code.NotFound);
    }
  };
  return {
    check(request) {
      check(request.service);
      return { status: status.get() };
    },
    list() {
      const statuses: Record<string, { status: Status }> = {};
      for (const service of known) {
        statuses[service] = { status: status.get() };
      }
      return { statuses };
    },
    async *watch(request, context) {
      if (!known.has(request.service)) {
        yield { status: Status.SERVICE_UNKNOWN };
        return;
      }
      const signal = AbortSignal.any([context.signal, draining]);
      let last: Status | undefined;
      while (true) {
        const current = draining.aborted ? Status.NOT_SERVING : status.get();
        if (current !== last) {
          last = current;
          yield { status: current };
        }
        if (signal.aborted) {
          return;
        }
        await status.changed(signal);
      }
    },
  };
}
