import { create } from "@bufbuild/protobuf";
import { ViolationSchema, ViolationsSchema, type Violations } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { answerable, callerFaultMessage } from "../../../src/server/caller-errors.js";

describe("answerable errors", () => {
  it("turns Connect's INTERNAL for an undecodable request into INVALID_ARGUMENT naming the message type", () => {
    const err = answerable(new ConnectError("parse binary: premature EOF", Code.Internal), "keyward.v1.GetKeyRequest");
    expect({ code: Code[err.code], message: err.rawMessage }).toEqual({
      code: "InvalidArgument",
      message: "the request is not a valid keyward.v1.GetKeyRequest message: premature EOF",
    });
    expect(callerFaultMessage("x.Y", "received compressed envelope, but do not know how to decompress")).toBe(
      "the request message is flagged as compressed, but no compression was negotiated",
    );
  });

  it("leaves a real INTERNAL and an error within bounds as they are", () => {
    const internal = new ConnectError("internal error", Code.Internal);
    expect(answerable(internal, "x.Y")).toBe(internal);
    const small = new ConnectError("name: is required [required]", Code.InvalidArgument);
    expect(answerable(small, "x.Y")).toBe(small);
  });

  it("keeps 8 violations, clips long map keys and the message, so the error fits in trailers", () => {
    const huge = "k".repeat(300_000);
    const violations = create(ViolationsSchema, {
      violations: Array.from({ length: 1001 }, (_, i) =>
        create(ViolationSchema, {
          ruleId: "string.pattern",
          message: "m".repeat(1000),
          field: { elements: [{ fieldNumber: 11, fieldName: "labels", subscript: { case: "stringKey", value: `${huge}${i}` } }] },
        }),
      ),
    });
    const err = new ConnectError(`key.labels["${huge}"]: does not match`, Code.InvalidArgument, undefined, [{ desc: ViolationsSchema, value: violations }]);
    const bounded = answerable(err, "keyward.v1.UpdateKeyRequest");
    expect(bounded.code).toBe(Code.InvalidArgument);
    expect(bounded.rawMessage.length).toBeLessThanOrEqual(513);
    const kept = bounded.findDetails(ViolationsSchema)[0] as Violations;
    expect(kept.violations).toHaveLength(8);
    for (const violation of kept.violations) {
      expect(violation.message.length).toBeLessThanOrEqual(201);
      const key = violation.field!.elements[0]!.subscript;
      expect(key.case === "stringKey" && key.value.length).toBeLessThanOrEqual(33);
    }
  });
});
