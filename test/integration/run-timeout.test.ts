// Hung scripts free their machine: `runTimeoutMs` on the real Worker with real runners. Past it the control plane
// cancels the script (audit `run-timeout`); a script whose cancel does not land (here a SIGTERM-ignoring script on a
// runner whose kills are disabled) is abandoned 30 s after the runner's kill grace, and the next script runs. The
// deadline is served by the machine object's alarm, so it also holds across a restart of the control plane.
import { describe, expect, it } from "vitest";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { call } from "../helpers/api.js";
import { startControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { useControlPlane } from "../helpers/fixture.js";
import { handRunner } from "../helpers/hand-runner.js";
import { isAlive, pidFrom } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

type Event = { at: string; action: string; actor: string; reason: string | null };

describe("runTimeoutMs", () => {
  it("cancels a script still running past its run timeout, and the runner stops it (-43)", async () => {
    const m = f.machine("rt");
    await f.runner(m);
    const started = Date.now();
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "slow", scriptBody: "sleep 600", runTimeoutMs: 1_500 });
    const status = await f.completed(m, "slow", 30_000);
    expect(status.exitCode).toBe(-43);
    expect(status.events).toEqual([{ at: expect.any(String), action: "run-timeout", actor: "control-plane", reason: "ran longer than its run timeout of 1500 ms" }]);
    expect(Date.parse(status.events[0].at)).toBeGreaterThanOrEqual(started + 1_500);
    const debug = status.logs.filter((l: { source: string }) => l.source === "debug").map((l: { text: string }) => l.text);
    expect(debug[0]).toMatch(/^The script ran longer than its run timeout of 1500 ms; the control plane cancels it/);
    expect(debug.join("\n")).toMatch(/SIGTERM/);
  }, 60_000);

  it("is part of the script's identity: the same ticket with another run timeout is a conflict", async () => {
    const m = f.machine("rt-id");
    await f.register(m);
    const body = { ticket: "t", scriptBody: "true", runTimeoutMs: 60_000 };
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, body)).status).toBe(201);
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, body)).status).toBe(200);
    const other = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ...body, runTimeoutMs: 1_000 });
    expect(other.status).toBe(409);
    expect(other.body.error.code).toBe("ticket_conflict");
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ...body, runTimeoutMs: 2_592_000_001 })).status).toBe(400);
  });

  it("abandons a script that ignores the cancel 30 s after the runner's kill grace, and the next script runs", async () => {
    const m = f.machine("rt-hung");
    // Kills are no-ops on this runner, so the script survives SIGTERM and SIGKILL alike; its grace is 1 s.
    const runner = await f.runner(m, { env: { TENDRIL_UNSAFE_DISABLE_PROCESS_KILL: "1" }, args: ["--kill-grace", "1s"] });
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "hung", scriptBody: `trap '' TERM; echo $$ > '${pidFile}'; sleep 600`, runTimeoutMs: 1_000 });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "next", scriptBody: "echo next-ran" });
    const pid = await pidFrom(pidFile);
    const hung = await f.completed(m, "hung", 60_000);
    expect(hung.exitCode).toBe(-48);
    const [timedOut, abandoned] = hung.events as Event[];
    expect(hung.events.map((e: Event) => `${e.action} ${e.actor}`)).toEqual(["run-timeout control-plane", "auto-abandon control-plane"]);
    // The abandon waited the runner's kill grace and 30 s more after the cancel.
    expect(Date.parse(abandoned!.at) - Date.parse(timedOut!.at)).toBeGreaterThanOrEqual(31_000);
    expect(hung.logs.map((l: { text: string }) => l.text)).toContain(`The control plane has abandoned this script. The underlying process may still be running on machine ${m}.`);
    const next = await f.completed(m, "next", 20_000);
    expect(next.logs.filter((l: { source: string }) => l.source === "stdout").map((l: { text: string }) => l.text)).toEqual(["next-ran"]);
    // The process lives on, as the abandon says; the runner's stop kills what is left in its work dir.
    expect(isAlive(pid)).toBe(true);
    await runner.stop();
    expect(isAlive(pid)).toBe(false);
  }, 120_000);

  it("holds across a restart of the control plane: the machine's alarm serves it from storage", async () => {
    let cp: TestControlPlane | undefined = await startControlPlane();
    const { stateDir, serverToken } = cp;
    try {
      const m = `rt-restart-${process.pid}`;
      const token = (await call(cp, "POST", `/api/v1/machines/${m}/runner-token`)).body.runnerToken;
      const runner = await handRunner(cp, m, token, "runner-1", { killGraceMs: 0 });
      const started = Date.now();
      await call(cp, "POST", `/api/v1/machines/${m}/scripts`, { ticket: "slow", scriptBody: "sleep 600", runTimeoutMs: 8_000 });
      await runner.dispatchOf("slow");
      await cp.stop({ keepState: true });
      cp = undefined;
      await runner.closed;
      expect(Date.now() - started, "the control plane stopped after the run timeout had passed").toBeLessThan(8_000);

      cp = await startControlPlane({ stateDir, serverToken });
      const restarted = cp;
      // No runner is connected: the script still runs as far as the control plane knows, and it is cancelled anyway.
      const events = await waitFor(
        async () => {
          const status = await call(restarted, "GET", `/api/v1/machines/${m}/scripts/slow?limit=1`);
          return status.body.events.length > 0 ? (status.body.events as Event[]) : undefined;
        },
        { timeoutMs: 20_000, what: "the run timeout after the restart" },
      );
      expect(events.map((e) => `${e.action} ${e.actor}`)).toEqual(["run-timeout control-plane"]);
      expect(Date.parse(events[0]!.at)).toBeGreaterThanOrEqual(started + 8_000);
    } finally {
      await cp?.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 90_000);
});
