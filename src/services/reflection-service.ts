import { toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import type { ServerReflection as ServerReflectionV1Alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

// gRPC status codes used in error_response, as the reflection protocol specifies.
const NOT_FOUND = 5;
const INVALID_ARGUMENT = 3;

/** Indexes of the schema served by reflection, built once at start. */
interface SchemaIndex {
  readonly services: readonly string[];
  readonly fileByName: ReadonlyMap<string, DescFile>;
  readonly fileBySymbol: ReadonlyMap<string, DescFile>;
  /** `extendee type name` → extension field numbers. */
  readonly extensions: ReadonlyMap<string, ReadonlyMap<number, DescFile>>;
}

function indexSchema(services: readonly DescService[]): SchemaIndex {
  const fileByName = new Map<string, DescFile>();
  const fileBySymbol = new Map<string, DescFile>();
  const extensions = new Map<string, Map<number, DescFile>>();
  const visit = (file: DescFile) => {
    if (fileByName.has(file.proto.name)) {
      return;
    }
    fileByName.set(file.proto.name, file);
    for (const type of nestedTypes(file)) {
      fileBySymbol.set(type.typeName, file);
      if (type.kind === "service") {
        type.methods.forEach((method) => fileBySymbol.set(`${type.typeName}.${method.name}`, file));
      }
      if (type.kind === "extension") {
        const numbers = extensions.get(type.extendee.typeName) ?? new Map<number, DescFile>();
        numbers.set(type.number, file);
        extensions.set(type.extendee.typeName, numbers);
      }
    }
    file.dependencies.forEach(visit);
  };
  services.forEach((service) => visit(service.file));
  return { services: services.map((service) => service.typeName), fileByName, fileBySymbol, extensions };
}

/** The file and everything it imports, transitively, dependencies first, each once. */
function withDependencies(file: DescFile): Uint8Array[] {
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  const add = (f: DescFile) => {
    if (seen.has(f.proto.name)) {
      return;
    }
    seen.add(f.proto.name);
    f.dependencies.forEach(add);
    out.push(toBinary(FileDescriptorProtoSchema, f.proto));
  };
  add(file);
  // The requested file first: clients take the first entry as the answer.
  const requested = out.pop()!;
  return [requested, ...out];
}

type ReflectionService = typeof ServerReflectionV1 | typeof ServerReflectionV1Alpha;

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha share one wire
 * shape), so `buf curl` and grpcurl work without the protos. Serves the
 * descriptors compiled into gen/, including their imports.
 */
export function createReflectionService<S extends ReflectionService>(
  _service: S,
  served: readonly DescService[],
): ServiceImpl<S> {
  const index = indexSchema(served);
  const impl: ServiceImpl<typeof ServerReflectionV1> = {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        const ask = request.messageRequest;
        const notFound = (what: string) => ({
          case: "errorResponse" as const,
          value: { errorCode: NOT_FOUND, errorMessage: `${what} not found` },
        });
        const files = (file: DescFile | undefined, what: string) =>
          file
            ? { case: "fileDescriptorResponse" as const, value: { fileDescriptorProto: withDependencies(file) } }
            : notFound(what);
        let messageResponse;
        switch (ask.case) {
          case "listServices":
            messageResponse = {
              case: "listServicesResponse" as const,
              value: { service: index.services.map((name) => ({ name })) },
            };
            break;
          case "fileByFilename":
            messageResponse = files(index.fileByName.get(ask.value), `file ${ask.value}`);
            break;
          case "fileContainingSymbol":
            messageResponse = files(index.fileBySymbol.get(ask.value), `symbol ${ask.value}`);
            break;
          case "fileContainingExtension":
            messageResponse = files(
              index.extensions.get(ask.value.containingType)?.get(ask.value.extensionNumber),
              `extension ${ask.value.containingType}/${ask.value.extensionNumber}`,
            );
            break;
          case "allExtensionNumbersOfType": {
            const numbers = index.extensions.get(ask.value);
            messageResponse =
              numbers || index.fileBySymbol.has(ask.value)
                ? {
                    case: "allExtensionNumbersResponse" as const,
                    value: { baseTypeName: ask.value, extensionNumber: [...(numbers?.keys() ?? [])] },
                  }
                : notFound(`type ${ask.value}`);
            break;
          }
          default:
            messageResponse = {
              case: "errorResponse" as const,
              value: { errorCode: INVALID_ARGUMENT, errorMessage: "empty reflection request" },
            };
        }
        yield { validHost: request.host, originalRequest: request, messageResponse };
      }
    },
  };
  return impl as unknown as ServiceImpl<S>;
}
