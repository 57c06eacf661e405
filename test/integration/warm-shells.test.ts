// Warm shells in a real runner process: after its first script it keeps two /bin/sh waiting, the next script
// runs in one of them, stopping the runner stops them, and TENDRIL_WARM_SHELLS=0 turns them off.
import { readFileSync, readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { isAlive } from "../helpers/processes.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** The pids of the waiting shells among a process's children: `/bin/sh -s`. */
function waitingShells(parentPid: number): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").filter(Boolean);
      if (parent === parentPid && argv.join(" ") === "/bin/sh -s") pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

/** Runs a script that prints its own pid; returns that pid. */
async function scriptPid(machineId: string, ticket: string): Promise<number> {
  const started = await f.api("POST", `/api/v1/machines/${machineId}/scripts`, { ticket, scriptBody: "echo $$", waitMs: 20_000 });
  expect(started.body.state).toBe("complete");
  expect(started.body.exitCode).toBe(0);
  return Number(started.body.logs.find((line: { source: string }) => line.source === "stdout").text);
}

describe("warm shells in a runner process", () => {
  it("keeps two shells waiting after the first script, runs the next script in one, and stops them when it stops", async () => {
    const m = f.machine();
    const runner = await f.runner(m);
    expect(waitingShells(runner.process.pid)).toEqual([]);
    await scriptPid(m, "first");
    const waiting = await waitFor(() => {
      const pids = waitingShells(runner.process.pid);
      return pids.length === 2 ? pids : undefined;
    }, { what: "two waiting shells" });
    const pid = await scriptPid(m, "second");
    expect(waiting).toContain(pid);
    const left = await waitFor(() => {
      const pids = waitingShells(runner.process.pid);
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
    expect(waitingShells(runner.process.pid)).toEqual([]);
    expect(isAlive(pid)).toBe(false);
    await runner.stop();
  });
});
