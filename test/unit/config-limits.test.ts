import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";

describe("limits configuration", () => {
  it("defaults to 4 MiB messages, 256 calls in flight per identity and a 30 s idle timeout", () => {
    expect(loadConfig({}).limits).toEqual({ maxMessageBytes: 4_194_304, maxCallsPerIdentity: 256, idleTimeoutMs: 30_000 });
    expect(Object.isFrozen(loadConfig({}).limits)).toBe(true);
  });

  it("reads them", () => {
    const config = loadConfig({ KEYWARD_MAX_MESSAGE_BYTES: "1048576", KEYWARD_MAX_CALLS_PER_IDENTITY: "4", KEYWARD_IDLE_TIMEOUT_MS: "1000" });
    expect(config.limits).toEqual({ maxMessageBytes: 1_048_576, maxCallsPerIdentity: 4, idleTimeoutMs: 1000 });
  });

  it.each([
    [{ KEYWARD_MAX_MESSAGE_BYTES: "1048575" }, "KEYWARD_MAX_MESSAGE_BYTES must be an integer from 1048576 to 67108864"],
    [{ KEYWARD_MAX_MESSAGE_BYTES: "4MiB" }, "KEYWARD_MAX_MESSAGE_BYTES must be an integer from 1048576 to 67108864"],
    [{ KEYWARD_MAX_CALLS_PER_IDENTITY: "0" }, "KEYWARD_MAX_CALLS_PER_IDENTITY must be an integer from 1 to 100000"],
    [{ KEYWARD_MAX_CALLS_PER_IDENTITY: "-5" }, "KEYWARD_MAX_CALLS_PER_IDENTITY must be an integer from 1 to 100000"],
    [{ KEYWARD_IDLE_TIMEOUT_MS: "999" }, "KEYWARD_IDLE_TIMEOUT_MS must be an integer from 1000 to 3600000"],
  ])("refuses %o", (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
  });
});
