// Builds what runs: the Worker bundle for workerd (dist/worker.js), the Node command line (dist/cli.js), the one-file
// runner a machine runs as a service (dist/tendril-runner.mjs), and the package's entry points `tendril/sdk`
// (dist/sdk.js) and `tendril/testing` (dist/testing.js) with their type declarations (dist/sdk.d.ts,
// dist/testing.d.ts, over dist/types/). Run directly (`npm run build`, the prepare
// script), it builds all of dist/; vitest's global setup (test/helpers/global-setup.ts) builds it once per test run,
// so tests never run a stale dist/.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { builtinModules } from "node:module";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join, relative, resolve, sep } from "node:path";

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
 * Builds the Node side into `outdir`: `cli.js` (what bin/tendril.js loads from ../dist), `runner.js`, the package's
 * entry points `sdk.js` and `testing.js`, and the `chunks/` they share (so `tendril/testing` hands out the very
 * `TendrilClient` class that `tendril/sdk` exports).
 */
export async function buildCli({ outdir }) {
  // One bundle (split at the CLI's lazy imports) so that a command starts without resolving and compiling
  // hundreds of small dependency modules; Miniflare stays external (it is large and loaded only by the
  // commands that run the control plane).
  const result = await build({
    // runner.js exposes the runner as a library (the fleet benchmark drives many connections with it).
    entryPoints: {
      cli: join(root, "client/cli/main.ts"),
      runner: join(root, "runner/index.ts"),
      sdk: join(root, "client/sdk.ts"),
      testing: join(root, "testing/index.ts"),
    },
    outdir,
    entryNames: "[name]",
    chunkNames: "chunks/[name]-[hash]",
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    external: ["miniflare", ...OPTIONAL_ADDONS],
    banner: { js: REQUIRE_BANNER },
    sourcemap: true,
    logLevel: "warning",
    write: false,
  });
  await writeOutputs(result.outputFiles);
}

/** `ws`'s optional native addons: it uses them when they load and works without them, so they are never bundled. */
const OPTIONAL_ADDONS = ["bufferutil", "utf-8-validate"];

/** Bundled CommonJS dependencies call require() for Node built-ins; an ES module has none until it makes one. */
const REQUIRE_BANNER = 'import { createRequire as __tendrilCreateRequire } from "node:module"; const require = __tendrilCreateRequire(import.meta.url);';

/**
 * Builds the one-file runner into `outfile` (dist/tendril-runner.mjs): the runner and `runner install`
 * (client/cli/runner-file.ts) with every dependency bundled, so that the file runs alone with Node.js 20+ — no
 * node_modules, no native addon, no package.json (the version is written in). This is what `tendril runner install`
 * copies to /usr/local/lib/tendril/ and what the systemd unit and the benchmark run. Throws if the bundle would import
 * anything but Node's built-ins and ws's optional addons.
 */
export async function buildRunnerFile({ outfile }) {
  const { version } = JSON.parse(await readFile(join(root, "package.json"), "utf8"));
  const result = await build({
    entryPoints: [join(root, "client/cli/runner-file.ts")],
    outfile,
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    external: OPTIONAL_ADDONS,
    define: { __TENDRIL_VERSION__: JSON.stringify(version) },
    banner: { js: `#!/usr/bin/env node\n${REQUIRE_BANNER}` },
    // Names kept: a stack trace in the journal should still say where it came from.
    minifyWhitespace: true,
    minifySyntax: true,
    keepNames: true,
    legalComments: "none",
    metafile: true,
    logLevel: "warning",
    write: false,
  });
  const output = Object.values(result.metafile.outputs)[0];
  const builtins = new Set(builtinModules);
  const outside = (output?.imports ?? [])
    .map((imported) => imported.path)
    .filter((path) => !path.startsWith("node:") && !builtins.has(path) && !OPTIONAL_ADDONS.includes(path));
  if (outside.length > 0) throw new Error(`the one-file runner would import ${[...new Set(outside)].join(", ")}, which it cannot carry`);
  await writeOutputs(result.outputFiles);
  await chmod(outfile, 0o755); // it starts with #!/usr/bin/env node
}

/** The entry points whose declarations the package exports: `dist/<name>.d.ts` re-exports the emitted declarations of `source`. */
const DECLARED_ENTRIES = [
  { name: "sdk", source: "client/sdk.ts" },
  { name: "testing", source: "testing/index.ts" },
];

/**
 * Writes the type declarations of the package's entry points: `<outdir>/types/**` (emitted by the pinned TypeScript
 * from tsconfig.types.json: only the files the entry points' declarations reach, which keeps it to a few seconds) and
 * `<outdir>/sdk.d.ts` and `<outdir>/testing.d.ts` beside the JavaScript. Skipped when none of the sources it read last
 * time has changed. Type errors do not stop it (the type check reports them); a crash of TypeScript does.
 */
export async function buildTypes({ outdir }) {
  const stampFile = join(outdir, "types", ".inputs.json");
  const wrappers = DECLARED_ENTRIES.map(({ name, source }) => ({
    path: join(outdir, `${name}.d.ts`),
    contents: Buffer.from(`export * from "./types/${source.replace(/\.ts$/, ".js")}";\n`),
  }));
  const previous = await readFile(stampFile, "utf8").then(JSON.parse, () => undefined);
  const typescriptVersion = JSON.parse(await readFile(join(root, "node_modules/typescript/package.json"), "utf8")).version;
  if (previous?.typescript === typescriptVersion && (await inputsUnchanged(previous.inputs)) && previous.outputs.every((file) => existsSync(join(outdir, file)))) {
    await writeOutputs(wrappers);
    return;
  }
  // Loaded only now: the usual rebuild of unchanged sources never pays for loading TypeScript.
  const ts = createRequire(import.meta.url)("typescript");
  const config = ts.getParsedCommandLineOfConfigFile(join(root, "tsconfig.types.json"), { outDir: join(outdir, "types") }, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
      throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n"));
    },
  });
  const program = ts.createProgram({ rootNames: config.fileNames, options: config.options });
  // Emitting a file's declarations checks only what they need; following the imports of what was emitted leaves out
  // the files no declaration mentions (shared/protocol.ts's large types would cost seconds).
  const outputs = [];
  const queue = DECLARED_ENTRIES.map(({ source }) => join(root, source));
  const seen = new Set(queue);
  while (queue.length > 0) {
    const file = queue.shift();
    const sourceFile = program.getSourceFile(file);
    if (sourceFile === undefined) throw new Error(`TypeScript did not load ${file}`);
    const result = program.emit(sourceFile, (path, text) => outputs.push({ path, contents: Buffer.from(text) }), undefined, true);
    if (result.emitSkipped) throw new Error(`TypeScript emitted no declarations for ${relative(root, file)}`);
    const emitted = outputs.at(-1)?.contents.toString() ?? "";
    for (const match of emitted.matchAll(/(?:from |import\()"(\.{1,2}\/[^"]+)\.js"/g)) {
      const imported = resolve(dirname(file), `${match[1]}.ts`);
      if (!seen.has(imported) && existsSync(imported)) {
        seen.add(imported);
        queue.push(imported);
      }
    }
  }
  await writeOutputs([...outputs, ...wrappers]);
  // Every source the program read (but the dependencies'): a later change to any of them rebuilds.
  const inputs = {};
  for (const sourceFile of program.getSourceFiles()) {
    if (sourceFile.fileName.includes("/node_modules/")) continue;
    inputs[relative(root, sourceFile.fileName)] = hash(await readFile(sourceFile.fileName));
  }
  for (const config of ["tsconfig.json", "tsconfig.types.json"]) inputs[config] = hash(await readFile(join(root, config)));
  const stamp = { typescript: typescriptVersion, inputs, outputs: outputs.map((output) => relative(outdir, output.path)) };
  await writeOutputs([{ path: stampFile, contents: Buffer.from(JSON.stringify(stamp, null, 1)) }]);
}

async function inputsUnchanged(inputs) {
  for (const [file, digest] of Object.entries(inputs ?? { "": "" })) {
    const contents = await readFile(join(root, file)).catch(() => undefined);
    if (contents === undefined || hash(contents) !== digest) return false;
  }
  return true;
}

function hash(contents) {
  return createHash("sha256").update(contents).digest("hex");
}

/**
 * Builds all of dist/: one promise per part, so that a caller can tell which part failed. `cli` is the whole Node
 * side: the command line, the one-file runner, the package's entry points and their declarations.
 */
export function buildEach() {
  const dist = join(root, "dist");
  return {
    worker: buildWorker({ outfile: join(dist, "worker.js") }),
    cli: Promise.all([buildCli({ outdir: dist }), buildTypes({ outdir: dist }), buildRunnerFile({ outfile: join(dist, "tendril-runner.mjs") })]).then(
      () => undefined,
    ),
  };
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
