import type { PeerCertificate, TLSSocket } from "node:tls";

/** Who the caller is, as proven by its verified client certificate. */
export interface Identity {
  /** The SPIFFE ID when the certificate has one, else the subject common name. */
  readonly name: string;
  readonly source: "spiffe-id" | "common-name";
  readonly certificate: {
    readonly subject: string;
    /** Lower-case hex. */
    readonly serialNumber: string;
    readonly notBefore: Date;
    readonly notAfter: Date;
    /** RFC 4514 string form, most specific attribute first (`CN=admin,O=Example`). */
    /** Lower-case hex SHA-256 of the DER certificate. */
    readonly sha256Fingerprint: string;
  };
}

/**
 * Derives the identity from a TLS socket whose peer certificate the TLS layer
 * has verified against the client CA. Returns undefined when the peer is not
 * authorized by TLS, or its certificate carries neither exactly one SPIFFE
 * URI SAN nor a single subject CN: such a caller reaches no handler.
 *
 * SPIFFE (X.509-SVID) requires exactly one URI SAN; a certificate with
 * several spiffe:// URIs is ambiguous and refused rather than guessed at.
 */
export function identityFromSocket(socket: TLSSocket): Identity | undefined {
  if (!socket.authorized) {
    return undefined;
  }
  const cert = socket.getPeerCertificate(false);
  if (!cert || Object.keys(cert).length === 0) {
    return undefined;
  }
  return identityFromCertificate(cert);
}

export function identityFromCertificate(cert: PeerCertificate): Identity | undefined {
  const spiffeIds = (cert.subjectaltname ?? "")
    .split(/,\s*/)
    .filter((entry) => entry.startsWith("URI:spiffe://"))
    .map((entry) => entry.slice("URI:".length));
  let name: string;
  let source: Identity["source"];
  if (spiffeIds.length === 1) {
    name = spiffeIds[0]!;
    source = "spiffe-id";
  } else if (spiffeIds.length === 0 && typeof cert.subject?.CN === "string" && cert.subject.CN.length > 0) {
    name = cert.subject.CN;
    source = "common-name";
  } else {
    return undefined;
  }
  return {
    name,
    source,
    certificate: {
      subject: rfc4514(cert.subject ?? {}),
      serialNumber: cert.serialNumber.toLowerCase(),
      notBefore: new Date(cert.valid_from),
      notAfter: new Date(cert.valid_to),
      sha256Fingerprint: cert.fingerprint256.replaceAll(":", "").toLowerCase(),
    },
  };
}

function rfc4514(subject: Record<string, string | string[] | undefined>): string {
  const escape = (value: string) => value.replace(/[,+"\\<>;=]/g, "\\$&").replace(/^[ #]|[ ]$/g, "\\$&");
  return Object.entries(subject)
    .reverse()
    .map(([type, value]) => (Array.isArray(value) ? value : [value ?? ""]).map((v) => `${type}=${escape(v)}`).join("+"))
    .join(",");
}
