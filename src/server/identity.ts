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

/** id-kp-clientAuth (RFC 5280 §4.2.1.12): the certificate may authenticate a TLS client. */
export const CLIENT_AUTH_OID = "1.3.6.1.5.5.7.3.2";

/** What a connection's certificate establishes: an identity, or why it establishes none. */
export type PeerAuthentication =
  | { readonly identity: Identity; readonly refusal?: undefined }
  | { readonly identity?: undefined; readonly refusal: string };

const NO_NAME = "a client certificate naming the caller (SPIFFE ID or subject CN) is required";

/**
 * Authenticates the peer of a TLS socket whose certificate the TLS layer
 * has verified against the client CA (and CRL). A caller that is refused
 * here reaches no handler: the authentication interceptor answers
 * UNAUTHENTICATED with the refusal, and the call is audited.
 *
 * Refused: a peer TLS did not authorize, a certificate without the
 * clientAuth extended key usage (see {@link certificateRefusal}), and one
 * carrying neither exactly one SPIFFE URI SAN nor a single subject CN.
 */
export function authenticatePeer(socket: TLSSocket): PeerAuthentication {
  const cert = socket.authorized ? socket.getPeerCertificate(false) : undefined;
  if (!cert || Object.keys(cert).length === 0) {
    return { refusal: NO_NAME };
  }
  const refusal = certificateRefusal(cert);
  if (refusal !== undefined) {
    return { refusal };
  }
  const identity = identityFromCertificate(cert);
  return identity === undefined ? { refusal: NO_NAME } : { identity };
}

/**
 * Why a chain-verified certificate may still not authenticate a client, or
 * undefined when it may. Its extended key usage must name clientAuth:
 * OpenSSL already fails the handshake of a certificate whose extended key
 * usage names only other purposes (a server certificate), but accepts one
 * with no extended key usage at all, which RFC 5280 reads as "any purpose".
 * A certificate issued for nothing in particular is not a client credential.
 */
export function certificateRefusal(cert: PeerCertificate): string | undefined {
  if (cert.ext_key_usage?.includes(CLIENT_AUTH_OID)) {
    return undefined;
  }
  const serial = typeof cert.serialNumber === "string" ? cert.serialNumber.toLowerCase() : "?";
  return (
    `the client certificate (serial ${serial}) is not issued for client authentication: ` +
    `its extended key usage must include clientAuth (${CLIENT_AUTH_OID})`
  );
}

/**
 * The identity a certificate names: its one SPIFFE URI SAN, else its one
 * subject CN; undefined when it names nobody unambiguously. SPIFFE
 * (X.509-SVID) requires exactly one URI SAN; a certificate with several
 * spiffe:// URIs is ambiguous and refused rather than guessed at.
 */
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
