#!/usr/bin/env node
// The `tendril` command. The TypeScript sources are built into dist/ by `npm install` (the prepare script).
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "cli.js");
if (!existsSync(cli)) {
  console.error("tendril: dist/cli.js is missing; run `npm install` (or `npm run build`) in the project folder first.");
  process.exit(1);
}
const { main } = await import(pathToFileURL(cli).href);
await main(process.argv);
