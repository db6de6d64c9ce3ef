import { create } from "@bufbuild/protobuf";
import { ViolationSchema, ViolationsSchema, type Violation, type Violations } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * What Connect answers INTERNAL for although the caller caused it: a request
 * message that is not valid protobuf (bad tag, truncated field, a string
 * that is not UTF-8), and one flagged as compressed without a negotiated
 * encoding.
 */
const CALLER_FAULTS: ReadonlyArray<[RegExp, (inputType: string, detail: string) => string]> = [
  [/^parse binary: (.*)$/s, (type, detail) => `the request is not a valid ${type} message: ${detail}`],
  [
    /^received compressed envelope, but do not know how to decompress$/,
    () => "the request message is flagged as compressed, but no compression was negotiated",
  ],
];

/** The INVALID_ARGUMENT message for an INTERNAL error the caller caused, or undefined for a real one. */
export function callerFaultMessage(inputType: string, message: string): string | undefined {
  for (const [pattern, rewrite] of CALLER_FAULTS) {
    const match = pattern.exec(message);
    if (match) {
      return rewrite(inputType, match[1] ?? "");
    }
  }
  return undefined;
}

// An error travels in the response's trailers, which clients cap (8 KiB by
// default in grpc-js; past it the whole call fails): a message naming a
// 300 KB map key, or a Violations detail for each of 1001 batch items,
// would not arrive at all.
const MAX_MESSAGE = 512;
const MAX_VIOLATIONS = 8;
const MAX_VIOLATION_MESSAGE = 200;
const MAX_KEY = 32;

const clip = (text: string, max: number) => (text.length > max ? `${text.slice(0, max)}…` : text);

/**
 * `err` fit to be answered: a caller-caused INTERNAL becomes
 * INVALID_ARGUMENT (see {@link callerFaultMessage}); the message is clipped
 * and a Violations detail keeps its first few violations, with long map keys
 * clipped. Returns `err` itself when nothing needed changing.
 */
export function answerable(err: ConnectError, inputType: string): ConnectError {
  if (err.code === Code.Internal) {
    const message = callerFaultMessage(inputType, err.rawMessage);
    if (message !== undefined) {
      return new ConnectError(clip(message, MAX_MESSAGE), Code.InvalidArgument, err.metadata, undefined, err);
    }
  }
  let changed = err.rawMessage.length > MAX_MESSAGE;
  const details: OutgoingDetail[] = [];
  for (const detail of err.details) {
    if (!("desc" in detail)) {
      // Received from elsewhere, not built here: nothing of ours to bound.
      return err;
    }
    if (detail.desc.typeName !== ViolationsSchema.typeName) {
      details.push(detail);
      continue;
    }
    const bounded = boundViolations(detail.value as Violations);
    changed ||= bounded !== detail.value;
    details.push({ desc: ViolationsSchema, value: bounded });
  }
  return changed ? new ConnectError(clip(err.rawMessage, MAX_MESSAGE), err.code, err.metadata, details, err.cause) : err;
}

type OutgoingDetail = Extract<ConnectError["details"][number], { desc: unknown }>;

function boundViolations(violations: Violations): Violations {
  const tooLong = (v: Violation) =>
    v.message.length > MAX_VIOLATION_MESSAGE ||
    (v.field?.elements ?? []).some((e) => e.subscript.case === "stringKey" && e.subscript.value.length > MAX_KEY);
  if (violations.violations.length <= MAX_VIOLATIONS && !violations.violations.some(tooLong)) {
    return violations;
  }
  return create(ViolationsSchema, {
    violations: violations.violations.slice(0, MAX_VIOLATIONS).map((v) =>
      create(ViolationSchema, {
        ...v,
        message: clip(v.message, MAX_VIOLATION_MESSAGE),
        field: v.field && {
          ...v.field,
          elements: v.field.elements.map((e) =>
            e.subscript.case === "stringKey" ? { ...e, subscript: { case: "stringKey" as const, value: clip(e.subscript.value, MAX_KEY) } } : e,
          ),
        },
      }),
    ),
  });
}
