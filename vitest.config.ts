import { defineConfig } from "vitest/config";

// Unit tests (pure core, protocol, validation, runner pieces), integration tests (the real Worker on workerd
// through Miniflare, real runner processes, real OS processes) and the type check (test/check/) run in one suite.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Builds dist/ from the current sources once per run: integration tests start bin/tendril.js, which loads it.
    globalSetup: ["test/helpers/global-setup.ts"],
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default", "json"],
    outputFile: { json: ".vitest-report.json" },
  },
});
