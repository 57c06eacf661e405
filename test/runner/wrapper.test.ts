/**
 * The wrapper a script runs under (wrapper.ts): it holds the script's FIFOs open, so that a script whose runner is
 * gone keeps running (blocked once its copier's generation and the pipe's buffer are full, never killed by a broken
 * pipe), and its copiers write every byte into spool files, so that a new reader goes on exactly from the position it
 * names, whatever an earlier reader had read; it records the exit status and waits at the gate until a runner has
 * everything. Real processes through the runner's own spawn; every process is stopped by pid.
 */
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ScriptPayload } from "../../shared/api.js";
import type { ProcessManagerOptions, ScriptProcess } from "../../runner/process-manager.js";
import { RunFolders, type Run } from "../../runner/run-folder.js";
import { SpoolTail, generationFile } from "../../runner/spool-tail.js";
import { GENERATION_READ_BYTES, GENERATION_RECORDS, readExitFile, releaseGate, wrapperPaths } from "../../runner/wrapper.js";
import { bytesWritten, isAlive, isBlockedOnWrite, killGroup, pidsInGroup, pidsInGroupNamed, removeDir, tempDir } from "../helpers/processes.js";
import { waitFor, within } from "./fake-control-plane.js";
import { spawnInRun } from "./spawn.js";

let workDir: string;
let runs: RunFolders;
const groups = new Set<number>();
const tails = new Set<SpoolTail>();

beforeEach(async () => {
  workDir = await tempDir("wrapper");
  runs = new RunFolders(workDir);
  runs.prepare();
});

afterEach(async () => {
  for (const tail of tails) tail.destroy();
  tails.clear();
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

/** Reads a run's stdout spool from `position` on, as a new runner would, into `into`. */
function readFrom(run: Run, position: number, into: Buffer[]): { ended: Promise<void> } {
  const tail = new SpoolTail(wrapperPaths(run.dir).io, "out", position);
  tails.add(tail);
  tail.on("data", (chunk: Buffer) => into.push(chunk));
  return { ended: new Promise((resolve) => tail.on("end", () => resolve())) };
}

function length(chunks: Buffer[]): number {
  return chunks.reduce((sum, chunk) => sum + chunk.length, 0);
}

/** True when `text` is `<from>`, `<from+1>`, ... (one number a line) with nothing missing, doubled or out of order. */
function consecutive(text: string): boolean {
  const lines = text.split("\n").filter((line) => line !== "");
  return lines.every((line, index) => line === String(index + 1));
}

/** A generation holds at most this much. */
const GENERATION_MAX = GENERATION_RECORDS * GENERATION_READ_BYTES;

/** The spool files of a run's stdout (their data, not `dd`'s counts), with their sizes. */
function spoolFiles(run: Run): Record<string, number> {
  const io = wrapperPaths(run.dir).io;
  const files: Record<string, number> = {};
  for (const name of readdirSync(io)) if (/^out\.\d+(\.done|\.end)?$/.test(name)) files[name] = statSync(join(io, name)).size;
  return files;
}

describe("a script under its wrapper", () => {
  it("keeps writing with no runner until its spool generation and the FIFO's buffer are full, then blocks, never dying of a broken pipe; a new reader goes on from the position it names, into the next generation", async () => {
    const { child, run, stdout } = await start("exec seq 1 100000000");
    await waitFor(() => length(stdout) > 10_000, "some output");
    // The runner goes (its tails closed, the wrapper left waiting for a later one).
    child.release(true);
    const delivered = length(stdout);
    const io = wrapperPaths(run.dir).io;
    // The generation being written when the runner went is finished at its budget; no later one is started.
    const current = await waitFor(() => {
      const files = spoolFiles(run);
      const finished = Object.keys(files).filter((name) => name.endsWith(".done"));
      return finished.length === 1 ? Number(finished[0]!.split(".")[1]) : undefined;
    }, "the generation to be finished", 20_000);
    const writer = await waitFor(() => pidsInGroup(child.pid).find((pid) => pid !== child.pid && isBlockedOnWrite(pid)), "the script to block on its full FIFO", 20_000);
    expect(isAlive(writer)).toBe(true);
    expect(isAlive(child.pid)).toBe(true);
    // On disk: that one generation and nothing beyond it (the copier waits to be allowed the next).
    const files = spoolFiles(run);
    expect(Object.keys(files).sort()).toEqual([`out.${current}`, `out.${current}.done`]);
    const end = current + files[`out.${current}`]!;
    expect(current).toBeLessThanOrEqual(delivered);
    expect(end).toBeGreaterThan(delivered);
    expect(files[`out.${current}`]).toBeLessThanOrEqual(GENERATION_MAX);
    const later: Buffer[] = [];
    readFrom(run, delivered, later);
    await waitFor(() => delivered + length(later) > end + 1_000_000, "the new reader's output, past that generation", 30_000);
    const all = Buffer.concat([...stdout, ...later]).toString("utf8");
    const complete = all.slice(0, all.lastIndexOf("\n"));
    expect(consecutive(complete)).toBe(true);
    // That generation was deleted once read whole.
    expect(existsSync(generationFile(io, "out", current).data)).toBe(false);
  }, 60_000);

  it("gives a new reader again what an earlier reader had read but not logged when it went (bytes are never taken out of a pipe)", async () => {
    const { child, run, stdout } = await start("seq 1 200000; exit 3");
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "exited", code: 3 });
    const read = length(stdout);
    expect(read).toBeGreaterThan(1_000_000);
    // Say the runner had logged only its first chunk when it was killed: the next one reads on from there.
    const logged = stdout[0]!.length;
    const later: Buffer[] = [];
    const { ended } = readFrom(run, logged, later);
    await within(ended, "the end of the output", 10_000);
    const all = Buffer.concat([stdout[0]!, ...later]).toString("utf8");
    expect(all).toBe(Array.from({ length: 200_000 }, (_, i) => `${i + 1}\n`).join(""));
    child.settle();
  });

  it("reads a spool a little at a time: with 30 MB waiting, its event loop still turns (timers run) long before all is read", async () => {
    const total = 30_000_000;
    const { child, run } = await start(`head -c ${total} /dev/zero; exit 0`);
    child.release(true);
    await waitFor(() => readdirSync(wrapperPaths(run.dir).io).some((name) => /^out\.\d+\.end$/.test(name)), "the whole output in the spool", 20_000);
    let read = 0;
    const tail = new SpoolTail(wrapperPaths(run.dir).io, "out", 0);
    tails.add(tail);
    tail.on("data", (chunk: Buffer) => (read += chunk.length));
    // Read in one go, all of it would be read before a timer could run.
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(read).toBeLessThan(total / 3);
    await waitFor(() => read === total, "the rest");
  });

  it("records the exit status of a script that ends while nobody reads, keeps its last output, and waits at the gate until released", async () => {
    const { child, run, stdout } = await start("echo start; while [ ! -e go ]; do sleep 0.01; done; seq 1 5000; exit 5");
    await waitFor(() => Buffer.concat(stdout).toString() === "start\n", "the first line");
    child.release(true);
    writeFileSync(join(run.cwd, "go"), "");
    const paths = wrapperPaths(run.dir);
    // The shell creates the file before it writes the status into it: wait for the line, not for the file.
    expect(await waitFor(() => readExitFile(paths.exit), "the exit status", 10_000)).toBe(5);
    expect(readFileSync(paths.exit, "utf8")).toBe("5\n");
    // The script's shell is gone; its wrapper waits; what nobody read yet is in its spool.
    expect(isAlive(child.pid)).toBe(true);
    const later: Buffer[] = [];
    const { ended } = readFrom(run, "start\n".length, later);
    await within(ended, "the end of the output", 10_000);
    expect(Buffer.concat(later).toString()).toBe(Array.from({ length: 5000 }, (_, i) => `${i + 1}\n`).join(""));
    expect(releaseGate(paths.gate)).toBe(true);
    await waitFor(() => pidsInGroup(child.pid).length === 0, "the wrapper and its copiers to exit once released");
  });

  it("lets a released (abandoned) script write on: its copiers read into nothing, so it neither blocks nor fills the disk", async () => {
    const { child, run, stdout } = await start("exec seq 1 1000000000");
    await waitFor(() => length(stdout) > 10_000, "some output");
    child.release(false);
    const writer = await waitFor(() => pidsInGroupNamed(child.pid, "seq")[0], "the script's process");
    await waitFor(() => bytesWritten(writer) > 2 * GENERATION_MAX, "the script to write well past a generation", 60_000);
    const files = spoolFiles(run);
    expect(Object.values(files).reduce((sum, size) => sum + size, 0)).toBeLessThanOrEqual(GENERATION_MAX);
  }, 90_000);

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
