// Restarts end to end: a runner killed mid-script (and started again on the same work dir, where its scripts cannot be
// re-attached to: the floor rule), and the control plane killed and restarted on its state folder. Real processes
// throughout, stopped by PID. (Re-attaching: reattach.test.ts. Hibernation: hibernation.test.ts.)
import { describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { call } from "../helpers/api.js";
import { startControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { startFaultProxy, type FaultProxy } from "../helpers/fault-proxy.js";
import { useControlPlane } from "../helpers/fixture.js";
import { isAlive, killScript, pidFrom, pidsInGroup, processGroupOf, signalGroup } from "../helpers/processes.js";
import { runFoldersOf } from "../helpers/run-folders.js";
import { startRunner, startRunnerInWorkDir, type TestRunner } from "../helpers/runner.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

interface Line {
  sequence: number;
  source: string;
  text: string;
}

type Base = { url: string; serverToken: string };

/** Every stored line of a script, read page by page from the start. */
async function allLines(base: Base, machineId: string, ticket: string): Promise<Line[]> {
  const lines: Line[] = [];
  let next = 0;
  for (;;) {
    const page = await call(base, "GET", `/api/v1/machines/${machineId}/scripts/${ticket}?logSequence=${next}&limit=1000`);
    expect(page.status).toBe(200);
    lines.push(...page.body.logs);
    next = page.body.nextLogSequence;
    if (!page.body.hasMoreLogs) return lines;
  }
}

/** Waits until a script is complete and returns its full status. */
async function completed(base: Base, machineId: string, ticket: string, timeoutMs = 20_000): Promise<any> {
  await waitFor(async () => (await call(base, "GET", `/api/v1/machines/${machineId}/scripts/${ticket}?limit=1`)).body?.state === "complete", {
    timeoutMs,
    what: `script ${ticket} to complete`,
  });
  return (await call(base, "GET", `/api/v1/machines/${machineId}/scripts/${ticket}`)).body;
}

/** The machine view without the runner's timestamps (they move with every heartbeat and reconnect). */
async function viewWithoutTimes(base: Base, machineId: string): Promise<any> {
  const view = (await call(base, "GET", `/api/v1/machines/${machineId}`)).body;
  const { connectedAt: _connectedAt, lastSeenAt: _lastSeenAt, ...runner } = view.runner;
  return { ...view, runner };
}

const stdout = (status: { logs: Line[] }) => status.logs.filter((l) => l.source === "stdout").map((l) => l.text);

/** A script printing numbered lines: a first burst, one line every 20 ms until `release` exists, a last burst. */
function numberedScript(release: string): string {
  return [
    "i=0",
    'emit() { i=$((i+1)); echo "line-$i"; }',
    "for j in $(seq 1 300); do emit; done",
    `while [ ! -f '${release}' ]; do emit; sleep 0.02; done`,
    "for j in $(seq 1 300); do emit; done",
  ].join("\n");
}

describe("a runner killed mid-script", () => {
  it("completes the script with -46 once a new runner connects, and frees its mutex for the next script", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const first = await f.runner(m, { token });
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "main", scriptBody: `echo $$ > '${pidFile}'; echo started; sleep 600` });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "next", scriptBody: "echo next-ran" });
    const pid = await pidFrom(pidFile);
    try {
      await waitFor(async () => stdout((await f.api("GET", `/api/v1/machines/${m}/scripts/main`)).body).includes("started"), {
        what: "the script's first line",
      });

      // SIGKILL the runner's process group; the script runs in a group of its own and lives on.
      signalGroup(first.process.pid, "SIGKILL");
      await first.process.exited;
      expect(isAlive(pid)).toBe(true);
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, {
        what: "the control plane to see the runner gone",
      });
      let view = (await f.api("GET", `/api/v1/machines/${m}`)).body;
      expect(view.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["main"], waiting: ["next"] }]);
      expect((await f.api("GET", `/api/v1/machines/${m}/scripts/main`)).body.state).toBe("running");

      // A new runner process cannot re-attach to the old one's script: its result is unknown.
      await f.runner(m, { token });
      const main = await f.completed(m, "main");
      expect(main.exitCode).toBe(-46);
      expect(main.logs.some((l: Line) => l.source === "debug" && /result is unknown/.test(l.text))).toBe(true);
      const next = await f.completed(m, "next");
      expect(next.exitCode).toBe(0);
      expect(stdout(next)).toEqual(["next-ran"]);
      view = (await f.api("GET", `/api/v1/machines/${m}`)).body;
      expect(view.mutexes).toEqual([]);
    } finally {
      killScript(pid);
    }
  });
});

/**
 * Rewrites the records of a ticket's runs without `reattach`, as a runner that predates wrappers wrote them: the next
 * runner on that work dir cannot re-attach to them, and follows the floor rule.
 */
function unreattachable(workDir: string, ticket: string): void {
  for (const dir of runFoldersOf(workDir, ticket)) {
    const file = join(dir, "record.json");
    const { reattach: _reattach, ...record } = JSON.parse(readFileSync(file, "utf8"));
    writeFileSync(file, JSON.stringify(record));
  }
}

describe("a runner killed mid-script and started again on the same work dir, unable to re-attach", () => {
  /** A script that waits, and one behind it that says whether the first one's process still runs when it starts. */
  async function twoScripts(m: string): Promise<{ pidFile: string }> {
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "main", scriptBody: `echo $$ > '${pidFile}'; echo started; exec sleep 600` });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "next",
      // A zombie has ended (it waits only for its new parent to reap it): only a process in another state still runs.
      scriptBody: `state=$(sed 's/.*) //' "/proc/$(cat '${pidFile}')/stat" 2>/dev/null | cut -d' ' -f1); if [ -n "$state" ] && [ "$state" != Z ]; then echo "beside the earlier script"; else echo alone; fi`,
    });
    return { pidFile };
  }

  /** Starts a runner, runs the two scripts, SIGKILLs the runner while the first one runs; returns what the test needs. */
  async function killedMidScript(m: string) {
    const token = await f.register(m);
    const first = await f.runner(m, { token });
    const { pidFile } = await twoScripts(m);
    const pid = await pidFrom(pidFile);
    await waitFor(async () => stdout((await f.api("GET", `/api/v1/machines/${m}/scripts/main`)).body).includes("started"), {
      what: "the script's first line",
    });
    // The script runs in a process group of its own and outlives the runner.
    signalGroup(first.process.pid, "SIGKILL");
    await first.process.exited;
    expect(isAlive(pid)).toBe(true);
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, {
      what: "the control plane to see the runner gone",
    });
    unreattachable(first.workDir, "main");
    return { token, workDir: first.workDir, pid };
  }

  it("stops what its predecessor left before the mutex is released: the next full script never runs beside it (bug 2)", async () => {
    const m = f.machine();
    const { token, workDir, pid } = await killedMidScript(m);
    let second: TestRunner | undefined;
    try {
      second = await startRunnerInWorkDir(f.cp, m, token, workDir);
      const main = await f.completed(m, "main");
      expect(isAlive(pid)).toBe(false);
      const next = await f.completed(m, "next");
      expect(stdout(next)).toEqual(["alone"]);
      expect(next.exitCode).toBe(0);
      expect(main.exitCode).toBe(-46);
      expect(main.logs.some((l: Line) => l.source === "debug" && /could not re-attach to it, so it stopped it: sent SIGTERM/.test(l.text))).toBe(true);
      const view = (await f.api("GET", `/api/v1/machines/${m}`)).body;
      expect(view.abandoned).toEqual([]);
      expect(view.mutexes).toEqual([]);
    } finally {
      killScript(pid);
      await second?.stop();
    }
  });

  it("lists a process of it that will not die as abandoned before the next full script starts, until it is gone (bug 2)", async () => {
    const m = f.machine();
    const { token, workDir, pid } = await killedMidScript(m);
    let second: TestRunner | undefined;
    let survivors: number[] = [];
    try {
      // A runner that cannot kill: the script's process survives the stop.
      second = await startRunnerInWorkDir(f.cp, m, token, workDir, { env: { TENDRIL_UNSAFE_DISABLE_PROCESS_KILL: "1" } });
      const main = await f.completed(m, "main");
      const next = await f.completed(m, "next");
      const view = (await f.api("GET", `/api/v1/machines/${m}`)).body;
      // Every process of its group survived and is listed: the wrapper (the shell that runs the script, and leads its
      // process group), the script's shell, and the wrapper's two copiers (each a subshell running dd).
      const group = pidsInGroup(processGroupOf(pid));
      expect(group.length).toBeGreaterThanOrEqual(4);
      expect(view.abandoned.map((entry: { pid: number }) => entry.pid).sort()).toEqual(group.sort());
      expect(view.abandoned).toContainEqual({ ticket: "main", pid, abandonedAt: expect.any(String) });
      expect(view.abandoned.every((entry: { ticket: string }) => entry.ticket === "main")).toBe(true);
      survivors = view.abandoned.map((entry: { pid: number }) => entry.pid);
      expect(main.exitCode).toBe(-46);
      // It ran beside the earlier process, but that one was listed before the mutex went to it.
      expect(stdout(next)).toEqual(["beside the earlier script"]);
      expect(isAlive(pid)).toBe(true);
      for (const survivor of survivors) killScript(survivor);
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, {
        what: "the processes to leave the abandoned list once they are gone",
      });
    } finally {
      killScript(pid);
      for (const survivor of survivors) killScript(survivor);
      await second?.stop();
    }
  });
});

describe("a control plane killed mid-script", () => {
  it("finishes the script with all its output once and in order after a restart on the same state, and keeps its waiters and their deadline", async () => {
    const stateDir = mkdtempSync(join(tmpdir(), "tendril-restart-"));
    const scratch = mkdtempSync(join(tmpdir(), "tendril-restart-scratch-"));
    let cp: TestControlPlane | undefined;
    let proxy: FaultProxy | undefined;
    let runner: TestRunner | undefined;
    try {
      cp = await startControlPlane({ stateDir });
      const serverToken = cp.serverToken;
      proxy = await startFaultProxy(Number(new URL(cp.url).port));
      const m = "restart-1";
      const registered = await call(cp, "POST", `/api/v1/machines/${m}/runner-token`);
      expect(registered.status).toBe(201);
      runner = await startRunner(cp, m, { token: registered.body.runnerToken, args: ["--url", proxy.url] });

      const release = join(scratch, "release");
      expect((await call(cp, "POST", `/api/v1/machines/${m}/scripts`, { ticket: "main", scriptBody: numberedScript(release) })).status).toBe(201);
      expect((await call(cp, "POST", `/api/v1/machines/${m}/scripts`, { ticket: "behind", scriptBody: "echo behind-ran" })).status).toBe(201);
      const timeoutMs = 15_000;
      const deadline = Date.now() + timeoutMs;
      const bounded = await call(cp, "POST", `/api/v1/machines/${m}/scripts`, { ticket: "bounded", scriptBody: "echo never", mutexTimeoutMs: timeoutMs });
      expect(bounded.status).toBe(201);

      const base = cp;
      const storedBeforeKill = await waitFor(
        async () => {
          const n = (await allLines(base, m, "main")).length;
          return n >= 300 ? n : undefined;
        },
        { what: "the first burst to be stored" },
      );
      const before = await viewWithoutTimes(cp, m);
      expect(before.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["main"], waiting: ["behind", "bounded"] }]);

      // SIGKILL the whole control plane group (node and workerd); the script keeps printing meanwhile.
      const killed = cp;
      signalGroup(killed.process.pid, "SIGKILL");
      await waitFor(() => pidsInGroup(killed.process.pid).length === 0, { what: "the control plane's process group to die" });
      // Already dead: this only removes what it left in its temporary folder (the state stays).
      await killed.stop({ keepState: true });

      cp = await startControlPlane({ stateDir, serverToken });
      proxy.setTarget(Number(new URL(cp.url).port));
      const restartedAt = Date.now();
      expect(restartedAt, "the restart took so long that the waiter's deadline passed before it").toBeLessThan(deadline - 2_000);

      // Straight after the restart, before the runner is back: the same holders, waiters and scripts.
      const after = await viewWithoutTimes(cp, m);
      expect(after.mutexes).toEqual(before.mutexes);
      expect(after.scripts.map((s: { ticket: string; state: string }) => [s.ticket, s.state])).toEqual(
        before.scripts.map((s: { ticket: string; state: string }) => [s.ticket, s.state]),
      );

      const restarted = cp;
      await waitFor(async () => (await call(restarted, "GET", `/api/v1/machines/${m}`)).body.runner.connected === true, {
        timeoutMs: 20_000,
        what: "the runner to reconnect to the restarted control plane",
      });
      // Output printed while the control plane was down arrives.
      await waitFor(async () => (await allLines(restarted, m, "main")).length > storedBeforeKill + 50, { what: "output from the downtime" });

      // The pending deadline survived: the bounded waiter times out after the restart, with -44.
      const timedOut = await completed(cp, m, "bounded", timeoutMs + 10_000);
      expect(timedOut.exitCode).toBe(-44);
      expect(Date.now()).toBeGreaterThanOrEqual(deadline);
      expect(timedOut.logs.some((l: Line) => l.source === "debug" && /Timed out/.test(l.text))).toBe(true);
      expect(stdout(timedOut)).toEqual([]);
      expect((await call(cp, "GET", `/api/v1/machines/${m}/scripts/main`)).body.state).toBe("running");

      writeFileSync(release, "");
      const main = await completed(cp, m, "main");
      expect(main.exitCode).toBe(0);
      const lines = await allLines(cp, m, "main");
      expect(lines.length).toBeGreaterThan(storedBeforeKill + 300);
      expect(lines.map((l) => l.sequence)).toEqual(lines.map((_, i) => i));
      expect(lines.every((l) => l.source === "stdout")).toBe(true);
      expect(lines.map((l) => l.text)).toEqual(lines.map((_, i) => `line-${i + 1}`));

      const behind = await completed(cp, m, "behind");
      expect(behind.exitCode).toBe(0);
      expect(stdout(behind)).toEqual(["behind-ran"]);
      expect((await call(cp, "GET", `/api/v1/machines/${m}`)).body.mutexes).toEqual([]);
    } finally {
      await runner?.stop();
      await proxy?.close();
      await cp?.stop();
      rmSync(stateDir, { recursive: true, force: true });
      rmSync(scratch, { recursive: true, force: true });
    }
  }, 90_000);
});
