/**
 * The real `tendril runner` command for runner tests, built from the current sources.
 *
 * `bin/tendril.js` loads `../dist/cli.js`, which `npm test` builds first; a plain `npx vitest run test/runner`
 * would run whatever dist/ held, maybe older than the sources under test. So this builds the command line the
 * way scripts/build.mjs does, into a temporary folder next to a copy of `bin/tendril.js`, and runs that: the
 * same bin file and the same bundle, from this very checkout.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** A built copy of the command line. */
export interface BuiltCli {
  /** The copy of `bin/tendril.js` to run with node. */
  bin: string;
  /** Removes the copy. */
  remove(): Promise<void>;
}

/** Builds `client/cli/main.ts` into `<tmp>/dist/` beside a copy of `bin/tendril.js` in `<tmp>/bin/`. */
export async function buildCli(): Promise<BuiltCli> {
  const dir = await mkdtemp(join(tmpdir(), "tendril-cli-"));
  await mkdir(join(dir, "bin"));
  await copyFile(join(ROOT, "bin", "tendril.js"), join(dir, "bin", "tendril.js"));
  await build({
    entryPoints: { cli: join(ROOT, "client/cli/main.ts") },
    outdir: join(dir, "dist"),
    entryNames: "[name]",
    chunkNames: "chunks/[name]-[hash]",
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    external: ["miniflare", "bufferutil", "utf-8-validate"],
    banner: { js: 'import { createRequire as __tendrilCreateRequire } from "node:module"; const require = __tendrilCreateRequire(import.meta.url);' },
    logLevel: "warning",
  });
  return { bin: join(dir, "bin", "tendril.js"), remove: () => rm(dir, { recursive: true, force: true }) };
}

/** A `tendril runner` process in its own process group, with what it printed. */
export interface RunnerProcess {
  pid: number;
  child: ChildProcess;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `node <bin> runner --url U --machine M --work-dir D` with the token in the environment. */
export function startRunnerProcess(bin: string, url: string, machineId: string, token: string, workDir: string): RunnerProcess {
  const child = spawn(process.execPath, [bin, "runner", "--url", url, "--machine", machineId, "--work-dir", workDir], {
    env: { ...process.env, TENDRIL_RUNNER_TOKEN: token },
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let all = "";
  child.stdout!.on("data", (chunk: Buffer) => (all += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (all += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }));
  });
  if (child.pid === undefined) throw new Error("could not start the runner process");
  return { pid: child.pid, child, output: () => all, exited };
}

/** A process's resident memory now and at its peak, in bytes (`VmRSS` and `VmHWM` of /proc/<pid>/status). */
export async function residentMemory(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status);
    if (match === null) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(match[1]) * 1024;
  };
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}
