/**
 * The `tendril` command line built from the current sources, for tests that run it as a real process.
 *
 * Vitest's global setup (global-setup.ts) builds dist/ from this checkout once per run, before any test file,
 * so the package's own `bin/tendril.js` (which loads `../dist/cli.js`) already runs what the sources say.
 */
import { assertDistBuilt } from "./dist.js";
import { TENDRIL_BIN } from "./processes.js";

/** A built copy of the command line. */
export interface BuiltCli {
  /** The `tendril` entry script to run with node. */
  bin: string;
  /** Releases the copy (nothing to remove: it is the package's own dist/, built by the global setup). */
  remove(): Promise<void>;
}

/** The command line as built for this test run by the global setup. */
export async function buildCli(): Promise<BuiltCli> {
  assertDistBuilt({ withWorker: false });
  return { bin: TENDRIL_BIN, remove: async () => undefined };
}
