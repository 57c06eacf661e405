// Builds what runs: the Worker bundle for workerd (dist/worker.js) and the Node command line (dist/cli.js).
// Run directly (`npm run build`, the prepare script), it builds all of dist/; vitest's global setup
// (test/helpers/global-setup.ts) builds it once per test run, so tests never run a stale dist/.
import { build } from "esbuild";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join, sep } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Builds the Worker for workerd into `outfile`. */
export async function buildWorker({ outfile }) {
  const result = await build({
    entryPoints: [join(root, "control-plane/worker.ts")],
    outfile,
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    conditions: ["workerd", "worker", "browser"],
    mainFields: ["module", "main"],
    external: ["cloudflare:*"],
    sourcemap: true,
    logLevel: "warning",
    write: false,
  });
  await writeOutputs(result.outputFiles);
}

/**
 * Builds the Node command line into `outdir`: `cli.js` (what bin/tendril.js loads from ../dist), `runner.js` and
 * the `chunks/` they share.
 */
export async function buildCli({ outdir }) {
  // One bundle (split at the CLI's lazy imports) so that a command starts without resolving and compiling
  // hundreds of small dependency modules; Miniflare stays external (it is large and loaded only by the
  // commands that run the control plane).
  const result = await build({
    // runner.js exposes the runner as a library (the fleet benchmark drives many connections with it).
    entryPoints: { cli: join(root, "client/cli/main.ts"), runner: join(root, "runner/index.ts") },
    outdir,
    entryNames: "[name]",
    chunkNames: "chunks/[name]-[hash]",
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    external: ["miniflare", "bufferutil", "utf-8-validate"],
    // Bundled CommonJS dependencies call require() for Node built-ins.
    banner: { js: 'import { createRequire as __tendrilCreateRequire } from "node:module"; const require = __tendrilCreateRequire(import.meta.url);' },
    sourcemap: true,
    logLevel: "warning",
    write: false,
  });
  await writeOutputs(result.outputFiles);
}

/** Builds all of dist/: one promise per part, so that a caller can tell which part failed. */
export function buildEach() {
  return { worker: buildWorker({ outfile: join(root, "dist/worker.js") }), cli: buildCli({ outdir: join(root, "dist") }) };
}

/** Builds all of dist/. */
export async function buildAll() {
  const { worker, cli } = buildEach();
  await Promise.all([worker, cli]);
}

/**
 * Writes esbuild's output files, skipping those whose content is unchanged. Each file is written to a temporary
 * name and renamed into place, chunks before the entry points that import them: a `tendril` process starting
 * meanwhile (another test run in the same checkout) sees either the old build or the new one, never half a file.
 */
async function writeOutputs(outputFiles) {
  const isChunk = (file) => file.path.includes(`${sep}chunks${sep}`);
  const ordered = [...outputFiles.filter(isChunk), ...outputFiles.filter((file) => !isChunk(file))];
  for (const file of ordered) {
    const current = await readFile(file.path).catch(() => undefined);
    if (current !== undefined && Buffer.compare(current, file.contents) === 0) continue;
    await mkdir(dirname(file.path), { recursive: true });
    const temporary = `${file.path}.${process.pid}.tmp`;
    try {
      await writeFile(temporary, file.contents);
      await rename(temporary, file.path);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await buildAll();
