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
  build({
    entryPoints: [join(root, "client/cli/main.ts")],
    outfile: join(root, "dist/cli.js"),
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    packages: "external",
    sourcemap: true,
    logLevel: "warning",
  }),
]);
