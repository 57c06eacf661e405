/**
 * Abandon: the runner lets go of a script at once and never makes it die by doing so (its pipes are drained,
 * not closed), kills it only when told, watches its process and reports `abandoned_exit` once it is gone,
 * across reconnects and runner restarts. Real runner, real processes, a fake control plane.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CAPABILITIES } from "../../shared/protocol.js";
import { AbandonedWatch, type WatchedProcess } from "../../runner/abandoned-watch.js";
import type { RunnerDependencies, RunnerInput } from "../../runner/index.js";
import { isAlive, killGroup, killPid } from "../helpers/processes.js";
import {
  ScriptTag,
  setUpRunnerTest,
  startConnectedRunner,
  startTestRunner,
  runDir,
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
  ({ plane, workDir } = await setUpRunnerTest("abandon"));
  tag = new ScriptTag();
});

afterEach(() => tearDownRunnerTest({ plane, workDir }, tag));

/** A runner that watches abandoned processes every 50 ms, so tests need not wait for the 500 ms default. */
function connectedRunner(overrides: Partial<RunnerInput> = {}, dependencies: RunnerDependencies = {}) {
  return startConnectedRunner(plane, workDir, overrides, { watchPollMs: 50, ...dependencies });
}

/** Frames about a ticket that arrived after the given index. */
function framesFor(connection: FakeConnection, ticket: string, after: number) {
  return connection.frames.slice(after).filter((frame) => "ticket" in frame && frame.ticket === ticket);
}

/** A process the test starts itself (not through the runner), in its own group. */
function startSleeper(): number {
  const child = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
  child.on("error", () => undefined);
  const pid = child.pid!;
  tag.extraPids.add(pid);
  return pid;
}

describe("abandon", () => {
  it("advertises script.abandon in hello", async () => {
    const { connection } = await connectedRunner();
    const hello = await connection.frame("hello");
    expect(hello.capabilities).toEqual([...CAPABILITIES]);
    expect(hello.capabilities).toContain("script.abandon");
  });

  it("releases the script at once and the process keeps running, even when it writes plenty after the abandon", async () => {
    const { connection } = await connectedRunner();
    // After the abandon the script writes 2 MB to stdout and 1 MB to stderr: a closed pipe would kill it
    // (SIGPIPE), an undrained one would block it for good. Only a drained pipe lets it reach `done`.
    tag.dispatch(
      connection,
      "t1",
      1,
      [
        "echo ready",
        "while [ ! -e go ]; do sleep 0.02; done",
        "head -c 2000000 /dev/zero | tr '\\0' x",
        "echo",
        "head -c 1000000 /dev/zero | tr '\\0' y >&2",
        "echo still writing",
        "touch done",
        "sleep 600",
      ].join("\n"),
    );
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    const dir = workspaceOf(workDir, "t1");
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    const atAbandon = connection.frames.length;
    await connection.roundTrip("t2", 2);
    await writeFile(join(dir, "go"), "");
    await waitFor(() => existsSync(join(dir, "done")), "the abandoned script to write all of its output", 10_000);
    expect(isAlive(pid)).toBe(true);
    await connection.roundTrip("t3", 3);
    expect(framesFor(connection, "t1", atAbandon)).toEqual([]);
    expect(connection.invalid).toEqual([]);
  });

  it("reports abandoned_exit once the abandoned process exits, and nothing else for it", async () => {
    const { connection } = await connectedRunner();
    tag.dispatch(connection, "t1", 4, "echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    connection.send({ type: "abandon", ticket: "t1", fence: 4, killProcess: false });
    const atAbandon = connection.frames.length;
    await connection.roundTrip("t2", 5);
    expect(connection.all("abandoned_exit")).toEqual([]);
    killGroup(pid);
    const report = await connection.frame("abandoned_exit");
    expect(report).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 4, pid });
    expect(isAlive(pid)).toBe(false);
    expect(framesFor(connection, "t1", atAbandon)).toEqual([report]);
  });

  it("kills the process group and the descendants that left it at once with killProcess, and reports the exit", async () => {
    const { connection } = await connectedRunner({ killGraceMs: 60_000 });
    tag.dispatch(connection, "t1", 1, "trap '' TERM; setsid sleep 600 & ( ( sleep 600 & ) & ); echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    await waitFor(() => tag.pids().length >= 4, "the script and its three sleeps");
    const all = tag.pids();
    const begin = Date.now();
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: true });
    await waitFor(() => all.every((each) => !isAlive(each)), "every process of the script to die");
    // SIGKILL at once: nowhere near the 60 s grace a cancel would give.
    expect(Date.now() - begin).toBeLessThan(5_000);
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
    expect(connection.all("exit", "t1")).toEqual([]);
  });

  it("waits with delete_workspace until the abandoned process is gone", async () => {
    const { connection } = await connectedRunner();
    tag.dispatch(connection, "t1", 1, "echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    const dir = runDir(workDir, "t1");
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    connection.send({ type: "delete_workspace", ticket: "t1" });
    await connection.roundTrip("t2", 2);
    expect(existsSync(dir)).toBe(true);
    killGroup(pid);
    await waitFor(() => !existsSync(dir), "the run folder to be deleted");
    await connection.frame("abandoned_exit");
  });

  it("watches a process the welcome asks about and reports it when it dies", async () => {
    plane.autoWelcome = false;
    const sleeper = startSleeper();
    await startTestRunner(plane, workDir, {}, { watchPollMs: 50 });
    const connection = await plane.connection(1);
    await connection.frame("hello");
    connection.welcome([], [{ ticket: "old", fence: 9, pid: sleeper }]);
    await connection.roundTrip("t1", 10);
    expect(connection.all("abandoned_exit")).toEqual([]);
    killPid(sleeper);
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "old", fence: 9, pid: sleeper });
  });

  it("reports at once a process from the welcome that is already gone", async () => {
    plane.autoWelcome = false;
    const gone = spawn("true");
    const pid = gone.pid!;
    await new Promise((resolve) => gone.on("exit", resolve));
    await startTestRunner(plane, workDir, {}, { watchPollMs: 60_000 });
    const connection = await plane.connection(1);
    await connection.frame("hello");
    connection.welcome([], [{ ticket: "old", fence: 3, pid }]);
    // With a one-minute poll, only the check on arrival can report it in time.
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "old", fence: 3, pid });
  });

  it("sends abandoned_exit after a reconnect when the process died while the runner was disconnected", async () => {
    plane.autoWelcome = false;
    const { logs, connection: first } = await connectedRunner();
    tag.dispatch(first, "t1", 1, "echo ready; sleep 600");
    const { pid } = await first.frame("started");
    await first.frame("output");
    first.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    await first.roundTrip("t2", 2);
    first.ws.terminate();
    const second = await plane.connection(2);
    const hello = await second.frame("hello");
    expect(hello.inventory.map((item) => item.ticket)).toEqual(["t2"]);
    killGroup(pid);
    await waitFor(() => logs.some((line) => line.includes(`abandoned process ${pid}`)), "the runner to see the process gone");
    expect(second.all("abandoned_exit")).toEqual([]);
    second.welcome([{ ticket: "t2", fence: 2, action: "forget", nextSequence: 0 }]);
    expect(await second.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
    expect(first.all("abandoned_exit")).toEqual([]);
  });

  it("watches a script the welcome answers with abandon, and reports its process's exit", async () => {
    plane.autoWelcome = false;
    const { connection: first } = await connectedRunner();
    tag.dispatch(first, "t1", 1, "echo ready; sleep 600");
    const { pid } = await first.frame("started");
    await first.frame("output");
    first.ws.terminate();
    const second = await plane.connection(2);
    await second.frame("hello");
    second.welcome([{ ticket: "t1", fence: 1, action: "abandon", nextSequence: 0 }]);
    await second.roundTrip("t2", 2);
    expect(isAlive(pid)).toBe(true);
    expect(second.all("abandoned_exit")).toEqual([]);
    killGroup(pid);
    expect(await second.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
    expect(second.all("output", "t1")).toEqual([]);
    expect(second.all("exit", "t1")).toEqual([]);
  });
});

describe("abandon after a cancel", () => {
  it("lets go of the processes the cancel could not stop yet, says so, and claims no SIGKILL it never sent (bug 15)", async () => {
    const { logs, connection } = await connectedRunner({ killGraceMs: 60_000 });
    // Both the shell and its sleep ignore SIGTERM: the cancel waits out its grace.
    tag.dispatch(connection, "t1", 1, "trap '' TERM; echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    await waitFor(() => tag.pids().length === 2, "the shell and its sleep");
    const both = tag.pids();
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    await waitFor(() => logs.some((line) => line.includes("Cancelling t1 (fence 1).")), "the cancel to start");
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    const said = await waitFor(
      () => logs.find((line) => /survived every SIGKILL|let go of/.test(line)),
      "the runner to say what became of the processes",
    );
    expect(said).toBe(
      `info: t1 (fence 1): the control plane abandoned it while the runner was stopping it, so the runner let go of 2 processes of it that still ran (pid ${both.join(", ")}) and sent them no more signals.`,
    );
    expect(both.filter(isAlive)).toEqual(both);
    // The cancel's escalation ended with the abandon: nothing more goes out for the script, and it is watched.
    await connection.roundTrip("t2", 2);
    expect(both.filter(isAlive)).toEqual(both);
    expect(logs.filter((line) => line.startsWith("error:"))).toEqual([]);
    expect(connection.all("exit", "t1")).toEqual([]);
    killGroup(pid);
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid });
  });
});

describe("a ticket started again after its abandoned run was deleted", () => {
  it("gets a script file and workspace of its own: the abandoned process never runs a line of the new script (bug 1)", async () => {
    const { connection } = await connectedRunner();
    const steps = join(workDir, "steps.log");
    const release = join(workDir, "release");
    // The first run waits, then takes one more step; bash reads its script file as it goes.
    tag.dispatch(connection, "t1", 1, ["echo ready", `while [ ! -e '${release}' ]; do sleep 0.02; done`, `echo "old-step $$" >> '${steps}'`].join("\n"));
    const { pid: old } = await connection.frame("started");
    await connection.frame("output");
    const oldWorkspace = readlinkSync(`/proc/${old}/cwd`);
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    connection.send({ type: "delete_workspace", ticket: "t1" });
    // A round trip through another script: the abandon and the delete have been handled by now.
    await connection.roundTrip("t2", 2);
    // The second run: a longer script, every line of which is a deployment step that says who took it (no quotes: a
    // shell that starts reading it in the middle of a line still runs the lines after).
    const deploy = Array.from({ length: 200 }, () => `echo deploy-step $$ >> ${steps}`).join("\n");
    tag.dispatch(connection, "t1", 3, deploy);
    const { pid: fresh } = await connection.frame("started", (frame) => frame.fence === 3);
    await connection.frame("exit", (frame) => frame.fence === 3);
    // While it runs, the abandoned process keeps its working directory and its script file.
    const keptWhileRunning = existsSync(oldWorkspace) && existsSync(join(dirname(oldWorkspace), "script.sh"));

    writeFileSync(release, "");
    expect(await connection.frame("abandoned_exit")).toEqual({ type: "abandoned_exit", ticket: "t1", fence: 1, pid: old });
    // Each script's shell runs under its wrapper (the pid `started` names): `$$` is the shell's own pid.
    const lines = readFileSync(steps, "utf8").trim().split("\n");
    const oldSteps = lines.filter((line) => line.startsWith("old-step "));
    expect(oldSteps).toHaveLength(1);
    const deploySteps = lines.filter((line) => line.startsWith("deploy-step "));
    expect(deploySteps).toHaveLength(200);
    expect(new Set(deploySteps).size).toBe(1);
    expect(deploySteps[0]!.split(" ")[1]).not.toBe(oldSteps[0]!.split(" ")[1]);
    expect([old, fresh].map(String)).not.toContain(oldSteps[0]!.split(" ")[1]);
    // The two runs had folders of their own; the abandoned one's goes once its process has exited (the delete
    // asked for it), the new one's stays until its own delete.
    expect(keptWhileRunning).toBe(true);
    const oldRun = dirname(oldWorkspace);
    const freshRun = runDir(workDir, "t1", 3);
    expect(freshRun).not.toBe(oldRun);
    await waitFor(() => !existsSync(oldRun), "the abandoned run's folder to be removed");
    expect(existsSync(freshRun)).toBe(true);
  });
});

describe("the abandoned watch", () => {
  it("only watches an entry added without a report, and reports it once a welcome asks for it", () => {
    const { watch, alive, sent, gone } = fakeWatch();
    alive.add(10);
    watch.add({ ticket: "a", fence: 1, pid: 10 }, {}, false);
    alive.delete(10);
    watch.check();
    expect(gone).toHaveLength(1);
    expect(sent).toEqual([]);
    expect(watch.size).toBe(0);
    alive.add(11);
    watch.add({ ticket: "b", fence: 1, pid: 11 }, {}, false);
    watch.add({ ticket: "b", fence: 1, pid: 11 });
    alive.delete(11);
    watch.check();
    expect(sent).toEqual([{ ticket: "b", fence: 1, pid: 11 }]);
    watch.stop();
  });


  /** A watch over fake processes: `alive` says which pids still run; `connected` whether reports can go out. */
  function fakeWatch() {
    const alive = new Set<number>();
    const sent: WatchedProcess[] = [];
    const gone: WatchedProcess[] = [];
    const state = { connected: true };
    const watch = new AbandonedWatch({
      pollMs: 60_000,
      report: (process) => {
        if (!state.connected) return false;
        sent.push(process);
        return true;
      },
      gone: (process) => gone.push(process),
      isGone: (pid) => !alive.has(pid),
    });
    return { watch, alive, sent, gone, state };
  }

  it("reports a process once when it is gone and then forgets it", () => {
    const { watch, alive, sent, gone } = fakeWatch();
    alive.add(10);
    watch.add({ ticket: "a", fence: 1, pid: 10 });
    watch.add({ ticket: "a", fence: 1, pid: 10 });
    watch.check();
    expect(sent).toEqual([]);
    expect(gone).toEqual([]);
    expect(watch.size).toBe(1);
    alive.delete(10);
    watch.check();
    watch.check();
    expect(sent).toEqual([{ ticket: "a", fence: 1, pid: 10 }]);
    expect(gone).toEqual([{ ticket: "a", fence: 1, pid: 10 }]);
    expect(watch.size).toBe(0);
    watch.stop();
  });

  it("keeps a report it could not send and sends it on the next flush", () => {
    const { watch, sent, gone, state } = fakeWatch();
    state.connected = false;
    watch.add({ ticket: "a", fence: 1, pid: 10 });
    expect(sent).toEqual([]);
    expect(gone).toHaveLength(1);
    // Gone already (its run's folder may go), but the report is still due.
    expect(watch.size).toBe(1);
    state.connected = true;
    watch.flush();
    expect(sent).toEqual([{ ticket: "a", fence: 1, pid: 10 }]);
    expect(gone).toHaveLength(1);
    expect(watch.size).toBe(0);
    watch.stop();
  });

  it("treats a pid that now names another process as gone", () => {
    const watch = new AbandonedWatch({ pollMs: 60_000, report: () => true });
    const sleeper = startSleeper();
    watch.add({ ticket: "a", fence: 1, pid: sleeper }, { startTime: 1 });
    expect(watch.size).toBe(0);
    watch.add({ ticket: "b", fence: 1, pid: sleeper });
    expect(watch.size).toBe(1);
    watch.stop();
    expect(watch.size).toBe(0);
  });
});
