/**
 * The cgroups a runner makes (one per script and per warm shell, in a folder of its own runner process): it removes
 * them when it stops, and a runner that starts prunes what dead runners left, never a cgroup that still holds a
 * process. Runs only where cgroup v2 is writable; this file has its own process, so the runner folder is this
 * test's alone. Every process a test starts is stopped by pid.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CgroupTree, findCgroup2Mount, newScriptMarker, ownCgroupPath } from "../../runner/containment.js";
import { isAlive, killPid, wrappersStartedBy } from "../helpers/processes.js";
import { setUpRunnerTest, startConnectedRunner, tearDownRunnerTest, waitFor, type FakeControlPlane } from "./fake-control-plane.js";

/** Where this machine lets a runner make cgroups (the runner finds the same), or why it cannot. */
const detected = CgroupTree.detect(() => undefined);
const usable = typeof detected !== "string";

let plane: FakeControlPlane;
let workDir: string;
/** Processes and cgroup folders a test made itself. */
const pids = new Set<number>();
const folders: string[] = [];

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("cgroups"));
});

afterEach(async () => {
  for (const pid of pids) killPid(pid);
  await waitFor(() => [...pids].every((pid) => !isAlive(pid)), "the test's processes to be gone");
  pids.clear();
  // Deepest first: a cgroup goes only once empty of processes and of child cgroups.
  for (const folder of folders.splice(0).reverse()) if (existsSync(folder)) rmdirSync(folder);
  await tearDownRunnerTest({ plane, workDir });
});

/** The cgroup folder of a live process. */
function cgroupFolderOf(pid: number): string {
  const mount = findCgroup2Mount(readFileSync("/proc/self/mountinfo", "utf8"))!;
  return join(mount.mountPoint, ownCgroupPath(readFileSync(`/proc/${pid}/cgroup`, "utf8"))!);
}

describe.runIf(usable)("cgroups a runner made", () => {
  it("are all removed when it stops, its warm shells' included, and its own folder with them (bug 17)", async () => {
    const tree = detected as CgroupTree;
    // The runner finds its cgroups by itself, as in production.
    const { handle, connection } = await startConnectedRunner(plane, workDir);
    connection.dispatch("t1", 1, "cat /proc/self/cgroup");
    await connection.frame("exit");
    // Each in its cgroup: a shell moves itself in as it starts, which a look at /proc can come before.
    const inOwnCgroup = (pid: number) => /\/s-[0-9a-f]{32}$/.test(cgroupFolderOf(pid));
    const shells = await waitFor(() => {
      const found = wrappersStartedBy(process.pid);
      return found.length === 2 && found.every(inOwnCgroup) ? found : undefined;
    }, "two warm shells, each in a cgroup of its own");
    const made = shells.map(cgroupFolderOf);
    expect(made.every(existsSync)).toBe(true);
    await handle.stop();
    expect(shells.filter(isAlive)).toEqual([]);
    expect(made.filter(existsSync)).toEqual([]);
    // They were in this runner process's own folder, which went with them.
    expect(made.every((folder) => folder.startsWith(`${tree.own}/`))).toBe(true);
    expect(existsSync(tree.own)).toBe(false);
  });

  it("tell whether a process is in them without moving it, and go once released, off the event loop", async () => {
    const tree = detected as CgroupTree;
    const cgroup = await tree.create(`s-${newScriptMarker()}`);
    expect(cgroup).toBeDefined();
    folders.push(tree.own, cgroup!.path);
    const sleeper = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
    pids.add(sleeper.pid!);
    expect(cgroup!.holds(sleeper.pid!)).toBe(false);
    // As a warm shell does: the process moves itself in, and the runner only looks.
    writeFileSync(cgroup!.procsFile, `${sleeper.pid}\n`);
    expect(cgroup!.holds(sleeper.pid!)).toBe(true);
    expect(cgroup!.holds(process.pid)).toBe(false);
    killPid(sleeper.pid!);
    await waitFor(() => !isAlive(sleeper.pid!), "the sleeper to die");
    cgroup!.release();
    await waitFor(() => !existsSync(cgroup!.path), "the released cgroup to be removed");
  });

  it("are pruned by a runner that starts after theirs died, but never one that still holds a process (bug 17)", async () => {
    const tree = detected as CgroupTree;
    // A runner process that is gone: a pid of no live process, or one with another start time.
    const gone = spawn("true");
    await new Promise((resolve) => gone.on("exit", resolve));
    const dead = join(tree.base, `r-${gone.pid}-1`);
    const empty = join(dead, `s-${newScriptMarker()}`);
    const busy = join(dead, `s-${newScriptMarker()}`);
    for (const folder of [dead, empty, busy]) {
      mkdirSync(folder);
      folders.push(folder);
    }
    const sleeper = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
    pids.add(sleeper.pid!);
    writeFileSync(join(busy, "cgroup.procs"), `${sleeper.pid}\n`);

    await startConnectedRunner(plane, workDir);
    expect(existsSync(empty)).toBe(false);
    expect(existsSync(busy)).toBe(true);
    expect(readFileSync(join(busy, "cgroup.procs"), "utf8").trim()).toBe(String(sleeper.pid));

    killPid(sleeper.pid!);
    await waitFor(() => !isAlive(sleeper.pid!), "the sleeper to die");
    await waitFor(() => readFileSync(join(busy, "cgroup.procs"), "utf8") === "", "the cgroup to be empty");
    (CgroupTree.detect(() => undefined) as CgroupTree).prune();
    expect(existsSync(busy)).toBe(false);
    expect(existsSync(dead)).toBe(false);
  });
});
