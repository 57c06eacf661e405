// Abandon end to end: a script whose process will not die never holds the machine hostage.
import { describe, expect, it } from "vitest";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { isAlive, pidFrom, signalGroup } from "../helpers/processes.js";
import { startRunnerInWorkDir, type TestRunner } from "../helpers/runner.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** A runner whose kills are all no-ops: its scripts cannot be stopped. */
const UNKILLABLE = { env: { TENDRIL_UNSAFE_DISABLE_PROCESS_KILL: "1" } };

const abandonedLine = (m: string) => `The control plane has abandoned this script. The underlying process may still be running on machine ${m}.`;

/** Kills a process group the test created, by PID. */
function kill(pgid: number): void {
  signalGroup(pgid, "SIGKILL");
}

describe("abandon", () => {
  it("releases the mutex of an unkillable script at once: the next script starts within 1 s and the first process lives on", async () => {
    const m = f.machine();
    await f.runner(m, UNKILLABLE);
    const pidFile = join(f.scratch, `${m}.pid`);
    const secondStarted = join(f.scratch, `${m}.second`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "stuck", scriptBody: `echo $(cut -d' ' -f5 /proc/$$/stat) > '${pidFile}'; sleep 600` });
    const pid = await pidFrom(pidFile);
    try {
      await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "second", scriptBody: `touch '${secondStarted}'` });
      let view = await f.api("GET", `/api/v1/machines/${m}`);
      expect(view.body.mutexes[0]).toMatchObject({ holders: ["stuck"], waiting: ["second"] });

      // Cancel cannot land: the script keeps running and keeps the mutex.
      const cancel = await f.api("POST", `/api/v1/machines/${m}/scripts/stuck/cancel`);
      expect(cancel.status).toBe(200);
      await waitFor(async () => /kill is disabled/.test(JSON.stringify((await f.api("GET", `/api/v1/machines/${m}/scripts/stuck`)).body.logs)), {
        what: "the runner to report that it cannot kill",
      });
      expect((await f.api("GET", `/api/v1/machines/${m}/scripts/stuck`)).body.state).toBe("running");
      expect(isAlive(pid)).toBe(true);
      expect(existsSync(secondStarted)).toBe(false);

      const abandoned = await f.api("POST", `/api/v1/machines/${m}/scripts/stuck/abandon`);
      expect(abandoned.status).toBe(200);
      expect(abandoned.body).toMatchObject({ ticket: "stuck", state: "complete", exitCode: -48 });
      await waitFor(() => existsSync(secondStarted), { timeoutMs: 1_000, intervalMs: 5, what: "the second script to start within 1 s" });
      expect(isAlive(pid)).toBe(true);

      const status = (await f.api("GET", `/api/v1/machines/${m}/scripts/stuck`)).body;
      expect(status.logs.filter((l: { text: string }) => l.text === abandonedLine(m))).toHaveLength(1);
      view = await f.api("GET", `/api/v1/machines/${m}`);
      expect(view.body.abandoned).toEqual([{ ticket: "stuck", pid, abandonedAt: expect.any(String) }]);
      expect(view.body.runner.capabilities).toContain("script.abandon");
    } finally {
      kill(pid);
    }
    // Once the process is really gone, the runner says so and the machine view stops listing it.
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, {
      what: "the abandoned process to leave the machine view",
    });
  });

  it("works while the runner is offline, and the waiter runs once a new runner connects", async () => {
    const m = f.machine();
    const first = await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    const waiterRan = join(f.scratch, `${m}.waiter`);
    // The script's process group: its leader is the shell that wraps it, the process the abandoned list names.
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "orphan", scriptBody: `echo $(cut -d' ' -f5 /proc/$$/stat) > '${pidFile}'; sleep 600` });
    const pid = await pidFrom(pidFile);
    try {
      await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "waiter", scriptBody: `touch '${waiterRan}'` });
      await first.process.stop(); // the runner goes away; its script keeps running as an orphan
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the runner to be gone" });

      const abandoned = await f.api("POST", `/api/v1/machines/${m}/scripts/orphan/abandon`);
      expect(abandoned.body).toMatchObject({ state: "complete", exitCode: -48 });
      const view = await f.api("GET", `/api/v1/machines/${m}`);
      expect(view.body.mutexes[0]).toMatchObject({ holders: ["waiter"], waiting: [] });
      expect((await f.api("GET", `/api/v1/machines/${m}/scripts/waiter`)).body.state).toBe("pending");

      await f.runner(m, { token: await f.register(m) });
      expect((await f.completed(m, "waiter")).exitCode).toBe(0);
      expect(existsSync(waiterRan)).toBe(true);
      expect(isAlive(pid)).toBe(true);
    } finally {
      kill(pid);
    }
    // The new runner was told to watch the orphan; its death clears the list.
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, {
      what: "the orphan to leave the machine view",
    });
  });

  it("kills the process once a runner connects when the abandon asked for killProcess while none was connected (bug 7)", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const first = await f.runner(m, { token });
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "orphan", scriptBody: `echo $$ > '${pidFile}'; sleep 600` });
    const pid = await pidFrom(pidFile);
    try {
      await first.process.stop(); // the runner goes away; its script keeps running
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the runner to be gone" });
      const abandoned = await f.api("POST", `/api/v1/machines/${m}/scripts/orphan/abandon`, { killProcess: true });
      expect(abandoned.body).toMatchObject({ state: "complete", exitCode: -48 });
      expect(isAlive(pid)).toBe(true);

      // A runner on another work dir knows the process only from the machine's abandoned list.
      await f.runner(m, { token });
      await waitFor(() => !isAlive(pid), { what: "the abandoned process to be killed" });
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, {
        what: "the killed process to leave the machine view",
      });
    } finally {
      kill(pid);
    }
  });

  it("kills the process when the runner that restarts on its work dir finds it, if the abandon asked for killProcess while it was away (bug 7)", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const first = await f.runner(m, { token });
    const pidFile = join(f.scratch, `${m}.pid`);
    const escapedFile = join(f.scratch, `${m}.escaped`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "orphan",
      scriptBody: `echo $$ > '${pidFile}'; setsid sleep 600 >/dev/null 2>&1 & echo $! > '${escapedFile}'; sleep 600`,
    });
    const pid = await pidFrom(pidFile);
    const escaped = await pidFrom(escapedFile);
    let second: TestRunner | undefined;
    try {
      signalGroup(first.process.pid, "SIGKILL");
      await first.process.exited;
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the runner to be gone" });
      await f.api("POST", `/api/v1/machines/${m}/scripts/orphan/abandon`, { killProcess: true });
      second = await startRunnerInWorkDir(f.cp, m, token, first.workDir);
      // Also what left the script's process group: the run's record names its marker.
      await waitFor(() => !isAlive(pid) && !isAlive(escaped), { what: "the abandoned script and what it started to be killed" });
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, {
        what: "the killed process to leave the machine view",
      });
    } finally {
      kill(pid);
      kill(escaped);
      await second?.stop();
    }
  });

  it("abandons by itself abandonAfterMs after a cancel that does not land", async () => {
    const m = f.machine();
    await f.runner(m, UNKILLABLE);
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "slow", scriptBody: `echo $$ > '${pidFile}'; sleep 600` });
    const pid = await pidFrom(pidFile);
    try {
      const cancel = await f.api("POST", `/api/v1/machines/${m}/scripts/slow/cancel`, { abandonAfterMs: 300 });
      expect(cancel.status).toBe(200);
      const status = await f.completed(m, "slow", 10_000);
      expect(status.exitCode).toBe(-48);
      expect(status.logs.filter((l: { text: string }) => l.text === abandonedLine(m))).toHaveLength(1);
      expect(isAlive(pid)).toBe(true);
    } finally {
      kill(pid);
    }
  });

  it("answers -43 for a pending script, the real exit code for a complete one, and the same answer twice", async () => {
    const m = f.machine();
    await f.runner(m);
    const done = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "done", scriptBody: "exit 3", waitMs: 20_000 });
    expect(done.body.exitCode).toBe(3);
    const abandonDone = await f.api("POST", `/api/v1/machines/${m}/scripts/done/abandon`);
    expect(abandonDone.body).toMatchObject({ state: "complete", exitCode: 3 });
    expect(abandonDone.body.logs.some((l: { text: string }) => l.text === abandonedLine(m))).toBe(false);

    const release = join(f.scratch, `${m}.release`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "holder", scriptBody: `while [ ! -f '${release}' ]; do sleep 0.02; done` });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "queued", scriptBody: "true" });
    const abandonPending = await f.api("POST", `/api/v1/machines/${m}/scripts/queued/abandon`);
    expect(abandonPending.body).toMatchObject({ state: "complete", exitCode: -43 });
    expect((await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned).toEqual([]);

    const once = await f.api("POST", `/api/v1/machines/${m}/scripts/holder/abandon`, { killProcess: true });
    const twice = await f.api("POST", `/api/v1/machines/${m}/scripts/holder/abandon`, { killProcess: true });
    expect(once.body).toMatchObject({ state: "complete", exitCode: -48 });
    expect(twice.body).toEqual(once.body);
    writeFileSync(release, "");
  });

  it("kills the process tree when asked with killProcess, without waiting", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "k", scriptBody: `echo $$ > '${pidFile}'; (sleep 600) & sleep 600` });
    const pid = await pidFrom(pidFile);
    try {
      const response = await f.api("POST", `/api/v1/machines/${m}/scripts/k/abandon`, { killProcess: true });
      expect(response.body).toMatchObject({ state: "complete", exitCode: -48 });
      await waitFor(() => !isAlive(pid), { what: "the abandoned process to be killed" });
    } finally {
      kill(pid);
    }
  });

  it("keeps output the abandoned process writes later out of the script's logs", async () => {
    const m = f.machine();
    await f.runner(m, UNKILLABLE);
    const pidFile = join(f.scratch, `${m}.pid`);
    const release = join(f.scratch, `${m}.release`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "late",
      scriptBody: `echo before; echo $$ > '${pidFile}'; while [ ! -f '${release}' ]; do sleep 0.02; done; for i in $(seq 1 50); do echo after-abandon-$i; done; exit 9`,
    });
    const pid = await pidFrom(pidFile);
    try {
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}/scripts/late`)).body.logs.some((l: { text: string }) => l.text === "before"), {
        what: "the first line",
      });
      const abandoned = await f.api("POST", `/api/v1/machines/${m}/scripts/late/abandon`);
      expect(abandoned.body.exitCode).toBe(-48);
      writeFileSync(release, "");
      // The process writes its late output and exits by itself (it was not killed by the abandon).
      await waitFor(() => !isAlive(pid), { what: "the abandoned process to finish on its own" });
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, { what: "its exit to be reported" });
      const status = (await f.api("GET", `/api/v1/machines/${m}/scripts/late`)).body;
      expect(status.exitCode).toBe(-48);
      expect(status.logs.map((l: { text: string }) => l.text)).not.toContainEqual(expect.stringMatching(/after-abandon/));
      expect(status.logs.at(-1).text).toBe(abandonedLine(m));
    } finally {
      kill(pid);
    }
  });

  it("rejects bad abandon bodies and unknown tickets", async () => {
    const m = f.machine();
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "t", scriptBody: "true" });
    for (const body of [{ killProcess: "yes" }, { killProcess: 1 }, { other: true }, [], null]) {
      const response = await f.api("POST", `/api/v1/machines/${m}/scripts/t/abandon`, body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(response.body.error.code).toBe("invalid_request");
    }
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/t`)).body.state).toBe("pending");
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts/nope/abandon`)).status).toBe(404);
  });
});
