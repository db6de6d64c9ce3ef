import { describeFuzzing, FUZZ_GROUPS } from "../helpers/fuzz-harness.js";

// Every RPC of CryptoService: 27,000 calls over real mTLS against a
// `keyward serve` process of its own. With the other fuzz-*.test.ts files,
// 100,000 calls per run. See describeFuzzing for what is sent and asserted.
describeFuzzing("CryptoService", FUZZ_GROUPS.crypto, 27_000);
