/**
 * The wrapper a script runs under (wrapper.ts): it holds the script's FIFOs open, so that a script whose runner is
 * gone keeps running (blocked once the pipe's buffer is full, never killed by a broken pipe) and a new reader goes on
 * exactly where the pipe stands; it records the exit status and waits at the gate until a runner has everything.
 * Real processes through the runner's own spawn; every process is stopped by pid.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ScriptPayload } from "../../shared/api.js";
import type { ProcessManagerOptions, ScriptProcess } from "../../runner/process-manager.js";
import { RunFolders, type Run } from "../../runner/run-folder.js";
import { openFifoReader, readFifo, releaseGate, wrapperPaths } from "../../runner/wrapper.js";
import { isAlive, isBlockedOnWrite, killGroup, pidsInGroup, removeDir, tempDir } from "../helpers/processes.js";
import { waitFor, within } from "./fake-control-plane.js";
import { spawnInRun } from "./spawn.js";

let workDir: string;
let runs: RunFolders;
const groups = new Set<number>();

beforeEach(async () => {
  workDir = await tempDir("wrapper");
  runs = new RunFolders(workDir);
  runs.prepare();
});

afterEach(async () => {
  for (const pid of groups) killGroup(pid);
  await waitFor(() => [...groups].every((pid) => pidsInGroup(pid).length === 0), "the test's process groups to be gone");
  groups.clear();
  await removeDir(workDir);
});

const OPTIONS: ProcessManagerOptions = { pipeDrainMs: 300, disableKill: false, baseEnvironment: { PATH: process.env.PATH, HOME: process.env.HOME } };

function payload(scriptBody: string): ScriptPayload {
  return { scriptBody, shell: "bash", arguments: [], environment: {}, files: [] };
}

/** Starts a script under a wrapper; its stdout collects into `stdout`. */
async function start(scriptBody: string): Promise<{ child: ScriptProcess; run: Run; stdout: Buffer[] }> {
  const stdout: Buffer[] = [];
  const { result, run } = await spawnInRun(runs, "t1", payload(scriptBody), OPTIONS, (stream, chunk) => {
    if (stream === "stdout") stdout.push(chunk);
  });
  if (!result.ok) throw new Error(result.outcome.message);
  groups.add(result.process.pid);
  return { child: result.process, run, stdout };
}

/** Reads a FIFO by name, as a new runner would, into `into`. */
function readByName(path: string, into: Buffer[]): { ended: Promise<void> } {
  const socket = readFifo(openFifoReader(path), (chunk) => into.push(chunk));
  if (socket === undefined) return { ended: Promise.resolve() };
  socket.on("data", (chunk: Buffer) => into.push(chunk));
  return { ended: new Promise((resolve) => socket.on("close", () => resolve())) };
}

/** True when `text` is `line-<from>`, `line-<from+1>`, ... with nothing missing, doubled or out of order. */
function consecutive(text: string): boolean {
  const lines = text.split("\n").filter((line) => line !== "");
  const first = Number(lines[0]?.slice(5));
  return lines.every((line, index) => line === `line-${first + index}`);
}

describe("a script under its wrapper", () => {
  it("keeps writing with no reader until the FIFO's buffer is full, then blocks, never dying of a broken pipe; a new reader goes on exactly where the pipe stands", async () => {
    const { child, run, stdout } = await start('i=0; while :; do i=$((i+1)); echo "line-$i"; done');
    await waitFor(() => Buffer.concat(stdout).length > 10_000, "some output");
    // The runner goes (its readers closed, the wrapper left waiting for a later one).
    child.release(true);
    const writer = await waitFor(() => pidsInGroup(child.pid).find((pid) => pid !== child.pid && isBlockedOnWrite(pid)), "the script to block on its full FIFO", 10_000);
    expect(isAlive(writer)).toBe(true);
    expect(isAlive(child.pid)).toBe(true);
    const later: Buffer[] = [];
    readByName(wrapperPaths(run.dir).stdout, later);
    // The pipe held up to its buffer (64 KiB), and the script goes on writing once read.
    await waitFor(() => Buffer.concat(later).length > 100_000, "the new reader's output", 10_000);
    const all = Buffer.concat([...stdout, ...later]).toString("utf8");
    const complete = all.slice(0, all.lastIndexOf("\n"));
    expect(complete.startsWith("line-1\n")).toBe(true);
    expect(consecutive(complete)).toBe(true);
  });

  it("records the exit status of a script that ends while nobody reads, keeps its last output, and waits at the gate until released", async () => {
    const { child, run, stdout } = await start("echo start; while [ ! -e go ]; do sleep 0.01; done; seq 1 5000; exit 5");
    await waitFor(() => Buffer.concat(stdout).toString() === "start\n", "the first line");
    child.release(true);
    writeFileSync(join(run.cwd, "go"), "");
    const paths = wrapperPaths(run.dir);
    await waitFor(() => existsSync(paths.exit), "the exit status", 10_000);
    expect(readFileSync(paths.exit, "utf8")).toBe("5\n");
    // The script's shell is gone; its wrapper waits, holding the FIFOs (and what nobody read yet in them) open.
    expect(isAlive(child.pid)).toBe(true);
    const later: Buffer[] = [];
    const { ended } = readByName(paths.stdout, later);
    await within(ended, "the end of the output", 10_000);
    expect(Buffer.concat(later).toString()).toBe(Array.from({ length: 5000 }, (_, i) => `${i + 1}\n`).join(""));
    expect(releaseGate(paths.gate)).toBe(true);
    await waitFor(() => !isAlive(child.pid), "the wrapper to exit once released");
  });

  it("writes no exit status when the wrapper itself is killed", async () => {
    const { child, run, stdout } = await start("echo start; sleep 600");
    await waitFor(() => Buffer.concat(stdout).length > 0, "the first line");
    killGroup(child.pid);
    await within(child.wait(), "the outcome");
    expect(existsSync(wrapperPaths(run.dir).exit)).toBe(false);
  });

  it("runs the script in the foreground: it ignores no signal, SIGINT and SIGQUIT included", async () => {
    const { child, stdout } = await start("exec grep -E '^SigIgn' /proc/self/status");
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "exited", code: 0 });
    child.settle();
    expect(Buffer.concat(stdout).toString()).toBe("SigIgn:\t0000000000000000\n");
  });
});
