/**
 * Vitest's global setup: builds dist/ from the current sources once per test run, before any test file runs.
 * Integration tests start `bin/tendril.js`, which loads `dist/cli.js` (and the control plane `dist/worker.js`),
 * so `npx vitest run test/integration/...` right after an edit tests what the sources say, never a stale build.
 *
 * A part that does not build does not stop the run: tests that need no process (unit tests) still run, and every
 * test that would start `tendril` fails with the build error instead (see dist.ts), never with an older dist/.
 */
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { TestProject } from "vitest/node";
import type { DistBuild } from "./dist.js";
import { ROOT } from "./processes.js";

/** What the tests use of scripts/build.mjs (plain JavaScript without type declarations). */
interface BuildScript {
  /** Builds the Worker (dist/worker.js) and the command line (dist/cli.js and its chunks); unchanged files are not rewritten. */
  buildEach(): { worker: Promise<void>; cli: Promise<void> };
}

/** Builds dist/ once for the whole run and tells the test files how each part went. */
export default async function setup(project: TestProject): Promise<void> {
  const script = (await import(pathToFileURL(join(ROOT, "scripts", "build.mjs")).href)) as BuildScript;
  const { worker, cli } = script.buildEach();
  const [workerResult, cliResult] = await Promise.allSettled([worker, cli]);
  const build: DistBuild = { workerError: failure(workerResult), cliError: failure(cliResult) };
  for (const [part, error] of [["dist/worker.js", build.workerError], ["dist/cli.js", build.cliError]] as const) {
    if (error !== null) process.stderr.write(`\nglobal setup: ${part} could not be built; tests that start tendril will fail:\n${error}\n`);
  }
  project.provide("tendrilDistBuild", build);
}

function failure(result: PromiseSettledResult<void>): string | null {
  if (result.status === "fulfilled") return null;
  const error: unknown = result.reason;
  return error instanceof Error ? error.message : String(error);
}
