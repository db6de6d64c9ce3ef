import { randomBytes } from "node:crypto";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { SecretsService } from "../../gen/keyward/v1/secrets_pb.js";
import { devSpiffeId, issueCertificate, loadDevCertificateAuthority } from "../../src/dev/pki.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { policyFileEnv, startTestKeyward, type ClientCredentials, type TestKeyward } from "../helpers/keyward.js";
import { policyText } from "../helpers/policy.js";

/**
 * Three services of one product share Keyward's secrets, each under its own
 * SPIFFE identity and real mTLS client certificate, with SERVICE granted by
 * a policy file on secret name globs:
 *
 * | identity            | SERVICE on                                                                 |
 * |---------------------|----------------------------------------------------------------------------|
 * | `newsbot-api`       | `secrets/newsbot/prod/**`, `secrets/common/**`                             |
 * | `newsbot-worker`    | `secrets/newsbot/prod/worker/**`, `secrets/newsbot/prod/database/**`,      |
 * |                     | and, in a rule of its own, `secrets/newsbot/prod/cache/*` (one level only) |
 * | `newsbot-scheduler` | `secrets/newsbot/prod/scheduler/**`, `secrets/common/**`                   |
 *
 * An admin (ADMIN on everything, never SERVICE) creates every secret. The
 * expected outcome of each identity × secret cell is computed from the
 * grants above by a glob matcher written here, independent of the server's,
 * and pinned by hand for the cells that matter most (lookalike names,
 * deeper and parent paths, `*` against `/`). Each cell is exercised with
 * AddSecretVersion, AccessSecretVersion and GetSecret; the whole matrix
 * must match, and each denial must be in audit_events with result_code 7
 * for that identity.
 */

const TRUST = "spiffe://keyward.local";
const ADMIN_ID = devSpiffeId("admin");

interface Rule {
  readonly name: string;
  readonly identity: string;
  readonly resources: readonly string[];
}

const RULES: readonly Rule[] = [
  { name: "newsbot-api", identity: "newsbot-api", resources: ["secrets/newsbot/prod/**", "secrets/common/**"] },
  { name: "newsbot-worker", identity: "newsbot-worker", resources: ["secrets/newsbot/prod/worker/**", "secrets/newsbot/prod/database/**"] },
  { name: "newsbot-worker-cache", identity: "newsbot-worker", resources: ["secrets/newsbot/prod/cache/*"] },
  { name: "newsbot-scheduler", identity: "newsbot-scheduler", resources: ["secrets/newsbot/prod/scheduler/**", "secrets/common/**"] },
];
const IDENTITIES = ["newsbot-api", "newsbot-worker", "newsbot-scheduler"] as const;
type Identity = (typeof IDENTITIES)[number];

const POLICY = policyText([
  { name: "admin-manages-everything", identities: [ADMIN_ID], roles: ["ADMIN"], resources: ["**"] },
  ...RULES.map((rule) => ({ name: rule.name, identities: [`${TRUST}/${rule.identity}`], roles: ["SERVICE" as const], resources: rule.resources })),
]);

/** Every secret the admin creates, with why it is in the matrix. */
const SECRETS: ReadonlyArray<readonly [name: string, why: string]> = [
  ["secrets/newsbot/prod/api/token", "the api's own"],
  ["secrets/newsbot/prod/api/scheduler/token", "a `scheduler` segment deeper under api/: not the scheduler's"],
  ["secrets/newsbot/prod/worker", "the root of worker/**, which `**` matches with zero segments"],
  ["secrets/newsbot/prod/worker/queue-password", "the worker's own"],
  ["secrets/newsbot/prod/worker/feeds/rss/token", "three levels under worker/**"],
  ["secrets/newsbot/prod/workers/x", "lookalike segment `workers`"],
  ["secrets/newsbot/prod/database/password", "the worker's second grant"],
  ["secrets/newsbot/prod/database-replica/password", "lookalike segment `database-replica`"],
  ["secrets/newsbot/prod/scheduler/cron-token", "the scheduler's own"],
  ["secrets/newsbot/prod/config", "a parent-level path of worker/** and scheduler/**"],
  ["secrets/newsbot/prod/cache", "the parent of cache/*: `*` needs one segment"],
  ["secrets/newsbot/prod/cache/redis", "exactly what cache/* matches"],
  ["secrets/newsbot/prod/cache/redis/password", "deeper than cache/*: `*` never crosses `/`"],
  ["secrets/newsbot/staging/worker/queue-password", "another environment"],
  ["secrets/newsbot/prod-eu/worker/x", "lookalike environment `prod-eu`"],
  ["secrets/newsbot_other/prod/x", "lookalike project `newsbot_other`"],
  ["secrets/newsbot2/prod/api/token", "lookalike project `newsbot2`"],
  ["secrets/common/shared/sentry-dsn", "common"],
  ["secrets/common/prod/smtp/relay/password", "deep under common/**"],
  ["secrets/commonwealth/prod/x", "lookalike project `commonwealth`"],
];

/**
 * Glob over `/`-separated segments as README "The policy file" defines it:
 * `**` as a whole segment matches zero or more segments; `*` matches a run
 * of characters within one segment (a lone `*`: one non-empty segment).
 */
function globMatches(pattern: string, name: string): boolean {
  const p = pattern.split("/");
  const n = name.split("/");
  const segment = (glob: string, text: string) =>
    glob === "*"
      ? text.length > 0
      : new RegExp(`^${glob.split("*").map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("[^/]*")}$`).test(text);
  const match = (i: number, j: number): boolean => {
    if (i === p.length) return j === n.length;
    if (p[i] === "**") {
      for (let k = j; k <= n.length; k++) if (match(i + 1, k)) return true;
      return false;
    }
    return j < n.length && segment(p[i]!, n[j]!) && match(i + 1, j + 1);
  };
  return match(0, 0);
}

const granted = (identity: Identity, name: string) =>
  RULES.some((rule) => rule.identity === identity && rule.resources.some((pattern) => globMatches(pattern, name)));

type Outcome = "OK" | "PermissionDenied" | string;

interface AuditRow {
  request_id: string;
  identity: string;
  method: string;
  resources: string[];
  result_code: number;
}

describe("newsbot: three services, one policy file, real mTLS", () => {
  let keyward: TestKeyward;
  let sql: pg.Pool;
  const credentials = new Map<string, ClientCredentials>();
  const secretsClient = new Map<string, Client<typeof SecretsService>>();
  const secrets = (who: string) => secretsClient.get(who)!;

  beforeAll(async () => {
    keyward = await startTestKeyward((dataDir) => policyFileEnv(dataDir, "newsbot-policy.yaml", POLICY));
    sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2, applicationName: "keyward-test" });
    const ca = await loadDevCertificateAuthority(keyward.pki.dir);
    const { ca: caPem } = await keyward.credentials("admin");
    credentials.set("admin", await keyward.credentials("admin"));
    for (const identity of IDENTITIES) {
      const issued = await issueCertificate(ca, { commonName: identity, usage: "client", spiffeId: `${TRUST}/${identity}` });
      credentials.set(identity, { ca: caPem, cert: Buffer.from(issued.certPem), key: Buffer.from(issued.keyPem) });
    }
    for (const [who, creds] of credentials) {
      secretsClient.set(who, createClient(SecretsService, createGrpcTransport({ baseUrl: keyward.url, nodeOptions: creds })));
    }
    for (const [name] of SECRETS) {
      const at = name.indexOf("/", name.indexOf("/", "secrets/".length) + 1);
      await secrets("admin").createSecret({ parent: name.slice(0, at), secretId: name.slice(at + 1) });
    }
  });
  afterAll(async () => {
    await sql?.end();
    await keyward?.close();
  });

  it("sees each service as its SPIFFE id, holding SERVICE only", async () => {
    for (const identity of IDENTITIES) {
      const transport = createGrpcTransport({ baseUrl: keyward.url, nodeOptions: credentials.get(identity)! });
      const me = await createClient(AccessService, transport).getCallerIdentity({});
      expect(me.identity).toBe(`${TRUST}/${identity}`);
      expect(me.roles).toHaveLength(1);
    }
  });

  it("computes the expectation table the way the policy reads (pinned cells)", () => {
    const pins: Array<[Identity, string, boolean]> = [
      ["newsbot-api", "secrets/newsbot/prod/cache/redis/password", true],
      ["newsbot-worker", "secrets/newsbot/prod/cache/redis", true],
      ["newsbot-worker", "secrets/newsbot/prod/cache/redis/password", false],
      ["newsbot-worker", "secrets/newsbot/prod/cache", false],
      ["newsbot-worker", "secrets/newsbot/prod/worker", true],
      ["newsbot-worker", "secrets/newsbot/prod/workers/x", false],
      ["newsbot-worker", "secrets/newsbot/prod/database-replica/password", false],
      ["newsbot-worker", "secrets/newsbot/prod/config", false],
      ["newsbot-worker", "secrets/common/shared/sentry-dsn", false],
      ["newsbot-scheduler", "secrets/newsbot/prod/api/scheduler/token", false],
      ["newsbot-scheduler", "secrets/common/prod/smtp/relay/password", true],
      ["newsbot-scheduler", "secrets/newsbot/prod/config", false],
      ["newsbot-api", "secrets/newsbot_other/prod/x", false],
      ["newsbot-api", "secrets/newsbot2/prod/api/token", false],
      ["newsbot-api", "secrets/newsbot/prod-eu/worker/x", false],
      ["newsbot-api", "secrets/newsbot/staging/worker/queue-password", false],
      ["newsbot-api", "secrets/commonwealth/prod/x", false],
    ];
    for (const [identity, name, allowed] of pins) {
      expect(granted(identity, name), `${identity} × ${name}`).toBe(allowed);
    }
  });

  it("answers the whole identity × secret matrix as the grants say, reads back what each wrote, and audits every denial", async () => {
    const expected: Record<string, Outcome> = {};
    const actual: Record<string, Outcome> = {};
    const denied: Array<{ cell: string; requestId: string; identity: string; method: string; resource: string }> = [];
    const allowed: Array<{ cell: string; requestId: string }> = [];

    const attempt = async (
      cell: string,
      identity: Identity,
      method: "AddSecretVersion" | "AccessSecretVersion" | "GetSecret",
      resource: string,
      call: (headers: Record<string, string>) => Promise<unknown>,
    ): Promise<unknown> => {
      const requestId = `scenario-${randomBytes(8).toString("hex")}`;
      const key = `${cell} ${method}`;
      expected[key] = granted(identity, resource) ? "OK" : "PermissionDenied";
      try {
        const response = await call({ "x-request-id": requestId });
        actual[key] = "OK";
        allowed.push({ cell: key, requestId });
        return response;
      } catch (err) {
        const error = ConnectError.from(err);
        actual[key] = error.code === Code.PermissionDenied ? "PermissionDenied" : `${Code[error.code]}: ${error.rawMessage}`;
        if (error.code === Code.PermissionDenied) {
          // Denied on the secret's name, before any lookup: the message is
          // the same whether the secret or version exists or not.
          const roles = method === "GetSecret" ? "ADMIN or SERVICE or AUDITOR" : "SERVICE";
          expect(error.rawMessage, key).toBe(`permission denied: no rule grants ${roles} on "${resource}"`);
          denied.push({ cell: key, requestId, identity: `${TRUST}/${identity}`, method: `/keyward.v1.SecretsService/${method}`, resource });
        }
        return undefined;
      }
    };

    for (const identity of IDENTITIES) {
      const client = secrets(identity);
      for (const [name, why] of SECRETS) {
        const cell = `${identity} × ${name} (${why})`;
        const value = Buffer.from(`${identity} wrote ${name} ${randomBytes(8).toString("hex")}`);
        const added = (await attempt(cell, identity, "AddSecretVersion", name, (headers) =>
          client.addSecretVersion({ parent: name, payload: { data: value } }, { headers }),
        )) as { secretVersion?: { version: bigint } } | undefined;
        // Allowed: read back exactly this version; denied: `latest`, which
        // for a secret nobody may write has no version at all, so only
        // authorization can explain the answer.
        const version = added?.secretVersion ? `versions/${added.secretVersion.version}` : "versions/latest";
        const read = (await attempt(cell, identity, "AccessSecretVersion", name, (headers) =>
          client.accessSecretVersion({ name: `${name}/${version}` }, { headers }),
        )) as { payload?: { data: Uint8Array } } | undefined;
        if (added !== undefined && read !== undefined) {
          expect(Buffer.from(read.payload!.data).equals(value), cell).toBe(true);
        }
        await attempt(cell, identity, "GetSecret", name, (headers) => client.getSecret({ name }, { headers }));
      }
    }
    expect(actual).toEqual(expected);

    // Not degenerate: every identity is allowed some cells and denied others.
    for (const identity of IDENTITIES) {
      const outcomes = Object.entries(expected).filter(([cell]) => cell.startsWith(`${identity} ×`)).map(([, o]) => o);
      expect(outcomes, identity).toContain("OK");
      expect(outcomes, identity).toContain("PermissionDenied");
    }
    expect(denied.length).toBeGreaterThan(80);

    const { rows } = await sql.query<AuditRow>(
      `SELECT request_id, identity, method, resources, result_code FROM audit_events WHERE request_id = ANY($1) ORDER BY sequence`,
      [[...denied, ...allowed].map((c) => c.requestId)],
    );
    const byRequest = new Map(rows.map((row) => [row.request_id, row]));
    expect(rows).toHaveLength(denied.length + allowed.length);
    for (const d of denied) {
      const row = byRequest.get(d.requestId);
      expect(row && { identity: row.identity, method: row.method, resources: row.resources, result_code: row.result_code }, d.cell).toEqual({
        identity: d.identity,
        method: d.method,
        resources: [d.resource],
        result_code: Code.PermissionDenied,
      });
    }
    for (const a of allowed) {
      expect(byRequest.get(a.requestId)?.result_code, a.cell).toBe(0);
    }
  });

  it("lists only under a parent the caller is granted, and only what it is granted there", async () => {
    const names = async (who: Identity, parent: string) =>
      (await secrets(who).listSecrets({ parent, pageSize: 1000 })).secrets.map((s) => s.name);
    const expectedUnder = (who: Identity, parent: string) =>
      SECRETS.map(([name]) => name)
        .filter((name) => (name === parent || name.startsWith(`${parent}/`)) && granted(who, name))
        .sort();

    expect(await names("newsbot-api", "secrets/newsbot/prod")).toEqual(expectedUnder("newsbot-api", "secrets/newsbot/prod"));
    expect(await names("newsbot-worker", "secrets/newsbot/prod/worker")).toEqual(expectedUnder("newsbot-worker", "secrets/newsbot/prod/worker"));
    expect(await names("newsbot-scheduler", "secrets/common")).toEqual(expectedUnder("newsbot-scheduler", "secrets/common"));
    expect(expectedUnder("newsbot-worker", "secrets/newsbot/prod/worker")).toHaveLength(3);

    // A parent above the grant is itself a resource the caller is not granted.
    for (const [who, parent] of [
      ["newsbot-worker", "secrets/newsbot/prod"],
      ["newsbot-scheduler", "secrets/newsbot"],
      ["newsbot-worker", "secrets/newsbot/prod/cache"],
      ["newsbot-api", "secrets/newsbot_other"],
    ] as const) {
      await expect(secrets(who).listSecrets({ parent }), `${who} lists ${parent}`).rejects.toMatchObject({ code: Code.PermissionDenied });
    }
  });

  it("keeps the admin out of values and the services out of secret management", async () => {
    const name = "secrets/newsbot/prod/api/token";
    await expect(secrets("admin").accessSecretVersion({ name: `${name}/versions/latest` })).rejects.toMatchObject({
      code: Code.PermissionDenied,
      rawMessage: expect.stringMatching(/requires the SERVICE role$/),
    });
    await expect(secrets("admin").addSecretVersion({ parent: name, payload: { data: Buffer.from("x") } })).rejects.toMatchObject({
      code: Code.PermissionDenied,
    });
    for (const identity of IDENTITIES) {
      await expect(
        secrets(identity).createSecret({ parent: "secrets/newsbot/prod", secretId: `${identity}-made-this` }),
        identity,
      ).rejects.toMatchObject({ code: Code.PermissionDenied, rawMessage: expect.stringMatching(/requires the ADMIN role$/) });
      await expect(secrets(identity).destroySecretVersion({ name: `${name}/versions/1` }), identity).rejects.toMatchObject({
        code: Code.PermissionDenied,
      });
    }
    // The admin still reads metadata, never a value.
    const { secret } = await secrets("admin").getSecret({ name });
    expect(secret?.currentVersion).toBe(1n);
  });
});
