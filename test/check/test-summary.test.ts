// `.ci/run` ends with the plain line "N passed, N failed" made by scripts/test-summary.mjs from vitest's JSON
// report: each failed test counts once (a failed type check too), and so does a test file that failed to load.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT } from "../helpers/processes.js";

const dir = mkdtempSync(join(tmpdir(), "tendril-summary-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs the summary script on a report and returns its line and exit code. */
function summarize(report: unknown): { line: string; code: number | null } {
  const path = join(dir, `report-${Math.random().toString(36).slice(2)}.json`);
  if (report !== undefined) writeFileSync(path, JSON.stringify(report));
  const result = spawnSync(process.execPath, [join(ROOT, "scripts", "test-summary.mjs"), path], { encoding: "utf8", timeout: 10_000 });
  return { line: result.stdout.trim(), code: result.status };
}

/** A test file of a vitest JSON report with tests in these states. */
function file(name: string, states: string[], status = states.includes("failed") ? "failed" : "passed") {
  return { name, status, assertionResults: states.map((state, i) => ({ title: `test ${i}`, status: state })) };
}

describe("the CI summary line", () => {
  it("counts a failed test inside a describe block once, though vitest counts the block as a failed suite too", () => {
    // What vitest wrote when the type check failed: both its tests failed, and numFailedTestSuites counted the
    // file and its describe block.
    const report = { numPassedTests: 5, numFailedTests: 2, numFailedTestSuites: 2, numPendingTests: 0, numTodoTests: 0, testResults: [file("types.test.ts", ["failed", "failed"]), file("a.test.ts", Array(5).fill("passed"))] };
    expect(summarize(report)).toEqual({ line: "5 passed, 2 failed", code: 1 });
  });

  it("counts a test file that failed to load as one failure", () => {
    const report = { numPassedTests: 3, numFailedTests: 0, numFailedTestSuites: 1, testResults: [file("broken.test.ts", [], "failed"), file("a.test.ts", ["passed", "passed", "passed"])] };
    expect(summarize(report)).toEqual({ line: "3 passed, 1 failed", code: 1 });
  });

  it("passes only when tests ran and none failed", () => {
    expect(summarize({ numPassedTests: 4, numFailedTests: 0, numFailedTestSuites: 0, numPendingTests: 1, testResults: [file("a.test.ts", ["passed", "passed", "passed", "passed", "skipped"])] })).toEqual({ line: "4 passed, 0 failed, 1 skipped", code: 0 });
    expect(summarize({ numPassedTests: 0, numFailedTests: 0, testResults: [] })).toEqual({ line: "0 passed, 0 failed", code: 1 });
  });

  it("reports a missing report as a failure", () => {
    expect(summarize(undefined)).toEqual({ line: "0 passed, 1 failed", code: 1 });
  });
});
