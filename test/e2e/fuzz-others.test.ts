import { describeFuzzing, FUZZ_GROUPS } from "../helpers/fuzz-harness.js";

// Every RPC of every other served service (AuditService, AccessService,
// health, reflection, and any service added later): 6,000 calls over real
// mTLS against a `keyward serve` process of its own. With the other
// fuzz-*.test.ts files, 50,000 calls per run (KEYWARD_FUZZ_CALLS for
// deeper runs). Fewer here: audit reads cost more as the log grows by one
// event per call, and hold a database connection each, so fewer run at once. See describeFuzzing for what is
// sent and asserted.
describeFuzzing("AuditService, AccessService, health and reflection", FUZZ_GROUPS.others, 6_000, 48);
