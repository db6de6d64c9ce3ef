import "reflect-metadata";
import { randomBytes, webcrypto } from "node:crypto";

type CryptoKey = webcrypto.CryptoKey;
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as never);

const EC_P256 = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;
const DAY_MS = 24 * 60 * 60 * 1000;

/** Trust domain of the SPIFFE IDs in the dev certificates. */
export const DEV_TRUST_DOMAIN = "keyward.local";

/** The client identities `npm start` issues on first run, with their files `<name>.crt`/`<name>.key`. */
export const DEV_CLIENTS = ["admin", "service", "auditor"] as const;

/** The SPIFFE ID a dev client certificate carries. */
export function devSpiffeId(name: string): string {
  return `spiffe://${DEV_TRUST_DOMAIN}/${name}`;
}

/** A certificate authority able to sign: its certificate and private key. */
export interface CertificateAuthority {
  readonly certificate: x509.X509Certificate;
  readonly privateKey: CryptoKey;
}

/** PEM text of an issued certificate and its PKCS#8 private key. */
export interface IssuedCertificate {
  readonly certPem: string;
  readonly keyPem: string;
}

/** Creates a self-signed CA (ECDSA P-256). */
export async function createCertificateAuthority(options: { commonName: string; days?: number }): Promise<
  CertificateAuthority & IssuedCertificate
> {
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
  const now = Date.now();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=${options.commonName}`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + (options.days ?? 3650) * DAY_MS),
    signingAlgorithm: EC_P256,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return {
    certificate,
    privateKey: keys.privateKey,
    certPem: certificate.toString("pem"),
    keyPem: await privateKeyPem(keys.privateKey),
  };
}

/**
 * Issues a leaf certificate signed by `ca`, its subject `CN=<commonName>` or
 * the distinguished name `subject`.
 *
 * - `usage: "server"` adds serverAuth and the given DNS names and IP addresses;
 * - `usage: "client"` adds clientAuth and, when given, the SPIFFE ID as a URI SAN.
 *
 * `notBefore`/`notAfter` default to a minute ago and `days` (default 825) from now;
 * tests pass past dates to make expired certificates. `extendedKeyUsages`
 * replaces the usage's own (OIDs; null: no extension at all), for tests of
 * certificates the dev PKI would never issue.
 */
export async function issueCertificate(
  ca: CertificateAuthority,
  options: ({ commonName: string } | { subject: string }) & {
    usage: "server" | "client";
    spiffeId?: string;
    dnsNames?: readonly string[];
    ipAddresses?: readonly string[];
    days?: number;
    notBefore?: Date;
    notAfter?: Date;
    extendedKeyUsages?: readonly string[] | null;
  },
): Promise<IssuedCertificate & { serialNumber: string }> {
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
  const now = Date.now();
  const names: x509.JsonGeneralName[] = [
    ...(options.dnsNames ?? []).map((value) => ({ type: "dns" as const, value })),
    ...(options.ipAddresses ?? []).map((value) => ({ type: "ip" as const, value })),
    ...(options.spiffeId ? [{ type: "url" as const, value: options.spiffeId }] : []),
  ];
  const serial = serialNumber();
  const usages =
    options.extendedKeyUsages !== undefined
      ? options.extendedKeyUsages
      : [options.usage === "server" ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth];
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: serial,
    subject: "subject" in options ? options.subject : `CN=${options.commonName}`,
    issuer: ca.certificate.subject,
    notBefore: options.notBefore ?? new Date(now - 60_000),
    notAfter: options.notAfter ?? new Date(now + (options.days ?? 825) * DAY_MS),
    signingAlgorithm: EC_P256,
    publicKey: keys.publicKey,
    signingKey: ca.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      ...(usages === null ? [] : [new x509.ExtendedKeyUsageExtension([...usages], false)]),
      ...(names.length > 0 ? [new x509.SubjectAlternativeNameExtension(names, false)] : []),
      await x509.AuthorityKeyIdentifierExtension.create(ca.certificate, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: certificate.toString("pem"), keyPem: await privateKeyPem(keys.privateKey), serialNumber: serial };
}

/** A PEM CRL signed by `ca` revoking the given serial numbers (hex), valid for `days` (default 30). */
export async function createCrl(ca: CertificateAuthority, revokedSerials: readonly string[], days = 30): Promise<string> {
  const now = Date.now();
  const crl = await x509.X509CrlGenerator.create({
    issuer: ca.certificate.subject,
    thisUpdate: new Date(now - 60_000),
    nextUpdate: new Date(now + days * DAY_MS),
    signingAlgorithm: EC_P256,
    signingKey: ca.privateKey,
    // An empty revokedCertificates SEQUENCE is invalid DER (OpenSSL refuses it): omit it instead.
    ...(revokedSerials.length > 0
      ? { entries: revokedSerials.map((serialNumber) => ({ serialNumber, revocationDate: new Date(now - 60_000) })) }
      : {}),
    extensions: [await x509.AuthorityKeyIdentifierExtension.create(ca.certificate, false)],
  });
  // OpenSSL (and so node:tls) reads only the "X509 CRL" PEM label.
  return x509.PemConverter.encode(crl.rawData, "X509 CRL");
}

/** Files of the dev PKI in `<data>/pki`. */
export function devPkiPaths(dir: string) {
  return {
    dir,
    caCert: join(dir, "ca.crt"),
    caKey: join(dir, "ca.key"),
    serverCert: join(dir, "server.crt"),
    serverKey: join(dir, "server.key"),
    client: (name: string) => ({ cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) }),
  };
}

/**
 * Creates the dev PKI in `dir` unless `ca.crt` is already there: a CA, a
 * server certificate for localhost/127.0.0.1/::1 and one client certificate
 * per {@link DEV_CLIENTS} name carrying its {@link devSpiffeId}.
 *
 * @returns whether anything was created.
 */
export async function ensureDevPki(dir: string): Promise<boolean> {
  if (existsSync(devPkiPaths(dir).caCert)) {
    return false;
  }
  // Built in a private folder and renamed into place, so that a crash leaves
  // no half PKI and two first starts at once cannot mix two CAs.
  await mkdir(dirname(dir), { recursive: true });
  const staging = await mkdtemp(`${dir}.partial-`);
  const paths = devPkiPaths(staging);
  try {
    const ca = await createCertificateAuthority({ commonName: "Keyward development CA (not for production)" });
    await writePair(paths.caCert, paths.caKey, ca);
    const server = await issueCertificate(ca, {
      commonName: "localhost",
      usage: "server",
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1", "::1"],
    });
    await writePair(paths.serverCert, paths.serverKey, server);
    for (const name of DEV_CLIENTS) {
      const client = paths.client(name);
      const issued = await issueCertificate(ca, { commonName: name, usage: "client", spiffeId: devSpiffeId(name) });
      await writePair(client.cert, client.key, issued);
    }
    if (existsSync(dir) && !existsSync(devPkiPaths(dir).caCert)) {
      // Left behind without its CA: unusable, replace it.
      await rm(dir, { recursive: true, force: true });
    }
    await rename(staging, dir);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if ((code === "ENOTEMPTY" || code === "EEXIST") && existsSync(devPkiPaths(dir).caCert)) {
      return false;
    }
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** Loads the dev CA from `dir` so that more certificates can be issued. */
export async function loadDevCertificateAuthority(dir: string): Promise<CertificateAuthority> {
  const paths = devPkiPaths(dir);
  const certificate = new x509.X509Certificate(await readFile(paths.caCert, "utf8"));
  const der = x509.PemConverter.decodeFirst(await readFile(paths.caKey, "utf8"));
  const privateKey = await webcrypto.subtle.importKey("pkcs8", der, EC_P256, false, ["sign"]);
  return { certificate, privateKey };
}

async function writePair(certFile: string, keyFile: string, issued: IssuedCertificate): Promise<void> {
  await writeFile(keyFile, issued.keyPem, { mode: 0o600 });
  await writeFile(certFile, issued.certPem, { mode: 0o644 });
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

/** A positive 128-bit serial number in hex (RFC 5280 allows up to 20 octets). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  return bytes.toString("hex");
}
