// Builds what runs: the Worker bundle for workerd (dist/worker.js) and the Node command line (dist/cli.js).
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

await Promise.all([
  build({
    entryPoints: [join(root, "control-plane/worker.ts")],
    outfile: join(root, "dist/worker.js"),
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    conditions: ["workerd", "worker", "browser"],
    mainFields: ["module", "main"],
    external: ["cloudflare:*"],
    sourcemap: true,
    logLevel: "warning",
  }),
  // One bundle (split at the CLI's lazy imports) so that a command starts without resolving and compiling
  // hundreds of small dependency modules; Miniflare stays external (it is large and loaded only by the
  // commands that run the control plane).
  build({
    // dist/runner.js exposes the runner as a library (the fleet benchmark drives many connections with it).
    entryPoints: { cli: join(root, "client/cli/main.ts"), runner: join(root, "runner/index.ts") },
    outdir: join(root, "dist"),
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
  }),
]);
