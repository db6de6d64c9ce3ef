import { describeFuzzing, FUZZ_GROUPS } from "../helpers/fuzz-harness.js";

// Every RPC of CryptoService: 13,500 calls over real mTLS against a
// `keyward serve` process of its own. With the other fuzz-*.test.ts files,
// 50,000 calls per run (KEYWARD_FUZZ_CALLS for deeper runs). See
// describeFuzzing for what is sent and asserted.
describeFuzzing("CryptoService", FUZZ_GROUPS.crypto, 13_500);
