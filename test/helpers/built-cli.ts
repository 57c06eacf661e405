/**
 * The `tendril` command line built from the current sources, for tests that run it as a real process.
 *
 * `bin/tendril.js` loads `../dist/cli.js`, which `npm test` builds first; a plain `npx vitest run test/unit` would
 * run whatever dist/ held, maybe older than the sources under test. So this builds the command line with
 * scripts/build.mjs's own `buildCli` into a temporary folder next to a copy of `bin/tendril.js`, and runs that:
 * the same bin file and the same bundle, from this very checkout.
 */
import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT, removeDir, tempDir } from "./processes.js";

/** What the tests use of scripts/build.mjs (plain JavaScript without type declarations). */
interface BuildScript {
  /** Builds the Node command line (`cli.js`, `runner.js`, `chunks/`) into `outdir`. */
  buildCli(options: { outdir: string }): Promise<void>;
}

/** A built copy of the command line. */
export interface BuiltCli {
  /** The copy of `bin/tendril.js` to run with node. */
  bin: string;
  /** Removes the copy. */
  remove(): Promise<void>;
}

/** Builds the command line into `<tmp>/dist/` beside a copy of `bin/tendril.js` in `<tmp>/bin/`. */
export async function buildCli(): Promise<BuiltCli> {
  const script = (await import(pathToFileURL(join(ROOT, "scripts", "build.mjs")).href)) as BuildScript;
  const dir = await tempDir("cli");
  await mkdir(join(dir, "bin"));
  await copyFile(join(ROOT, "bin", "tendril.js"), join(dir, "bin", "tendril.js"));
  await script.buildCli({ outdir: join(dir, "dist") });
  return { bin: join(dir, "bin", "tendril.js"), remove: () => removeDir(dir) };
}
