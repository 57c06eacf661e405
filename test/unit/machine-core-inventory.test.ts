/**
 * A reconnecting runner's inventory, classified purely: the welcome's resume answer for each script it lists,
 * the abandoned processes it should watch (named by pid, start time and boot), and the kills that were asked for
 * while no runner could hear them, delivered once.
 */
import { describe, expect, it } from "vitest";
import { planWelcome, storedOutcome, type AbandonedProcess } from "../../control-plane/machine/core/inventory.js";
import { connect, disconnect, machine, start } from "./core-fixtures.js";
import { onRunnerReport } from "../../control-plane/machine/core/runner-reports.js";

const OCCURRED = "2026-12-02T08:00:00.000Z";

describe("storedOutcome", () => {
  it("tells a completed dispatch from an abandoned one, and anything else from both", () => {
    expect(storedOutcome({ state: "complete", fence: 3, reason: { kind: "exited", code: 0 } }, 3)).toBe("completed");
    expect(storedOutcome({ state: "complete", fence: 3, reason: { kind: "abandoned" } }, 3)).toBe("abandoned");
    expect(storedOutcome({ state: "complete", fence: 3, reason: { kind: "abandoned" } }, 2)).toBe("none");
    expect(storedOutcome({ state: "running", fence: 3, reason: null }, 3)).toBe("none");
    expect(storedOutcome(null, 3)).toBe("none");
  });
});

describe("planWelcome", () => {
  it("continues a running script from the first line the control plane lacks, and forgets, abandons or cancels the rest", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a");
    onRunnerReport(state, { type: "output", ticket: "a", fence: 1, sequence: 0, lines: [{ source: "stdout", text: "x", occurred: OCCURRED }] }, { now: 0, maxOutputBytes: 1024 });
    disconnect(state);
    const welcome = planWelcome(
      state,
      [
        { ticket: "a", fence: 1, stored: "none" },
        { ticket: "done", fence: 2, stored: "completed" },
        { ticket: "gone", fence: 3, stored: "abandoned" },
        { ticket: "stale", fence: 4, stored: "none" },
      ],
      [],
    );
    expect(welcome.resume).toEqual([
      { ticket: "a", fence: 1, action: "continue", nextSequence: 1 },
      { ticket: "done", fence: 2, action: "forget", nextSequence: 0 },
      { ticket: "gone", fence: 3, action: "abandon", nextSequence: 0 },
      { ticket: "stale", fence: 4, action: "cancel", nextSequence: 0 },
    ]);
    expect(welcome.watch).toEqual([]);
    expect(welcome.delivered).toEqual([]);
  });

  it("watches every abandoned process with a known pid, with its start time and boot id (bug 8), and not those whose pid is unknown", () => {
    const abandoned: AbandonedProcess[] = [
      { ticket: "a", fence: 1, process: { pid: 10, startTime: 5, bootId: "boot-1" }, killRequested: false },
      { ticket: "b", fence: 2, process: { pid: 11 }, killRequested: false },
      { ticket: "c", fence: 3, process: null, killRequested: false },
    ];
    expect(planWelcome(machine("m1"), [], abandoned).watch).toEqual([
      { ticket: "a", fence: 1, pid: 10, startTime: 5, bootId: "boot-1" },
      { ticket: "b", fence: 2, pid: 11 },
    ]);
  });

  it("carries a kill asked for while no runner was connected (bug 7): on the abandon answer and the watch entry, and marks it delivered once", () => {
    const abandoned: AbandonedProcess[] = [
      { ticket: "a", fence: 1, process: { pid: 10 }, killRequested: true },
      { ticket: "b", fence: 2, process: { pid: 11 }, killRequested: true },
      { ticket: "c", fence: 3, process: null, killRequested: true },
    ];
    const welcome = planWelcome(machine("m1"), [{ ticket: "a", fence: 1, stored: "abandoned" }], abandoned);
    expect(welcome.resume).toEqual([{ ticket: "a", fence: 1, action: "abandon", nextSequence: 0, killProcess: true }]);
    expect(welcome.watch).toEqual([
      { ticket: "a", fence: 1, pid: 10, kill: true },
      { ticket: "b", fence: 2, pid: 11, kill: true },
    ]);
    // c's process is not known yet: its kill waits for a welcome that can carry it.
    expect(welcome.delivered).toEqual([
      { type: "kill_delivered", ticket: "a", fence: 1, pid: null },
      { type: "kill_delivered", ticket: "b", fence: 2, pid: 11 },
    ]);
  });

  it("watches at most the protocol's 10,000 processes", () => {
    const abandoned: AbandonedProcess[] = Array.from({ length: 10_005 }, (_, i) => ({ ticket: `t${i}`, fence: 1, process: { pid: i + 1 }, killRequested: false }));
    expect(planWelcome(machine("m1"), [], abandoned).watch).toHaveLength(10_000);
  });
});
