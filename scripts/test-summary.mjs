// Prints the plain line "N passed, N failed" from vitest's JSON report; exits non-zero when anything
// failed, when no test ran, or when the report is missing.
import { readFileSync } from "node:fs";

const path = process.argv[2] ?? ".vitest-report.json";
let report;
try {
  report = JSON.parse(readFileSync(path, "utf8"));
} catch (error) {
  console.log("0 passed, 1 failed");
  console.error(`test-summary: cannot read ${path}: ${error.message}`);
  process.exit(1);
}
const passed = report.numPassedTests ?? 0;
// A test file that failed without a failed test (it did not load, or a hook threw) counts as one failure.
// vitest's numFailedTestSuites is no help here: it also counts every describe block around a failed test.
const failed = (report.numFailedTests ?? 0) + countFilesFailedWithoutFailedTests(report);
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);

function countFilesFailedWithoutFailedTests(r) {
  return (r.testResults ?? []).filter((file) => file.status === "failed" && !(file.assertionResults ?? []).some((a) => a.status === "failed")).length;
}
