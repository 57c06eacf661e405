// Machines come and go, on the real Worker with a real runner: a machine is not removed while a script is pending or
// running (409 machine_busy); once removed, its state, logs, summary and runner token are gone (its runner is
// disconnected for good) and its audit events stay in the feed. A runner token can be revoked without issuing
// another.
import { describe, expect, it } from "vitest";
import { call, runnerUpgradeStatus } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { handRunner } from "../helpers/hand-runner.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

const listed = async (machineId: string) => (await f.api("GET", `/api/v1/machines?prefix=${machineId}`)).body.machines.map((s: { machineId: string }) => s.machineId);

describe("DELETE /api/v1/machines/{machineId}", () => {
  it("refuses while a script is pending or running, then deletes the machine's state, logs, summary and token, and disconnects its runner", async () => {
    const m = f.machine("rm");
    const token = await f.register(m);
    // Pending: no runner yet, so the script holds its mutex and waits.
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "early", scriptBody: "echo early" });
    const whilePending = await f.api("DELETE", `/api/v1/machines/${m}`);
    expect(whilePending.status).toBe(409);
    expect(whilePending.body.error.code).toBe("machine_busy");

    // Running: a real runner runs it, and a long one after it.
    const runner = await f.runner(m, { token });
    expect((await f.completed(m, "early")).exitCode).toBe(0);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "long", scriptBody: "sleep 600" });
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}/scripts/long`)).body.state === "running", { what: "the long script to run" });
    const whileRunning = await f.api("DELETE", `/api/v1/machines/${m}`);
    expect(whileRunning.status).toBe(409);
    expect(whileRunning.body.error.code).toBe("machine_busy");
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/long`)).body.state).toBe("running");

    await f.api("POST", `/api/v1/machines/${m}/scripts/long/cancel`);
    expect((await f.completed(m, "long")).exitCode).toBe(-43);
    await waitFor(async () => (await listed(m)).includes(m), { what: "the machine's summary" });
    const removed = await f.api("DELETE", `/api/v1/machines/${m}`);
    expect(removed.status).toBe(200);
    expect(removed.body).toEqual({ machineId: m, removed: true });

    // Its runner is told its token is gone (4001) and stops for good; the token no longer opens a socket.
    const exit = await runner.process.exited;
    expect(exit.code, runner.process.output()).toBe(3);
    expect(await runnerUpgradeStatus(f.cp, m, token)).toBe(401);
    // Nothing of it is left: every call answers unknown_machine, and the list does not show it.
    for (const path of [`/api/v1/machines/${m}`, `/api/v1/machines/${m}/scripts/early`, `/api/v1/machines/${m}/scripts/long/stream`]) {
      const answer = await f.api("GET", path);
      expect(answer.status, path).toBe(404);
      expect(answer.body.error.code).toBe("unknown_machine");
    }
    expect((await f.api("DELETE", `/api/v1/machines/${m}`)).body.error.code).toBe("unknown_machine");
    expect((await f.api("DELETE", `/api/v1/machines/${m}/runner-token`)).body.error.code).toBe("unknown_machine");
    expect(await listed(m)).toEqual([]);
    // Its audit events stay, with the removal.
    const feed = (await f.api("GET", `/api/v1/audit?machineId=${m}`)).body.events.map((e: { action: string; ticket: string | null }) => `${e.action} ${e.ticket}`);
    expect(feed).toEqual(["machine-removed null", "cancel long", "runner-token-issued null"]);

    // Registered again, it is a new machine with nothing of the old one.
    const again = await f.register(m);
    expect(again).not.toBe(token);
    const view = (await f.api("GET", `/api/v1/machines/${m}`)).body;
    expect(view.scripts).toEqual([]);
    expect(view.runner).toMatchObject({ connected: false, version: null });
    await waitFor(async () => (await listed(m)).includes(m), { what: "the machine to be listed again" });
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "early", scriptBody: "true" })).body.events).toEqual([]);
  }, 60_000);

  it("answers 404 unknown_machine for a machine that was never registered, after authentication", async () => {
    const m = f.machine("never");
    expect((await f.api("DELETE", `/api/v1/machines/${m}`)).body.error.code).toBe("unknown_machine");
    expect((await call(f.cp, "DELETE", `/api/v1/machines/${m}`, undefined, { token: "wrong" })).status).toBe(401);
    expect((await f.api("GET", `/api/v1/machines/${m}`)).status).toBe(404);
  });
});

describe("DELETE /api/v1/machines/{machineId}/runner-token", () => {
  it("revokes the token without issuing another: the runner is disconnected (4001) and cannot connect until a new token is issued", async () => {
    const m = f.machine("revoke");
    const token = await f.register(m);
    const runner = await handRunner(f.cp, m, token, "runner-1");
    const revoked = await f.api("DELETE", `/api/v1/machines/${m}/runner-token`);
    expect(revoked.body).toEqual({ machineId: m, revoked: true });
    expect(await runner.closed).toBe(4001);
    expect(await runnerUpgradeStatus(f.cp, m, token)).toBe(401);
    // The machine itself stays, with its scripts.
    expect((await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected).toBe(false);
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "waits", scriptBody: "true" })).status).toBe(201);
    // Revoking again is harmless, and records nothing more.
    expect((await f.api("DELETE", `/api/v1/machines/${m}/runner-token`)).status).toBe(200);
    const fresh = await f.register(m);
    expect(await runnerUpgradeStatus(f.cp, m, fresh)).toBe(101);
    await waitFor(async () => (await f.api("GET", `/api/v1/audit?machineId=${m}`)).body.events.length === 3, { what: "the token events in the feed" });
    expect((await f.api("GET", `/api/v1/audit?machineId=${m}`)).body.events.map((e: { action: string }) => e.action)).toEqual([
      "runner-token-issued",
      "runner-token-revoked",
      "runner-token-issued",
    ]);
  });
});
