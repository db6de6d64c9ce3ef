import type { TestProject } from "vitest/node";
import { chooseDatabase, describeDatabase } from "../helpers/choose-database.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** Base PostgreSQL for integration tests; each test file makes its own schema in it. */
    databaseUrl: string;
  }
}

/**
 * vitest globalSetup: chooses the PostgreSQL for the whole run, in this order:
 * `KEYWARD_TEST_DATABASE_URL`, `DATABASE_URL`, the probe URL
 * (`KEYWARD_TEST_PROBE_URL`, default `postgres://postgres@127.0.0.1:5432/test`)
 * if it answers within 2 s, else an embedded PostgreSQL in a fresh temporary
 * folder that the teardown stops and deletes.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const database = await chooseDatabase(process.env.KEYWARD_TEST_DATABASE_URL || process.env.DATABASE_URL);
  project.provide("databaseUrl", database.url);
  console.log(`[keyward tests] ${describeDatabase(database)}`);
  return () => database.release();
}
