import { setTimeout as sleep } from "node:timers/promises";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "vitest";

/** The error a call fails with; fails the test when the call succeeds. */
export async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("the call succeeded, a failure was expected");
}

/**
 * The call fails with exactly this code and message. Code and message are
 * compared together, so a mismatch shows both.
 */
export async function expectFailure(call: Promise<unknown>, code: Code, message: string): Promise<ConnectError> {
  const err = await failure(call);
  expect({ code: Code[err.code], message: err.rawMessage }).toEqual({ code: Code[code], message });
  return err;
}

/** The rule ids of every violation in the error's Violations details (protovalidate), in order. */
export function violationRuleIds(err: ConnectError): string[] {
  return err.findDetails(ViolationsSchema).flatMap((v) => v.violations.map((violation) => violation.ruleId));
}

/**
 * The call is refused by request validation: InvalidArgument with exactly
 * `message` (or a message matching it), and a Violations detail carrying `ruleId`.
 */
export async function expectViolation(call: Promise<unknown>, ruleId: string, message: string | RegExp): Promise<void> {
  const err = await failure(call);
  if (typeof message === "string") {
    expect({ code: Code[err.code], message: err.rawMessage }).toEqual({ code: Code[Code.InvalidArgument], message });
  } else {
    expect(Code[err.code]).toBe(Code[Code.InvalidArgument]);
    expect(err.rawMessage).toMatch(message);
  }
  expect(violationRuleIds(err)).toContain(ruleId);
}

/** What a call came to: code 0 with its value, or the code and message it failed with. */
export interface Outcome<T> {
  readonly code: Code | 0;
  readonly message: string;
  readonly value?: T;
}

/** Awaits `call` and never rejects: a ConnectError (or anything else thrown) becomes the outcome's code and message. */
export async function outcome<T>(call: Promise<T>): Promise<Outcome<T>> {
  try {
    return { code: 0, message: "", value: await call };
  } catch (err) {
    const error = ConnectError.from(err);
    return { code: error.code, message: error.rawMessage };
  }
}

/** Like JSON.stringify, with bigints written as their decimal text (JSON has no bigint). */
const shown = (value: unknown) => JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? String(v) : v));

/**
 * Polls `probe` every `intervalMs` (default 100) until `accept` holds and
 * returns the accepted value; after `timeoutMs` fails naming `what` and the
 * last value seen, so a failure says what the server kept answering.
 */
export async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: T) => boolean,
  timeoutMs: number,
  what: string,
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (accept(value)) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: not within ${timeoutMs} ms; last seen ${shown(value)}`);
    }
    await sleep(intervalMs);
  }
}
