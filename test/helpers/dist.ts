/** Whether this test run's build of dist/ (made once by global-setup.ts) succeeded, for helpers that start `tendril`. */
import { inject } from "vitest";

/** How the global setup's build of dist/ went: null for a part that built, else its error. */
export interface DistBuild {
  workerError: string | null;
  cliError: string | null;
}

declare module "vitest" {
  export interface ProvidedContext {
    /** Set by the global setup once dist/ is built. */
    tendrilDistBuild: DistBuild;
  }
}

/**
 * Throws unless this run built the parts of dist/ a `tendril` process needs: the command line, and the Worker too
 * when `withWorker` (the control plane loads it). A failed build must fail the test, not run an older dist/.
 */
export function assertDistBuilt({ withWorker }: { withWorker: boolean }): void {
  const build = inject("tendrilDistBuild");
  if (build === undefined) throw new Error("dist/ was not built by vitest's global setup (test/helpers/global-setup.ts); run the tests with vitest");
  if (build.cliError !== null) throw new Error(`dist/cli.js could not be built from the current sources:\n${build.cliError}`);
  if (withWorker && build.workerError !== null) throw new Error(`dist/worker.js could not be built from the current sources:\n${build.workerError}`);
}
