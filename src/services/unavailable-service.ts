import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { DomainError } from "../domain/errors.js";

/**
 * An implementation of `service` whose every method fails with the
 * "unavailable" kind and `message`, touching nothing: what the server
 * answers while it cannot serve yet (the database not reachable at
 * start-up), so that callers see UNAVAILABLE (retry later) rather than
 * UNIMPLEMENTED or a refused connection.
 */
export function createUnavailableService<S extends DescService>(service: S, message: string): ServiceImpl<S> {
  const impl: Record<string, unknown> = {};
  for (const method of service.methods) {
    impl[method.localName] =
      method.methodKind === "unary" || method.methodKind === "client_streaming"
        ? () => Promise.reject(new DomainError("unavailable", message))
        : async function* () {
            throw new DomainError("unavailable", message);
          };
  }
  return impl as ServiceImpl<S>;
}
