// Builds what runs: the Worker bundle for workerd (dist/worker.js) and the Node command line (dist/cli.js).
// Run directly (`npm run build`, the prepare script), it builds all of dist/; tests import `buildCli` to bundle
// the command line from the current sources into a folder of their own, with exactly these options.
import { build } from "esbuild";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Builds the Worker for workerd into `outfile`. */
export async function buildWorker({ outfile }) {
  await build({
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
  });
}

/**
 * Builds the Node command line into `outdir`: `cli.js` (what bin/tendril.js loads from ../dist), `runner.js` and
 * the `chunks/` they share.
 */
export async function buildCli({ outdir }) {
  // One bundle (split at the CLI's lazy imports) so that a command starts without resolving and compiling
  // hundreds of small dependency modules; Miniflare stays external (it is large and loaded only by the
  // commands that run the control plane).
  await build({
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
  });
}

/** Builds all of dist/. */
export async function buildAll() {
  await Promise.all([buildWorker({ outfile: join(root, "dist/worker.js") }), buildCli({ outdir: join(root, "dist") })]);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await buildAll();
