import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AccessService } from "../../gen/keyward/v1/access_pb.js";
import {
  createCertificateAuthority,
  createCrl,
  devPkiPaths,
  issueCertificate,
  loadDevCertificateAuthority,
} from "../../src/dev/pki.js";
import { connectClient } from "../helpers/clients.js";
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
