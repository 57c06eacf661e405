/**
 * Re-attaching across a real runner process's death: `tendril runner` as a process of its own (the command built from
 * these sources), killed with SIGKILL or stopped with SIGTERM, then started again on the same work dir. The fake
 * control plane stores strictly (a gap or a repeated line is a violation) and welcomes each runner with what it
 * stored. Every process a test starts is stopped by pid: the runner processes (their groups) and the tagged scripts.
 */
import { existsSync, readdirSync, rmSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { buildCli, type BuiltCli } from "../helpers/built-cli.js";
import { bytesWritten, isAlive, killGroup, parentOf, pidsInGroup, removeDir, tempDir, wrappersStartedBy } from "../helpers/processes.js";
import { ScriptTag, runDir, setUpRunnerTest, tearDownRunnerTest, waitFor, workspaceOf, type FakeControlPlane } from "./fake-control-plane.js";
import { startRunnerProcess, type RunnerProcess } from "./runner-cli.js";

let cli: BuiltCli;
let plane: FakeControlPlane;
let workDir: string;
let tag: ScriptTag;
const runners: RunnerProcess[] = [];

beforeAll(async () => {
  cli = await buildCli();
});

afterAll(async () => {
  await cli?.remove();
});

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("reattach-process"));
  tag = new ScriptTag();
});

/** Folders a test made beside its work dir, removed once nothing of its runners and scripts is left to write there. */
const foldersToRemove: string[] = [];

afterEach(async () => {
  for (const runner of runners.splice(0)) {
    killGroup(runner.pid);
    await waitFor(() => pidsInGroup(runner.pid).length === 0, "a runner process to be gone");
  }
  await tearDownRunnerTest({ plane, workDir }, tag);
  for (const folder of foldersToRemove.splice(0)) await removeDir(folder);
});

/** Starts `tendril runner` on the test's work dir (with `flags`) and waits for its hello on the next connection. */
async function runnerProcess(flags: string[] = []) {
  const count = plane.connections.length;
  const runner = startRunnerProcess(cli.bin, plane.url, "m1", "runner-token", workDir, flags);
  runners.push(runner);
  const connection = await plane.connection(count + 1, 20_000);
  const hello = await connection.frame("hello", () => true, 20_000);
  return { runner, connection, hello, connectedAt: Date.now() };
}

/** A tagged script printing `line-1`, `line-2`, ...: 2,000 at once, then one every 5 ms until `go` exists, then 2,000 more; exits 9. */
const NUMBERED = [
  "i=0",
  'emit() { i=$((i+1)); echo "line-$i"; }',
  "for j in $(seq 1 2000); do emit; done",
  "while [ ! -e go ]; do emit; sleep 0.005; done",
  "for j in $(seq 1 2000); do emit; done",
  "exit 9",
].join("\n");

/** Lines written as fast as a shell can: `line-1` to `line-<FAST_LINES>`, then one more once `go` exists; exits 4. */
const FAST_LINES = 1_500_000;
const FAST_NUMBERED = [`seq -f 'line-%.0f' 1 ${FAST_LINES}`, "while [ ! -e go ]; do sleep 0.01; done", `echo line-${FAST_LINES + 1}`, "exit 4"].join("\n");

function checkNumbered(ticket: string, sequence: number, line: { source: string; text: string }): string | undefined {
  return line.source === "stdout" && line.text === `line-${sequence + 1}` ? undefined : `line ${sequence} of ${ticket} is ${line.source} ${JSON.stringify(line.text)}`;
}

/**
 * A runner process that runs `script` as t1 on a plane that checks each line's number, acknowledging output when
 * `autoAck`: the runner, its script's wrapper pid and the plane's ledger of t1.
 */
async function numberedRun(script: string, autoAck: boolean) {
  plane.welcomeFromLedger = true;
  plane.autoAck = autoAck;
  plane.keepOutputFrames = false;
  plane.checkLine = checkNumbered;
  const first = await runnerProcess();
  tag.dispatch(first.connection, "t1", 1, script);
  const { pid } = await first.connection.frame("started", () => true, 10_000);
  return { first, pid, ledger: plane.ledger("t1", 1) };
}

/** SIGKILLs a runner process and waits for its exit. */
async function killRunner(runner: RunnerProcess): Promise<void> {
  process.kill(runner.pid, "SIGKILL");
  await runner.exited;
}

/**
 * The numbered script (acknowledged) with its runner process SIGKILLed once lines past the first burst are stored:
 * the script's wrapper pid, the ledger of t1 and how many lines it held at the kill.
 */
async function killedPastFirstBurst() {
  const { first, pid, ledger } = await numberedRun(NUMBERED, true);
  await waitFor(() => ledger.next >= 2_100, "lines past the first burst", 20_000);
  await killRunner(first.runner);
  return { pid, ledger, storedAtKill: ledger.next };
}

describe("a runner process that dies or is stopped mid-script", () => {
  it("re-attaches after SIGKILL when started again on the same work dir: the script stays running, numbered lines arrive with none lost, doubled or reordered, and it completes with its real exit code", async () => {
    const { pid, ledger, storedAtKill } = await killedPastFirstBurst();
    expect(isAlive(pid)).toBe(true);
    // No runner: the script keeps going until its FIFO's buffer is full, then waits; it never dies of a broken pipe.
    // Its shell (the wrapper's child) writes on: its count of bytes written grows by a hundred lines or so.
    const shell = await waitFor(() => tag.pids().find((tagged) => parentOf(tagged) === pid), "the script's shell");
    const written = bytesWritten(shell);
    await waitFor(() => bytesWritten(shell) > written + 1_000, "the script to write on without a runner", 20_000);

    const second = await runnerProcess();
    expect(second.hello.inventory).toEqual([{ ticket: "t1", fence: 1, nextSequence: expect.any(Number), exited: false, reattached: true }]);
    // Re-attached within 5 s of connecting: output it wrote meanwhile, and new output, arrives.
    await waitFor(() => ledger.next > storedAtKill + 100, "output after the restart", 5_000);
    expect(Date.now() - second.connectedAt).toBeLessThan(5_000);
    expect(isAlive(pid)).toBe(true);

    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    const exit = await waitFor(() => ledger.exits[0], "the exit", 20_000);
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 1, lineCount: ledger.next, outcome: { kind: "exited", code: 9 } });
    expect(ledger.violations).toEqual([]);
    expect(ledger.next).toBeGreaterThan(storedAtKill + 2_000);
    expect(plane.connections.every((connection) => connection.invalid.length === 0)).toBe(true);
    await waitFor(() => !isAlive(pid), "the wrapper to exit");
  }, 90_000);

  it("loses nothing when killed while its output waits unread: what it had read but not logged is read again from the spool", async () => {
    // Nothing is acknowledged: the runner stops reading once its window is full, with what it read last not logged.
    const { first, pid, ledger } = await numberedRun(FAST_NUMBERED, false);
    await waitFor(() => /writes output faster than the control plane stores it/.test(first.runner.output()), "the runner to stop reading", 30_000);
    await killRunner(first.runner);

    plane.autoAck = true;
    const second = await runnerProcess();
    expect(second.hello.inventory).toMatchObject([{ ticket: "t1", fence: 1, reattached: true }]);
    // Acknowledged from where the control plane stands: the rest follows.
    second.connection.send({ type: "ack", ticket: "t1", fence: 1, nextSequence: ledger.next });
    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    const exit = await waitFor(() => ledger.exits[0], "the exit", 60_000);
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 1, lineCount: FAST_LINES + 1, outcome: { kind: "exited", code: 4 } });
    expect(ledger.violations).toEqual([]);
    await waitFor(() => !isAlive(pid), "the wrapper to exit");
  }, 120_000);

  it("drains on SIGTERM: says draining, closes with 1000, exits within a few seconds, and the next runner re-attaches", async () => {
    const { first, pid, ledger } = await numberedRun(NUMBERED, true);
    await waitFor(() => ledger.next >= 2_000, "the first burst", 20_000);

    const asked = Date.now();
    process.kill(first.runner.pid, "SIGTERM");
    const ended = await first.runner.exited;
    expect(Date.now() - asked).toBeLessThan(5_000);
    expect(ended).toEqual({ code: 0, signal: null });
    expect(first.connection.frames.some((frame) => frame.type === "draining")).toBe(true);
    // The close frame was sent before the exit; this end may hear of it a moment after the process is gone.
    await waitFor(() => first.connection.closed, "the close");
    expect(first.connection.closed?.code).toBe(1000);
    expect(isAlive(pid)).toBe(true);

    const second = await runnerProcess();
    expect(second.hello.inventory).toMatchObject([{ ticket: "t1", fence: 1, exited: false, reattached: true }]);
    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    const exit = await waitFor(() => ledger.exits[0], "the exit", 20_000);
    expect(exit.outcome).toEqual({ kind: "exited", code: 9 });
    expect(ledger.violations).toEqual([]);
  }, 90_000);

  it("stops the wrappers its predecessor left whose run folders were removed, before it says hello", async () => {
    const first = await runnerProcess();
    tag.dispatch(first.connection, "t1", 1, "setsid sleep 600 & echo ready; sleep 600");
    const { pid } = await first.connection.frame("started", () => true, 10_000);
    await first.connection.frame("output", () => true, 10_000);
    await waitFor(() => tag.pids().length >= 3, "the wrapper, the script and its escaped sleep");
    const all = tag.pids();
    await killRunner(first.runner);
    // The work dir is wiped: nothing on disk names the script any more.
    rmSync(join(workDir, "runs"), { recursive: true, force: true });

    const second = await runnerProcess();
    // By the time it says hello (which lets the control plane release the script's mutex), nothing of it runs.
    expect(all.filter(isAlive)).toEqual([]);
    expect(isAlive(pid)).toBe(false);
    expect(second.hello.inventory).toEqual([]);
    expect(second.runner.output()).toMatch(new RegExp(`Found the script wrapper ${pid} of this work dir`));
    expect(existsSync(join(workDir, "runs")) ? readdirSync(join(workDir, "runs")) : []).toEqual([]);
  }, 60_000);

  it("stops a waiting shell its predecessor left without taking it for a script's wrapper", async () => {
    const first = await runnerProcess();
    first.connection.dispatch("t1", 1, "true");
    const { pid: scriptWrapper } = await first.connection.frame("started", () => true, 10_000);
    await first.connection.frame("exit", () => true, 10_000);
    await waitFor(() => !isAlive(scriptWrapper), "t1's wrapper to exit");
    // Ready: its copiers (forks of it, in its process group) are running in its slot.
    const [waiting] = await waitFor(() => {
      const shells = wrappersStartedBy(first.runner.pid).filter((pid) => pidsInGroup(pid).filter((member) => member !== pid).length >= 2);
      return shells.length > 0 ? shells : undefined;
    }, "a waiting shell with its copiers");
    // Stopped, it cannot read the EOF that would end it once its runner is gone: the next runner still finds it.
    process.kill(waiting!, "SIGSTOP");
    await killRunner(first.runner);

    const second = await runnerProcess();
    expect(second.runner.output()).toContain(`Stopping the waiting shell ${waiting}`);
    expect(second.runner.output()).not.toMatch(/Found the script wrapper/);
    expect(isAlive(waiting!)).toBe(false);
  }, 60_000);

  it("leaves alone the wrapper of an abandoned script whose run folder was removed: it was let go on purpose", async () => {
    const first = await runnerProcess();
    tag.dispatch(first.connection, "t1", 1, "echo ready; sleep 600");
    const { pid } = await first.connection.frame("started", () => true, 10_000);
    await first.connection.frame("output", () => true, 10_000);
    first.connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    // A round trip: the abandon was handled.
    first.connection.dispatch("t2", 2, "true");
    await first.connection.frame("exit", (frame) => frame.ticket === "t2", 10_000);
    await killRunner(first.runner);
    rmSync(join(workDir, "runs"), { recursive: true, force: true });

    const second = await runnerProcess();
    expect(second.hello.inventory).toEqual([]);
    expect(isAlive(pid)).toBe(true);
    // Only this wrapper is asserted on: a warm shell the killed runner had just started may still be there.
    expect(second.runner.output()).not.toMatch(new RegExp(`wrapper ${pid}\\b`));
  }, 60_000);
});

describe("a runner process with a runtime dir of its own (--runtime-dir)", () => {
  let runtimeDir: string;
  let runtime: string[];

  beforeEach(async () => {
    runtimeDir = await tempDir("reattach-runtime");
    runtime = ["--runtime-dir", runtimeDir];
    // Not in an afterEach of this block: that would run before the runners are stopped, while they still write there.
    foldersToRemove.push(runtimeDir);
  });

  it("re-attaches to what a runner without one left in the work dir (an upgrade), then to its own runs, whose files are in the runtime dir", async () => {
    const { pid, ledger, storedAtKill } = await killedPastFirstBurst();

    const second = await runnerProcess(runtime);
    expect(second.hello.inventory).toEqual([{ ticket: "t1", fence: 1, nextSequence: expect.any(Number), exited: false, reattached: true }]);
    await waitFor(() => ledger.next > storedAtKill + 100, "output after the restart", 10_000);
    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    const exit = await waitFor(() => ledger.exits[0], "t1's exit", 20_000);
    expect(exit.outcome).toEqual({ kind: "exited", code: 9 });
    expect(ledger.violations).toEqual([]);
    await waitFor(() => !isAlive(pid), "t1's wrapper to exit");

    // Its own run: the record, FIFOs and output log in the runtime dir, only the workspace in the work dir.
    plane.checkLine = undefined;
    plane.keepOutputFrames = true;
    tag.dispatch(second.connection, "t2", 2, 'echo "in $PWD"; while [ ! -e go ]; do sleep 0.01; done; echo done; exit 5');
    const started = await second.connection.frame("started", (frame) => frame.ticket === "t2", 10_000);
    await second.connection.frame("output", (frame) => frame.ticket === "t2", 10_000);
    const run = runDir(runtimeDir, "t2");
    expect(readdirSync(run)).toEqual(expect.arrayContaining(["record.json", "io", "script.sh"]));
    expect(readdirSync(join(workDir, "runs", basename(run)))).toEqual(["work"]);
    expect(second.connection.lines("t2")[0]).toBe(`0:stdout:in ${workspaceOf(workDir, "t2", 2, runtimeDir)}`);
    await killRunner(second.runner);

    const third = await runnerProcess(runtime);
    expect(third.hello.inventory).toMatchObject([{ ticket: "t2", fence: 2, exited: false, reattached: true }]);
    await writeFile(join(workspaceOf(workDir, "t2", 2, runtimeDir), "go"), "");
    const exit2 = await waitFor(() => plane.ledger("t2", 2).exits[0], "t2's exit", 20_000);
    expect(exit2).toMatchObject({ lineCount: 2, outcome: { kind: "exited", code: 5 } });
    expect(plane.ledger("t2", 2).violations).toEqual([]);
    await waitFor(() => !isAlive(started.pid), "t2's wrapper to exit");
  }, 120_000);

  it("stops the wrappers its predecessor left when the runtime dir was emptied, and removes their workspaces", async () => {
    const first = await runnerProcess(runtime);
    tag.dispatch(first.connection, "t1", 1, "echo ready; sleep 600");
    const { pid } = await first.connection.frame("started", () => true, 10_000);
    await first.connection.frame("output", () => true, 10_000);
    const workspace = dirname(workspaceOf(workDir, "t1", 1, runtimeDir));
    await killRunner(first.runner);
    rmSync(join(runtimeDir, "runs"), { recursive: true, force: true });

    const second = await runnerProcess(runtime);
    expect(isAlive(pid)).toBe(false);
    expect(second.hello.inventory).toEqual([]);
    expect(second.runner.output()).toMatch(new RegExp(`Found the script wrapper ${pid} of this work dir`));
    await waitFor(() => !existsSync(workspace), "the orphaned workspace to be removed");
  }, 60_000);
});
