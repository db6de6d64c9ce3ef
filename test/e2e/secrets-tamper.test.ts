import { randomBytes } from "node:crypto";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { GenerateSecretFormat, SecretsService, SecretType } from "../../gen/keyward/v1/secrets_pb.js";
import { crc32c } from "../../src/crypto/crc32c.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

/**
 * Someone with write access to the database, but not the root key, moves
 * stored secret values between rows while the server runs. Each value is
 * envelope-encrypted with associated data binding the secret's uid, name
 * and version (src/domain/secrets/secret.ts `valueBinding`), so a moved
 * value must answer DATA_LOSS naming the version read, never the value that
 * was moved in, whatever row it came from: another secret on the same key,
 * another version of the same secret, or the deleted secret whose name a
 * new one reuses.
 *
 * Then a leak scan: a random marker written as a value, and a generated
 * value, read back and carried by failing calls, must appear in no log
 * line, no audit event, no error (message, details, trailers), and no column
 * of any table of the schema, in any common encoding.
 */

type Secrets = Client<typeof SecretsService>;

interface Failure {
  readonly code: Code;
  readonly message: string;
  /** Everything the caller got back besides the code: message, details, metadata. */
  readonly everything: string;
}

/** Runs a call that must fail and returns what the caller saw. */
async function failure(call: Promise<unknown>): Promise<Failure> {
  try {
    await call;
  } catch (err) {
    const error = ConnectError.from(err);
    const details = error.details.map((d) => {
      if ("desc" in d) return JSON.stringify(d.value);
      const bytes = Buffer.from(d.value);
      return `${d.type} ${bytes.toString("latin1")} ${bytes.toString("hex")} ${bytes.toString("base64")} ${JSON.stringify(d.debug ?? null)}`;
    });
    const metadata = [...error.metadata.entries()].map(([k, v]) => `${k}: ${v}`);
    return { code: error.code, message: error.rawMessage, everything: [error.message, ...details, ...metadata].join("\n") };
  }
  throw new Error("the call succeeded; it had to fail");
}

/**
 * Every 16-character run of `value` as text, every 24-character run of its
 * hex (both cases), and every 16-character run of its base64 and base64url
 * at each of the three alignments it can have inside a longer byte string
 * (the outer characters, which depend on the neighbouring bytes, left out).
 */
function fragments(value: string): string[] {
  const bytes = Buffer.from(value);
  const out = new Set<string>();
  const runs = (s: string, n: number) => {
    for (let i = 0; i + n <= s.length; i++) out.add(s.slice(i, i + n));
  };
  runs(value, 16);
  runs(bytes.toString("hex"), 24);
  runs(bytes.toString("hex").toUpperCase(), 24);
  for (let shift = 0; shift < 3; shift++) {
    const inner = Buffer.concat([Buffer.alloc(shift), bytes]).toString("base64").slice(4, -4);
    runs(inner, 16);
    runs(inner.replace(/\+/g, "-").replace(/\//g, "_"), 16);
  }
  return [...out];
}

const text = (data: Uint8Array | undefined) => Buffer.from(data ?? []).toString("utf8");

describe("stored secret values moved in the database", () => {
  let keyward: TestKeyward;
  let sql: pg.Pool;
  let admin: Secrets;
  let service: Secrets;

  beforeAll(async () => {
    keyward = await startTestKeyward();
    sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2, applicationName: "keyward-test" });
    admin = connectClient(SecretsService, keyward.url, await keyward.credentials("admin"));
    service = connectClient(SecretsService, keyward.url, await keyward.credentials("service"));
  });
  afterAll(async () => {
    await sql?.end();
    await keyward?.close();
  });

  const create = (name: string, type = SecretType.OPAQUE) => {
    const [, project, environment, ...path] = name.split("/");
    return admin.createSecret({ parent: `secrets/${project}/${environment}`, secretId: path.join("/"), secret: { type } });
  };
  const add = async (name: string, value: string) =>
    Number((await service.addSecretVersion({ parent: name, payload: { data: Buffer.from(value) } })).secretVersion!.version);
  const read = async (name: string) => text((await service.accessSecretVersion({ name })).payload?.data);

  async function stored(name: string, version: number): Promise<{ ciphertext: Buffer; key_name: string; key_version: number }> {
    const { rows } = await sql.query(
      "SELECT ciphertext, key_name, key_version FROM secret_versions WHERE secret_name = $1 AND version = $2",
      [name, version],
    );
    expect(rows, `${name}/versions/${version}`).toHaveLength(1);
    return rows[0];
  }

  /** Exchanges the stored ciphertexts of two rows, in one statement. */
  async function swap(a: [string, number], b: [string, number]): Promise<void> {
    const { rowCount } = await sql.query(
      `UPDATE secret_versions v SET ciphertext = o.ciphertext
         FROM secret_versions o
        WHERE (v.secret_name = $1 AND v.version = $2 AND o.secret_name = $3 AND o.version = $4)
           OR (v.secret_name = $3 AND v.version = $4 AND o.secret_name = $1 AND o.version = $2)`,
      [a[0], a[1], b[0], b[1]],
    );
    expect(rowCount).toBe(2);
  }

  /** The one answer a moved value may give. */
  async function expectDataLoss(versionName: string, requested: string, neverShown: readonly string[]): Promise<void> {
    const seen = await failure(service.accessSecretVersion({ name: requested }));
    expect({ code: Code[seen.code], message: seen.message }, requested).toEqual({
      code: Code[Code.DataLoss],
      message: `the stored value of ${versionName} does not decrypt: it was altered or moved`,
    });
    for (const value of neverShown) {
      expect(seen.everything).not.toContain(value);
    }
  }

  it("a value moved to another secret's row, under the same key, is DATA_LOSS for both, and reads again once moved back", async () => {
    const a = "secrets/shop/prod/payments/api-key";
    const b = "secrets/shop/prod/search/api-key";
    await create(a);
    await create(b);
    const valueA = `a-${randomBytes(12).toString("hex")}`;
    const valueB = `b-${randomBytes(12).toString("hex")}`;
    await add(a, valueA);
    await add(b, valueB);
    const [rowA, rowB] = [await stored(a, 1), await stored(b, 1)];
    // Same key and key version: only the associated data tells them apart.
    expect(rowA.key_name).toBe(rowB.key_name);
    expect(rowA.key_version).toBe(rowB.key_version);

    await swap([a, 1], [b, 1]);
    await expectDataLoss(`${a}/versions/1`, `${a}/versions/1`, [valueA, valueB]);
    await expectDataLoss(`${a}/versions/1`, `${a}/versions/latest`, [valueA, valueB]);
    await expectDataLoss(`${b}/versions/1`, `${b}/versions/1`, [valueA, valueB]);

    // RollbackSecret copies inside the server: it must refuse too, and add nothing.
    const rollback = await failure(admin.rollbackSecret({ name: b, version: 1n }));
    expect(rollback.code).toBe(Code.DataLoss);
    expect((await admin.getSecret({ name: b })).secret?.currentVersion).toBe(1n);

    // Every refusal is audited as DATA_LOSS, without the values.
    const { rows } = await sql.query<{ method: string; resources: string[]; result_message: string }>(
      "SELECT method, resources, result_message FROM audit_events WHERE result_code = $1 ORDER BY sequence",
      [Code.DataLoss],
    );
    expect(rows.map((r) => r.method)).toEqual([
      "/keyward.v1.SecretsService/AccessSecretVersion",
      "/keyward.v1.SecretsService/AccessSecretVersion",
      "/keyward.v1.SecretsService/AccessSecretVersion",
      "/keyward.v1.SecretsService/RollbackSecret",
    ]);
    expect(rows.map((r) => r.resources)).toEqual([[a], [a], [b], [b]]);
    for (const row of rows) {
      expect(row.result_message).not.toContain(valueA);
      expect(row.result_message).not.toContain(valueB);
    }
    // DATA_LOSS means someone must look: logged at error level.
    const logged = keyward.logs.map((line) => JSON.parse(line) as { level: number; code?: string; method?: string });
    expect(logged.filter((l) => l.code === "data_loss" && l.level === 50)).toHaveLength(4);

    await swap([a, 1], [b, 1]);
    expect(await read(`${a}/versions/1`)).toBe(valueA);
    expect(await read(`${b}/versions/latest`)).toBe(valueB);
  });

  it("a value moved to another version of the same secret is DATA_LOSS naming the version read", async () => {
    const name = "secrets/shop/prod/db/password";
    await create(name, SecretType.PASSWORD);
    const one = `one-${randomBytes(12).toString("hex")}`;
    const two = `two-${randomBytes(12).toString("hex")}`;
    expect(await add(name, one)).toBe(1);
    expect(await add(name, two)).toBe(2);

    await swap([name, 1], [name, 2]);
    await expectDataLoss(`${name}/versions/1`, `${name}/versions/1`, [one, two]);
    await expectDataLoss(`${name}/versions/2`, `${name}/versions/2`, [one, two]);
    await expectDataLoss(`${name}/versions/2`, `${name}/versions/latest`, [one, two]);
    await swap([name, 1], [name, 2]);

    // Replaying the older value as the newer version (a copy, not a swap)
    // fails just the same, and leaves the original readable.
    await sql.query(
      `UPDATE secret_versions SET ciphertext = (SELECT ciphertext FROM secret_versions WHERE secret_name = $1 AND version = 1)
        WHERE secret_name = $1 AND version = 2`,
      [name],
    );
    await expectDataLoss(`${name}/versions/2`, `${name}/versions/latest`, [one, two]);
    expect(await read(`${name}/versions/1`)).toBe(one);
  });

  it("a deleted secret's value copied into a new secret reusing its name does not decrypt", async () => {
    const name = "secrets/shop/prod/smtp/password";
    await create(name);
    const old = `old-${randomBytes(12).toString("hex")}`;
    await add(name, old);
    const oldRow = await stored(name, 1);
    const { rows: before } = await sql.query<{ uid: string }>("SELECT uid FROM secrets WHERE name = $1", [name]);

    await admin.deleteSecret({ name });
    await create(name);
    const fresh = `new-${randomBytes(12).toString("hex")}`;
    expect(await add(name, fresh)).toBe(1);
    const newRow = await stored(name, 1);
    const { rows: after } = await sql.query<{ uid: string }>("SELECT uid FROM secrets WHERE name = $1", [name]);
    // Same name, same version number, same key: only the uid differs.
    expect(after[0]!.uid).not.toBe(before[0]!.uid);
    expect(newRow.key_name).toBe(oldRow.key_name);
    expect(newRow.key_version).toBe(oldRow.key_version);

    await sql.query("UPDATE secret_versions SET ciphertext = $2 WHERE secret_name = $1 AND version = 1", [name, oldRow.ciphertext]);
    await expectDataLoss(`${name}/versions/1`, `${name}/versions/1`, [old, fresh]);

    await sql.query("UPDATE secret_versions SET ciphertext = $2 WHERE secret_name = $1 AND version = 1", [name, newRow.ciphertext]);
    expect(await read(`${name}/versions/1`)).toBe(fresh);
  });

  it("a caller with SERVICE on the secret's key can neither open a stored value through Decrypt nor forge one through Encrypt", async () => {
    const name = "secrets/shop/prod/crossing";
    const created = await create(name);
    const keyName = created.secret!.key;
    await add(name, "stored value");
    const { rows } = await sql.query<{ uid: string }>("SELECT uid FROM secrets WHERE name = $1", [name]);
    // The associated data the value is bound to, as src/domain/secrets/secret.ts writes it.
    const binding = Buffer.from(`keyward secret value v1\u0000${rows[0]!.uid}\u0000${name}\u00001`, "utf8");
    const crypto = connectClient(CryptoService, keyward.url, await keyward.credentials("service"));

    const opened = await failure(crypto.decrypt({ name: keyName, ciphertext: (await stored(name, 1)).ciphertext, associatedData: binding }));
    expect({ code: Code[opened.code], message: opened.message }).toEqual({ code: Code[Code.InvalidArgument], message: "decryption failed" });

    const forged = await crypto.encrypt({ name: keyName, plaintext: Buffer.from("forged value"), associatedData: binding });
    await sql.query("UPDATE secret_versions SET ciphertext = $3 WHERE secret_name = $1 AND version = $2", [name, 1, Buffer.from(forged.ciphertext)]);
    await expectDataLoss(`${name}/versions/1`, `${name}/versions/1`, ["forged value"]);
  });

  it("one byte changed anywhere in a stored value is DATA_LOSS, for access and rollback; restored, it reads again", async () => {
    const name = "secrets/shop/prod/flipped";
    await create(name);
    const value = `flip-${randomBytes(12).toString("hex")}`;
    await add(name, value);
    const original = (await stored(name, 1)).ciphertext;
    // The envelope's framing (format, key name, version, wrapped data key, nonce), the data, the tag.
    for (const at of [0, 5, Math.floor(original.length / 2), original.length - 17, original.length - 1]) {
      const changed = Buffer.from(original);
      changed[at]! ^= 0x40;
      await sql.query("UPDATE secret_versions SET ciphertext = $2 WHERE secret_name = $1 AND version = 1", [name, changed]);
      await expectDataLoss(`${name}/versions/1`, `${name}/versions/1`, [value]);
      expect((await failure(admin.rollbackSecret({ name, version: 1n }))).code, `byte ${at}`).toBe(Code.DataLoss);
    }
    await sql.query("UPDATE secret_versions SET ciphertext = $2 WHERE secret_name = $1 AND version = 1", [name, original]);
    expect(await read(`${name}/versions/latest`)).toBe(value);
  });

  it("a version's row deleted is DATA_LOSS: reading it, and reading latest, which never falls back to the older value", async () => {
    const name = "secrets/shop/prod/rotated-password";
    await create(name, SecretType.PASSWORD);
    const leaked = `old-${randomBytes(12).toString("hex")}`;
    const current = `new-${randomBytes(12).toString("hex")}`;
    await add(name, leaked);
    await add(name, current);
    expect(await read(`${name}/versions/latest`)).toBe(current);
    // Deleting the newest row would otherwise make latest serve the
    // password that was replaced, with nothing to tell it from a genuine
    // answer. DestroySecretVersion keeps the row: a deleted one is tampering.
    const { rowCount } = await sql.query("DELETE FROM secret_versions WHERE secret_name = $1 AND version = 2", [name]);
    expect(rowCount).toBe(1);
    const missing = { code: Code[Code.DataLoss], message: `${name}/versions/2 is missing from the database: it was deleted outside Keyward` };
    const seen = await failure(service.accessSecretVersion({ name: `${name}/versions/2` }));
    expect({ code: Code[seen.code], message: seen.message }).toEqual(missing);
    // latest is cached per secret; the deletion reaches the cache through the change feed.
    let latest: Failure | undefined;
    for (const deadline = Date.now() + 5000; latest === undefined && Date.now() < deadline; ) {
      latest = await failure(service.accessSecretVersion({ name: `${name}/versions/latest` })).catch(() => undefined);
      if (latest === undefined) await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect({ code: Code[latest!.code], message: latest!.message }).toEqual({
      code: Code[Code.DataLoss],
      message: `the versions of ${name} above version 1 do not add up to its current version 2: rows were deleted or altered outside Keyward`,
    });
    expect(latest!.everything).not.toContain(leaked);
    expect((await failure(admin.rollbackSecret({ name, version: 2n }))).code).toBe(Code.DataLoss);
    expect((await failure(admin.disableSecretVersion({ name: `${name}/versions/2` }))).code).toBe(Code.DataLoss);
    // A version the secret never had is still NOT_FOUND, and version 1 itself still reads.
    expect((await failure(service.accessSecretVersion({ name: `${name}/versions/3` }))).code).toBe(Code.NotFound);
    expect(await read(`${name}/versions/1`)).toBe(leaked);

    // A destroyed newest version, by contrast, is the documented way to
    // retire a value: latest then is the newest ENABLED version below it.
    const fine = "secrets/shop/prod/destroyed-newest";
    await create(fine);
    await add(fine, "first");
    await add(fine, "second");
    await admin.destroySecretVersion({ name: `${fine}/versions/2` });
    expect(await read(`${fine}/versions/latest`)).toBe("first");
  });

  it("never lets a written, generated or refused value reach logs, audit events, errors or any table", async () => {
    const marker = `leak-${randomBytes(16).toString("hex")}`;
    const password = "secrets/leak/prod/db/password";
    const config = "secrets/leak/prod/app/config";
    const generated = "secrets/leak/prod/api/token";
    const copy = "secrets/leak/prod/db/password-copy";
    await create(password, SecretType.PASSWORD);
    await create(config, SecretType.JSON);
    await create(generated, SecretType.API_KEY);
    await create(copy, SecretType.PASSWORD);

    const send = (value: string) => Buffer.from(value);
    const seen: string[] = [];

    // Written and read back as text.
    await service.addSecretVersion({ parent: password, payload: { data: send(marker) } });
    expect(await read(`${password}/versions/latest`)).toBe(marker);
    const g = await service.generateSecret({ parent: generated, spec: { length: 40, format: GenerateSecretFormat.ALPHANUMERIC } });
    const generatedValue = text(g.payload?.data);
    expect(generatedValue).toMatch(/^[A-Za-z0-9]{40}$/);
    expect(await read(`${generated}/versions/1`)).toBe(generatedValue);

    // Failing calls carrying the marker, each refused for a different reason.
    const connectOverHttp1 = connectClient(SecretsService, keyward.url, await keyward.credentials("service"), "connect-http1");
    const failures: Array<[string, () => Promise<unknown>, Code]> = [
      [
        "bad CRC32C",
        () => service.addSecretVersion({ parent: password, payload: { data: send(marker), dataCrc32c: (crc32c(Buffer.from(marker)) + 1) >>> 0 } }),
        Code.InvalidArgument,
      ],
      ["control character in a PASSWORD", () => service.addSecretVersion({ parent: password, payload: { data: send(`\u0007${marker}`) } }), Code.InvalidArgument],
      ["not JSON", () => service.addSecretVersion({ parent: config, payload: { data: send(`{"password": "${marker}",}`) } }), Code.InvalidArgument],
      ["stale check-and-set", () => service.addSecretVersion({ parent: password, payload: { data: send(marker) }, expectedCurrentVersion: 7n }), Code.Aborted],
      ["no such secret", () => service.addSecretVersion({ parent: "secrets/leak/prod/nothing", payload: { data: send(marker) } }), Code.NotFound],
      ["ADMIN may not write values", () => admin.addSecretVersion({ parent: password, payload: { data: send(marker) } }), Code.PermissionDenied],
      ["over 64 KiB", () => service.addSecretVersion({ parent: password, payload: { data: send(marker.repeat(2000)) } }), Code.InvalidArgument],
      [
        "bad CRC32C over Connect JSON (the value travels as base64)",
        () => connectOverHttp1.addSecretVersion({
          parent: password,
          payload: { data: send(marker), dataCrc32c: 1 },
        }),
        Code.InvalidArgument,
      ],
    ];
    for (const [why, call, code] of failures) {
      const f = await failure(call());
      expect(Code[f.code], why).toBe(Code[code]);
      seen.push(f.everything);
    }
    // A moved copy of the marker's ciphertext fails as DATA_LOSS.
    await service.addSecretVersion({ parent: copy, payload: { data: send(`placeholder-${randomBytes(4).toString("hex")}`) } });
    await sql.query(
      `UPDATE secret_versions SET ciphertext = (SELECT ciphertext FROM secret_versions WHERE secret_name = $1 AND version = 1)
        WHERE secret_name = $2 AND version = 1`,
      [password, copy],
    );
    const moved = await failure(service.accessSecretVersion({ name: `${copy}/versions/1` }));
    expect(moved.code).toBe(Code.DataLoss);
    seen.push(moved.everything);

    // What to look for: any fragment of the marker or of the generated
    // value, in any encoding, wherever it sits in a larger byte string.
    const needles = new Set([...fragments(marker), ...fragments(generatedValue)]);
    const leaks = (haystack: string) => [...needles].filter((needle) => haystack.includes(needle));
    // The scanner finds what it looks for: part of the value, or the value
    // embedded in other bytes and then encoded.
    expect(leaks(`error near "${marker.slice(3, 22)}"`)).not.toEqual([]);
    expect(leaks(Buffer.from(`\u0007${marker}`).toString("base64"))).not.toEqual([]);
    expect(leaks(Buffer.from(`xy${generatedValue}`).toString("base64url"))).not.toEqual([]);
    expect(leaks(`\\x${Buffer.from(`{"p":"${marker}"}`).toString("hex")}`)).not.toEqual([]);

    // Errors the callers saw.
    expect(seen).toHaveLength(failures.length + 1);
    for (const message of seen) {
      expect(leaks(message), message).toEqual([]);
    }

    // Log lines.
    expect(keyward.logs.length).toBeGreaterThan(15);
    for (const line of keyward.logs) {
      expect(leaks(line), line).toEqual([]);
    }

    // Every column of every table, audit_events included, as text.
    const { rows: tables } = await sql.query<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
      [keyward.schema],
    );
    const names = tables.map((t) => t.table_name);
    expect(names).toEqual(expect.arrayContaining(["audit_events", "secrets", "secret_versions", "keys"]));
    let dumped = 0;
    for (const table of names) {
      const { rows } = await sql.query<{ row: string }>(`SELECT t::text AS row FROM "${table.replace(/"/g, '""')}" t`);
      for (const { row } of rows) {
        dumped++;
        expect(leaks(row), `${table}: ${row.slice(0, 200)}`).toEqual([]);
      }
    }
    // The dump covered what was written: the versions and every call's event.
    const { rows: counts } = await sql.query<{ versions: string; events: string }>(
      `SELECT (SELECT count(*) FROM secret_versions WHERE secret_name LIKE 'secrets/leak/%') AS versions,
              (SELECT count(*) FROM audit_events WHERE method LIKE '/keyward.v1.SecretsService/%') AS events`,
    );
    expect(Number(counts[0]!.versions)).toBe(3);
    expect(Number(counts[0]!.events)).toBeGreaterThan(failures.length + 8);
    expect(dumped).toBeGreaterThan(Number(counts[0]!.events));
  });
});
