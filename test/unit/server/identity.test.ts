import type { PeerCertificate } from "node:tls";
import { describe, expect, it } from "vitest";
import { certificateRefusal, CLIENT_AUTH_OID, identityFromCertificate } from "../../../src/server/identity.js";

function peer(fields: { cn?: string | string[]; san?: string; o?: string }): PeerCertificate {
  return {
    subject: { ...(fields.o ? { O: fields.o } : {}), ...(fields.cn !== undefined ? { CN: fields.cn } : {}) },
    subjectaltname: fields.san,
    serialNumber: "0A1B2C",
    valid_from: "Nov 24 06:00:00 2026 GMT",
    valid_to: "Nov 24 06:00:00 2027 GMT",
    fingerprint256: "AB:CD:EF",
  } as unknown as PeerCertificate;
}

describe("identityFromCertificate", () => {
  it("prefers the SPIFFE ID over the common name", () => {
    const identity = identityFromCertificate(peer({ cn: "admin", san: "DNS:host.example, URI:spiffe://prod.example/ns/a/sa/b" }));
    expect(identity).toMatchObject({ name: "spiffe://prod.example/ns/a/sa/b", source: "spiffe-id" });
  });

  it("falls back to the subject CN, ignoring non-SPIFFE URIs", () => {
    expect(identityFromCertificate(peer({ cn: "billing", san: "URI:https://example.com/x" }))).toMatchObject({
      name: "billing",
      source: "common-name",
    });
  });

  it.each([
    ["two SPIFFE IDs (ambiguous)", { cn: "a", san: "URI:spiffe://a/x, URI:spiffe://a/y" }],
    ["neither SPIFFE ID nor CN", { o: "Example" }],
    ["several CNs", { cn: ["a", "b"] }],
    ["an empty CN", { cn: "" }],
  ])("names nobody for %s", (_name, fields) => {
    expect(identityFromCertificate(peer(fields))).toBeUndefined();
  });

  it("describes the certificate in canonical forms", () => {
    const identity = identityFromCertificate(peer({ cn: "svc,1", o: "Example Inc" }))!;
    expect(identity.certificate).toEqual({
      subject: "CN=svc\\,1,O=Example Inc",
      serialNumber: "0a1b2c",
      notBefore: new Date("2026-11-24T06:00:00Z"),
      notAfter: new Date("2027-11-24T06:00:00Z"),
      sha256Fingerprint: "abcdef",
    });
  });
});

describe("certificateRefusal", () => {
  const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
  const withUsage = (ext_key_usage: string[] | undefined) =>
    ({ ...peer({ cn: "svc" }), ...(ext_key_usage ? { ext_key_usage } : {}) }) as PeerCertificate;

  it.each([
    ["clientAuth alone", [CLIENT_AUTH_OID]],
    ["clientAuth among others (an X.509-SVID has serverAuth and clientAuth)", [SERVER_AUTH, CLIENT_AUTH_OID]],
  ])("accepts %s", (_name, usages) => {
    expect(certificateRefusal(withUsage(usages))).toBeUndefined();
  });

  it.each([
    ["no extended key usage at all", undefined],
    ["serverAuth only (a server certificate)", [SERVER_AUTH]],
    ["anyExtendedKeyUsage", ["2.5.29.37.0"]],
    ["an empty list", []],
  ])("refuses %s, naming the certificate's serial and the usage it lacks", (_name, usages) => {
    expect(certificateRefusal(withUsage(usages))).toBe(
      `the client certificate (serial 0a1b2c) is not issued for client authentication: its extended key usage must include clientAuth (${CLIENT_AUTH_OID})`,
    );
  });
});
