// Re-attaching across a runner restart, end to end: a real control plane, real `tendril runner` processes killed with
// SIGKILL (or stopped with SIGTERM) and started again on the same work dir, real scripts stopped by PID. The floor
// rule for what cannot be re-attached to is in restart.test.ts too (records without `reattach`).
import { describe, expect, it } from "vitest";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { isAlive, killScript, pidFrom, signalGroup } from "../helpers/processes.js";
import { startRunnerInWorkDir, type TestRunner } from "../helpers/runner.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

interface Line {
  sequence: number;
  source: string;
  text: string;
}

/** Every stored line of a script, read page by page from the start. */
async function allLines(machineId: string, ticket: string): Promise<Line[]> {
  const lines: Line[] = [];
  let next = 0;
  for (;;) {
    const page = await f.api("GET", `/api/v1/machines/${machineId}/scripts/${ticket}?logSequence=${next}&limit=1000`);
    expect(page.status).toBe(200);
    lines.push(...page.body.logs);
    next = page.body.nextLogSequence;
    if (!page.body.hasMoreLogs) return lines;
  }
}

/** A script that writes its pid to `pidFile`, prints `line-1`, `line-2`, ...: a burst, then one every 10 ms until `release` exists, then a last burst; exits with `code`. */
function numberedScript(pidFile: string, release: string, code: number): string {
  return [
    `echo $$ > '${pidFile}'`,
    "i=0",
    'emit() { i=$((i+1)); echo "line-$i"; }',
    "for j in $(seq 1 300); do emit; done",
    `while [ ! -e '${release}' ]; do emit; sleep 0.01; done`,
    "for j in $(seq 1 300); do emit; done",
    `exit ${code}`,
  ].join("\n");
}

/** Starts a runner, runs `scriptBody` as `main`, waits for `lines` stored lines, and SIGKILLs the runner mid-script. */
async function killedMidScript(m: string, scriptBody: string, pidFile: string, lines = 1) {
  const token = await f.register(m);
  const first = await f.runner(m, { token });
  expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "main", scriptBody })).status).toBe(201);
  const pid = await pidFrom(pidFile);
  await waitFor(async () => (await allLines(m, "main")).length >= lines, { what: `${lines} stored lines` });
  // The runner's own process group; the script runs in a group of its own (its wrapper's) and lives on.
  signalGroup(first.process.pid, "SIGKILL");
  await first.process.exited;
  expect(isAlive(pid)).toBe(true);
  await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, {
    what: "the control plane to see the runner gone",
  });
  return { token, workDir: first.workDir, pid };
}

describe("a runner killed with SIGKILL and started again on the same work dir", () => {
  it("re-attaches: the script stays running, numbered lines arrive with none lost, doubled or reordered, and it completes with its real exit code", async () => {
    const m = f.machine();
    const pidFile = join(f.scratch, `${m}.pid`);
    const release = join(f.scratch, `${m}.release`);
    const { token, workDir, pid } = await killedMidScript(m, numberedScript(pidFile, release, 7), pidFile, 300);
    let second: TestRunner | undefined;
    try {
      second = await startRunnerInWorkDir(f.cp, m, token, workDir);
      const connectedAt = Date.now();
      const before = (await allLines(m, "main")).length;
      // Re-attached within 5 s of connecting: the output goes on.
      await waitFor(async () => (await allLines(m, "main")).length > before + 50, { timeoutMs: 5_000, what: "output after the restart" });
      expect(Date.now() - connectedAt).toBeLessThan(5_000);
      const status = (await f.api("GET", `/api/v1/machines/${m}/scripts/main?limit=1`)).body;
      expect(status.state).toBe("running");
      expect(isAlive(pid)).toBe(true);
      const view = (await f.api("GET", `/api/v1/machines/${m}`)).body;
      expect(view.scripts.find((script: { ticket: string }) => script.ticket === "main")).toMatchObject({ state: "running", runnerRestarts: 1 });

      writeFileSync(release, "");
      const main = await f.completed(m, "main");
      expect(main.exitCode).toBe(7);
      expect(main.events.some((event: { action: string }) => event.action === "reattached")).toBe(true);
      const lines = await allLines(m, "main");
      expect(lines.length).toBeGreaterThan(before + 300);
      expect(lines.map((line) => line.sequence)).toEqual(lines.map((_, i) => i));
      // The script's own lines, numbered across the restart; and one line of the control plane's saying it.
      const output = lines.filter((line) => line.source === "stdout");
      expect(output.map((line) => line.text)).toEqual(output.map((_, i) => `line-${i + 1}`));
      expect(lines.filter((line) => line.source !== "stdout").map((line) => line.text)).toEqual([
        "The runner restarted and re-attached to this script, which kept running (runner restart 1).",
      ]);
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.mutexes).toEqual([]);
    } finally {
      killScript(pid);
      await second?.stop();
      rmSync(workDir, { recursive: true, force: true });
    }
  }, 90_000);

  it("cancels a re-attached script as before: its process group is stopped and it completes with -43", async () => {
    const m = f.machine();
    const pidFile = join(f.scratch, `${m}.pid`);
    const { token, workDir, pid } = await killedMidScript(m, `echo $$ > '${pidFile}'; echo started; sleep 600 & wait`, pidFile);
    let second: TestRunner | undefined;
    try {
      second = await startRunnerInWorkDir(f.cp, m, token, workDir);
      expect((await f.api("POST", `/api/v1/machines/${m}/scripts/main/cancel`, {})).status).toBeLessThan(300);
      const main = await f.completed(m, "main");
      expect(main.exitCode).toBe(-43);
      expect(main.logs.some((line: Line) => line.source === "debug" && /^Cancelled: sent SIGTERM to the process group/.test(line.text))).toBe(true);
      expect(isAlive(pid)).toBe(false);
    } finally {
      killScript(pid);
      await second?.stop();
      rmSync(workDir, { recursive: true, force: true });
    }
  }, 60_000);

  it("abandons a re-attached script as before: it completes with -48, keeps running, and leaves the abandoned list once it exits", async () => {
    const m = f.machine();
    const pidFile = join(f.scratch, `${m}.pid`);
    const release = join(f.scratch, `${m}.release`);
    const { token, workDir, pid } = await killedMidScript(m, `echo $$ > '${pidFile}'; echo started; while [ ! -e '${release}' ]; do sleep 0.02; done`, pidFile);
    let second: TestRunner | undefined;
    try {
      second = await startRunnerInWorkDir(f.cp, m, token, workDir);
      expect((await f.api("POST", `/api/v1/machines/${m}/scripts/main/abandon`, {})).status).toBeLessThan(300);
      const main = await f.completed(m, "main");
      expect(main.exitCode).toBe(-48);
      expect(isAlive(pid)).toBe(true);
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.map((entry: { ticket: string }) => entry.ticket)).toEqual(["main"]);
      writeFileSync(release, "");
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, {
        what: "the abandoned process to leave the list once it exits",
      });
      expect(isAlive(pid)).toBe(false);
    } finally {
      killScript(pid);
      await second?.stop();
      rmSync(workDir, { recursive: true, force: true });
    }
  }, 60_000);

  it("follows the floor rule for a script whose work dir was removed: stopped before its mutex is released, then -46", async () => {
    const m = f.machine();
    const pidFile = join(f.scratch, `${m}.pid`);
    const { token, workDir, pid } = await killedMidScript(m, `echo $$ > '${pidFile}'; echo started; exec sleep 600`, pidFile);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "next",
      // A zombie has ended (it waits only for its new parent to reap it): only a process in another state still runs.
      scriptBody: `state=$(sed 's/.*) //' "/proc/$(cat '${pidFile}')/stat" 2>/dev/null | cut -d' ' -f1); if [ -n "$state" ] && [ "$state" != Z ]; then echo "beside the earlier script"; else echo alone; fi`,
    });
    // Nothing on disk names the script any more.
    rmSync(workDir, { recursive: true, force: true });
    let second: TestRunner | undefined;
    try {
      second = await startRunnerInWorkDir(f.cp, m, token, workDir);
      const main = await f.completed(m, "main");
      expect(main.exitCode).toBe(-46);
      const next = await f.completed(m, "next");
      expect(next.logs.filter((line: Line) => line.source === "stdout").map((line: Line) => line.text)).toEqual(["alone"]);
      expect(isAlive(pid)).toBe(false);
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.mutexes).toEqual([]);
    } finally {
      killScript(pid);
      await second?.stop();
      rmSync(workDir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("a runner stopped with SIGTERM", () => {
  it("exits within a few seconds, leaving its script running, and a new runner re-attaches to it", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const first = await f.runner(m, { token });
    const pidFile = join(f.scratch, `${m}.pid`);
    const release = join(f.scratch, `${m}.release`);
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "main", scriptBody: numberedScript(pidFile, release, 3) })).status).toBe(201);
    const pid = await pidFrom(pidFile);
    let second: TestRunner | undefined;
    try {
      await waitFor(async () => (await allLines(m, "main")).length >= 300, { what: "the first burst" });
      const asked = Date.now();
      signalGroup(first.process.pid, "SIGTERM");
      const ended = await first.process.exited;
      expect(Date.now() - asked).toBeLessThan(5_000);
      expect(ended).toEqual({ code: 0, signal: null });
      expect(isAlive(pid)).toBe(true);
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the runner to be gone" });
      // Dispatches wait for the next runner.
      expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "later", scriptBody: "echo later" })).status).toBe(201);
      expect((await f.api("GET", `/api/v1/machines/${m}/scripts/main?limit=1`)).body.state).toBe("running");

      second = await startRunnerInWorkDir(f.cp, m, token, first.workDir);
      writeFileSync(release, "");
      const main = await f.completed(m, "main");
      expect(main.exitCode).toBe(3);
      expect(main.events.map((event: { action: string }) => event.action)).toContain("reattached");
      const output = (await allLines(m, "main")).filter((line) => line.source === "stdout");
      expect(output.map((line) => line.text)).toEqual(output.map((_, i) => `line-${i + 1}`));
      const later = await f.completed(m, "later");
      expect(later.exitCode).toBe(0);
    } finally {
      killScript(pid);
      await second?.stop();
      await first.stop();
    }
  }, 90_000);
});
