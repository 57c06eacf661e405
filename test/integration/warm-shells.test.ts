// Warm shells in a real runner process: after its first script it keeps two /bin/sh waiting, the next script
// runs in one of them, stopping the runner stops them, and TENDRIL_WARM_SHELLS=0 turns them off.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CgroupTree, findCgroup2Mount, ownCgroupPath } from "../../runner/containment.js";
import { isAlive, wrappersStartedBy } from "../helpers/processes.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** Runs a script that prints its process group, whose leader is the shell that wraps it; returns that pid. */
async function scriptPid(machineId: string, ticket: string): Promise<number> {
  const started = await f.api("POST", `/api/v1/machines/${machineId}/scripts`, { ticket, scriptBody: "cut -d' ' -f5 /proc/$$/stat", waitMs: 20_000 });
  expect(started.body.state).toBe("complete");
  expect(started.body.exitCode).toBe(0);
  return Number(started.body.logs.find((line: { source: string }) => line.source === "stdout").text);
}

describe("warm shells in a runner process", () => {
  it("keeps two shells waiting after the first script, runs the next script in one, and stops them when it stops", async () => {
    const m = f.machine();
    const runner = await f.runner(m);
    expect(wrappersStartedBy(runner.process.pid)).toEqual([]);
    await scriptPid(m, "first");
    const waiting = await waitFor(() => {
      const pids = wrappersStartedBy(runner.process.pid);
      return pids.length === 2 ? pids : undefined;
    }, { what: "two waiting shells" });
    const pid = await scriptPid(m, "second");
    expect(waiting).toContain(pid);
    const left = await waitFor(() => {
      const pids = wrappersStartedBy(runner.process.pid);
      return pids.length === 2 ? pids : undefined;
    }, { what: "the pool refilled" });
    await runner.stop();
    expect([...waiting, ...left].filter(isAlive)).toEqual([]);
  });

  it("starts no shell ahead of time with TENDRIL_WARM_SHELLS=0", async () => {
    const m = f.machine();
    const runner = await f.runner(m, { env: { TENDRIL_WARM_SHELLS: "0" } });
    await scriptPid(m, "first");
    const pid = await scriptPid(m, "second");
    // A round trip through a third script: a refill, had there been one, would have started by now.
    await scriptPid(m, "third");
    expect(wrappersStartedBy(runner.process.pid)).toEqual([]);
    expect(isAlive(pid)).toBe(false);
    await runner.stop();
  });
});

/** Where cgroup v2 is mounted, when this machine lets a runner make cgroups. */
const cgroupMount = typeof CgroupTree.detect(() => undefined) === "string" ? undefined : findCgroup2Mount(readFileSync("/proc/self/mountinfo", "utf8"));

/** The cgroup folder a process is in. */
function cgroupFolder(pid: number): string {
  return join(cgroupMount!.mountPoint, ownCgroupPath(readFileSync(`/proc/${pid}/cgroup`, "utf8"))!);
}

describe.runIf(cgroupMount !== undefined)("cgroups of a runner process", () => {
  it("are removed when it stops: its warm shells' and its own folder (bug 17)", async () => {
    const m = f.machine();
    const runner = await f.runner(m);
    await scriptPid(m, "first");
    // Each in its cgroup: a shell moves itself in as it starts, which a look at /proc can come before.
    const waiting = await waitFor(() => {
      const pids = wrappersStartedBy(runner.process.pid);
      return pids.length === 2 && pids.every((pid) => /\/s-[0-9a-f]{32}$/.test(cgroupFolder(pid))) ? pids : undefined;
    }, { what: "two waiting shells, each in a cgroup of its own" });
    const folders = waiting.map(cgroupFolder);
    const startTime = readFileSync(`/proc/${runner.process.pid}/stat`, "utf8").split(") ")[1]!.split(" ")[19];
    await runner.stop();
    // It waited for its shells to go (it used to exit with 13, Node's code for an await that never settled).
    expect(await runner.process.exited).toEqual({ code: 0, signal: null });
    expect(folders.filter(existsSync)).toEqual([]);
    // They were cgroups of their own in the runner process's folder, which went with them.
    const own = join(folders[0]!, "..");
    expect(own.endsWith(`/tendril/r-${runner.process.pid}-${startTime}`)).toBe(true);
    expect(folders.every((folder) => /\/s-[0-9a-f]{32}$/.test(folder) && join(folder, "..") === own)).toBe(true);
    expect(existsSync(own)).toBe(false);
  });
});
