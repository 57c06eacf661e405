/**
 * Re-attaching after a runner restart, in one process: a runner is stopped (as a killed one would leave things: its
 * scripts keep running under their wrappers, their FIFOs and logs on disk) and a new runner on the same work dir takes
 * over. The fake control plane stores output strictly (a gap or a repeated line is a violation) and welcomes the new
 * runner with what it stored, as the real one does. Real processes; every one is stopped by pid.
 */
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { RunnerDependencies, RunnerInput } from "../../runner/index.js";
import { parseProcessStat } from "../../runner/containment.js";
import { isAlive, killPid, pidsInGroup, removeDir, tempDir } from "../helpers/processes.js";
import {
  ScriptTag,
  runDir,
  setUpRunnerTest,
  startConnectedRunner,
  startTestRunner,
  tearDownRunnerTest,
  waitFor,
  workspaceOf,
  type FakeConnection,
  type FakeControlPlane,
} from "./fake-control-plane.js";

let plane: FakeControlPlane;
let workDir: string;
let tag: ScriptTag;

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("reattach"));
  tag = new ScriptTag();
});

afterEach(() => tearDownRunnerTest({ plane, workDir }, tag));

const FAST: RunnerDependencies = { watchPollMs: 50, reattachPollMs: 20 };

/** A script that prints `line-1`, `line-2`, ... (`burst` at once, then one every 10 ms until `go` exists in its workspace, then `after` more) and exits with `code`. */
function numbered(burst: number, after: number, code: number): string {
  return [
    "i=0",
    'emit() { i=$((i+1)); echo "line-$i"; }',
    `for j in $(seq 1 ${burst}); do emit; done`,
    "while [ ! -e go ]; do emit; sleep 0.01; done",
    `for j in $(seq 1 ${after}); do emit; done`,
    `exit ${code}`,
  ].join("\n");
}

/** Checks every stored line of `numbered`: `line-<n>` in order, stdout, nothing else. */
function checkNumbered(ticket: string, sequence: number, line: { source: string; text: string }): string | undefined {
  return line.source === "stdout" && line.text === `line-${sequence + 1}` ? undefined : `line ${sequence} of ${ticket} is ${line.source} ${JSON.stringify(line.text)}`;
}

/** Starts the next runner on the same work dir; its hello arrives on the next connection. */
async function nextRunner(overrides: Partial<RunnerInput> = {}, dependencies: RunnerDependencies = {}) {
  const count = plane.connections.length;
  const runner = await startTestRunner(plane, workDir, overrides, { ...FAST, ...dependencies });
  const connection = await plane.connection(count + 1);
  const hello = await connection.frame("hello");
  return { ...runner, connection, hello };
}

/** Dispatches a tagged script to a first runner, waits for `lines` stored lines, and stops that runner mid-script. */
async function stoppedMidScript(ticket: string, fence: number, scriptBody: string, lines: number, overrides: Partial<RunnerInput> = {}, dependencies: RunnerDependencies = {}) {
  const { handle, connection } = await startConnectedRunner(plane, workDir, overrides, { ...FAST, ...dependencies });
  tag.dispatch(connection, ticket, fence, scriptBody);
  const { pid } = await connection.frame("started", (frame) => frame.ticket === ticket);
  const ledger = plane.ledger(ticket, fence);
  await waitFor(() => ledger.next >= lines, `${lines} stored lines`, 10_000);
  await handle.stop();
  expect(isAlive(pid)).toBe(true);
  return { pid, first: connection, ledger };
}

/** The run folder of a ticket, or undefined while there is none. */
function runDirOf(ticket: string): string | undefined {
  try {
    return runDir(workDir, ticket);
  } catch {
    return undefined;
  }
}

function startTimeOf(pid: number): number {
  return parseProcessStat(readFileSync(`/proc/${pid}/stat`, "utf8"))!.startTime;
}

function go(ticket: string): void {
  writeFileSync(join(workspaceOf(workDir, ticket), "go"), "");
}

function debugTexts(connection: FakeConnection, ticket: string): string[] {
  return connection.lines(ticket).filter((line) => line.includes(":debug:")).map((line) => line.split(":debug:")[1]!);
}

describe("a runner that finds a script its predecessor started under a wrapper", () => {
  it("re-attaches: lists it as reattached, keeps it running, numbers every line as before, resends from the welcome and reports its real exit code", async () => {
    plane.welcomeFromLedger = true;
    plane.autoAck = true;
    plane.checkLine = checkNumbered;
    const { pid, ledger } = await stoppedMidScript("t1", 1, numbered(200, 0, 7), 150);
    const stored = ledger.next;
    const { connection, hello, handle } = await nextRunner();
    expect(hello.inventory).toEqual([{ ticket: "t1", fence: 1, nextSequence: expect.any(Number), exited: false, reattached: true }]);
    expect(hello.inventory[0]!.nextSequence).toBeLessThanOrEqual(stored);
    await waitFor(() => handle.connected, "the welcome");
    // Output it printed while no runner was there arrives, and more as it goes.
    await waitFor(() => ledger.next > stored + 20, "output after the restart");
    expect(isAlive(pid)).toBe(true);
    expect(handle.stats().scripts).toMatchObject([{ ticket: "t1", origin: "reattached", phase: "running" }]);
    go("t1");
    const exit = await connection.frame("exit", (frame) => frame.ticket === "t1", 10_000);
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 1, lineCount: ledger.next, outcome: { kind: "exited", code: 7 } });
    expect(ledger.violations).toEqual([]);
    expect(connection.invalid).toEqual([]);
    await waitFor(() => !isAlive(pid), "the wrapper to exit once released");
  });

  it("loses no line across two restarts, one of them while the control plane was acknowledging nothing", async () => {
    plane.welcomeFromLedger = true;
    plane.checkLine = checkNumbered;
    // Nothing is acknowledged on the first connection: every line stays in the log for the next runner.
    const { ledger } = await stoppedMidScript("t1", 1, numbered(500, 100, 0), 300);
    plane.autoAck = true;
    const second = await nextRunner();
    await waitFor(() => second.handle.connected, "the second welcome");
    await waitFor(() => ledger.next > 600, "more lines");
    await second.handle.stop();
    const third = await nextRunner();
    expect(third.hello.inventory).toMatchObject([{ ticket: "t1", fence: 1, exited: false, reattached: true }]);
    go("t1");
    const exit = await third.connection.frame("exit", (frame) => frame.ticket === "t1", 10_000);
    expect(exit.outcome).toEqual({ kind: "exited", code: 0 });
    expect(exit.lineCount).toBe(ledger.next);
    expect(ledger.violations).toEqual([]);
  });

  it("reports the real exit code and all the output of a script that ended while no runner was there", async () => {
    plane.welcomeFromLedger = true;
    plane.autoAck = true;
    plane.checkLine = checkNumbered;
    const { pid, ledger } = await stoppedMidScript("t1", 1, numbered(50, 2000, 3), 50);
    go("t1");
    // It ends by itself: its wrapper records the status and waits, holding what nobody read yet.
    // The shell creates the file, then writes to it: wait for what it writes, not for the file.
    const exitFile = join(runDir(workDir, "t1"), "exit");
    await waitFor(() => existsSync(exitFile) && readFileSync(exitFile, "utf8") === "3\n", "the script to end and its status to be written");
    expect(isAlive(pid)).toBe(true);
    const { connection, hello } = await nextRunner();
    expect(hello.inventory).toMatchObject([{ ticket: "t1", fence: 1, reattached: true }]);
    const exit = await connection.frame("exit", (frame) => frame.ticket === "t1", 10_000);
    expect(exit.outcome).toEqual({ kind: "exited", code: 3 });
    expect(ledger.next).toBeGreaterThanOrEqual(2050);
    expect(exit.lineCount).toBe(ledger.next);
    expect(ledger.violations).toEqual([]);
    await waitFor(() => !isAlive(pid), "the wrapper to exit once the new runner has everything");
  });

  it("re-sends the exit of a script whose exit its predecessor sent but never saw acknowledged", async () => {
    plane.welcomeFromLedger = true;
    const { handle, connection: first } = await startConnectedRunner(plane, workDir, {}, FAST);
    tag.dispatch(first, "t1", 1, "echo one; echo two >&2; exit 5");
    await first.frame("exit");
    await handle.stop();
    const { connection, hello } = await nextRunner();
    expect(hello.inventory).toEqual([{ ticket: "t1", fence: 1, nextSequence: 0, exited: true, reattached: true }]);
    const exit = await connection.frame("exit");
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 1, lineCount: 2, outcome: { kind: "exited", code: 5 } });
    connection.send({ type: "exit_ack", ticket: "t1", fence: 1 });
    // Done with: its record says so, and its log is gone.
    const dir = runDir(workDir, "t1");
    await waitFor(() => JSON.parse(readFileSync(join(dir, "record.json"), "utf8")).exit !== undefined, "the record to say it is done");
    expect(readdirSync(dir).filter((name) => name.endsWith(".log"))).toEqual([]);
  });

  it("cancels a re-attached script as before: SIGTERM to its process group and to what left it, reported cancelled with the signals", async () => {
    const { pid } = await stoppedMidScript("t1", 1, "setsid sleep 600 & echo ready; sleep 600", 1, {}, { cgroups: null });
    await waitFor(() => tag.pids().length >= 3, "the wrapper, the script and its escaped sleep");
    const all = tag.pids();
    const { connection, handle } = await nextRunner({}, { cgroups: null });
    await waitFor(() => handle.connected, "the welcome");
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(exit.outcome).toEqual({ kind: "cancelled", signals: ["SIGTERM"] });
    expect(all.filter(isAlive)).toEqual([]);
    expect(isAlive(pid)).toBe(false);
    expect(debugTexts(connection, "t1")).toEqual(["Cancelled: sent SIGTERM to the process group and to 1 process that had left it."]);
  });

  it("abandons a re-attached script as before: it keeps running, is watched, and its end is reported", async () => {
    const { pid } = await stoppedMidScript("t1", 1, "echo ready; while [ ! -e go ]; do echo tick; sleep 0.01; done; echo done", 1);
    const { connection, handle } = await nextRunner();
    await waitFor(() => handle.connected, "the welcome");
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    await connection.roundTrip("t2", 2);
    expect(isAlive(pid)).toBe(true);
    go("t1");
    // Drained into nothing, its wrapper let go: it ends by itself.
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
    expect(connection.all("exit", "t1")).toEqual([]);
  });

  it("kills a re-attached script's tree at once when abandoned with killProcess", async () => {
    const { pid } = await stoppedMidScript("t1", 1, "trap '' TERM; echo ready; sleep 600", 1);
    const all = tag.pids();
    const { connection, handle } = await nextRunner();
    await waitFor(() => handle.connected, "the welcome");
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: true });
    await waitFor(() => all.every((each) => !isAlive(each)), "every process of it to be killed");
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
  });

  it("lets a wrapper it knows only from the welcome's watch list go, so that it exits once its abandoned script ends", async () => {
    const { pid } = await stoppedMidScript("t1", 1, 'echo ready; while [ ! -e go ]; do echo tick; sleep 0.005; done; seq 1 100000', 1);
    // A runner on another work dir: it cannot re-attach, and learns of the abandoned wrapper from the control plane.
    const elsewhere = await tempDir("reattach-elsewhere");
    try {
      plane.autoWelcome = false;
      const count = plane.connections.length;
      await startTestRunner(plane, elsewhere, {}, FAST);
      const connection = await plane.connection(count + 1);
      await connection.frame("hello");
      connection.welcome([], [{ ticket: "t1", fence: 1, pid, startTime: startTimeOf(pid) }]);
      await connection.roundTrip("t2", 2);
      expect(isAlive(pid)).toBe(true);
      go("t1");
      // Its output (more than a pipe holds) is drained, and its gate released: it ends, and the end is reported.
      expect(await connection.frame("abandoned_exit", () => true, 10_000)).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
    } finally {
      await plane.stopRunners();
      await removeDir(elsewhere);
    }
  });

  it("stops what is left and reports it lost when its wrapper turns out killed without recording the script's end", async () => {
    const { pid } = await stoppedMidScript("t1", 1, "echo ready; sleep 600", 1);
    const { connection, handle } = await nextRunner();
    await waitFor(() => handle.connected, "the welcome");
    const [script] = pidsInGroup(pid).filter((each) => each !== pid);
    expect(script).toBeDefined();
    killPid(pid);
    const exit = await connection.frame("exit");
    expect(exit.outcome).toMatchObject({ kind: "lost", signals: ["SIGTERM"], survivors: [] });
    expect(isAlive(script!)).toBe(false);
    expect(debugTexts(connection, "t1")).toEqual([
      "The script's wrapper process ended without recording the script's exit status (it was killed while the runner restarted): the result is unknown.",
      "Stopped what it left running: sent SIGTERM to its processes.",
    ]);
  });

  it("follows the floor rule for a run whose output log was removed: stopped, reported lost", async () => {
    const { pid } = await stoppedMidScript("t1", 1, "echo ready; sleep 600", 1);
    const dir = runDir(workDir, "t1");
    for (const name of readdirSync(dir).filter((each) => each.endsWith(".log"))) rmSync(join(dir, name));
    const { connection, hello, logs } = await nextRunner();
    expect(hello.inventory).toEqual([{ ticket: "t1", fence: 1, nextSequence: 0, exited: false }]);
    expect(logs.some((line) => line.includes("Cannot re-attach to t1 (fence 1)") && line.includes("its output log cannot be read"))).toBe(true);
    connection.welcome([{ ticket: "t1", fence: 1, action: "continue", nextSequence: 1 }]);
    const exit = await connection.frame("exit");
    expect(exit.outcome).toMatchObject({ kind: "lost", signals: ["SIGTERM"], survivors: [] });
    expect(isAlive(pid)).toBe(false);
  });

  it("keeps the output log in segments and deletes a segment once the next one's checkpoint is acknowledged", async () => {
    plane.autoAck = true;
    plane.welcomeFromLedger = true;
    plane.checkLine = checkNumbered;
    const segmentBytes = 16 * 1024;
    // Little may wait unacknowledged, so that few segments are needed at once, however the output is read.
    const { connection, handle } = await startConnectedRunner(plane, workDir, { maxUnackedBytes: 32 * 1024 }, { ...FAST, logSegmentBytes: segmentBytes });
    tag.dispatch(connection, "t1", 1, numbered(100_000, 0, 0));
    const dir = await waitFor(() => runDirOf("t1"), "the run folder");
    const ledger = plane.ledger("t1", 1);
    let most = 0;
    let newest = 0;
    await waitFor(() => {
      const segments = readdirSync(dir).filter((name) => name.endsWith(".log"));
      most = Math.max(most, segments.length);
      for (const name of segments) newest = Math.max(newest, Number(/\.(\d+)\.log$/.exec(name)?.[1] ?? 0));
      return ledger.next >= 100_000;
    }, "100,000 stored lines", 30_000);
    // About 1.2 MB of output went through 16 KiB segments (a read is at most 64 KiB: at least 18 were made), but only
    // the unacknowledged tail is kept: far fewer were ever there at once.
    expect(newest).toBeGreaterThanOrEqual(18);
    expect(most).toBeLessThan(12);
    await handle.stop();
    // What is left replays to the same numbers.
    const { hello } = await nextRunner();
    expect(hello.inventory).toMatchObject([{ ticket: "t1", fence: 1, reattached: true }]);
    go("t1");
    const next = plane.connections.at(-1)!;
    await next.frame("exit", (frame) => frame.ticket === "t1", 10_000);
    expect(ledger.violations).toEqual([]);
  });
});

describe("draining", () => {
  it("says draining, closes with 1000 and leaves its running script to the next runner, which re-attaches to it", async () => {
    plane.welcomeFromLedger = true;
    plane.autoAck = true;
    plane.checkLine = checkNumbered;
    const { handle, connection } = await startConnectedRunner(plane, workDir, {}, FAST);
    tag.dispatch(connection, "t1", 1, numbered(10, 0, 4));
    const { pid } = await connection.frame("started");
    await waitFor(() => plane.ledger("t1", 1).next >= 10, "the first lines");
    await handle.drain();
    const draining = connection.frames.findIndex((frame) => frame.type === "draining");
    expect(draining).toBeGreaterThan(0);
    await waitFor(() => connection.closed, "the close");
    expect(connection.frames.slice(draining + 1)).toEqual([]);
    expect(connection.closed?.code).toBe(1000);
    expect(isAlive(pid)).toBe(true);
    const { connection: next, hello } = await nextRunner();
    expect(hello.inventory).toMatchObject([{ ticket: "t1", fence: 1, reattached: true }]);
    go("t1");
    expect((await next.frame("exit", (frame) => frame.ticket === "t1")).outcome).toEqual({ kind: "exited", code: 4 });
    expect(plane.ledger("t1", 1).violations).toEqual([]);
  });
});
