/**
 * The runner's reports as decisions of the pure core: fencing first (a report changes a script only under the
 * fence of its current dispatch), then `started` (a lazy change), `output` (planned, acknowledged, or a gap that
 * closes the connection), `exit` (after all of its output; a lost outcome lists its survivors as abandoned in the
 * same decision that releases the mutex) and `abandoned_exit`.
 */
import { describe, expect, it } from "vitest";
import { LAZY_CHANGES, type Decision, type MachineState } from "../../control-plane/machine/core/machine-core.js";
import { onRunnerReport, reasonFromOutcome, type RunnerReport } from "../../control-plane/machine/core/runner-reports.js";
import { exitCodeFor } from "../../shared/exit-codes.js";
import { CloseCode } from "../../shared/protocol.js";
import { T0, audits, connect, disconnect, machine, mutexView, script, snapshot, start, withoutAudits } from "./core-fixtures.js";

const OCCURRED = "2026-12-02T08:00:00.000Z";
const CAP = 1024 * 1024;

function report(state: MachineState, message: RunnerReport, now = T0): Decision {
  return onRunnerReport(state, message, { now, maxOutputBytes: CAP });
}

/** A machine `web-01` with `a` running under fence 1 and `b` waiting behind it. */
function running(): MachineState {
  const state = machine("web-01");
  connect(state, "r1");
  start(state, "a");
  start(state, "b");
  return state;
}

const lines = (ticket: string, fence: number, sequence: number, texts: string[]): RunnerReport => ({
  type: "output",
  ticket,
  fence,
  sequence,
  lines: texts.map((text) => ({ source: "stdout", text, occurred: OCCURRED })),
});

describe("reasonFromOutcome", () => {
  it("maps every outcome the runner reports to a completion reason, lost to -46", () => {
    expect(exitCodeFor(reasonFromOutcome({ kind: "exited", code: 3 }))).toBe(3);
    expect(exitCodeFor(reasonFromOutcome({ kind: "signaled", signal: "SIGSEGV", number: 11 }))).toBe(139);
    expect(exitCodeFor(reasonFromOutcome({ kind: "failed", message: "no shell" }))).toBe(-41);
    expect(exitCodeFor(reasonFromOutcome({ kind: "cancelled", signals: ["SIGTERM"] }))).toBe(-43);
    expect(exitCodeFor(reasonFromOutcome({ kind: "lost", signals: [], survivors: [] }))).toBe(-46);
  });
});

describe("started", () => {
  it("records the process of the current dispatch as a lazy change, once", () => {
    const state = running();
    const decision = report(state, { type: "started", ticket: "a", fence: 1, pid: 42, startTime: 7, bootId: "b1" });
    expect(decision).toEqual({ changes: [{ type: "process", ticket: "a", fence: 1, process: { pid: 42, startTime: 7, bootId: "b1" } }], effects: [] });
    expect(decision.changes.every((c) => LAZY_CHANGES.has(c.type))).toBe(true);
    expect(script(state, "a").process).toEqual({ pid: 42, startTime: 7, bootId: "b1" });
    // The runner repeats started after a reconnect until an ack shows it arrived: nothing new to write.
    expect(report(state, { type: "started", ticket: "a", fence: 1, pid: 42, startTime: 7, bootId: "b1" })).toEqual({ changes: [], effects: [] });
  });

  it("gives a dispatch that is no longer current (abandoned before its started arrived) its process in the abandoned list", () => {
    const state = running();
    const before = snapshot(state);
    expect(report(state, { type: "started", ticket: "a", fence: 9, pid: 42 })).toEqual({
      changes: [{ type: "abandoned_process", ticket: "a", fence: 9, process: { pid: 42 } }],
      effects: [],
    });
    expect(snapshot(state)).toEqual(before);
  });
});

describe("output", () => {
  it("stores new lines, wakes waiting readers and acknowledges up to the last line", () => {
    const state = running();
    const decision = report(state, lines("a", 1, 0, ["one", "two"]));
    expect(decision.changes).toEqual([
      {
        type: "append",
        ticket: "a",
        first: 0,
        pieces: [{ kind: "lines", lines: [{ source: "stdout", text: "one", occurred: OCCURRED }, { source: "stdout", text: "two", occurred: OCCURRED }] }],
        position: { logNext: 2, runnerNext: 2, logBytes: 6, truncated: false },
      },
    ]);
    expect(decision.effects).toEqual([
      { type: "notify", ticket: "a" },
      { type: "ack", ticket: "a", fence: 1, nextSequence: 2 },
    ]);
  });

  it("acknowledges a pure resend again without storing anything", () => {
    const state = running();
    report(state, lines("a", 1, 0, ["one", "two"]));
    expect(report(state, lines("a", 1, 0, ["one"]))).toEqual({ changes: [], effects: [{ type: "ack", ticket: "a", fence: 1, nextSequence: 2 }] });
  });

  it("closes the connection with OutOfOrder for a gap and stores nothing", () => {
    const state = running();
    const before = snapshot(state);
    expect(report(state, lines("a", 1, 3, ["x"]))).toEqual({
      changes: [],
      effects: [{ type: "close", code: CloseCode.OutOfOrder, reason: "output for a starts at 3, expected 0" }],
    });
    expect(snapshot(state)).toEqual(before);
  });

  it("ignores output of a stale fence, an abandoned script or an unknown ticket: no change, no ack", () => {
    const state = running();
    const before = snapshot(state);
    for (const message of [lines("a", 2, 0, ["x"]), lines("b", 1, 0, ["x"]), lines("zz", 1, 0, ["x"])]) {
      expect(report(state, message)).toEqual({ changes: [], effects: [] });
    }
    expect(snapshot(state)).toEqual(before);
  });
});

describe("exit", () => {
  it("refuses an exit before all of its output with OutOfOrder, and completes nothing", () => {
    const state = running();
    report(state, lines("a", 1, 0, ["one"]));
    expect(report(state, { type: "exit", ticket: "a", fence: 1, lineCount: 2, outcome: { kind: "exited", code: 0 } })).toEqual({
      changes: [],
      effects: [{ type: "close", code: CloseCode.OutOfOrder, reason: "exit for a before all of its output" }],
    });
    expect(script(state, "a").state).toBe("running");
  });

  it("acknowledges a stale or repeated exit so that the runner can forget it, and changes nothing", () => {
    const state = running();
    report(state, { type: "exit", ticket: "a", fence: 1, lineCount: 0, outcome: { kind: "exited", code: 0 } });
    const before = snapshot(state);
    expect(report(state, { type: "exit", ticket: "a", fence: 1, lineCount: 0, outcome: { kind: "exited", code: 0 } })).toEqual({
      changes: [],
      effects: [{ type: "exit_ack", ticket: "a", fence: 1 }],
    });
    expect(snapshot(state)).toEqual(before);
  });

  it("completes the script, grants the next waiter and acknowledges the exit last", () => {
    const state = running();
    const decision = report(state, { type: "exit", ticket: "a", fence: 1, lineCount: 0, outcome: { kind: "exited", code: 5 } });
    expect(decision.changes.filter((c) => c.type === "completed")).toEqual([{ type: "completed", ticket: "a", reason: { kind: "exited", code: 5 }, at: T0 }]);
    expect(decision.effects.at(-1)).toEqual({ type: "exit_ack", ticket: "a", fence: 1 });
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: [] });
  });
});

describe("a lost outcome from a restarted runner (bug 2)", () => {
  /** `a` running under fence 1, continued by a new runner process (r2) after r1 went away. */
  function continued(): MachineState {
    const state = running();
    disconnect(state);
    connect(state, "r2", [{ ticket: "a", fence: 1, stored: "none" }]);
    expect(script(state, "a").state).toBe("running");
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: ["b"] });
    return state;
  }

  it("completes the script with -46 and lists every survivor as abandoned in the decision that releases the mutex and dispatches the next script", () => {
    const state = continued();
    const survivors = [{ pid: 4242, startTime: 9000, bootId: "boot-1" }, { pid: 4300 }];
    const recorded = report(state, { type: "exit", ticket: "a", fence: 1, lineCount: 0, outcome: { kind: "lost", signals: ["SIGTERM", "SIGKILL"], survivors } }, T0 + 50);
    expect(audits(recorded)).toEqual([["a", "runner-lost", "control-plane", "the runner restarted and could not re-attach to this script; 2 of its processes would not die"]]);
    const decision = withoutAudits(recorded);
    const types = decision.changes.map((c) => c.type);
    expect(types).toEqual(["log", "log", "abandoned", "completed", "granted", "dispatched"]);
    expect(decision.changes[2]).toEqual({ type: "abandoned", ticket: "a", fence: 1, at: T0 + 50, processes: survivors, killRequested: false });
    expect(decision.changes[3]).toEqual({ type: "completed", ticket: "a", reason: { kind: "lost" }, at: T0 + 50 });
    expect(exitCodeFor({ kind: "lost" })).toBe(-46);
    expect(decision.changes[1]).toMatchObject({
      type: "log",
      text: "2 processes of this script would not die and may still be running on machine web-01 (pid 4242, 4300); listed as abandoned until the runner sees them exit.",
    });
    expect(decision.effects).toEqual([
      { type: "notify", ticket: "a" },
      { type: "dispatch", ticket: "b", fence: 2 },
      { type: "notify", ticket: "b" },
      { type: "exit_ack", ticket: "a", fence: 1 },
    ]);
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: [] });
  });

  it("lists nothing as abandoned when every process of the lost script died", () => {
    const state = continued();
    const decision = report(state, { type: "exit", ticket: "a", fence: 1, lineCount: 0, outcome: { kind: "lost", signals: ["SIGTERM"], survivors: [] } });
    expect(decision.changes.map((c) => c.type)).toEqual(["audit", "log", "completed", "granted", "dispatched"]);
    expect(audits(decision)).toEqual([["a", "runner-lost", "control-plane", "the runner restarted and could not re-attach to this script"]]);
  });

  it("names at most five survivors in the log line and counts the rest", () => {
    const state = continued();
    const survivors = Array.from({ length: 7 }, (_, i) => ({ pid: 100 + i }));
    const decision = withoutAudits(report(state, { type: "exit", ticket: "a", fence: 1, lineCount: 0, outcome: { kind: "lost", signals: [], survivors } }));
    expect(decision.changes[1]).toMatchObject({ text: expect.stringContaining("(pid 100, 101, 102, 103, 104 and 2 more)") });
    expect(decision.changes[2]).toMatchObject({ type: "abandoned", processes: survivors });
  });
});

describe("abandoned_exit", () => {
  it("removes that one process from the abandoned list and changes nothing else", () => {
    const state = running();
    const before = snapshot(state);
    expect(report(state, { type: "abandoned_exit", ticket: "a", fence: 1, pid: 42 })).toEqual({
      changes: [{ type: "abandoned_exit", ticket: "a", fence: 1, pid: 42 }],
      effects: [],
    });
    expect(snapshot(state)).toEqual(before);
  });
});
