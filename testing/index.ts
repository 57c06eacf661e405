/**
 * `tendril/testing`: a real Tendril for the integration tests of code built on it — the control plane on workerd
 * (Miniflare) and a real runner per machine, as child processes on free loopback ports, in temporary folders, the
 * way Tendril tests itself.
 *
 * ```ts
 * import { startTendril } from "tendril/testing";
 * const tendril = await startTendril({ machines: ["web-01"] });
 * try {
 *   const run = await tendril.machine("web-01").start({ scriptBody: "echo hello" });
 *   console.log((await run.result()).exitCode);
 * } finally {
 *   await tendril.stop();
 * }
 * ```
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { MachineHandle, TendrilClient } from "../client/sdk.js";
import { ProcessSet, waitUntil, type GroupProcess } from "./processes.js";

/** Options of `startTendril`. */
export interface StartTendrilOptions {
  /** The machines to register, each served by a runner of its own (ids of 1–64 characters of `[A-Za-z0-9._-]`). */
  machines: string[];
  /** How long the control plane and every runner may take to be ready before `startTendril` gives up (default 60 s). */
  startTimeoutMs?: number;
  /** Extra arguments for every runner, e.g. `["--kill-grace", "2s"]` (see `tendril runner --help`). */
  runnerArgs?: string[];
  /** Extra environment variables for the control plane and the runners (scripts inherit the runners'). */
  env?: Record<string, string>;
}

/** A running Tendril; `stop()` ends it. */
export interface TendrilInstance extends AsyncDisposable {
  /** The control plane's base URL, `http://127.0.0.1:<port>`. */
  url: string;
  /** Its server token. */
  serverToken: string;
  /** A client of it, authenticated with the server token. */
  client: TendrilClient;
  /** A handle on one of its machines (`client.machine(id)`). */
  machine(machineId: string): MachineHandle;
  /** Everything the control plane and the runners printed so far (the last 256 KiB of each), to explain a failure. */
  output(): string;
  /**
   * Stops the runners and the control plane (SIGTERM to each process group, SIGKILL after a few seconds), then
   * every process of a script still running, and removes the temporary folders. Safe to call twice. If the process
   * exits without it, an exit handler kills all of it.
   */
  stop(): Promise<void>;
}

/** Defaults of `startTendril`. */
const DEFAULTS = {
  startTimeoutMs: 60_000,
  /** How long a child may take to exit after SIGTERM before it is killed. */
  stopGraceMs: 5_000,
} as const;

/** Variables of the caller's environment that would point a child at another Tendril. */
const CLEARED_VARIABLES = ["TENDRIL_URL", "TENDRIL_SERVER_TOKEN", "TENDRIL_MACHINE", "TENDRIL_RUNNER_TOKEN", "TENDRIL_WORK_DIR"];

/**
 * Starts a control plane and one runner per machine, and resolves once every runner is connected. Needs the
 * package's build (`dist/`, made by `npm install`); runs `bin/tendril.js` with this Node, never a `tendril` on PATH.
 */
export async function startTendril(options: StartTendrilOptions): Promise<TendrilInstance> {
  const startTimeoutMs = options.startTimeoutMs ?? DEFAULTS.startTimeoutMs;
  const deadline = Date.now() + startTimeoutMs;
  const root = packageRoot();
  const bin = join(root, "bin", "tendril.js");
  for (const built of ["dist/cli.js", "dist/worker.js"]) {
    if (!existsSync(join(root, built))) throw new Error(`${join(root, built)} is missing: run \`npm install\` (or \`npm run build\`) in ${root}`);
  }
  const serverToken = randomBytes(24).toString("base64url");
  const processes = new ProcessSet(randomBytes(12).toString("hex"));
  const children: Array<{ name: string; process: GroupProcess }> = [];
  const output = () => children.map((child) => `--- ${child.name} ---\n${child.process.output()}`).join("\n");
  const env: NodeJS.ProcessEnv = { ...process.env, CLOUDFLARE_CF_FETCH_ENABLED: "false", WRANGLER_SEND_METRICS: "false", ...options.env };
  for (const name of CLEARED_VARIABLES) delete env[name];

  try {
    const dir = await mkdtemp(join(tmpdir(), "tendril-testing-"));
    processes.ownDir(dir);
    const temporary = join(dir, "tmp");
    await mkdir(temporary);
    const controlPlane = processes.start(process.execPath, [bin, "control-plane", "--port", "0", "--state-dir", join(dir, "state")], {
      ...env,
      // Through the environment rather than `--server-token`, which other users could read in `ps`.
      TENDRIL_SERVER_TOKEN: serverToken,
      // workerd's own folder goes in the instance's folder, which is removed however the instance ends.
      TMPDIR: temporary,
    });
    children.push({ name: "control plane", process: controlPlane });
    let url: string | undefined;
    await waitUntil(() => {
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(controlPlane.stdout())?.[1];
      return url !== undefined || controlPlane.exited() || Date.now() > deadline;
    }, startTimeoutMs);
    if (url === undefined) throw new Error(controlPlane.exited() ? "the control plane exited" : `the control plane did not listen within ${startTimeoutMs} ms`);

    const client = new TendrilClient({ url, serverToken });
    for (const machineId of options.machines) {
      const { runnerToken } = await client.registerMachine(machineId);
      const tokenFile = join(dir, `${machineId}.token`);
      await writeFile(tokenFile, runnerToken, { mode: 0o600 });
      const workDir = join(dir, "work", machineId);
      await mkdir(workDir, { recursive: true });
      const runner = processes.start(
        process.execPath,
        [bin, "runner", "--url", url, "--machine", machineId, "--token-file", tokenFile, "--work-dir", workDir, ...(options.runnerArgs ?? [])],
        env,
      );
      children.push({ name: `runner ${machineId}`, process: runner });
    }
    for (const machineId of options.machines) {
      const runner = children.find((child) => child.name === `runner ${machineId}`)!.process;
      await waitForRunner(client, machineId, runner, deadline);
    }

    const instance: TendrilInstance = {
      url,
      serverToken,
      client,
      machine: (machineId) => client.machine(machineId),
      output,
      stop: () => processes.stopAll(DEFAULTS.stopGraceMs),
      [Symbol.asyncDispose]: () => processes.stopAll(DEFAULTS.stopGraceMs),
    };
    return instance;
  } catch (error) {
    const said = output();
    await processes.stopAll(DEFAULTS.stopGraceMs);
    throw new Error(`could not start Tendril: ${error instanceof Error ? error.message : String(error)}${said ? `\n${said}` : ""}`, { cause: error });
  }
}

/** Waits until the machine's view shows its runner connected; fails early when the runner exits. */
async function waitForRunner(client: TendrilClient, machineId: string, runner: GroupProcess, deadline: number): Promise<void> {
  for (;;) {
    const view = await client.getMachine(machineId).catch(() => undefined);
    if (view?.runner.connected) return;
    if (runner.exited()) throw new Error(`the runner of ${machineId} exited with code ${String(runner.exitCode())}`);
    if (Date.now() > deadline) throw new Error(`the runner of ${machineId} did not connect in time`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The folder of the `tendril` package this module belongs to (its source folder, or the one holding dist/). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, "package.json");
    if (existsSync(manifest) && isTendril(manifest)) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the tendril package folder (package.json) above tendril/testing");
    dir = parent;
  }
}

function isTendril(manifest: string): boolean {
  try {
    const parsed: unknown = JSON.parse(readFileSync(manifest, "utf8"));
    return typeof parsed === "object" && parsed !== null && "name" in parsed && parsed.name === "tendril";
  } catch {
    return false;
  }
}
