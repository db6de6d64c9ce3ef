import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { GRPC_CODE_NAMES } from "../../src/server/interceptors/metrics.js";
import { REPO_ROOT } from "./keyward-process.js";

/** gRPC status code names as the protos write them (CANCELED with one L too, as in keys.proto). */
const CODE_NAMES = new Set([...GRPC_CODE_NAMES, "CANCELED"]);

/**
 * The codes each RPC's comment in `proto/keyward/v1/*.proto` says it
 * returns (its "Returns:" paragraph), by `package.Service/Method`; "the same
 * codes as X" is followed. Streaming RPCs, whose comments describe how the
 * stream ends, get OK added. The codes every RPC may return (keys.proto's
 * header) are not included: callers add the ones they expect.
 */
export function documentedCodes(protoDir = join(REPO_ROOT, "proto/keyward/v1")): Map<string, Set<string>> {
  const codes = new Map<string, Set<string>>();
  const sameAs = new Map<string, string>();
  for (const file of readdirSync(protoDir).filter((name) => name.endsWith(".proto"))) {
    const text = readFileSync(join(protoDir, file), "utf8");
    const pkg = /^package ([\w.]+);/m.exec(text)![1]!;
    for (const service of text.matchAll(/^service (\w+) \{([\s\S]*?)^\}/gm)) {
      for (const rpc of service[2]!.matchAll(/((?:^[ \t]*\/\/.*\n)+)[ \t]*rpc (\w+)\((?:stream )?[\w.]+\) returns \((stream )?/gm)) {
        const comment = rpc[1]!
          .split("\n")
          .map((line) => line.replace(/^\s*\/\/\s?/, ""))
          .join(" ");
        const key = `${pkg}.${service[1]}/${rpc[2]}`;
        const returns = /Returns:(.*)$/s.exec(comment)?.[1] ?? "";
        const reference = /the same codes as (\w+)/.exec(returns);
        if (reference) {
          sameAs.set(key, `${pkg}.${service[1]}/${reference[1]}`);
          continue;
        }
        const found = new Set([...returns.matchAll(/\b[A-Z]+(?:_[A-Z]+)*\b/g)].map((m) => m[0]).filter((word) => CODE_NAMES.has(word)));
        if (rpc[3]) {
          found.add("OK");
        }
        if (found.size === 0) {
          throw new Error(`${key}: its comment has no "Returns:" paragraph naming codes`);
        }
        codes.set(key, found);
      }
    }
  }
  for (const [key, target] of sameAs) {
    codes.set(key, new Set(codes.get(target)));
  }
  return codes;
}
