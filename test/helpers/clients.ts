import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import type { ClientCredentials } from "./keyward.js";

/** A connect-node client over the given protocol, with mTLS. */
export function connectClient<S extends DescService>(
  service: S,
  url: string,
  credentials: Partial<ClientCredentials>,
  protocol: "grpc" | "grpc-web" | "connect" | "connect-http1" = "grpc",
): Client<S> {
  const nodeOptions = { ca: credentials.ca, cert: credentials.cert, key: credentials.key };
  let transport: Transport;
  switch (protocol) {
    case "grpc":
      transport = createGrpcTransport({ baseUrl: url, nodeOptions });
      break;
    case "grpc-web":
      transport = createGrpcWebTransport({ baseUrl: url, httpVersion: "2", nodeOptions });
      break;
    case "connect":
      transport = createConnectTransport({ baseUrl: url, httpVersion: "2", nodeOptions });
      break;
    case "connect-http1":
      transport = createConnectTransport({ baseUrl: url, httpVersion: "1.1", nodeOptions });
      break;
  }
  return createClient(service, transport);
}

/** A client of every service Keyward serves, sharing one gRPC connection with mTLS. */
export function serviceClients(url: string, credentials: ClientCredentials) {
  const transport = createGrpcTransport({ baseUrl: url, nodeOptions: credentials });
  return {
    keys: createClient(KeysService, transport),
    crypto: createClient(CryptoService, transport),
    secrets: createClient(SecretsService, transport),
    access: createClient(AccessService, transport),
    audit: createClient(AuditService, transport),
    health: createClient(Health, transport),
  };
}

export type ServiceClients = ReturnType<typeof serviceClients>;

type UnaryStubs<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends { input: infer I extends DescMessage; output: infer O extends DescMessage }
    ? (request: MessageInitShape<I>) => Promise<MessageShape<O>>
    : never;
};

/**
 * A typed @grpc/grpc-js client built from the same protobuf-es descriptors
 * the server uses: method paths, streaming kinds and (de)serializers all
 * come from the descriptor, so stubs and server cannot drift apart.
 * Unary methods only, promise-based.
 *
 * `encodeOnce`: a request message sent again as the same object is sent as
 * the bytes it was encoded to the first time (a load generator's requests
 * are built once and never changed, and encoding 256 KiB per call would be
 * load-generator work measured as if it were the server's).
 * `channelOptions` are added to grpc-js's, e.g. flow-control windows.
 */
export function grpcJsClient<S extends DescService>(
  service: S,
  address: string,
  credentials: ClientCredentials,
  options: { encodeOnce?: boolean; channelOptions?: grpc.ChannelOptions } = {},
): { stubs: UnaryStubs<S>; close(): void } {
  const definition: Record<string, grpc.MethodDefinition<any, any>> = {};
  const encoded = new WeakMap<object, Buffer>();
  for (const method of service.methods) {
    const encode = (message: MessageShape<DescMessage>) => Buffer.from(toBinary(method.input, message));
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: options.encodeOnce
        ? (message: MessageShape<DescMessage>) => {
            let bytes = encoded.get(message);
            if (bytes === undefined) {
              bytes = encode(message);
              encoded.set(message, bytes);
            }
            return bytes;
          }
        : encode,
      requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
      responseSerialize: (message: MessageShape<DescMessage>) => Buffer.from(toBinary(method.output, message)),
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
    };
  }
  const Constructor = grpc.makeGenericClientConstructor(definition as grpc.ServiceDefinition, service.name);
  const client = new Constructor(
    address,
    grpc.credentials.createSsl(credentials.ca, credentials.key, credentials.cert),
    { ...options.channelOptions, "grpc.use_local_subchannel_pool": 1 },
  ) as unknown as grpc.Client & Record<string, Function>;
  const stubs: Record<string, unknown> = {};
  for (const method of service.methods) {
    if (method.methodKind !== "unary") {
      continue;
    }
    stubs[method.localName] = (request: MessageInitShape<DescMessage>) =>
      new Promise((resolve, reject) => {
        client[method.localName]!.call(client, create(method.input, request), (err: grpc.ServiceError | null, res: unknown) =>
          err ? reject(err) : resolve(res),
        );
      });
  }
  return { stubs: stubs as UnaryStubs<S>, close: () => client.close() };
}
