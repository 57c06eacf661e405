import { defineConfig } from "vitest/config";

// Unit tests (pure core, protocol, validation, runner pieces) and integration tests (the real Worker on
// workerd through Miniflare, real runner processes, real OS processes) run in one suite.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default", "json"],
    outputFile: { json: ".vitest-report.json" },
  },
});
