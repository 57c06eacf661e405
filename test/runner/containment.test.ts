/**
 * Cancel stops the whole process tree of a script, including processes that left its process group
 * (setsid, double forks, daemons), and reports the exit only once none of them survives. Real runner, real
 * processes, a fake control plane; every process a test starts is killed by pid at the end.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CgroupTree,
  SCRIPT_MARKER_VARIABLE,
  environHasEntry,
  findCgroup2Mount,
  newScriptMarker,
  ownCgroupPath,
  parseProcessStat,
} from "../../runner/containment.js";
import type { RunnerDependencies, RunnerInput } from "../../runner/index.js";
import { outputLines } from "../../shared/protocol.js";
import { isAlive, killPid, removeDir, tempDir } from "../helpers/processes.js";
import {
  ScriptTag,
  runDir,
  setUpRunnerTest,
  startConnectedRunner,
  tearDownRunnerTest,
  waitFor,
  type FakeConnection,
  type FakeControlPlane,
} from "./fake-control-plane.js";

let plane: FakeControlPlane;
let workDir: string;
let tag: ScriptTag;

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("containment"));
  tag = new ScriptTag();
});

// Safety net, by pid: the script groups, whatever carries the test's tag, and any pid the test was told of.
afterEach(() => tearDownRunnerTest({ plane, workDir }, tag));

function connectedRunner(overrides: Partial<RunnerInput> = {}, dependencies: RunnerDependencies = {}) {
  return startConnectedRunner(plane, workDir, overrides, dependencies);
}

/** The tagged processes that are `sleep` by now (the others may still be on their way there, between execs). */
function sleeps(): number[] {
  return tag.pids().filter((pid) => comm(pid) === "sleep");
}

/** A process's command name; empty when it is gone. */
function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return "";
  }
}

/** The text of a ticket's output lines of one source. */
function texts(connection: FakeConnection, ticket: string, source: string): string[] {
  return connection.all("output", ticket).flatMap((frame) => outputLines(frame).filter((line) => line.source === source).map((line) => line.text));
}

/** Usable cgroups on this machine, or the reason there are none. */
const cgroups = CgroupTree.detect(() => undefined);
const cgroupsUsable = typeof cgroups !== "string";
// The tree is this file's: what it made and is empty by now goes with the file (scripts' cgroups, this process's folder).
afterAll(() => {
  if (typeof cgroups !== "string") cgroups.removeEmpty();
});

const MODES: Array<[string, CgroupTree | null]> = [["the marker sweep alone", null]];
if (typeof cgroups !== "string") MODES.push(["cgroups and the marker sweep", cgroups]);

describe.each(MODES)("cancel with %s", (_mode, cgroupTree) => {
  const dependencies: RunnerDependencies = { cgroups: cgroupTree };

  it("kills a descendant that left the process group with setsid, and only then reports cancelled", async () => {
    const { connection } = await connectedRunner({}, dependencies);
    tag.dispatch(connection, "t1", 1, "setsid sleep 600 & echo ready; sleep 600");
    await connection.frame("output");
    // The script's sleep and the escaped one (besides the script's shell).
    await waitFor(() => sleeps().length === 2, "two sleeps");
    const escaped = tag.pids();
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    // The exit went out only after the sweep found nothing: none of them may be alive now.
    expect(escaped.filter(isAlive)).toEqual([]);
    expect(exit.outcome).toEqual({ kind: "cancelled", signals: ["SIGTERM"] });
    expect(texts(connection, "t1", "debug")).toEqual(["Cancelled: sent SIGTERM to the process group and to 1 process that had left it."]);
  });

  it("kills double-forked and daemonized descendants", async () => {
    const { connection } = await connectedRunner({}, dependencies);
    tag.dispatch(
      connection,
      "t1",
      1,
      [
        "( ( sleep 600 & ) & )",
        "setsid bash -c 'sleep 600' &",
        "setsid sh -c 'sleep 600 </dev/null >/dev/null 2>&1 & exit 0' &",
        "echo ready",
        "sleep 600",
      ].join("\n"),
    );
    await connection.frame("output");
    // The script's sleep and three that got away from it.
    await waitFor(() => sleeps().length === 4, "four sleeps");
    const all = tag.pids();
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(all.filter(isAlive)).toEqual([]);
    expect(exit.outcome).toEqual({ kind: "cancelled", signals: ["SIGTERM"] });
    // The double fork stays in the group; the two setsid ones left it.
    expect(texts(connection, "t1", "debug")).toEqual(["Cancelled: sent SIGTERM to the process group and to 2 processes that had left it."]);
  });

  it("kills a grandchild that keeps the pipes open", async () => {
    const { connection } = await connectedRunner({}, dependencies);
    tag.dispatch(connection, "t1", 1, "echo ready; (sleep 600) & sleep 600");
    await connection.frame("output");
    await waitFor(() => sleeps().length === 2, "two sleeps");
    const all = tag.pids();
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(all.filter(isAlive)).toEqual([]);
    expect(exit.outcome).toEqual({ kind: "cancelled", signals: ["SIGTERM"] });
    expect(texts(connection, "t1", "debug")).toEqual(["Cancelled: sent SIGTERM to the process group."]);
  });

  it("SIGKILLs a descendant outside the group that ignores SIGTERM, after the grace period", async () => {
    const { connection } = await connectedRunner({ killGraceMs: 300 }, dependencies);
    tag.dispatch(connection, "t1", 1, `setsid bash -c "trap '' TERM; echo ignoring; while :; do sleep 0.05; done" & sleep 600`);
    await connection.frame("output", (frame) => outputLines(frame).some((line) => line.text === "ignoring"));
    await waitFor(() => sleeps().length >= 1 && tag.pids().length >= 3, "the tagged processes");
    const all = tag.pids();
    const begin = Date.now();
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(Date.now() - begin).toBeGreaterThanOrEqual(250);
    expect(all.filter(isAlive)).toEqual([]);
    expect(tag.pids()).toEqual([]);
    expect(exit.outcome).toEqual({ kind: "cancelled", signals: ["SIGTERM", "SIGKILL"] });
    expect(texts(connection, "t1", "debug").at(-1)).toMatch(/^Cancelled: sent SIGTERM to the process group and to \d+ process(es)? that had left it, then SIGKILL after 300 ms\.$/);
  });

  it("keeps the script's own exit code when it exited before the cancel, and still kills what it left running", async () => {
    const { connection } = await connectedRunner({ pipeDrainMs: 5_000 }, dependencies);
    // The escaped sleep holds the pipes, so the exit waits for pipeDrainMs: the cancel arrives in between.
    tag.dispatch(connection, "t1", 1, "setsid sleep 600 & echo ready; exit 3");
    await connection.frame("output");
    // The script's shell has exited once its wrapper wrote the exit status (the wrapper waits for the runner).
    await waitFor(() => sleeps().length === 1 && existsSync(join(runDir(workDir, "t1"), "exit")), "the shell to exit, leaving one process");
    const [leftover] = tag.pids();
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(exit.outcome).toEqual({ kind: "exited", code: 3 });
    expect(texts(connection, "t1", "debug")).toEqual(["Cancel requested, but the process had already exited; its own exit code stands."]);
    await waitFor(() => !isAlive(leftover!), "the leftover to be killed in the background");
  });

  it("kills nothing when kill is disabled, neither the group nor the processes that left it", async () => {
    const { connection } = await connectedRunner({ disableKill: true, killGraceMs: 100 }, dependencies);
    tag.dispatch(connection, "t1", 1, "setsid sleep 600 & ( ( sleep 600 & ) & ); echo ready; sleep 600");
    await connection.frame("output");
    await waitFor(() => sleeps().length === 3, "three sleeps");
    // The script's own shell first: killed after its foreground sleep, it could exit 137 by itself in between.
    const all = [(await connection.frame("started")).pid, ...sleeps()];
    for (const pid of all) tag.extraPids.add(pid);
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    await connection.frame("output", (frame) => outputLines(frame).some((line) => line.source === "debug"));
    // A round trip through a script that outlasts the grace period: any kill would have happened by now.
    tag.dispatch(connection, "t2", 2, "sleep 0.5");
    await connection.frame("exit", (frame) => frame.ticket === "t2");
    expect(all.filter(isAlive)).toEqual(all);
    expect(connection.all("exit", "t1")).toEqual([]);
    for (const pid of all) killPid(pid);
    const exit = await connection.frame("exit", (frame) => frame.ticket === "t1");
    expect(exit.outcome).toEqual({ kind: "signaled", signal: "SIGKILL", number: 9 });
  });
});

describe("the script marker", () => {
  it("is in the script's environment, 128 random bits, different for every dispatch, and cannot be chosen by the request", async () => {
    const { connection } = await connectedRunner();
    connection.dispatch("t1", 1, `echo "$${SCRIPT_MARKER_VARIABLE}"`);
    connection.dispatch("t2", 2, `echo "$${SCRIPT_MARKER_VARIABLE}"`, { environment: { [SCRIPT_MARKER_VARIABLE]: "chosen" } });
    await connection.frame("exit", (frame) => frame.ticket === "t1");
    await connection.frame("exit", (frame) => frame.ticket === "t2");
    const [first] = texts(connection, "t1", "stdout");
    const [second] = texts(connection, "t2", "stdout");
    expect(first).toMatch(/^[0-9a-f]{32}$/);
    expect(second).toMatch(/^[0-9a-f]{32}$/);
    expect(first).not.toBe(second);
  });

  it("is matched only as a whole environment entry", () => {
    const entry = Buffer.from("TENDRIL_SCRIPT_MARKER=abc");
    const environ = (...entries: string[]) => Buffer.from(entries.join("\0"));
    expect(environHasEntry(environ("A=1", "TENDRIL_SCRIPT_MARKER=abc", "B=2"), entry)).toBe(true);
    expect(environHasEntry(environ("TENDRIL_SCRIPT_MARKER=abc"), entry)).toBe(true);
    expect(environHasEntry(Buffer.from("A=1\0TENDRIL_SCRIPT_MARKER=abc\0"), entry)).toBe(true);
    expect(environHasEntry(environ("TENDRIL_SCRIPT_MARKER=abcd"), entry)).toBe(false);
    expect(environHasEntry(environ("X_TENDRIL_SCRIPT_MARKER=abc"), entry)).toBe(false);
    expect(environHasEntry(environ("A=TENDRIL_SCRIPT_MARKER=abc"), entry)).toBe(false);
    expect(environHasEntry(Buffer.alloc(0), entry)).toBe(false);
    expect(newScriptMarker()).toMatch(/^[0-9a-f]{32}$/);
  });

  it("reads a process's state, group and start time even when its name holds spaces and parentheses", () => {
    const stat = "4242 (we ird) (name) S 1 4240 4240 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
    expect(parseProcessStat(stat)).toEqual({ state: "S", pgrp: 4240, startTime: 987654 });
    expect(parseProcessStat("garbage")).toBeUndefined();
  });
});

describe("cgroups", () => {
  it("finds the cgroup v2 mount on pure and hybrid hierarchies, and the process's own cgroup", () => {
    const pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate";
    const hybrid = [
      "31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
      "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
    ].join("\n");
    expect(findCgroup2Mount(pure)).toEqual({ root: "/", mountPoint: "/sys/fs/cgroup" });
    expect(findCgroup2Mount(hybrid)).toEqual({ root: "/", mountPoint: "/sys/fs/cgroup/unified" });
    expect(findCgroup2Mount("31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu")).toBeUndefined();
    expect(ownCgroupPath("4:memory:/x\n0::/system.slice/tendril.service\n")).toBe("/system.slice/tendril.service");
  });

  it("falls back to the marker sweep when the cgroup folder is not a real cgroup", async () => {
    const fake = await tempDir("fake-cgroup");
    try {
      writeFileSync(join(fake, "mountinfo"), `40 30 0:37 / ${fake}/mnt rw - cgroup2 cgroup2 rw\n`);
      writeFileSync(join(fake, "cgroup"), "0::/\n");
      // No hierarchy at all: not even cgroup.controllers.
      expect(CgroupTree.detect(() => undefined, { mountinfo: join(fake, "mountinfo"), selfCgroup: join(fake, "cgroup") })).toMatch(/not a cgroup v2 hierarchy/);
      // A plain folder that looks like one at the top: the kernel gives real cgroups their files, this one has none.
      mkdirSync(join(fake, "mnt"));
      writeFileSync(join(fake, "mnt", "cgroup.controllers"), "");
      expect(CgroupTree.detect(() => undefined, { mountinfo: join(fake, "mountinfo"), selfCgroup: join(fake, "cgroup") })).toMatch(/cannot create a cgroup/);
    } finally {
      await removeDir(fake);
    }
  });

  it.runIf(cgroupsUsable)("runs each script in a cgroup of its own, as its group's leader with its arguments intact, and removes the cgroup afterwards", async () => {
    const { connection } = await connectedRunner({}, { cgroups: cgroups as CgroupTree });
    const args = ["plain", "with space", "it's \"quoted\"", "$HOME", ""];
    connection.dispatch("t1", 1, 'cat /proc/self/cgroup; echo; echo marker=$TENDRIL_SCRIPT_MARKER; printf "<%s>" "$@"; echo; cut -d" " -f5 /proc/$$/stat', {
      arguments: args,
    });
    const exit = await connection.frame("exit");
    expect(exit.outcome).toEqual({ kind: "exited", code: 0 });
    const { pid } = await connection.frame("started");
    const out = texts(connection, "t1", "stdout");
    expect(out.slice(-2)).toEqual([args.map((arg) => `<${arg}>`).join(""), String(pid)]);
    const marker = out.find((line) => line.startsWith("marker="))!.slice("marker=".length);
    const own = ownCgroupPath(out.join("\n"));
    const tree = cgroups as CgroupTree;
    // In this runner process's own folder of the tree.
    expect(own?.endsWith(`/tendril/${tree.own.split("/").at(-1)}/s-${marker}`)).toBe(true);
    expect(tree.own).toMatch(/\/tendril\/r-\d+-\d+$/);
    await waitFor(() => !existsSync(join(tree.own, `s-${marker}`)), "the script's cgroup to be removed");
  });

  it.runIf(cgroupsUsable)("kills a process that left both the group and the marked environment, through the cgroup", async () => {
    const { connection } = await connectedRunner({}, { cgroups: cgroups as CgroupTree });
    tag.dispatch(connection, "t1", 1, "env -i setsid sleep 600 & echo \"escaped $!\"; sleep 600");
    const first = await connection.frame("output");
    const escaped = Number(outputLines(first)[0]!.text.split(" ")[1]);
    tag.extraPids.add(escaped);
    await waitFor(() => comm(escaped) === "sleep", "the escaped sleep");
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(isAlive(escaped)).toBe(false);
    expect(exit.outcome).toEqual({ kind: "cancelled", signals: ["SIGTERM"] });
  });
});
