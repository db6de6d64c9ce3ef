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
  },
});
