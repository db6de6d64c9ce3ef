import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Picks (or starts) the PostgreSQL that integration tests use; see the file.
    globalSetup: ["test/setup/global-database.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    fileParallelism: true,
    // Most files spend their time waiting on server processes, TLS and
    // PostgreSQL rather than computing: more files at once than cores keeps
    // a small machine busy (vitest's default is one fewer than the cores).
    maxWorkers: 4,
  },
});
