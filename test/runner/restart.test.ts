/**
 * A runner restart, where the new runner cannot re-attach (the floor rule): a new runner process on the same work dir
 * finds, through the run records, what its predecessor left running that it cannot re-attach to (here: records
 * without `reattach`, as a runner that predates wrappers wrote them), lists it in its hello, and (told to continue)
 * stops it as a cancel would and reports it lost, with the processes that would not die; it carries out kills an
 * abandon asked for while no runner was there, and names processes for good (pid, start time, boot). Re-attaching is
 * in reattach.test.ts. Real runners (stopped in between, as a killed one would leave things), real processes, a fake
 * control plane; every process is stopped by pid.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseProcessStat } from "../../runner/containment.js";
import type { RunnerDependencies, RunnerInput } from "../../runner/index.js";
import { isAlive, killGroup, killPid, pidsInGroup, pidsInGroupNamed } from "../helpers/processes.js";
import {
  ScriptTag,
  runDir,
  runRecords,
  setUpRunnerTest,
  startConnectedRunner,
  startTestRunner,
  tearDownRunnerTest,
  waitFor,
  type FakeConnection,
  type FakeControlPlane,
} from "./fake-control-plane.js";

let plane: FakeControlPlane;
let workDir: string;
let tag: ScriptTag;

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("restart"));
  plane.autoWelcome = false;
  tag = new ScriptTag();
});

afterEach(() => tearDownRunnerTest({ plane, workDir }, tag));

const FAST: RunnerDependencies = { watchPollMs: 50 };

const BOOT_ID = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();

/** A process's start time, from /proc. */
function startTimeOf(pid: number): number {
  return parseProcessStat(readFileSync(`/proc/${pid}/stat`, "utf8"))!.startTime;
}

/**
 * Runs a tagged script under a first runner until it printed its first line, then stops that runner: the script
 * keeps running, as it would after the runner was killed, in a run the next runner cannot re-attach to. Returns the
 * pid the runner said it started (the script's wrapper, which leads its process group).
 */
async function leftRunning(ticket: string, fence: number, scriptBody: string, overrides: Partial<RunnerInput> = {}, dependencies: RunnerDependencies = {}): Promise<number> {
  const { handle, connection } = await startConnectedRunner(plane, workDir, overrides, { ...FAST, ...dependencies });
  tag.dispatch(connection, ticket, fence, scriptBody);
  const { pid } = await connection.frame("started", (frame) => frame.ticket === ticket);
  await connection.frame("output", (frame) => frame.ticket === ticket);
  await handle.stop();
  expect(isAlive(pid)).toBe(true);
  unreattachable(ticket);
  return pid;
}

/** Rewrites a run's record without `reattach`, as a runner that predates wrappers wrote it: the next runner cannot re-attach. */
function unreattachable(ticket: string): void {
  const file = join(runDir(workDir, ticket), "record.json");
  const { reattach: _reattach, ...record } = JSON.parse(readFileSync(file, "utf8"));
  writeFileSync(file, JSON.stringify(record));
}

/** Starts the next runner on the same work dir and waits for its hello on the next connection. */
async function nextRunner(overrides: Partial<RunnerInput> = {}, dependencies: RunnerDependencies = {}) {
  const count = plane.connections.length;
  const runner = await startTestRunner(plane, workDir, overrides, { ...FAST, ...dependencies });
  const connection = await plane.connection(count + 1);
  const hello = await connection.frame("hello");
  return { ...runner, connection, hello };
}

function debugLines(connection: FakeConnection, ticket: string): string[] {
  return connection.lines(ticket).filter((line) => line.includes(":debug:"));
}

describe("a runner that finds its predecessor's script still running", () => {
  it("lists it in hello, and once told to continue stops it as a cancel would and reports it lost, numbering its lines from the welcome (bug 2)", async () => {
    const pid = await leftRunning("t1", 4, "echo ready; exec sleep 600");
    const { connection, hello } = await nextRunner();
    expect(hello.inventory).toEqual([{ ticket: "t1", fence: 4, nextSequence: 0, exited: false }]);
    // Nothing is done to it before the control plane answers.
    expect(isAlive(pid)).toBe(true);
    connection.welcome([{ ticket: "t1", fence: 4, action: "continue", nextSequence: 1 }]);
    const exit = await connection.frame("exit");
    expect(isAlive(pid)).toBe(false);
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 4, lineCount: 2, outcome: { kind: "lost", signals: ["SIGTERM"], survivors: [] } });
    expect(connection.lines("t1")).toEqual([
      "1:debug:A new runner process found this script left running by the previous one and could not re-attach to it, so it stopped it: sent SIGTERM to its processes.",
    ]);
    expect(connection.all("started")).toEqual([]);
    // Acknowledged, it is forgotten, and its folder goes with its last process.
    connection.send({ type: "exit_ack", ticket: "t1", fence: 4 });
    await waitFor(() => readdirSync(join(workDir, "runs")).length === 0, "the lost run's folder to be removed");
    connection.ws.terminate();
    const third = await plane.connection(plane.connections.length + 1);
    expect((await third.frame("hello")).inventory).toEqual([]);
  });

  it("stops every process of it, also those that left its process group, and those it started before the record named its pid", async () => {
    const pid = await leftRunning("t1", 1, "setsid sleep 600 & ( ( sleep 600 & ) & ); echo ready; sleep 600", {}, { cgroups: null });
    await waitFor(() => tag.pids().length >= 4, "the script and its three sleeps");
    const all = tag.pids();
    // As if the runner had died between the spawn and the record's update: only the marker finds them.
    const recordFile = join(runDir(workDir, "t1"), "record.json");
    const { process: _process, reattach: _reattach, ...withoutPid } = JSON.parse(readFileSync(recordFile, "utf8"));
    writeFileSync(recordFile, JSON.stringify(withoutPid));
    const { connection, hello } = await nextRunner({}, { cgroups: null });
    expect(hello.inventory.map((item) => item.ticket)).toEqual(["t1"]);
    connection.welcome([{ ticket: "t1", fence: 1, action: "continue", nextSequence: 1 }]);
    const exit = await connection.frame("exit");
    expect(all.filter(isAlive)).toEqual([]);
    expect(isAlive(pid)).toBe(false);
    expect(exit.outcome).toEqual({ kind: "lost", signals: ["SIGTERM"], survivors: [] });
  });

  it("lists the processes it cannot stop as survivors, with start time and boot, and reports each one's end", async () => {
    const pid = await leftRunning("t1", 2, "echo ready; exec sleep 600");
    // The wrapper, its two copiers (each with its dd or waiting) and the script's shell (now the sleep).
    const script = await waitFor(() => pidsInGroupNamed(pid, "sleep")[0], "the script's sleep");
    // Every process of its group; the tag is the script's own, the copiers are the wrapper's.
    const expected = pidsInGroup(pid).sort((a, b) => a - b);
    expect(expected).toContain(script);
    const { connection } = await nextRunner({ disableKill: true });
    connection.welcome([{ ticket: "t1", fence: 2, action: "continue", nextSequence: 1 }]);
    const exit = await connection.frame("exit");
    expect(exit.outcome).toEqual({
      kind: "lost",
      signals: [],
      survivors: expected.map((each) => ({ pid: each, startTime: startTimeOf(each), bootId: BOOT_ID })),
    });
    expect(debugLines(connection, "t1")).toEqual([
      "1:debug:A new runner process found this script left running by the previous one and could not re-attach to it; process kill is disabled on this runner (UNSAFE), so it did not stop it.",
      `2:debug:${expected.length} processes of the script are still running (pid ${expected.join(", ")}); listed as abandoned.`,
    ]);
    connection.send({ type: "exit_ack", ticket: "t1", fence: 2 });
    expect(connection.all("abandoned_exit")).toEqual([]);
    killGroup(pid);
    await connection.frame("abandoned_exit", (frame) => frame.pid === pid);
    await connection.frame("abandoned_exit", (frame) => frame.pid === script);
  });

  it("kills it, escaped processes included, when the welcome abandons it with killProcess (bug 7)", async () => {
    const pid = await leftRunning("t1", 3, "trap '' TERM; setsid sleep 600 & echo ready; sleep 600");
    await waitFor(() => tag.pids().length >= 3, "the script and its two sleeps");
    const all = tag.pids();
    const { connection } = await nextRunner();
    connection.welcome([{ ticket: "t1", fence: 3, action: "abandon", nextSequence: 1, killProcess: true }]);
    await waitFor(() => all.every((each) => !isAlive(each)), "every process of the script to be killed");
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 3, pid });
    expect(connection.all("exit")).toEqual([]);
  });

  it("lets it run when the welcome abandons it without killProcess, and reports its end", async () => {
    const pid = await leftRunning("t1", 5, "echo ready; exec sleep 600");
    const { connection } = await nextRunner();
    connection.welcome([{ ticket: "t1", fence: 5, action: "abandon", nextSequence: 1 }]);
    await connection.roundTrip("t2", 6);
    expect(isAlive(pid)).toBe(true);
    const dir = runDir(workDir, "t1");
    killPid(pid);
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 5, pid });
    // A predecessor's run goes once nothing of it runs.
    await waitFor(() => !existsSync(dir), "the abandoned run's folder to be removed");
  });

  it("kills it and drops it when the welcome cancels it", async () => {
    const pid = await leftRunning("t1", 7, "echo ready; exec sleep 600");
    const { connection } = await nextRunner();
    connection.welcome([{ ticket: "t1", fence: 7, action: "cancel", nextSequence: 0 }]);
    await waitFor(() => !isAlive(pid), "the script to be killed");
    await connection.roundTrip("t2", 8);
    expect(connection.all("exit", "t1")).toEqual([]);
  });

  it("stops what a finished script of its predecessor left running when the control plane forgets the script", async () => {
    const { handle, connection: first } = await startConnectedRunner(plane, workDir, { pipeDrainMs: 50 }, FAST);
    tag.dispatch(first, "t1", 1, "setsid sleep 600 & echo done");
    await first.frame("exit");
    await waitFor(() => tag.pids().length === 1, "the sleep it left");
    const [leftover] = tag.pids();
    await handle.stop();
    unreattachable("t1");
    const { connection, hello } = await nextRunner();
    expect(hello.inventory).toEqual([{ ticket: "t1", fence: 1, nextSequence: 0, exited: false }]);
    connection.welcome([{ ticket: "t1", fence: 1, action: "forget", nextSequence: 0 }]);
    await waitFor(() => !isAlive(leftover!), "what it left to be stopped");
    await connection.roundTrip("t2", 2);
    expect(connection.all("exit", "t1")).toEqual([]);
  });

  it("removes its predecessor's runs that have no process left, and does not list them", async () => {
    const pid = await leftRunning("t1", 1, "echo ready; exec sleep 600");
    const folders = readdirSync(join(workDir, "runs"));
    expect(folders).toHaveLength(1);
    killGroup(pid);
    // Every process of the run: the wrapper's copiers too (their group is the wrapper's), which carry no tag. One still
    // dying when the next runner looks holds the run's cgroup, and the run is rightly taken for one that still runs.
    await waitFor(() => pidsInGroup(pid).length === 0 && tag.pids().length === 0, "the script, its wrapper and the wrapper's copiers to die");
    const { hello } = await nextRunner();
    expect(hello.inventory).toEqual([]);
    await waitFor(() => readdirSync(join(workDir, "runs")).length === 0, "the dead run's folder to be removed");
  });

  it("leaves the runs of a runner that still runs on the same work dir alone", async () => {
    const { connection: first } = await startConnectedRunner(plane, workDir, {}, FAST);
    tag.dispatch(first, "t1", 1, "echo ready; exec sleep 600");
    const { pid } = await first.frame("started");
    await first.frame("output");
    const { connection, hello } = await nextRunner();
    expect(hello.inventory).toEqual([]);
    connection.welcome();
    await connection.roundTrip("t2", 2);
    expect(isAlive(pid)).toBe(true);
    expect(runRecords(workDir).map(({ record }) => record.ticket).sort()).toEqual(["t1", "t2"]);
  });

  it("leaves alone what an abandoned run of its predecessor still runs, and kills it by its marker when the welcome's watch asks (bug 7)", async () => {
    const { handle, connection: first } = await startConnectedRunner(plane, workDir, {}, { ...FAST, cgroups: null });
    tag.dispatch(first, "t1", 1, "setsid sleep 600 & echo ready; exec sleep 600");
    const { pid, startTime } = await first.frame("started");
    await first.frame("output");
    await waitFor(() => tag.pids().length >= 2, "the script and its escaped sleep");
    const all = tag.pids();
    first.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    await first.roundTrip("t2", 2);
    // t2 is done with: its exit is acknowledged.
    first.send({ type: "exit_ack", ticket: "t2", fence: 2 });
    await waitFor(() => runRecords(workDir).some(({ record }) => record.ticket === "t2" && record.exit !== undefined), "t2's record to say it is done");
    await handle.stop();

    // Neither is listed: the abandoned run's script is the control plane's no more, and t2 has no process left.
    const { connection, hello } = await nextRunner({}, { cgroups: null });
    expect(hello.inventory).toEqual([]);
    connection.welcome();
    await connection.roundTrip("t3", 3);
    expect(all.filter(isAlive)).toEqual(all);
    // Reconnected with the watch the abandon (asked to kill while no runner was there) left.
    connection.ws.terminate();
    const next = await plane.connection(plane.connections.length + 1);
    await next.frame("hello");
    next.welcome([{ ticket: "t3", fence: 3, action: "forget", nextSequence: 0 }], [{ ticket: "t1", fence: 1, pid, startTime, bootId: BOOT_ID, kill: true }]);
    await waitFor(() => all.every((each) => !isAlive(each)), "the abandoned process and what left its group to be killed");
    expect(await next.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
  });
});

describe("processes named for good", () => {
  it("says started with the process's start time and this boot's id (bug 8)", async () => {
    const { connection } = await startConnectedRunner(plane, workDir, {}, FAST);
    tag.dispatch(connection, "t1", 1, "echo ready; exec sleep 600");
    const started = await connection.frame("started");
    expect(started).toEqual({ type: "started", ticket: "t1", fence: 1, pid: started.pid, startTime: startTimeOf(started.pid), bootId: BOOT_ID });
  });

  it("reports at once a watched pid that names a process with another start time, or a process of another boot (bug 8)", async () => {
    const sleeper = startSleeper();
    const { connection } = await startConnectedRunner(plane, workDir, {}, { watchPollMs: 60_000 });
    connection.ws.terminate();
    const second = await plane.connection(2);
    await second.frame("hello");
    const startTime = startTimeOf(sleeper);
    second.welcome(
      [],
      [
        { ticket: "reused", fence: 1, pid: sleeper, startTime: startTime + 1, bootId: BOOT_ID },
        { ticket: "rebooted", fence: 2, pid: sleeper, startTime, bootId: "00000000-0000-0000-0000-000000000000" },
        { ticket: "same", fence: 3, pid: sleeper, startTime, bootId: BOOT_ID },
      ],
    );
    // With a one-minute poll, only the look on arrival can report them in time.
    await second.frame("abandoned_exit", (frame) => frame.ticket === "reused");
    await second.frame("abandoned_exit", (frame) => frame.ticket === "rebooted");
    await second.roundTrip("t1", 4);
    expect(second.all("abandoned_exit").map((frame) => frame.ticket).sort()).toEqual(["rebooted", "reused"]);
    expect(isAlive(sleeper)).toBe(true);
  });

  it("kills a watched process the welcome lists with kill, and its process group, but not a pid that names another process (bug 7)", async () => {
    const sleeper = startSleeper();
    const other = startSleeper();
    const { connection } = await startConnectedRunner(plane, workDir, {}, FAST);
    connection.ws.terminate();
    const second = await plane.connection(2);
    await second.frame("hello");
    second.welcome(
      [],
      [
        { ticket: "old", fence: 1, pid: sleeper, startTime: startTimeOf(sleeper), kill: true },
        { ticket: "reused", fence: 2, pid: other, startTime: startTimeOf(other) + 1, kill: true },
      ],
    );
    await waitFor(() => !isAlive(sleeper), "the abandoned process to be killed");
    expect(await second.frame("abandoned_exit", (frame) => frame.ticket === "old")).toEqual({ type: "abandoned_exit", ticket: "old", fence: 1, pid: sleeper });
    await second.roundTrip("t1", 3);
    expect(isAlive(other)).toBe(true);
  });

  it("kills a script this runner still tracks when the welcome after a reconnect abandons it with killProcess (bug 7)", async () => {
    const { connection } = await startConnectedRunner(plane, workDir, {}, FAST);
    tag.dispatch(connection, "t1", 1, "trap '' TERM; echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    connection.ws.terminate();
    const second = await plane.connection(2);
    await second.frame("hello");
    second.welcome([{ ticket: "t1", fence: 1, action: "abandon", nextSequence: 1, killProcess: true }]);
    await waitFor(() => !isAlive(pid), "the abandoned script to be killed");
    expect(await second.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
  });
});

/** A process the test starts itself (not through the runner), in its own group. */
function startSleeper(): number {
  const child = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
  child.on("error", () => undefined);
  const pid = child.pid!;
  tag.extraPids.add(pid);
  return pid;
}
