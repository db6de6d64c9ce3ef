import type { PeerCertificate } from "node:tls";
import { describe, expect, it } from "vitest";
import { identityFromCertificate } from "../../../src/server/identity.js";

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
