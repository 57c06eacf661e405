// The one-file runner (dist/tendril-runner.mjs) as a machine runs it: installed with `tendril runner install --root`,
// alone in its folder (no node_modules, no package.json of its own, a stranger's package.json one folder up), started
// the way the unit's ExecStart starts it — with nothing but the environment file's variables — against a real control
// plane; it connects, reports the version built into it, runs a script, and exits cleanly on SIGTERM, stopped by PID.
import { spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { userInfo } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { INSTALL_PATHS, parseEnvFileText } from "../../client/cli/runner-service.js";
import { useControlPlane } from "../helpers/fixture.js";
import { ROOT, pidsInGroup, removeDir, signalGroup, startTendril, tempDir } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();
const RUNNER_FILE = join(ROOT, "dist", "tendril-runner.mjs");
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

const started: ChildProcess[] = [];
const folders: string[] = [];

afterEach(async () => {
  // Whatever a failed test left: each runner leads a process group of its own.
  for (const child of started.splice(0)) {
    signalGroup(child.pid!, "SIGKILL");
    await waitFor(() => pidsInGroup(child.pid!).length === 0, { timeoutMs: 5_000, what: `runner group ${child.pid} to die` });
  }
  for (const folder of folders.splice(0)) await removeDir(folder);
});

/** Starts `node <args>` in its own process group with exactly `env` (as systemd gives a service a clean environment). */
function startClean(args: string[], env: Record<string, string>, cwd: string): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, args, { cwd, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env }, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  started.push(child);
  let output = "";
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** Waits until the machine's runner is connected; returns the machine view. */
async function connected(machineId: string, output: () => string): Promise<any> {
  try {
    return await waitFor(
      async () => {
        const view = await f.api("GET", `/api/v1/machines/${machineId}`);
        return view.body?.runner?.connected === true ? view.body : undefined;
      },
      { timeoutMs: 20_000, what: `the one-file runner of ${machineId} to connect` },
    );
  } catch (error) {
    throw new Error(`${String(error)}\nrunner output:\n${output()}`);
  }
}

/** Runs a script through the control plane and returns its completed status. */
async function runScript(machineId: string, ticket: string, scriptBody: string): Promise<any> {
  const startedScript = await f.api("POST", `/api/v1/machines/${machineId}/scripts`, { ticket, scriptBody, waitMs: 20_000 });
  expect(startedScript.status).toBe(201);
  return f.completed(machineId, ticket);
}

/** SIGTERM to the runner by PID: it exits by itself (0), leaving no process of its group behind. */
async function stopByPid(runner: { child: ChildProcess; exited: Promise<number | null>; output: () => string }): Promise<void> {
  process.kill(runner.child.pid!, "SIGTERM");
  const code = await Promise.race([runner.exited, new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), 15_000))]);
  expect(code, runner.output()).toBe(0);
  await waitFor(() => pidsInGroup(runner.child.pid!).length === 0, { timeoutMs: 5_000, what: "the runner's process group to be empty" });
  started.splice(started.indexOf(runner.child), 1);
}

describe("the one-file runner", () => {
  it("installed alone with runner install, runs as the unit runs it — only the unit's and the environment file's variables — and runs a script", async () => {
    const dir = await tempDir("one-file");
    folders.push(dir);
    const machineId = f.machine("onefile");
    const tokenFile = join(dir, "runner-token");
    writeFileSync(tokenFile, await f.register(machineId), { mode: 0o600 });
    const root = join(dir, "root");
    const workDir = join(dir, "work");
    const install = startTendril(["runner", "install", "--root", root, "--url", f.cp.url, "--machine", machineId, "--token-file", tokenFile, "--work-dir", workDir, "--user", userInfo().username]);
    expect((await install.exited).code, install.output()).toBe(0);

    // The file sits alone in its folder; one folder up, a package.json that is not Tendril's must not change its version.
    expect(readdirSync(join(root, INSTALL_PATHS.runnerDir))).toEqual(["tendril-runner.mjs"]);
    writeFileSync(join(root, INSTALL_PATHS.runnerDir, "..", "package.json"), JSON.stringify({ name: "someone-else", version: "9.9.9-not-tendril" }));
    const unit = readFileSync(join(root, INSTALL_PATHS.unitFile), "utf8");
    const [, node, file] = /^ExecStart=(\S+) (\S+)$/m.exec(unit) ?? [];
    expect(node).toBe(process.execPath);
    expect(file).toBe(INSTALL_PATHS.runnerFile);
    // The unit's Environment= lines, with %t (systemd's /run) in the test's folder, then the environment file's.
    const runtimeRoot = join(dir, "run");
    const unitEnv = [...unit.matchAll(/^Environment=([A-Z_]+)=(\S+)$/gm)].map(([, name, value]) => [name!, value!.replaceAll("%t", runtimeRoot)]);
    const env = { ...Object.fromEntries(unitEnv), ...parseEnvFileText(readFileSync(join(root, INSTALL_PATHS.envFile), "utf8")) };
    expect(env.TENDRIL_RUNTIME_DIR).toBe(join(runtimeRoot, "tendril"));
    const stateDir = join(root, INSTALL_PATHS.stateDir); // WorkingDirectory=, which systemd's StateDirectory= makes
    mkdirSync(stateDir, { recursive: true });

    const runner = startClean([join(root, file!)], env, stateDir);
    const view = await connected(machineId, runner.output);
    expect(view.runner.version).toBe(VERSION);
    expect(view.runner.capabilities).toContain("script.abandon");

    const status = await runScript(machineId, "one-file-1", 'echo "from the one-file runner in $(pwd)"; echo oops >&2; exit 3');
    expect(status.exitCode).toBe(3);
    const lines = status.logs.map((line: { source: string; text: string }) => `${line.source} ${line.text}`);
    expect(lines.find((line: string) => line.startsWith("stdout from the one-file runner in "))).toContain(workDir);
    expect(lines).toContain("stderr oops");
    expect(runner.output()).not.toContain(env.TENDRIL_RUNNER_TOKEN);
    // The run's own files went to the runtime dir, its workspace to the work dir.
    const [runId] = readdirSync(join(runtimeRoot, "tendril", "runs"));
    expect(readdirSync(join(runtimeRoot, "tendril", "runs", runId!))).toContain("record.json");
    expect(readdirSync(join(workDir, "runs"))).toEqual([runId]);
    expect(readdirSync(join(workDir, "runs", runId!))).toEqual(["work"]);

    await stopByPid(runner);
  });

  it("runs as `node tendril-runner.mjs runner --url … --machine … --token-file …` from an empty folder, like `tendril runner`", async () => {
    const dir = await tempDir("one-file-flags");
    folders.push(dir);
    const machineId = f.machine("onefileflags");
    const tokenFile = join(dir, "runner-token");
    writeFileSync(tokenFile, await f.register(machineId), { mode: 0o600 });
    const bin = join(dir, "bin");
    mkdirSync(bin);
    copyFileSync(RUNNER_FILE, join(bin, "tendril-runner.mjs"));

    const runner = startClean(
      [join(bin, "tendril-runner.mjs"), "runner", "--url", f.cp.url, "--machine", machineId, "--token-file", tokenFile, "--work-dir", join(dir, "work")],
      {},
      bin,
    );
    await connected(machineId, runner.output);
    const status = await runScript(machineId, "one-file-2", "echo hello");
    expect(status.exitCode).toBe(0);
    expect(status.logs.map((line: { text: string }) => line.text)).toContain("hello");
    await stopByPid(runner);
  });

  it("imports nothing but Node's built-ins (and ws's optional addons, which it works without)", () => {
    const text = readFileSync(RUNNER_FILE, "utf8");
    expect(text.startsWith("#!/usr/bin/env node\n")).toBe(true);
    const imported = [...text.matchAll(/(?:\bimport\s*(?:[\w$*{}\s,]+?\s*from\s*)?|\bimport\s*\(\s*)["']([^"']+)["']/g)].map((match) => match[1]!);
    // esbuild calls a bundled CommonJS module's require() `__require`.
    const required = [...text.matchAll(/(?:\b|__)require\(\s*["']([^"']+)["']\s*\)/g)].map((match) => match[1]!);
    expect(imported.length + required.length).toBeGreaterThan(10);
    const outside = [...imported, ...required].filter((name) => !name.startsWith("node:") && !["bufferutil", "utf-8-validate"].includes(name));
    // Bare built-in names (`require("fs")` in bundled CommonJS) are fine too.
    expect(outside.filter((name) => !builtinModules.includes(name))).toEqual([]);
  });
});
