/**
 * Cancel and abandon in the machine core: `(state, event) → {changes, effects}` for the `cancel`,
 * `abandon` and abandon-deadline `tick` events (docs/api.md, "Cancel", "Abandon", "Exit codes"). Each test
 * drives a real MachineState and asserts the exact changes and effects, then the state they leave.
 */
import { describe, expect, it } from "vitest";
import { abandonedLine, nextDeadline, restoreState, type Change, type Decision } from "../../control-plane/machine/core/machine-core.js";
import { exitCodeFor } from "../../shared/exit-codes.js";
import {
  T0,
  abandon,
  cancel,
  completions,
  connect,
  disconnect,
  dispatches,
  exit,
  grants,
  logs,
  machine,
  mutexView,
  row,
  script,
  snapshot,
  start,
  tick,
} from "./core-fixtures.js";

const MACHINE = "web-01";
/** The contract's wording (docs/api.md, "Abandon"), spelled out so a change to abandonedLine cannot hide. */
const CONTRACT_LINE = "The control plane has abandoned this script. The underlying process may still be running on machine web-01.";
const CANCELLED_BEFORE_RUN = "Cancelled before it ran; the script never started.";
const ABANDONED_BEFORE_RUN = "Abandoned before it ran; the script never started.";
const CANCEL_REQUESTED = "Cancellation requested; asking the runner to stop the process tree.";
const OVERDUE = "The script was still running when the abandon deadline set by its cancel passed; abandoning it.";

const OVERDUE_REASON = "still running when the abandon deadline set by its cancel passed";

const EMPTY: Decision = { changes: [], effects: [] };

/** The audit event of a request by the fixtures' requester (the server token, no reason), and its log line. */
function requested(action: "cancel" | "abandon" | "kill-requested", ticket: string, at: number, sequence: number, seq = 1): Change[] {
  const what = action === "cancel" ? "Cancel" : action === "abandon" ? "Abandon" : "Kill of its process tree";
  return [
    { type: "audit", seq, ticket, action, actor: "server", reason: null, at },
    { type: "log", ticket, text: `${what} requested by server`, at, sequence },
  ];
}

describe("abandonedLine", () => {
  it("is the contract's sentence naming the machine", () => {
    expect(abandonedLine(MACHINE)).toBe(CONTRACT_LINE);
  });
});

describe("cancel of a pending script", () => {
  it("completes a waiting script as cancelled (-43) with a log line and takes it out of the queue", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    start(state, "c");
    const decision = cancel(state, "c", null, T0 + 5);
    expect(decision).toEqual({
      changes: [
        ...requested("cancel", "c", T0 + 5, 1),
        { type: "log", ticket: "c", text: CANCELLED_BEFORE_RUN, at: T0 + 5, sequence: 2 },
        { type: "completed", ticket: "c", reason: { kind: "cancelled" }, at: T0 + 5 },
      ],
      effects: [{ type: "notify", ticket: "c" }],
    });
    expect(exitCodeFor({ kind: "cancelled" })).toBe(-43);
    expect(state.scripts.has("c")).toBe(false);
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: ["b"] });
  });

  it("completes a waiting script at once even when the cancel asks for an abandon deadline", () => {
    const state = machine(MACHINE);
    start(state, "a");
    start(state, "b");
    const decision = cancel(state, "b", 5000, T0 + 1);
    expect(decision).toEqual({
      changes: [
        ...requested("cancel", "b", T0 + 1, 1),
        { type: "log", ticket: "b", text: CANCELLED_BEFORE_RUN, at: T0 + 1, sequence: 2 },
        { type: "completed", ticket: "b", reason: { kind: "cancelled" }, at: T0 + 1 },
      ],
      effects: [{ type: "notify", ticket: "b" }],
    });
    expect(nextDeadline(state)).toBeNull();
  });

  it("lets the compatible followers through when the cancelled waiter headed the queue, and tells the new head what it waits for", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "s0", { mode: "shared" });
    start(state, "x");
    start(state, "s1", { mode: "shared" });
    start(state, "s2", { mode: "shared" });
    start(state, "x2", { taskId: "T-x2" });
    const decision = cancel(state, "x", null, T0 + 10);
    expect(decision).toEqual({
      changes: [
        ...requested("cancel", "x", T0 + 10, 1),
        { type: "log", ticket: "x", text: CANCELLED_BEFORE_RUN, at: T0 + 10, sequence: 2 },
        { type: "completed", ticket: "x", reason: { kind: "cancelled" }, at: T0 + 10 },
        { type: "granted", ticket: "s1", at: T0 + 10 },
        { type: "dispatched", ticket: "s1", fence: 2, runnerId: "r1", startedAt: T0 + 10 },
        { type: "granted", ticket: "s2", at: T0 + 10 },
        { type: "dispatched", ticket: "s2", fence: 3, runnerId: "r1", startedAt: T0 + 10 },
        { type: "log", ticket: "x2", text: 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by s0, s1, s2.', at: T0 + 10, sequence: 1 },
      ],
      effects: [
        { type: "notify", ticket: "x" },
        { type: "dispatch", ticket: "s1", fence: 2 },
        { type: "notify", ticket: "s1" },
        { type: "dispatch", ticket: "s2", fence: 3 },
        { type: "notify", ticket: "s2" },
      ],
    });
    expect(mutexView(state)).toEqual({ holders: [["s0", "shared"], ["s1", "shared"], ["s2", "shared"]], waiting: ["x2"] });
  });

  it("completes a granted script that waits for a runner and releases the mutex to the next waiter", () => {
    const state = machine(MACHINE);
    start(state, "a");
    start(state, "b");
    const decision = cancel(state, "a", null, T0 + 3);
    expect(decision).toEqual({
      changes: [
        ...requested("cancel", "a", T0 + 3, 0),
        { type: "log", ticket: "a", text: CANCELLED_BEFORE_RUN, at: T0 + 3, sequence: 1 },
        { type: "completed", ticket: "a", reason: { kind: "cancelled" }, at: T0 + 3 },
        { type: "granted", ticket: "b", at: T0 + 3 },
      ],
      effects: [{ type: "notify", ticket: "a" }],
    });
    expect(script(state, "b")).toMatchObject({ state: "pending", granted: true, fence: null });
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: [] });
    expect(dispatches(connect(state, "r1"))).toEqual([["b", 1]]);
  });

  it("drops the mutex from the state when the cancelled script was its only user", () => {
    const state = machine(MACHINE);
    start(state, "a", { mutexName: "Solo" });
    cancel(state, "a");
    expect(state.mutexes.size).toBe(0);
    expect(state.scripts.size).toBe(0);
  });
});

describe("cancel of a running script", () => {
  it("asks the connected runner to stop it with a cancel effect carrying its fence and records cancel_requested", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "other", { mutexName: "Other" });
    start(state, "a");
    expect(script(state, "a").fence).toBe(2);
    const decision = cancel(state, "a", null, T0 + 20);
    expect(decision).toEqual({
      changes: [
        ...requested("cancel", "a", T0 + 20, 0),
        { type: "cancel_requested", ticket: "a", abandonDeadline: null },
        { type: "log", ticket: "a", text: CANCEL_REQUESTED, at: T0 + 20, sequence: 1 },
      ],
      effects: [{ type: "cancel", ticket: "a", fence: 2 }],
    });
    expect(script(state, "a")).toMatchObject({ state: "running", fence: 2, cancelRequested: true, abandonDeadline: null });
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: [] });
    expect(nextDeadline(state)).toBeNull();
  });

  it("records the cancel but emits no cancel effect while no runner is connected", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    expect(cancel(state, "a", null, T0 + 20)).toEqual({
      changes: [
        ...requested("cancel", "a", T0 + 20, 0),
        { type: "cancel_requested", ticket: "a", abandonDeadline: null },
        { type: "log", ticket: "a", text: CANCEL_REQUESTED, at: T0 + 20, sequence: 1 },
      ],
      effects: [],
    });
    expect(script(state, "a")).toMatchObject({ state: "running", cancelRequested: true });
  });

  it("sends the cancel effect again on a second cancel without a second log line or change", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", null, T0 + 1);
    const before = snapshot(state);
    expect(cancel(state, "a", null, T0 + 2)).toEqual({ changes: [], effects: [{ type: "cancel", ticket: "a", fence: 1 }] });
    expect(snapshot(state)).toEqual(before);
  });

  it("answers a second cancel with an empty decision while no runner is connected", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a");
    disconnect(state);
    expect(cancel(state, "a", null, T0 + 2)).toEqual(EMPTY);
  });

  it("keeps the mutex until the runner reports the exit, then completes with the runner's reason and grants the next waiter", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    cancel(state, "a");
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: ["b"] });
    const decision = exit(state, "a", 1, { kind: "cancelled" }, T0 + 40);
    expect(decision).toEqual({
      changes: [
        { type: "completed", ticket: "a", reason: { kind: "cancelled" }, at: T0 + 40 },
        { type: "granted", ticket: "b", at: T0 + 40 },
        { type: "dispatched", ticket: "b", fence: 2, runnerId: "r1", startedAt: T0 + 40 },
      ],
      effects: [
        { type: "notify", ticket: "a" },
        { type: "dispatch", ticket: "b", fence: 2 },
        { type: "notify", ticket: "b" },
      ],
    });
  });

  it("lets the process's own exit code stand when it exited before the cancel took effect", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", 5000);
    expect(exit(state, "a", 1, { kind: "exited", code: 7 }, T0 + 3).changes).toEqual([
      { type: "completed", ticket: "a", reason: { kind: "exited", code: 7 }, at: T0 + 3 },
    ]);
    expect(nextDeadline(state)).toBeNull();
    expect(tick(state, T0 + 5000)).toEqual(EMPTY);
  });
});

describe("cancel with abandonAfterMs", () => {
  it("sets abandonDeadline to now + abandonAfterMs, says so in the log, and nextDeadline returns it", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    const decision = cancel(state, "a", 5000, T0 + 100);
    expect(decision).toEqual({
      changes: [
        ...requested("cancel", "a", T0 + 100, 0),
        { type: "cancel_requested", ticket: "a", abandonDeadline: T0 + 5100 },
        { type: "log", ticket: "a", text: `${CANCEL_REQUESTED} It will be abandoned if it is still running after 5000 ms.`, at: T0 + 100, sequence: 1 },
      ],
      effects: [{ type: "cancel", ticket: "a", fence: 1 }],
    });
    expect(script(state, "a")).toMatchObject({ cancelRequested: true, abandonDeadline: T0 + 5100 });
    expect(nextDeadline(state)).toBe(T0 + 5100);
  });

  it("does not postpone the abandon deadline on a later cancel with a longer abandonAfterMs", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", 5000, T0);
    expect(cancel(state, "a", 10_000, T0 + 10)).toEqual({ changes: [], effects: [{ type: "cancel", ticket: "a", fence: 1 }] });
    expect(script(state, "a").abandonDeadline).toBe(T0 + 5000);
    expect(nextDeadline(state)).toBe(T0 + 5000);
  });

  it("does not clear the abandon deadline on a later cancel without abandonAfterMs", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", 5000, T0);
    expect(cancel(state, "a", null, T0 + 10)).toEqual({ changes: [], effects: [{ type: "cancel", ticket: "a", fence: 1 }] });
    expect(nextDeadline(state)).toBe(T0 + 5000);
  });

  it("brings the abandon deadline forward on a later cancel with a shorter abandonAfterMs, recording that cancel but without a second cancellation line", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", 5000, T0);
    expect(cancel(state, "a", 1000, T0 + 10)).toEqual({
      changes: [...requested("cancel", "a", T0 + 10, 2, 2), { type: "cancel_requested", ticket: "a", abandonDeadline: T0 + 1010 }],
      effects: [{ type: "cancel", ticket: "a", fence: 1 }],
    });
    expect(script(state, "a").abandonDeadline).toBe(T0 + 1010);
    expect(nextDeadline(state)).toBe(T0 + 1010);
  });

  it("sets an abandon deadline on a later cancel when the first cancel had none", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", null, T0);
    expect(cancel(state, "a", 300, T0 + 50)).toEqual({
      changes: [...requested("cancel", "a", T0 + 50, 2, 2), { type: "cancel_requested", ticket: "a", abandonDeadline: T0 + 350 }],
      effects: [{ type: "cancel", ticket: "a", fence: 1 }],
    });
    expect(nextDeadline(state)).toBe(T0 + 350);
  });

  it("makes nextDeadline the earlier of an abandon deadline and a waiter's mutex deadline", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b", { mutexTimeoutMs: 900 });
    start(state, "other", { mutexName: "Other" });
    cancel(state, "a", 500);
    expect(nextDeadline(state)).toBe(T0 + 500);
    start(state, "c", { mutexName: "Other", mutexTimeoutMs: 200 });
    expect(nextDeadline(state)).toBe(T0 + 200);
  });

  it("drops the abandon deadline from nextDeadline once the script exits", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", 500);
    exit(state, "a", 1, { kind: "cancelled" });
    expect(nextDeadline(state)).toBeNull();
  });
});

describe("tick past an abandon deadline", () => {
  it("does nothing one millisecond before the abandon deadline", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    cancel(state, "a", 5000);
    const before = snapshot(state);
    expect(tick(state, T0 + 4999)).toEqual(EMPTY);
    expect(snapshot(state)).toEqual(before);
  });

  it("abandons the script at its deadline (-48) and grants and dispatches the next waiter in the same decision", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    start(state, "c");
    cancel(state, "a", 5000);
    const decision = tick(state, T0 + 5000);
    expect(decision).toEqual({
      changes: [
        { type: "audit", seq: 2, ticket: "a", action: "auto-abandon", actor: "control-plane", reason: OVERDUE_REASON, at: T0 + 5000 },
        { type: "log", ticket: "a", text: OVERDUE, at: T0 + 5000, sequence: 2 },
        { type: "log", ticket: "a", text: CONTRACT_LINE, at: T0 + 5000, sequence: 3 },
        { type: "abandoned", ticket: "a", fence: 1, at: T0 + 5000, processes: [], killRequested: false },
        { type: "completed", ticket: "a", reason: { kind: "abandoned" }, at: T0 + 5000 },
        { type: "granted", ticket: "b", at: T0 + 5000 },
        { type: "dispatched", ticket: "b", fence: 2, runnerId: "r1", startedAt: T0 + 5000 },
        { type: "log", ticket: "c", text: 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by b.', at: T0 + 5000, sequence: 1 },
      ],
      effects: [
        { type: "abandon", ticket: "a", fence: 1, killProcess: false },
        { type: "notify", ticket: "a" },
        { type: "dispatch", ticket: "b", fence: 2 },
        { type: "notify", ticket: "b" },
      ],
    });
    expect(exitCodeFor({ kind: "abandoned" })).toBe(-48);
    expect(logs(decision).filter(([t, text]) => t === "a" && text === CONTRACT_LINE)).toHaveLength(1);
    expect(state.scripts.has("a")).toBe(false);
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: ["c"] });
    expect(nextDeadline(state)).toBeNull();
  });

  it("abandons at a late tick well after the deadline, once", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", 100);
    expect(completions(tick(state, T0 + 60_000))).toEqual([["a", "abandoned"]]);
    expect(tick(state, T0 + 60_001)).toEqual(EMPTY);
    expect(state.mutexes.size).toBe(0);
  });

  it("abandons without an abandon effect while no runner is connected, and still grants the next waiter", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    cancel(state, "a", 1000);
    disconnect(state);
    const decision = tick(state, T0 + 1000);
    expect(decision).toEqual({
      changes: [
        { type: "audit", seq: 2, ticket: "a", action: "auto-abandon", actor: "control-plane", reason: OVERDUE_REASON, at: T0 + 1000 },
        { type: "log", ticket: "a", text: OVERDUE, at: T0 + 1000, sequence: 2 },
        { type: "log", ticket: "a", text: CONTRACT_LINE, at: T0 + 1000, sequence: 3 },
        { type: "abandoned", ticket: "a", fence: 1, at: T0 + 1000, processes: [], killRequested: false },
        { type: "completed", ticket: "a", reason: { kind: "abandoned" }, at: T0 + 1000 },
        { type: "granted", ticket: "b", at: T0 + 1000 },
      ],
      effects: [{ type: "notify", ticket: "a" }],
    });
    expect(script(state, "b")).toMatchObject({ state: "pending", granted: true, fence: null });
  });

  it("abandons every overdue script in one tick, earliest deadline first, and leaves the others running", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a", { mutexName: "one" });
    start(state, "b", { mutexName: "two" });
    start(state, "c", { mutexName: "three" });
    cancel(state, "a", 300);
    cancel(state, "b", 100);
    cancel(state, "c", 900);
    const decision = tick(state, T0 + 500);
    expect(completions(decision)).toEqual([
      ["b", "abandoned"],
      ["a", "abandoned"],
    ]);
    expect(decision.effects.filter((e) => e.type === "abandon")).toEqual([
      { type: "abandon", ticket: "b", fence: 2, killProcess: false },
      { type: "abandon", ticket: "a", fence: 1, killProcess: false },
    ]);
    expect([...state.scripts.keys()]).toEqual(["c"]);
    expect(nextDeadline(state)).toBe(T0 + 900);
  });

  it("abandons an overdue script before timing out a waiter whose mutex deadline came later, in one late tick", () => {
    // a's abandon deadline (T0+100) comes before b's mutex deadline (T0+300); one late tick covers both.
    // At T0+100 a is abandoned and b is granted, so b must run, not time out (as for expiring waiters).
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b", { mutexTimeoutMs: 300 });
    cancel(state, "a", 100);
    const decision = tick(state, T0 + 500);
    expect(completions(decision)).toEqual([["a", "abandoned"]]);
    expect(grants(decision)).toEqual(["b"]);
    expect(dispatches(decision)).toEqual([["b", 2]]);
    expect(script(state, "b")).toMatchObject({ state: "running", granted: true, fence: 2 });
  });
});

describe("abandon", () => {
  it("abandons a running script at once (-48) and grants and dispatches the next waiter in the same decision", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b", { taskId: "T-b" });
    const decision = abandon(state, "a", false, T0 + 7);
    expect(decision).toEqual({
      changes: [
        ...requested("abandon", "a", T0 + 7, 0),
        { type: "log", ticket: "a", text: CONTRACT_LINE, at: T0 + 7, sequence: 1 },
        { type: "abandoned", ticket: "a", fence: 1, at: T0 + 7, processes: [], killRequested: false },
        { type: "completed", ticket: "a", reason: { kind: "abandoned" }, at: T0 + 7 },
        { type: "granted", ticket: "b", at: T0 + 7 },
        { type: "dispatched", ticket: "b", fence: 2, runnerId: "r1", startedAt: T0 + 7 },
      ],
      effects: [
        { type: "abandon", ticket: "a", fence: 1, killProcess: false },
        { type: "notify", ticket: "a" },
        { type: "dispatch", ticket: "b", fence: 2 },
        { type: "notify", ticket: "b" },
      ],
    });
    expect(state.scripts.has("a")).toBe(false);
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: [] });
  });

  it("passes killProcess true on to the abandon effect", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    expect(abandon(state, "a", true).effects).toEqual([
      { type: "abandon", ticket: "a", fence: 1, killProcess: true },
      { type: "notify", ticket: "a" },
    ]);
  });

  it("grants every shared waiter up to the next exclusive one when an exclusive holder is abandoned", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "x1");
    start(state, "s1", { mode: "shared" });
    start(state, "s2", { mode: "shared" });
    start(state, "x2");
    const decision = abandon(state, "x1");
    expect(grants(decision)).toEqual(["s1", "s2"]);
    expect(dispatches(decision)).toEqual([
      ["s1", 2],
      ["s2", 3],
    ]);
    expect(mutexView(state)).toEqual({ holders: [["s1", "shared"], ["s2", "shared"]], waiting: ["x2"] });
  });

  it("releases the mutex and grants the next waiter even with no runner connected, which stays pending until one connects", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    disconnect(state);
    const decision = abandon(state, "a", true, T0 + 9);
    expect(decision).toEqual({
      changes: [
        ...requested("abandon", "a", T0 + 9, 0),
        ...requested("kill-requested", "a", T0 + 9, 1, 2),
        { type: "log", ticket: "a", text: CONTRACT_LINE, at: T0 + 9, sequence: 2 },
        { type: "abandoned", ticket: "a", fence: 1, at: T0 + 9, processes: [], killRequested: true },
        { type: "completed", ticket: "a", reason: { kind: "abandoned" }, at: T0 + 9 },
        { type: "granted", ticket: "b", at: T0 + 9 },
      ],
      effects: [{ type: "notify", ticket: "a" }],
    });
    expect(script(state, "b")).toMatchObject({ state: "pending", granted: true, fence: null });
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: [] });
    expect(dispatches(connect(state, "r1", [{ ticket: "a", fence: 1, stored: "abandoned" }]))).toEqual([["b", 2]]);
  });

  it("changes nothing on a second abandon", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    abandon(state, "a");
    const before = snapshot(state);
    expect(abandon(state, "a")).toEqual(EMPTY);
    expect(abandon(state, "a", true)).toEqual(EMPTY);
    expect(snapshot(state)).toEqual(before);
  });

  it("completes a waiting script as cancelled (-43) with a line saying it never started, without an abandoned change or effect", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    expect(abandon(state, "b", true, T0 + 4)).toEqual({
      changes: [
        ...requested("abandon", "b", T0 + 4, 1),
        { type: "log", ticket: "b", text: ABANDONED_BEFORE_RUN, at: T0 + 4, sequence: 2 },
        { type: "completed", ticket: "b", reason: { kind: "cancelled" }, at: T0 + 4 },
      ],
      effects: [{ type: "notify", ticket: "b" }],
    });
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: [] });
  });

  it("completes a granted script that waits for a runner as cancelled and releases the mutex to the next waiter", () => {
    const state = machine(MACHINE);
    start(state, "a");
    start(state, "b");
    expect(abandon(state, "a", false, T0 + 4)).toEqual({
      changes: [
        ...requested("abandon", "a", T0 + 4, 0),
        { type: "log", ticket: "a", text: ABANDONED_BEFORE_RUN, at: T0 + 4, sequence: 1 },
        { type: "completed", ticket: "a", reason: { kind: "cancelled" }, at: T0 + 4 },
        { type: "granted", ticket: "b", at: T0 + 4 },
      ],
      effects: [{ type: "notify", ticket: "a" }],
    });
  });

  it("ignores an exit reported with the abandoned fence after the abandon, and the mutex stays with the next holder", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    abandon(state, "a");
    const before = snapshot(state);
    expect(exit(state, "a", 1, { kind: "exited", code: 0 }, T0 + 50)).toEqual(EMPTY);
    expect(exit(state, "a", 1, { kind: "cancelled" }, T0 + 51)).toEqual(EMPTY);
    expect(snapshot(state)).toEqual(before);
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: [] });
  });

  it("abandons a cancel-requested script before its deadline and leaves no deadline behind", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    cancel(state, "a", 5000);
    expect(completions(abandon(state, "a", false, T0 + 10))).toEqual([["a", "abandoned"]]);
    expect(nextDeadline(state)).toBeNull();
    expect(tick(state, T0 + 5000)).toEqual(EMPTY);
  });
});

describe("cancel and abandon of a complete or unknown ticket", () => {
  it("changes nothing when cancelling a completed ticket", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    exit(state, "a", 1);
    const before = snapshot(state);
    expect(cancel(state, "a")).toEqual(EMPTY);
    expect(cancel(state, "a", 1000)).toEqual(EMPTY);
    expect(snapshot(state)).toEqual(before);
    expect(nextDeadline(state)).toBeNull();
  });

  it("changes nothing when cancelling an unknown ticket", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    const before = snapshot(state);
    expect(cancel(state, "nobody", 1000)).toEqual(EMPTY);
    expect(snapshot(state)).toEqual(before);
  });

  it("changes nothing when abandoning a completed or unknown ticket", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    exit(state, "a", 1, { kind: "exited", code: 3 });
    const before = snapshot(state);
    expect(abandon(state, "a", true)).toEqual(EMPTY);
    expect(abandon(state, "nobody")).toEqual(EMPTY);
    expect(snapshot(state)).toEqual(before);
  });

  it("changes nothing when cancelling a script that was already abandoned", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    abandon(state, "a");
    expect(cancel(state, "a", 10)).toEqual(EMPTY);
  });
});

describe("runner_connected with a cancel-requested script", () => {
  it("continues a listed cancel-requested script under its fence and sends the cancel again after the resume", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    cancel(state, "a", 5000, T0 + 10);
    const decision = connect(state, "r1", [{ ticket: "a", fence: 1, stored: "none" }], T0 + 50);
    expect(decision).toEqual({
      changes: [],
      effects: [
        { type: "welcome", resume: [{ ticket: "a", fence: 1, action: "continue", nextSequence: 0 }], watch: [] },
        { type: "cancel", ticket: "a", fence: 1 },
      ],
    });
    expect(script(state, "a")).toMatchObject({ state: "running", fence: 1, cancelRequested: true, abandonDeadline: T0 + 5010 });
    expect(nextDeadline(state)).toBe(T0 + 5010);
  });

  it("sends no cancel for a listed script that was not cancelled", () => {
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b", { mutexName: "Other" });
    cancel(state, "b");
    disconnect(state);
    const decision = connect(state, "r1", [
      { ticket: "a", fence: 1, stored: "none" },
      { ticket: "b", fence: 2, stored: "none" },
    ]);
    expect(decision.effects).toEqual([
      { type: "welcome", resume: [
          { ticket: "a", fence: 1, action: "continue", nextSequence: 0 },
          { ticket: "b", fence: 2, action: "continue", nextSequence: 0 },
        ], watch: [] },
      { type: "cancel", ticket: "b", fence: 2 },
    ]);
  });

  it("completes as cancelled, and does not run, a cancel-requested script that the same runner never received", () => {
    // The same runner process does not list the dispatch, so the script never started; the cancel came
    // first. Re-dispatching it would run a script the caller cancelled, with no cancel sent after it.
    const state = machine(MACHINE);
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    disconnect(state);
    cancel(state, "a", null, T0 + 10);
    const decision = connect(state, "r1", [], T0 + 50);
    expect(completions(decision)).toEqual([["a", "cancelled"]]);
    expect(dispatches(decision)).toEqual([["b", 2]]);
  });
});

describe("restoreState with cancel state", () => {
  const rows = [
    row("a", { queueSeq: 1, granted: true, state: "running", fence: 3, runnerId: "r1", startedAt: T0, cancelRequested: true, abandonDeadline: T0 + 5000 }),
    row("b", { queueSeq: 2 }),
  ];

  it("keeps cancelRequested and the abandon deadline so that a tick after a restart still abandons", () => {
    const state = restoreState(MACHINE, rows.map((r) => ({ ...r })), { nextFence: 4, nextQueueSeq: 3 });
    expect(script(state, "a")).toMatchObject({ cancelRequested: true, abandonDeadline: T0 + 5000 });
    expect(nextDeadline(state)).toBe(T0 + 5000);
    expect(tick(state, T0 + 4999)).toEqual(EMPTY);
    const decision = tick(state, T0 + 5000);
    expect(decision).toEqual({
      changes: [
        { type: "audit", seq: 1, ticket: "a", action: "auto-abandon", actor: "control-plane", reason: OVERDUE_REASON, at: T0 + 5000 },
        { type: "log", ticket: "a", text: OVERDUE, at: T0 + 5000, sequence: 0 },
        { type: "log", ticket: "a", text: CONTRACT_LINE, at: T0 + 5000, sequence: 1 },
        { type: "abandoned", ticket: "a", fence: 3, at: T0 + 5000, processes: [], killRequested: false },
        { type: "completed", ticket: "a", reason: { kind: "abandoned" }, at: T0 + 5000 },
        { type: "granted", ticket: "b", at: T0 + 5000 },
      ],
      effects: [{ type: "notify", ticket: "a" }],
    });
    const connected = connect(state, "r1", [{ ticket: "a", fence: 3, stored: "abandoned" }], T0 + 6000);
    expect(connected.effects).toEqual([
      { type: "welcome", resume: [{ ticket: "a", fence: 3, action: "abandon", nextSequence: 0 }], watch: [] },
      { type: "dispatch", ticket: "b", fence: 4 },
      { type: "notify", ticket: "b" },
    ]);
  });

  it("sends the cancel again when the runner reconnects after a restart and lists the script under its fence", () => {
    const state = restoreState(MACHINE, rows.map((r) => ({ ...r })), { nextFence: 4, nextQueueSeq: 3 });
    expect(connect(state, "r1", [{ ticket: "a", fence: 3, stored: "none" }], T0 + 10)).toEqual({
      changes: [],
      effects: [
        { type: "welcome", resume: [{ ticket: "a", fence: 3, action: "continue", nextSequence: 0 }], watch: [] },
        { type: "cancel", ticket: "a", fence: 3 },
      ],
    });
  });
});
