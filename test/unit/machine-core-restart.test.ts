/**
 * A runner that stops and one that takes over, in the machine core: a draining runner gets no new script (the granted
 * ones wait, holding their mutex, for the next runner), and a new runner process that re-attached to a running
 * script keeps it running, counts the restart once, and records `reattached` in its audit trail.
 */
import { describe, expect, it } from "vitest";
import { handle } from "../../control-plane/machine/core/machine-core.js";
import { welcomeFor } from "../../control-plane/machine/engine.js";
import { T0, audits, completions, connect, dispatches, disconnect, exit, logs, machine, start } from "./core-fixtures.js";

function drain(state: ReturnType<typeof machine>) {
  return handle(state, { type: "runner_draining", now: T0 });
}

describe("a draining runner", () => {
  it("gets no new script: a granted one stays pending, holding its mutex, and the next runner runs it", () => {
    const state = machine("m1");
    connect(state, "r1");
    const first = start(state, "a");
    expect(dispatches(first)).toEqual([["a", 1]]);
    start(state, "b");
    drain(state);
    expect(dispatches(exit(state, "a", 1))).toEqual([]);
    expect(state.scripts.get("b")).toMatchObject({ state: "pending", granted: true });
    expect(dispatches(start(state, "c", { mutexName: "other" }))).toEqual([]);
    disconnect(state);
    expect(dispatches(connect(state, "r2"))).toEqual([["b", 2], ["c", 3]]);
  });

  it("is draining only until a runner connects again", () => {
    const state = machine("m1");
    connect(state, "r1");
    drain(state);
    expect(state.runner).toEqual({ runnerId: "r1", draining: true });
    disconnect(state);
    connect(state, "r2");
    expect(state.runner).toEqual({ runnerId: "r2", draining: false });
  });
});

describe("a runner process that re-attached", () => {
  it("keeps the script running, counts one restart and records reattached with a log line", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    const decision = connect(state, "r2", [{ ticket: "a", fence: 1, stored: "none", reattached: true }]);
    expect(completions(decision)).toEqual([]);
    expect(state.scripts.get("a")).toMatchObject({ state: "running", fence: 1, runnerId: "r2", runnerRestarts: 1 });
    expect(decision.changes).toContainEqual({ type: "reattached", ticket: "a", runnerId: "r2", runnerRestarts: 1 });
    expect(audits(decision)).toEqual([["a", "reattached", "control-plane", "the runner restarted and re-attached to the running script"]]);
    expect(logs(decision)).toEqual([["a", "The runner restarted and re-attached to this script, which kept running (runner restart 1)."]]);
  });

  it("counts a restart once per runner process, however often that process reconnects", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a");
    const entry = { ticket: "a", fence: 1, stored: "none" as const, reattached: true };
    connect(state, "r2", [entry]);
    disconnect(state);
    const again = connect(state, "r2", [entry]);
    expect(audits(again)).toEqual([]);
    disconnect(state);
    connect(state, "r3", [entry]);
    expect(state.scripts.get("a")?.runnerRestarts).toBe(2);
  });

  it("counts nothing for a runner that reconnected with what it started itself", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    const decision = connect(state, "r1", [{ ticket: "a", fence: 1, stored: "none" }]);
    expect(audits(decision)).toEqual([]);
    expect(state.scripts.get("a")?.runnerRestarts).toBe(0);
  });
});

describe("the welcome in the runner's protocol version", () => {
  const welcome = {
    machineId: "m1",
    connectionId: "c1",
    heartbeatMs: 10_000,
    resume: [{ ticket: "a", fence: 1, action: "abandon" as const, nextSequence: 0, killProcess: true }],
    watch: [{ ticket: "a", fence: 1, pid: 42, startTime: 7, bootId: "b", kill: true }],
  };

  it("carries version 2's fields to a version-2 runner", () => {
    expect(welcomeFor(2, welcome)).toEqual({ type: "welcome", protocol: 2, ...welcome });
  });

  it("leaves every version-2 field out for a version-1 runner, which parses the welcome strictly", () => {
    expect(welcomeFor(1, welcome)).toEqual({
      type: "welcome",
      protocol: 1,
      machineId: "m1",
      connectionId: "c1",
      heartbeatMs: 10_000,
      resume: [{ ticket: "a", fence: 1, action: "abandon", nextSequence: 0 }],
      watch: [{ ticket: "a", fence: 1, pid: 42 }],
    });
  });
});
