import { createHash } from "node:crypto";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { AccessService, GrantEffect, Role, type GetCallerIdentityResponse } from "../../gen/keyward/v1/access_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { connectClient } from "../helpers/clients.js";
import { eventually } from "../helpers/expect.js";
import { policyText, type PolicyRule } from "../helpers/policy.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

const SERVICE_ID = "spiffe://keyward.local/service";

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

/** Replaces the file atomically (write + rename), so the 1 s poller never sees it half-written. */
async function replaceFile(file: string, text: string): Promise<void> {
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, text);
  await rename(temporary, file);
}

/** The code a call ends with: "ok" or the ConnectError code. */
async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    return (err as ConnectError).code;
  }
}

const SERVICE_ON_KEYS: PolicyRule = { name: "service-keys", identities: [SERVICE_ID], roles: ["SERVICE"], resources: ["keys/**"] };
const ADMIN_ON_ALL: PolicyRule = { name: "admin-all", identities: ["spiffe://keyward.local/admin"], roles: ["ADMIN"], resources: ["**"] };
const NO_HR_KEYS: PolicyRule = { name: "no-hr-keys", effect: "deny", identities: [SERVICE_ID], roles: ["SERVICE"], resources: ["keys/hr-*"] };

describe("policy file reload", () => {
  let dir: string;
  let policyFile: string;
  let keyward: TestKeyward;
  let access: Client<typeof AccessService>;
  let crypto: Client<typeof CryptoService>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "keyward-policy-"));
    policyFile = join(dir, "policy.yaml");
    await writeFile(policyFile, policyText([SERVICE_ON_KEYS, ADMIN_ON_ALL]));
    keyward = await startTestKeyward({ KEYWARD_POLICY_FILE: policyFile });
    const service = await keyward.credentials("service");
    access = connectClient(AccessService, keyward.url, service);
    crypto = connectClient(CryptoService, keyward.url, service);
  });
  afterAll(async () => {
    await keyward?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const whoAmI = (): Promise<GetCallerIdentityResponse> => access.getCallerIdentity({});
  const encrypt = (name: string) => codeOf(crypto.encrypt({ name, plaintext: new TextEncoder().encode("hello") }));
  const logsWith = (msg: string) =>
    keyward.logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.msg === msg);

  it("follows edits of the file, keeps the last good policy when an edit is broken, and picks up the fix", async () => {
    // 1. The policy the server started with.
    const initial = policyText([SERVICE_ON_KEYS, ADMIN_ON_ALL]);
    let me = await whoAmI();
    expect(me.identity).toBe(SERVICE_ID);
    expect(me.roles).toEqual([Role.SERVICE]);
    expect(me.policyDigest).toBe(sha256(initial));
    expect(await encrypt("keys/hr-payroll")).toBe(Code.NotFound); // authorized: the key does not exist

    // 2. Add a deny rule: seen by GetCallerIdentity and enforced by authorization.
    const withDeny = policyText([SERVICE_ON_KEYS, NO_HR_KEYS, ADMIN_ON_ALL]);
    await replaceFile(policyFile, withDeny);
    me = await eventually(whoAmI, (r) => r.policyDigest === sha256(withDeny), 3_000, "the digest of the policy with the deny rule");
    expect(me.roles).toEqual([Role.SERVICE]);
    expect(me.grants.map((g) => ({ role: g.role, effect: g.effect, resources: g.resourcePatterns }))).toEqual([
      { role: Role.SERVICE, effect: GrantEffect.ALLOW, resources: ["keys/**"] },
      { role: Role.SERVICE, effect: GrantEffect.DENY, resources: ["keys/hr-*"] },
    ]);
    expect(await encrypt("keys/hr-payroll")).toBe(Code.PermissionDenied);
    expect(await encrypt("keys/orders")).toBe(Code.NotFound);

    // 3. Remove the grant: the service holds no role any more.
    const withoutGrant = policyText([ADMIN_ON_ALL]);
    await replaceFile(policyFile, withoutGrant);
    me = await eventually(whoAmI, (r) => r.policyDigest === sha256(withoutGrant), 3_000, "the digest of the policy without the grant");
    expect(me.roles).toEqual([]);
    expect(me.grants).toEqual([]);
    expect(await encrypt("keys/orders")).toBe(Code.PermissionDenied);
    expect(logsWith("policy reloaded").map((e) => e.policyDigest)).toEqual([sha256(withDeny), sha256(withoutGrant)]);

    // 4. A broken file (line 7 mis-indented; it would grant SERVICE again):
    //    the previous policy stays in force and the error names the file and line.
    const broken = policyText([SERVICE_ON_KEYS, ADMIN_ON_ALL]).replace('    resources: ["keys/**"]', '   resources: ["keys/**"]');
    expect(broken.split("\n")[6]).toBe('   resources: ["keys/**"]');
    const failuresBefore = logsWith("policy reload failed; the previous policy stays in force").length;
    await replaceFile(policyFile, broken);
    const failure = await eventually(
      async () => logsWith("policy reload failed; the previous policy stays in force"),
      (entries) => entries.length > failuresBefore,
      3_000,
      "a logged reload failure",
    );
    expect(failure.at(-1)).toMatchObject({ level: 50, policyFile });
    expect(failure.at(-1)!.error).toMatch(new RegExp(`^${policyFile.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: line 7: invalid YAML`));
    await sleep(2_500);
    me = await whoAmI();
    expect(me.policyDigest).toBe(sha256(withoutGrant));
    expect(me.roles).toEqual([]);
    expect(await encrypt("keys/orders")).toBe(Code.PermissionDenied);
    // One failed attempt per change of the file, not one per poll.
    expect(logsWith("policy reload failed; the previous policy stays in force")).toHaveLength(failuresBefore + 1);

    // 5. The fix is picked up.
    const fixed = policyText([SERVICE_ON_KEYS, ADMIN_ON_ALL]).replace("service-keys", "service-keys-again");
    await replaceFile(policyFile, fixed);
    me = await eventually(whoAmI, (r) => r.policyDigest === sha256(fixed), 3_000, "the digest of the fixed policy");
    expect(me.roles).toEqual([Role.SERVICE]);
    expect(await encrypt("keys/orders")).toBe(Code.NotFound);
  });
});

describe("resource authorization with glob and deny rules", () => {
  let dir: string;
  let keyward: TestKeyward;
  let crypto: Client<typeof CryptoService>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "keyward-policy-"));
    const policyFile = join(dir, "policy.yaml");
    await writeFile(
      policyFile,
      policyText([
        { name: "payments-keys", identities: [SERVICE_ID], roles: ["SERVICE"], resources: ["keys/payments-*"] },
        { name: "no-payments-hr", effect: "deny", identities: [SERVICE_ID], roles: ["SERVICE"], resources: ["keys/payments-hr"] },
      ]),
    );
    keyward = await startTestKeyward({ KEYWARD_POLICY_FILE: policyFile });
    crypto = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));
  });
  afterAll(async () => {
    await keyward?.close();
    await rm(dir, { recursive: true, force: true });
  });

  let logsBefore = 0;
  beforeEach(() => {
    logsBefore = keyward.logs.length;
  });

  const encrypt = (client: Client<typeof CryptoService>, name: string) =>
    client.encrypt({ name, plaintext: new TextEncoder().encode("4111 1111 1111 1111"), associatedData: new TextEncoder().encode("order-1") });

  /** The access log entry of the last call. */
  const lastCall = () =>
    keyward.logs
      .slice(logsBefore)
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((entry) => entry.method === "/keyward.v1.CryptoService/Encrypt")
      .at(-1);

  it.each([
    { name: "keys/payments-eu", code: Code.NotFound, message: /^keys\/payments-eu not found$/, logged: "not_found" },
    { name: "keys/payments-eu/versions/3", code: Code.NotFound, message: /^keys\/payments-eu not found$/, logged: "not_found" },
    { name: "keys/orders", code: Code.PermissionDenied, message: /no rule grants SERVICE on "keys\/orders"/, logged: "permission_denied" },
    {
      name: "keys/payments-hr",
      code: Code.PermissionDenied,
      message: /denied on "keys\/payments-hr" by rule "no-payments-hr"/,
      logged: "permission_denied",
    },
  ])("Encrypt on $name answers $logged", async ({ name, code, message, logged }) => {
    const err = await encrypt(crypto, name).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(code);
    expect((err as ConnectError).rawMessage).toMatch(message);
    expect(lastCall()).toMatchObject({ identity: SERVICE_ID, code: logged });
  });

  it("validates before the resource check: a malformed name is INVALID_ARGUMENT, not PERMISSION_DENIED", async () => {
    const err = await encrypt(crypto, "payments-eu").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
  });

  it("refuses a caller holding no role at all before validating its request", async () => {
    const admin = connectClient(CryptoService, keyward.url, await keyward.credentials("admin"));
    const err = await encrypt(admin, "payments-eu").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.PermissionDenied);
    expect((err as ConnectError).rawMessage).toMatch(/requires the SERVICE role/);
  });
});
