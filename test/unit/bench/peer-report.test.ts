import { describe, expect, it } from "vitest";
import { kmipServerConfig, parsePeerLine, peerTable, type PeerPhase } from "../../bench/lib/peer-report.js";

const phase = (over: Partial<PeerPhase> = {}): PeerPhase => ({
  target: "keyward",
  caseId: "encrypt-1k",
  concurrency: 16,
  calls: 3000,
  callsPerSecond: 600,
  p50Ms: 20,
  p99Ms: 61.5,
  errors: 0,
  firstError: null,
  serverCpuUsPerCall: 1500,
  ...over,
});

describe("parsePeerLine", () => {
  it("reads a phase line of drive.py", () => {
    expect(parsePeerLine(JSON.stringify(phase()))).toEqual(phase());
    expect(parsePeerLine(JSON.stringify(phase({ target: "kmip", calls: 0, callsPerSecond: 0, p50Ms: null, p99Ms: null, serverCpuUsPerCall: null, errors: 3, firstError: "boom" })))).toMatchObject({ target: "kmip", p99Ms: null, firstError: "boom" });
  });

  it("names every bad field", () => {
    expect(() => parsePeerLine(JSON.stringify({ ...phase(), target: "vault", calls: -1, p99Ms: "1" }))).toThrow("bad target, calls, p99Ms");
    expect(() => parsePeerLine(JSON.stringify({ ...phase(), concurrency: 0 }))).toThrow("bad concurrency");
  });

  it("refuses what is not JSON, or not an object", () => {
    expect(() => parsePeerLine("Traceback (most recent call last):")).toThrow("peer driver: not JSON: Traceback");
    expect(() => parsePeerLine("null")).toThrow("peer driver: a phase line with bad");
  });
});

describe("peerTable", () => {
  it("puts both servers side by side with Keyward over the peer", () => {
    const rows = peerTable(
      [
        phase(),
        phase({ target: "kmip", callsPerSecond: 100, p99Ms: 250, serverCpuUsPerCall: 9000, errors: 2 }),
        phase({ caseId: "sign-rsa2048", concurrency: 1, callsPerSecond: 150, serverCpuUsPerCall: 5000 }),
      ],
      "kmip",
    ).split("\n");
    expect(rows[0]).toContain("| PyKMIP calls/s |");
    expect(rows[2]).toBe("| Encrypt 1 KiB, AES-256-GCM | 16 | 600 | 100 | 6.00 | 61.5 | 250 | 1,500 | 9,000 | 0.17 | 0 / 2 |");
    // A case the peer did not answer shows dashes, not a division by nothing.
    expect(rows[3]).toBe("| Sign RSA-PSS-2048 SHA-256 | 1 | 150 | – | – | 61.5 | – | 5,000 | – | – | 0 / – |");
    expect(rows).toHaveLength(4);
  });
});

describe("kmipServerConfig", () => {
  const paths = { certificate: "/d/pki/server.crt", key: "/d/pki/server.key", ca: "/d/pki/ca.crt", policies: "/w/policies", database: "/w/kmip.db" };

  it("listens on loopback with client certificates, TLS 1.2 and ECDSA suites", () => {
    const text = kmipServerConfig(5696, paths);
    expect(text.split("\n")).toEqual(
      expect.arrayContaining([
        "[server]",
        "hostname=127.0.0.1",
        "port=5696",
        "certificate_path=/d/pki/server.crt",
        "ca_path=/d/pki/ca.crt",
        "auth_suite=TLS1.2",
        "enable_tls_client_auth=True",
        "    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "database_path=/w/kmip.db",
      ]),
    );
  });

  it("refuses a path that would break the file", () => {
    expect(() => kmipServerConfig(5696, { ...paths, database: "/w/x\nport=1" })).toThrow("KMIP server database path has a line break");
  });
});
