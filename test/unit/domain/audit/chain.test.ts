import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  chainRecords,
  createChainVerifier,
  encodeEvent,
  GENESIS_HASH,
  hashEvent,
  type ChainBreak,
  type CheckpointClaim,
} from "../../../../src/domain/audit/chain.js";
import type { AuditEvent } from "../../../../src/domain/audit/event.js";
import { auditRecord } from "../../../fixtures/audit.js";


const second = auditRecord({
  time: new Date(Date.UTC(2026, 10, 24, 7, 30, 0, 124)),
  identity: "spiffe://keyward.local/admin",
  roles: [],
  method: "/keyward.v1.KeysService/CreateKey",
  resources: ["keys/a", "keys/b"],
  keyVersion: "",
  resultCode: 7,
  resultMessage: "permission denied: é ✓",
  requestId: "req-2",
  peerAddress: "[::1]:6000",
  policyDigest: "cd".repeat(32),
});

// The documented layout written out by hand: every length and count is a
// literal 4-byte big-endian constant, not computed by any code under test.
const utf8 = (text: string) => Buffer.from(text, "utf8").toString("hex");
const FIRST_ENCODING = Buffer.from(
  [
    "00000016" + utf8("keyward-audit-event-v1"),
    "00000001" + utf8("1"),
    "0000000d" + utf8("1795505400123"),
    "0000001e" + utf8("spiffe://keyward.local/service"),
    "00000001" + "00000007" + utf8("SERVICE"),
    "00000021" + utf8("/keyward.v1.CryptoService/Encrypt"),
    "00000001" + "0000000d" + utf8("keys/payments"),
    "00000018" + utf8("keys/payments/versions/1"),
    "00000001" + utf8("0"),
    "00000000",
    "00000005" + utf8("req-1"),
    "0000000e" + utf8("127.0.0.1:5000"),
    "00000040" + utf8("ab".repeat(32)),
  ].join(""),
  "hex",
);
const SECOND_ENCODING = Buffer.from(
  [
    "00000016" + utf8("keyward-audit-event-v1"),
    "00000001" + utf8("2"),
    "0000000d" + utf8("1795505400124"),
    "0000001c" + utf8("spiffe://keyward.local/admin"),
    "00000000",
    "00000021" + utf8("/keyward.v1.KeysService/CreateKey"),
    "00000002" + "00000006" + utf8("keys/a") + "00000006" + utf8("keys/b"),
    "00000000",
    "00000001" + utf8("7"),
    // 22 characters, 25 bytes: lengths count UTF-8 bytes.
    "00000019" + "7065726d697373696f6e2064656e6965643a20c3a920e29c93",
    "00000005" + utf8("req-2"),
    "0000000a" + utf8("[::1]:6000"),
    "00000040" + utf8("cd".repeat(32)),
  ].join(""),
  "hex",
);
// Computed with `openssl dgst -sha256` over the same bytes written by printf/xxd.
const FIRST_HASH = "592b508acf6a9d14f7ddffd1f573cf25f93bcdcbbe04f5e6ee7206d31fceb8f7";
const SECOND_HASH = "c12fc04c0a6c168d7d1bd7abc64ccd4f9e805f4a356b1afa2e7c5f5866964b0b";

describe("hashEvent known answers", () => {
  it("the hand-built layouts hash (independently) to the pinned digests", () => {
    const sha256 = (...parts: Buffer[]) => createHash("sha256").update(Buffer.concat(parts)).digest("hex");
    expect(sha256(Buffer.alloc(32), FIRST_ENCODING)).toBe(FIRST_HASH);
    expect(sha256(Buffer.from(FIRST_HASH, "hex"), SECOND_ENCODING)).toBe(SECOND_HASH);
  });

  it("encodeEvent produces exactly the documented bytes", () => {
    expect(encodeEvent(1n, auditRecord()).toString("hex")).toBe(FIRST_ENCODING.toString("hex"));
    expect(encodeEvent(2n, second).toString("hex")).toBe(SECOND_ENCODING.toString("hex"));
  });

  it("hashEvent and chainRecords give the pinned digests", () => {
    expect(hashEvent(GENESIS_HASH, 1n, auditRecord()).toString("hex")).toBe(FIRST_HASH);
    expect(hashEvent(Buffer.from(FIRST_HASH, "hex"), 2n, second).toString("hex")).toBe(SECOND_HASH);
    const [a, b] = chainRecords({ sequence: 0n, hash: GENESIS_HASH }, [auditRecord(), second]);
    expect(a!.hash.toString("hex")).toBe(FIRST_HASH);
    expect(b!.previousHash.toString("hex")).toBe(FIRST_HASH);
    expect(b!.hash.toString("hex")).toBe(SECOND_HASH);
  });

  it("moving a value between adjacent fields changes the hash (length prefixes)", () => {
    const joined = hashEvent(GENESIS_HASH, 1n, auditRecord({ requestId: "ab", peerAddress: "c" }));
    const shifted = hashEvent(GENESIS_HASH, 1n, auditRecord({ requestId: "a", peerAddress: "bc" }));
    expect(joined.equals(shifted)).toBe(false);
    const oneList = hashEvent(GENESIS_HASH, 1n, auditRecord({ resources: ["keys/a", "keys/b"] }));
    const twoLists = hashEvent(GENESIS_HASH, 1n, auditRecord({ resources: ["keys/a"], keyVersion: "keys/b" }));
    expect(oneList.equals(twoLists)).toBe(false);
  });
});

/** Six events, numbered 1..6, distinct enough to tell apart. */
function sampleChain(): AuditEvent[] {
  return chainRecords(
    { sequence: 0n, hash: GENESIS_HASH },
    [0, 1, 2, 3, 4, 5].map((i) =>
      auditRecord({ time: new Date(Date.UTC(2026, 0, 1, 0, 0, i)), requestId: `req-${i + 1}`, resultCode: i % 3 }),
    ),
  );
}

function verify(
  events: readonly AuditEvent[],
  options: { start?: bigint; previousHash?: Buffer; end?: bigint; checkpoints?: CheckpointClaim[] } = {},
): { break: ChainBreak | undefined; verified: bigint; lastHash: Buffer } {
  const verifier = createChainVerifier({
    sequence: options.start ?? 1n,
    previousHash: options.previousHash ?? GENESIS_HASH,
    end: options.end,
    checkpoints: options.checkpoints,
  });
  for (const event of events) {
    const found = verifier.add(event);
    if (found) {
      return { break: found, verified: verifier.verified, lastHash: verifier.lastHash };
    }
  }
  return { break: verifier.finish(), verified: verifier.verified, lastHash: verifier.lastHash };
}

describe("chainRecords + createChainVerifier", () => {
  it("chains records after the head, without gaps, and the chain verifies", () => {
    const events = sampleChain();
    expect(events.map((event) => event.sequence)).toEqual([1n, 2n, 3n, 4n, 5n, 6n]);
    expect(events[0]!.previousHash).toEqual(GENESIS_HASH);
    for (let i = 1; i < events.length; i++) {
      expect(events[i]!.previousHash).toEqual(events[i - 1]!.hash);
    }
    const result = verify(events, { end: 6n, checkpoints: [{ sequence: 6n, hash: events[5]!.hash }] });
    expect(result).toEqual({ break: undefined, verified: 6n, lastHash: events[5]!.hash });
  });

  it("continues a chain from a stored head", () => {
    const events = sampleChain();
    const more = chainRecords({ sequence: 6n, hash: events[5]!.hash }, [auditRecord({ requestId: "later" })]);
    expect(more[0]!.sequence).toBe(7n);
    expect(verify([...events, ...more])).toMatchObject({ break: undefined, verified: 7n });
  });

  it("verifies a range starting after 1 from the hash of the event before it", () => {
    const events = sampleChain();
    expect(verify(events.slice(2), { start: 3n, previousHash: events[1]!.hash, end: 6n })).toMatchObject({
      break: undefined,
      verified: 4n,
    });
    expect(verify(events.slice(2), { start: 3n, previousHash: events[0]!.hash }).break).toEqual({
      sequence: 3n,
      reason: "previous_hash mismatch",
    });
  });

  it("ignores checkpoints outside the range", () => {
    const events = sampleChain();
    const checkpoints = [{ sequence: 6n, hash: Buffer.alloc(32, 1) }];
    expect(verify(events.slice(0, 4), { end: 4n, checkpoints }).break).toBeUndefined();
  });
});

type Tamper = (events: AuditEvent[]) => AuditEvent[];
const at = (events: AuditEvent[], sequence: bigint, change: (event: AuditEvent) => AuditEvent): AuditEvent[] =>
  events.map((event) => (event.sequence === sequence ? change(event) : event));
const changeField = (fields: Partial<AuditEvent>): Tamper => (events) => at(events, 3n, (event) => ({ ...event, ...fields }));

describe("tampering is found at the first broken sequence", () => {
  const cases: Array<{
    name: string;
    tamper: Tamper;
    options?: (original: AuditEvent[]) => Parameters<typeof verify>[1];
    expected: ChainBreak;
    verified: bigint;
  }> = [
    { name: "time changed", tamper: changeField({ time: new Date(0) }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "identity changed", tamper: changeField({ identity: "spiffe://keyward.local/admin" }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "roles changed", tamper: changeField({ roles: ["ADMIN"] }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "method changed", tamper: changeField({ method: "/keyward.v1.CryptoService/Decrypt" }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "resource removed", tamper: changeField({ resources: [] }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "key version changed", tamper: changeField({ keyVersion: "keys/payments/versions/2" }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "result code changed", tamper: changeField({ resultCode: 7 }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "result message changed", tamper: changeField({ resultMessage: "ok" }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "request id changed", tamper: changeField({ requestId: "other" }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "peer address changed", tamper: changeField({ peerAddress: "10.0.0.1:1" }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "policy digest changed", tamper: changeField({ policyDigest: "00".repeat(32) }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    { name: "stored hash changed", tamper: changeField({ hash: Buffer.alloc(32, 7) }), expected: { sequence: 3n, reason: "hash mismatch" }, verified: 2n },
    {
      name: "field changed and its hash recomputed",
      tamper: (events) =>
        at(events, 3n, (event) => {
          const forged = { ...event, identity: "someone-else" };
          return { ...forged, hash: hashEvent(forged.previousHash, forged.sequence, forged) };
        }),
      expected: { sequence: 4n, reason: "previous_hash mismatch" },
      verified: 3n,
    },
    {
      name: "event removed",
      tamper: (events) => events.filter((event) => event.sequence !== 3n),
      expected: { sequence: 3n, reason: "missing sequence 3" },
      verified: 2n,
    },
    {
      name: "forged event appended",
      tamper: (events) => [
        ...events,
        { ...auditRecord({ requestId: "forged" }), sequence: 7n, previousHash: events[5]!.hash, hash: Buffer.alloc(32, 9) },
      ],
      expected: { sequence: 7n, reason: "hash mismatch" },
      verified: 6n,
    },
    {
      name: "forged event appended with a made-up previous_hash",
      tamper: (events) => {
        const forged = { ...auditRecord({ requestId: "forged" }), sequence: 7n, previousHash: Buffer.alloc(32, 3) };
        return [...events, { ...forged, hash: hashEvent(forged.previousHash, 7n, forged) }];
      },
      expected: { sequence: 7n, reason: "previous_hash mismatch" },
      verified: 6n,
    },
    {
      name: "two events swapped, sequence numbers swapped with them",
      tamper: (events) => {
        const [third, fourth] = [events[2]!, events[3]!];
        return [...events.slice(0, 2), { ...fourth, sequence: 3n }, { ...third, sequence: 4n }, ...events.slice(4)];
      },
      expected: { sequence: 3n, reason: "previous_hash mismatch" },
      verified: 2n,
    },
    {
      name: "two events delivered out of order",
      tamper: (events) => [...events.slice(0, 2), events[3]!, events[2]!, ...events.slice(4)],
      expected: { sequence: 3n, reason: "missing sequence 3" },
      verified: 2n,
    },
    {
      name: "tail cut with a signed checkpoint beyond it",
      tamper: (events) => events.slice(0, 4),
      options: (original) => ({ checkpoints: [{ sequence: 6n, hash: original[5]!.hash }] }),
      expected: { sequence: 5n, reason: "missing sequence 5: a signed checkpoint covers sequence 6" },
      verified: 4n,
    },
    {
      name: "tail cut short of the requested end",
      tamper: (events) => events.slice(0, 4),
      options: () => ({ end: 6n }),
      expected: { sequence: 5n, reason: "missing sequence 5" },
      verified: 4n,
    },
    {
      name: "chain rewritten consistently from 3, against a checkpoint at 5",
      tamper: (events) => [
        ...events.slice(0, 2),
        ...chainRecords({ sequence: 2n, hash: events[1]!.hash }, events.slice(2).map((event) => ({ ...event, identity: "rewritten" }))),
      ],
      options: (original) => ({ checkpoints: [{ sequence: 5n, hash: original[4]!.hash }] }),
      expected: { sequence: 5n, reason: "hash differs from the signed checkpoint" },
      verified: 4n,
    },
  ];

  for (const { name, tamper, options, expected, verified } of cases) {
    it(name, () => {
      const original = sampleChain();
      // The untampered chain passes under the same options: the break is the tampering's.
      expect(verify(original, options?.(original)).break).toBeUndefined();
      const result = verify(tamper(original), options?.(original));
      expect(result.break).toEqual(expected);
      expect(result.verified).toBe(verified);
    });
  }
});
