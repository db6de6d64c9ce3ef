import { randomBytes } from "node:crypto";
import { toJsonString, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { AuditEventSchema, AuditService } from "../../gen/keyward/v1/audit_pb.js";
import { CryptoService } from "../../gen/keyward/v1/crypto_pb.js";
import { KeyAlgorithm, KeyPurpose, KeysService } from "../../gen/keyward/v1/keys_pb.js";
import { GenerateSecretFormat, SecretsService, SecretType } from "../../gen/keyward/v1/secrets_pb.js";
import { crc32c } from "../../src/crypto/crc32c.js";
import { createPool } from "../../src/storage/pg/pool.js";
import { connectClient } from "../helpers/clients.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";
import { valueForms } from "../helpers/value-forms.js";

/**
 * The leak scan. Random markers are sent as plaintext, secret values and
 * associated data, in text and as raw bytes, over gRPC (binary) and the
 * Connect protocol (JSON, where bytes travel as base64), in calls that
 * succeed and in calls refused by validation, by authorization, by the
 * handler or by a failed decryption; the values the server generates
 * (GenerateSecret's secret, GenerateDataKey's data key) join the markers
 * once returned. Then every sink is searched for every marker, in every
 * form it could take (the text, hex in both cases, base64 and base64url at
 * each alignment inside a longer byte string):
 *
 * - the server's log lines;
 * - every error a caller got: message, details, trailers;
 * - every audit event, as stored (SQL) and as AuditService serves it;
 * - a Prometheus scrape of the metrics endpoint;
 * - every column of every table of the schema, as text (bytea as hex) and,
 *   for bytea columns, as raw bytes.
 *
 * And the operator's secrets: the root key and the database password never
 * appear in a log line or an error either.
 */

describe("the leak scan: no marker in logs, errors, audit events, metrics or any database column", () => {
  const rootKey = randomBytes(32).toString("base64");
  const password = `pw-${randomBytes(12).toString("hex")}`;
  const markers: Record<string, Buffer> = {
    plaintext: Buffer.from(`plaintext-${randomBytes(12).toString("hex")}`),
    secretValue: Buffer.from(`secret-${randomBytes(12).toString("hex")}`),
    associatedData: Buffer.from(`aad-${randomBytes(12).toString("hex")}`),
    rawPlaintext: randomBytes(24),
    rawSecret: randomBytes(24),
    rawAssociatedData: randomBytes(24),
  };
  let keyward: TestKeyward;
  let sql: pg.Pool;
  /** What callers got back from failing calls: message, details, trailers. */
  const errors: string[] = [];
  const codes: string[] = [];

  const leaks = (haystack: string | Buffer) =>
    Object.entries(markers).flatMap(([name, value]) => {
      const found = valueForms(value)
        .filter((form) => haystack.includes(form))
        .map((form) => `${name} as ${JSON.stringify(form)}`);
      // Raw bytes in a byte string (a bytea column).
      if (Buffer.isBuffer(haystack) && haystack.includes(value)) found.push(`${name} as raw bytes`);
      return found;
    });

  async function expectCode(call: Promise<unknown>, code: Code | 0, what: string): Promise<void> {
    try {
      await call;
      codes.push(`${what}: OK`);
    } catch (err) {
      const error = ConnectError.from(err);
      codes.push(`${what}: ${Code[error.code]}`);
      const details = error.details.map((d) => {
        if ("desc" in d) return JSON.stringify(d.value, (_k, v) => (typeof v === "bigint" ? String(v) : v));
        const bytes = Buffer.from(d.value);
        return `${d.type} ${bytes.toString("latin1")} ${bytes.toString("hex")} ${bytes.toString("base64")} ${JSON.stringify(d.debug ?? null)}`;
      });
      errors.push([error.message, ...details, ...[...error.metadata.entries()].map(([k, v]) => `${k}: ${v}`)].join("\n"));
    }
    expect(codes.at(-1)).toBe(`${what}: ${code === 0 ? "OK" : Code[code]}`);
  }

  beforeAll(async () => {
    const url = new URL(inject("databaseUrl"));
    // Trust authentication ignores the password, so one can be added to see
    // whether it leaks; an embedded test database has a real one already.
    if (url.password === "") {
      url.password = password;
    }
    keyward = await startTestKeyward({ KEYWARD_ROOT_KEY: rootKey, DATABASE_URL: url.toString(), KEYWARD_METRICS_LISTEN: "127.0.0.1:0" });
    sql = createPool({ connectionString: inject("databaseUrl"), schema: keyward.schema, max: 2, applicationName: "keyward-test" });
  });
  afterAll(async () => {
    await sql?.end();
    await keyward?.close();
  });

  it("finds a marker in any of its forms (the scanner itself works)", () => {
    const marker = markers.rawPlaintext!;
    expect(leaks("nothing here")).toEqual([]);
    expect(leaks(`x${markers.plaintext!.toString("latin1")}y`)).not.toEqual([]);
    expect(leaks(`\\x00${marker.toString("hex")}`)).not.toEqual([]);
    expect(leaks(`\\x00${marker.toString("hex").toUpperCase()}`)).not.toEqual([]);
    expect(leaks(Buffer.concat([randomBytes(7), marker, randomBytes(3)]))).not.toEqual([]);
    for (const shift of [0, 1, 2]) {
      const embedded = Buffer.concat([randomBytes(shift), marker, randomBytes(5)]);
      expect(leaks(embedded.toString("base64")), `base64, shift ${shift}`).not.toEqual([]);
      expect(leaks(embedded.toString("base64url")), `base64url, shift ${shift}`).not.toEqual([]);
    }
  });

  it("holds for every sink, after successful, refused, invalid and failing calls over gRPC and Connect JSON", async () => {
    const admin = await keyward.credentials("admin");
    const service = await keyward.credentials("service");
    const keys = connectClient(KeysService, keyward.url, admin);
    const adminSecrets = connectClient(SecretsService, keyward.url, admin);
    for (const [keyId, purpose, algorithm] of [
      ["leak-aes", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.AES_256_GCM],
      ["leak-chacha", KeyPurpose.ENCRYPT_DECRYPT, KeyAlgorithm.CHACHA20_POLY1305],
      ["leak-sign", KeyPurpose.SIGN_VERIFY, KeyAlgorithm.ECDSA_P256_SHA256],
      ["leak-mac", KeyPurpose.MAC, KeyAlgorithm.HMAC_SHA256],
    ] as const) {
      await keys.createKey({ keyId, key: { purpose, algorithm } });
    }
    for (const [id, type] of [
      ["grpc/value", SecretType.OPAQUE],
      ["connect/value", SecretType.OPAQUE],
      ["grpc/generated", SecretType.API_KEY],
      ["connect/generated", SecretType.PASSWORD],
      ["grpc/config", SecretType.JSON],
      ["connect/config", SecretType.JSON],
    ] as const) {
      await adminSecrets.createSecret({ parent: "secrets/leak/prod", secretId: id, secret: { type } });
    }

    const plaintexts = [markers.plaintext!, markers.rawPlaintext!];
    const aads = [markers.associatedData!, markers.rawAssociatedData!];
    const values = [markers.secretValue!, markers.rawSecret!];
    for (const protocol of ["grpc", "connect"] as const) {
      const client = <S extends DescService>(s: S, who = service): Client<S> => connectClient(s, keyward.url, who, protocol);
      const crypto = client(CryptoService);
      const secrets = client(SecretsService);
      const tag = (what: string) => `${protocol} ${what}`;

      // Successful uses of keys, every value a marker.
      for (const name of ["keys/leak-aes", "keys/leak-chacha"]) {
        for (const [i, plaintext] of plaintexts.entries()) {
          const associatedData = aads[i]!;
          const sealed = await crypto.encrypt({ name, plaintext, associatedData });
          const opened = await crypto.decrypt({ name, ciphertext: sealed.ciphertext, associatedData });
          expect(Buffer.from(opened.plaintext)).toEqual(plaintext);
          await crypto.reEncrypt({ name, ciphertext: sealed.ciphertext, associatedData, destinationKey: "keys/leak-aes", destinationAssociatedData: associatedData });
          const batch = await crypto.batchEncrypt({ name, items: [{ plaintext, associatedData }] });
          const [item] = batch.results;
          expect(item?.result.case).toBe("ciphertext");
          if (item?.result.case === "ciphertext") {
            await crypto.batchDecrypt({ name, items: [{ ciphertext: item.result.value, associatedData }] });
          }
          // Decryption failures: the marker as associated data, the wrong one.
          await expectCode(crypto.decrypt({ name, ciphertext: sealed.ciphertext, associatedData: plaintext }), Code.InvalidArgument, tag("decrypt, other associated data"));
          const dataKey = await crypto.generateDataKey({ name, length: { case: "numberOfBytes", value: 32 }, associatedData });
          markers[`${protocol} data key ${name} ${i}`] = Buffer.from(dataKey.plaintext);
        }
      }
      await crypto.sign({ name: "keys/leak-sign", input: { case: "message", value: markers.plaintext! } });
      const { mac } = await crypto.mac({ name: "keys/leak-mac", data: markers.rawPlaintext! });
      expect((await crypto.verifyMac({ name: "keys/leak-mac", data: markers.plaintext!, mac })).valid).toBe(false);

      // Secret values written and read, and one generated.
      for (const [i, data] of values.entries()) {
        await secrets.addSecretVersion({ parent: `secrets/leak/prod/${protocol}/value`, payload: { data } });
        const read = await secrets.accessSecretVersion({ name: `secrets/leak/prod/${protocol}/value/versions/${i + 1}` });
        expect(Buffer.from(read.payload!.data)).toEqual(data);
      }
      await connectClient(SecretsService, keyward.url, admin, protocol).rollbackSecret({ name: `secrets/leak/prod/${protocol}/value`, version: 1n });
      const generated = await secrets.generateSecret({
        parent: `secrets/leak/prod/${protocol}/generated`,
        spec:
          protocol === "grpc"
            ? { length: 48, format: GenerateSecretFormat.BASE64URL }
            : { length: 40, format: GenerateSecretFormat.PASSWORD, requireDigit: true, requireSymbol: true },
      });
      markers[`${protocol} generated secret`] = Buffer.from(generated.payload!.data);

      // Calls refused or failing, carrying the markers.
      await expectCode(crypto.encrypt({ name: "keys/leak-none", plaintext: markers.plaintext!, associatedData: markers.associatedData! }), Code.NotFound, tag("encrypt, no such key"));
      await expectCode(crypto.encrypt({ name: "keys/NOT VALID", plaintext: markers.rawPlaintext!, associatedData: markers.rawAssociatedData! }), Code.InvalidArgument, tag("encrypt, invalid name"));
      await expectCode(
        crypto.encrypt({ name: "keys/leak-aes", plaintext: Buffer.concat(Array(11_000).fill(markers.plaintext!)) }),
        Code.InvalidArgument,
        tag("encrypt, plaintext over the limit"),
      );
      await expectCode(crypto.encrypt({ name: "keys/leak-mac", plaintext: markers.plaintext! }), Code.FailedPrecondition, tag("encrypt with a MAC key"));
      await expectCode(client(CryptoService, admin).encrypt({ name: "keys/leak-aes", plaintext: markers.plaintext! }), Code.PermissionDenied, tag("ADMIN may not encrypt"));
      await expectCode(
        secrets.addSecretVersion({ parent: `secrets/leak/prod/${protocol}/value`, payload: { data: markers.secretValue!, dataCrc32c: (crc32c(markers.secretValue!) + 1) >>> 0 } }),
        Code.InvalidArgument,
        tag("secret value with a wrong CRC32C"),
      );
      await expectCode(
        secrets.addSecretVersion({ parent: `secrets/leak/prod/${protocol}/config`, payload: { data: Buffer.from(`{"password": "${markers.secretValue!.toString("latin1")}",}`) } }),
        Code.InvalidArgument,
        tag("secret value that is not JSON"),
      );
      await expectCode(
        secrets.addSecretVersion({ parent: `secrets/leak/prod/${protocol}/value`, payload: { data: markers.rawSecret! }, expectedCurrentVersion: 99n }),
        Code.Aborted,
        tag("secret value, stale check-and-set"),
      );
      await expectCode(client(SecretsService, admin).addSecretVersion({ parent: `secrets/leak/prod/${protocol}/value`, payload: { data: markers.secretValue! } }), Code.PermissionDenied, tag("ADMIN may not write values"));
      // (Names are not secret: a key id is recorded wherever the call is. A
      // refused request's other fields are not.)
      await expectCode(keys.createKey({ keyId: "NOT VALID", key: { description: markers.secretValue!.toString("latin1") } }), Code.InvalidArgument, tag("a marker in a refused request"));
      await expectCode(client(AccessService).getCallerIdentity({}), 0, tag("control call"));
    }
    expect(errors.length).toBeGreaterThanOrEqual(20);
    // Two data keys per key per protocol, and a generated secret per protocol.
    expect(Object.keys(markers)).toHaveLength(6 + 2 * 2 * 2 + 2);

    // 1. Log lines (one access line per call at least).
    expect(keyward.logs.length).toBeGreaterThan(100);
    expect(leaks(keyward.logs.join("\n"))).toEqual([]);

    // 2. Errors the callers saw.
    expect(leaks(errors.join("\n"))).toEqual([]);

    // 3. The audit log, as stored and as served.
    const { rows: stored } = await sql.query<{ row: string }>("SELECT e::text AS row FROM audit_events e ORDER BY sequence");
    expect(stored.length).toBeGreaterThan(100);
    expect(leaks(stored.map((r) => r.row).join("\n"))).toEqual([]);
    const auditor = connectClient(AuditService, keyward.url, await keyward.credentials("auditor"));
    const served: string[] = [];
    for (let pageToken = ""; ; ) {
      const page = await auditor.listAuditEvents({ pageSize: 500, pageToken });
      served.push(...page.events.map((event) => toJsonString(AuditEventSchema, event)));
      if (page.nextPageToken === "") break;
      pageToken = page.nextPageToken;
    }
    expect(served.length).toBeGreaterThanOrEqual(stored.length);
    expect(leaks(served.join("\n"))).toEqual([]);

    // 4. The metrics endpoint.
    const metricsAddress = keyward.running.metricsAddress!;
    const scrape = await (await fetch(`http://${metricsAddress.address}:${metricsAddress.port}/metrics`)).text();
    expect(scrape).toContain('keyward_rpc_calls_total{method="/keyward.v1.CryptoService/Encrypt",code="INVALID_ARGUMENT"}');
    expect(leaks(scrape)).toEqual([]);

    // 5. Every column of every table: each row as text (bytea as hex), and every bytea value as raw bytes.
    const { rows: columns } = await sql.query<{ table_name: string; column_name: string; data_type: string }>(
      `SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE' ORDER BY c.table_name, c.ordinal_position`,
      [keyward.schema],
    );
    const tables = [...new Set(columns.map((c) => c.table_name))];
    expect(tables).toEqual(expect.arrayContaining(["audit_events", "key_versions", "keys", "secret_versions", "secrets"]));
    let rowsScanned = 0;
    let byteaValues = 0;
    for (const table of tables) {
      const { rows } = await sql.query<{ row: string }>(`SELECT t::text AS row FROM ${pg.escapeIdentifier(table)} t`);
      rowsScanned += rows.length;
      expect(leaks(rows.map((r) => r.row).join("\n")), table).toEqual([]);
      for (const { column_name: column } of columns.filter((c) => c.table_name === table && c.data_type === "bytea")) {
        const { rows: blobs } = await sql.query<{ v: Buffer | null }>(`SELECT ${pg.escapeIdentifier(column)} AS v FROM ${pg.escapeIdentifier(table)}`);
        for (const { v } of blobs) {
          if (v === null) continue;
          byteaValues++;
          expect(leaks(v), `${table}.${column}`).toEqual([]);
        }
      }
    }
    // The scan covered what was written: both secret values' versions, the keys' material, every call's event.
    const { rows: counts } = await sql.query<{ versions: string; material: string }>(
      `SELECT (SELECT count(*) FROM secret_versions WHERE secret_name LIKE 'secrets/leak/%' AND ciphertext IS NOT NULL) AS versions,
              (SELECT count(*) FROM key_versions WHERE wrapped_material IS NOT NULL) AS material`,
    );
    expect(Number(counts[0]!.versions)).toBe(2 * 4);
    expect(byteaValues).toBeGreaterThan(2 * stored.length);
    expect(rowsScanned).toBeGreaterThan(stored.length + Number(counts[0]!.versions) + Number(counts[0]!.material));

    // And the operator's secrets, in logs and errors.
    const text = `${keyward.logs.join("\n")}\n${errors.join("\n")}`;
    expect(text).toContain('"method":"/keyward.v1.CryptoService/Encrypt"');
    for (const needle of [rootKey, password, Buffer.from(rootKey, "base64").toString("hex")]) {
      expect(text).not.toContain(needle);
    }
  });
});
