import "reflect-metadata";
import { copyFile, rename, writeFile } from "node:fs/promises";
import http2 from "node:http2";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import * as x509 from "@peculiar/x509";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import { AuditService } from "../../gen/keyward/v1/audit_pb.js";
import {
  createCertificateAuthority,
  createCrl,
  devPkiPaths,
  issueCertificate,
  loadDevCertificateAuthority,
  type CertificateAuthority,
} from "../../src/dev/pki.js";
import { CLIENT_AUTH_OID } from "../../src/server/identity.js";
import { connectClient } from "../helpers/clients.js";
import { eventually, outcome } from "../helpers/expect.js";
import { startTestKeyward, type TestKeyward } from "../helpers/keyward.js";

const DAY_MS = 24 * 60 * 60 * 1000;
const REFUSED = /^(closed|ECONNRESET|ERR_SSL_.*ALERT.*)$/;

/** Connects with raw TLS and resolves with the error code the server's alert produced, or "connected". */
function handshake(keyward: TestKeyward, options: { ca: Buffer; cert?: string | Buffer; key?: string | Buffer }): Promise<string> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: "127.0.0.1", port: keyward.port, servername: "localhost", ALPNProtocols: ["h2"], ...options });
    // In TLS 1.3 the server judges the client certificate after the client
    // finishes its side of the handshake: the refusal arrives as an alert on
    // the first read, so wait for data, an error or the close.
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    socket.once("secureConnect", () => {
      socket.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      socket.once("data", () => {
        resolve("connected");
        socket.destroy();
      });
    });
    socket.once("close", () => resolve("closed"));
  });
}

/**
 * A client certificate from `ca` for `spiffe://keyward.local/<name>` whose
 * extended key usage is exactly `usages`, or absent when `usages` is null:
 * what the dev PKI never issues, built here by hand.
 */
async function certificateWithUsages(
  ca: CertificateAuthority,
  name: string,
  usages: string[] | null,
): Promise<{ cert: Buffer; key: Buffer; serial: string }> {
  const issued = await issueCertificate(ca, {
    commonName: name,
    usage: "client",
    spiffeId: `spiffe://keyward.local/${name}`,
    extendedKeyUsages: usages,
  });
  expect(new x509.X509Certificate(issued.certPem).getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? null).toEqual(usages);
  return { cert: Buffer.from(issued.certPem), key: Buffer.from(issued.keyPem), serial: issued.serialNumber };
}

describe("mTLS", () => {
  let keyward: TestKeyward;
  let ca: Buffer;

  beforeAll(async () => {
    keyward = await startTestKeyward();
    ca = (await keyward.credentials("admin")).ca;
  });
  afterAll(() => keyward?.close());

  const callsLogged = () => keyward.logs.filter((line) => JSON.parse(line).msg?.startsWith("call")).length;

  it("accepts a dev client certificate", async () => {
    expect(await handshake(keyward, await keyward.credentials("service"))).toBe("connected");
  });

  it("refuses a client without a certificate, before any handler", async () => {
    const before = callsLogged();
    expect(await handshake(keyward, { ca })).toBe("ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED");
    await expect(connectClient(AccessService, keyward.url, { ca }).getCallerIdentity({})).rejects.toBeInstanceOf(ConnectError);
    expect(callsLogged()).toBe(before);
  });

  it("refuses a certificate from another CA", async () => {
    const otherCa = await createCertificateAuthority({ commonName: "Some other CA" });
    const intruder = await issueCertificate(otherCa, { commonName: "admin", usage: "client", spiffeId: "spiffe://keyward.local/admin" });
    const before = callsLogged();
    // node's TLS server verifies the chain after the handshake and resets the
    // connection without an alert: the client sees the connection end.
    expect(await handshake(keyward, { ca, cert: intruder.certPem, key: intruder.keyPem })).toMatch(REFUSED);
    await expect(
      connectClient(AccessService, keyward.url, { ca, cert: Buffer.from(intruder.certPem), key: Buffer.from(intruder.keyPem) }).getCallerIdentity({}),
    ).rejects.toBeInstanceOf(ConnectError);
    expect(callsLogged()).toBe(before);
  });

  it("refuses an expired certificate from the right CA", async () => {
    const devCa = await loadDevCertificateAuthority(keyward.pki.dir);
    const expired = await issueCertificate(devCa, {
      commonName: "admin",
      usage: "client",
      spiffeId: "spiffe://keyward.local/admin",
      notBefore: new Date(Date.now() - 30 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    const before = callsLogged();
    expect(await handshake(keyward, { ca, cert: expired.certPem, key: expired.keyPem })).toMatch(REFUSED);
    await expect(
      connectClient(AccessService, keyward.url, { ca, cert: Buffer.from(expired.certPem), key: Buffer.from(expired.keyPem) }).getCallerIdentity({}),
    ).rejects.toBeInstanceOf(ConnectError);
    expect(callsLogged()).toBe(before);
  });

  it("refuses a certificate from the right CA that is not valid yet", async () => {
    const devCa = await loadDevCertificateAuthority(keyward.pki.dir);
    const early = await issueCertificate(devCa, {
      commonName: "admin",
      usage: "client",
      spiffeId: "spiffe://keyward.local/admin",
      notBefore: new Date(Date.now() + DAY_MS),
      notAfter: new Date(Date.now() + 30 * DAY_MS),
    });
    const before = callsLogged();
    expect(await handshake(keyward, { ca, cert: early.certPem, key: early.keyPem })).toMatch(REFUSED);
    await expect(
      connectClient(AccessService, keyward.url, { ca, cert: Buffer.from(early.certPem), key: Buffer.from(early.keyPem) }).getCallerIdentity({}),
    ).rejects.toBeInstanceOf(ConnectError);
    expect(callsLogged()).toBe(before);
  });

  it("refuses, at the handshake, a certificate of the right CA whose extended key usage names other purposes (a server certificate)", async () => {
    const devCa = await loadDevCertificateAuthority(keyward.pki.dir);
    const server = await issueCertificate(devCa, { commonName: "admin", usage: "server", dnsNames: ["localhost"] });
    const codeSigning = await certificateWithUsages(devCa, "admin", [x509.ExtendedKeyUsage.codeSigning]);
    const before = callsLogged();
    expect(await handshake(keyward, { ca, cert: server.certPem, key: server.keyPem })).toMatch(REFUSED);
    expect(await handshake(keyward, { ca, cert: codeSigning.cert, key: codeSigning.key })).toMatch(REFUSED);
    expect(callsLogged()).toBe(before);
  });

  it("answers UNAUTHENTICATED, and audits it, to a certificate of the right CA with no extended key usage at all", async () => {
    // TLS lets it through (no extended key usage reads as "any purpose"),
    // so the refusal comes from Keyward, on every call of the connection.
    const devCa = await loadDevCertificateAuthority(keyward.pki.dir);
    const bare = await certificateWithUsages(devCa, "admin", null);
    expect(await handshake(keyward, { ca, cert: bare.cert, key: bare.key })).toBe("connected");
    const message =
      `the client certificate (serial ${bare.serial}) is not issued for client authentication: ` +
      `its extended key usage must include clientAuth (${CLIENT_AUTH_OID})`;
    const access = connectClient(AccessService, keyward.url, { ca, ...bare });
    const audit = connectClient(AuditService, keyward.url, { ca, ...bare });
    for (const call of [access.getCallerIdentity({}), audit.listAuditEvents({})] as Array<Promise<unknown>>) {
      const result = await outcome(call);
      expect({ code: Code[result.code], message: result.message }).toEqual({ code: "Unauthenticated", message });
    }
    // The same certificate with clientAuth added authenticates as admin.
    const withClientAuth = await certificateWithUsages(devCa, "admin", [CLIENT_AUTH_OID]);
    expect((await connectClient(AccessService, keyward.url, { ca, ...withClientAuth }).getCallerIdentity({})).identity).toBe(
      "spiffe://keyward.local/admin",
    );

    const auditor = connectClient(AuditService, keyward.url, await keyward.credentials("auditor"));
    const { events } = await auditor.listAuditEvents({ resultCode: Code.Unauthenticated });
    expect(events.map((e) => [e.method, e.identity, e.resultMessage])).toEqual([
      ["/keyward.v1.AccessService/GetCallerIdentity", "", message],
      ["/keyward.v1.AuditService/ListAuditEvents", "", message],
    ]);
    const lines = keyward.logs.map((line) => JSON.parse(line) as Record<string, unknown>).filter((l) => l.code === "unauthenticated");
    expect(lines.map((l) => l.error)).toEqual([message, message]);
  });

  it("refuses TLS 1.2", async () => {
    const creds = await keyward.credentials("admin");
    const result = await new Promise<string>((resolve) => {
      const socket = tlsConnect({ host: "127.0.0.1", port: keyward.port, servername: "localhost", maxVersion: "TLSv1.2", ...creds });
      socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      socket.once("secureConnect", () => {
        resolve("connected");
        socket.destroy();
      });
    });
    expect(result).toMatch(/PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL/);
  });
});

describe("certificate revocation", () => {
  let keyward: TestKeyward;
  let crlFile: string;
  let revoked: { cert: Buffer; key: Buffer; serialNumber: string };

  beforeAll(async () => {
    keyward = await startTestKeyward(async (dataDir) => {
      const pki = devPkiPaths(join(dataDir, "pki"));
      const ca = await loadDevCertificateAuthority(pki.dir);
      crlFile = join(dataDir, "ca.crl");
      await writeFile(crlFile, await createCrl(ca, []));
      const issued = await issueCertificate(ca, { commonName: "leaver", usage: "client", spiffeId: "spiffe://keyward.local/leaver" });
      revoked = { cert: Buffer.from(issued.certPem), key: Buffer.from(issued.keyPem), serialNumber: issued.serialNumber };
      return {
        KEYWARD_TLS_CERT: pki.serverCert,
        KEYWARD_TLS_KEY: pki.serverKey,
        KEYWARD_TLS_CLIENT_CA: pki.caCert,
        KEYWARD_TLS_CRL: crlFile,
      };
    });
  });
  afterAll(() => keyward?.close());

  it("refuses a certificate once the CRL lists it, without a restart", async () => {
    const { ca } = await keyward.credentials("admin");
    const leaver = { ca, cert: revoked.cert, key: revoked.key };
    const me = await connectClient(AccessService, keyward.url, leaver).getCallerIdentity({});
    expect(me.identity).toBe("spiffe://keyward.local/leaver");

    const devCa = await loadDevCertificateAuthority(keyward.pki.dir);
    await writeFile(crlFile, await createCrl(devCa, [revoked.serialNumber]));
    await expect
      .poll(() => handshake(keyward, { ca, cert: revoked.cert, key: revoked.key }), { timeout: 5000, interval: 250 })
      .toMatch(REFUSED);
    // Other certificates from the same CA still get in, on a fresh connection.
    expect(await handshake(keyward, await keyward.credentials("service"))).toBe("connected");
  });
});

describe("server certificate rotation", () => {
  let keyward: TestKeyward;
  let tlsDir: string;

  /** The serial number and SHA-256 fingerprint of the certificate the server presents on a new connection. */
  function presented(): Promise<{ serial: string; fingerprint: string }> {
    return new Promise((resolve, reject) => {
      const socket = tlsConnect({ host: "127.0.0.1", port: keyward.port, servername: "localhost", rejectUnauthorized: false });
      socket.once("error", reject);
      socket.once("secureConnect", () => {
        const cert = socket.getPeerCertificate();
        resolve({ serial: cert.serialNumber.toLowerCase(), fingerprint: cert.fingerprint256 });
        socket.destroy();
      });
    });
  }

  /** A Connect-protocol GetCallerIdentity over an existing HTTP/2 session: the session's connection, not a new one. */
  function whoAmI(session: http2.ClientHttp2Session): Promise<{ status: number; body: Record<string, unknown> }> {
    return new Promise((resolve, reject) => {
      const stream = session.request({
        ":method": "POST",
        ":path": "/keyward.v1.AccessService/GetCallerIdentity",
        "content-type": "application/json",
        "connect-protocol-version": "1",
      });
      let status = 0;
      let text = "";
      stream.on("response", (headers) => (status = Number(headers[":status"])));
      stream.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")));
      stream.on("end", () => resolve({ status, body: JSON.parse(text) as Record<string, unknown> }));
      stream.on("error", reject);
      stream.end("{}");
    });
  }

  beforeAll(async () => {
    keyward = await startTestKeyward(async (dataDir) => {
      // Files of their own, so rewriting them cannot disturb the dev PKI the clients use.
      const pki = devPkiPaths(join(dataDir, "pki"));
      tlsDir = dataDir;
      await copyFile(pki.serverCert, join(dataDir, "tls.crt"));
      await copyFile(pki.serverKey, join(dataDir, "tls.key"));
      return { KEYWARD_TLS_CERT: join(dataDir, "tls.crt"), KEYWARD_TLS_KEY: join(dataDir, "tls.key"), KEYWARD_TLS_CLIENT_CA: pki.caCert };
    });
  });
  afterAll(() => keyward?.close());

  it("serves a certificate renewed on disk to new connections, without a restart, while open connections keep working", async () => {
    const admin = await keyward.credentials("admin");
    const old = await presented();
    const session = http2.connect(keyward.url, { ca: admin.ca, cert: admin.cert, key: admin.key });
    session.on("error", () => {});
    try {
      expect(await whoAmI(session)).toMatchObject({ status: 200, body: { identity: "spiffe://keyward.local/admin" } });
      const sessionSerial = () => (session.socket as TLSSocket).getPeerCertificate().serialNumber.toLowerCase();
      expect(sessionSerial()).toBe(old.serial);

      // Renewal as cert-manager does it: a new key and certificate, each file replaced whole.
      const renewed = await issueCertificate(await loadDevCertificateAuthority(keyward.pki.dir), {
        commonName: "localhost",
        usage: "server",
        dnsNames: ["localhost"],
        ipAddresses: ["127.0.0.1", "::1"],
      });
      for (const [file, pem] of [
        ["tls.key", renewed.keyPem],
        ["tls.crt", renewed.certPem],
      ] as const) {
        await writeFile(join(tlsDir, `${file}.new`), pem);
        await rename(join(tlsDir, `${file}.new`), join(tlsDir, file));
      }
      const fresh = await eventually(presented, (p) => p.serial === renewed.serialNumber, 8_000, "the renewed certificate on a new connection").catch(
        (err: Error) => {
          // What the server made of the renewal, for a failure that cannot be rerun at will.
          const reloads = keyward.logs.filter((line) => line.includes('"TLS '));
          throw new Error(`${err.message}; the server's TLS log lines: ${reloads.join(" | ") || "none"}`);
        },
      );
      expect(fresh.fingerprint).not.toBe(old.fingerprint);
      expect(keyward.logs.some((line) => line.includes('"TLS material reloaded"'))).toBe(true);

      // New connections verify the renewed certificate and get in...
      const me = await connectClient(AccessService, keyward.url, admin).getCallerIdentity({});
      expect(me.identity).toBe("spiffe://keyward.local/admin");
      // ...and the connection opened before the renewal still answers, on the old certificate.
      expect(await whoAmI(session)).toMatchObject({ status: 200, body: { identity: "spiffe://keyward.local/admin" } });
      expect(sessionSerial()).toBe(old.serial);
      expect(session.closed || session.destroyed).toBe(false);
    } finally {
      session.close();
    }
  });
});
