/**
 * The machine core as a pure function: `(state, event) → {changes, effects}`. Each test drives a real
 * MachineState through events and asserts the exact changes and effects, then the state they leave.
 */
import { describe, expect, it } from "vitest";
import {
  abandonedLine,
  emptyState,
  handle,
  nextDeadline,
  restoreState,
  type ActiveScript,
  type Decision,
  type InventoryEntry,
  type MachineEvent,
  type MachineState,
} from "../../control-plane/machine/core/machine-core.js";
import { compatible, isIdle, leaveMutex } from "../../control-plane/machine/core/mutex.js";
import { exitCodeFor, type CompletionReason } from "../../shared/exit-codes.js";
import {
  EXITED_0,
  MUTEX,
  T0,
  audits,
  completions,
  connect,
  disconnect,
  dispatches,
  exit,
  grants,
  logs,
  mutexView,
  prng,
  row,
  script,
  shuffled,
  snapshot,
  start,
  tick,
} from "./core-fixtures.js";

describe("emptyState", () => {
  it("starts with no scripts, no mutexes, no runner and both counters at 1", () => {
    const state = emptyState();
    expect(state.scripts.size).toBe(0);
    expect(state.mutexes.size).toBe(0);
    expect(state.runner).toBeNull();
    expect(state.nextFence).toBe(1);
    expect(state.nextQueueSeq).toBe(1);
  });
});

describe("start", () => {
  it("grants a script on a free mutex but keeps it pending without a dispatch while no runner is connected", () => {
    const state = emptyState();
    const decision = start(state, "a", { taskId: "ServerTasks-1" });
    expect(decision).toEqual({
      changes: [
        {
          type: "insert",
          script: {
            ticket: "a",
            state: "pending",
            mode: "exclusive",
            mutexName: MUTEX,
            taskId: "ServerTasks-1",
            createdAt: T0,
            queueSeq: 1,
            granted: false,
            grantedAt: null,
            mutexDeadline: null,
            fence: null,
            runnerId: null,
            startedAt: null,
            cancelRequested: false,
            abandonDeadline: null,
            runTimeoutMs: 0,
            runTimedOut: false,
            output: { logNext: 0, runnerNext: 0, logBytes: 0, truncated: false },
            process: null,
            runnerRestarts: 0,
          },
        },
        { type: "granted", ticket: "a", at: T0 },
      ],
      effects: [],
    });
    expect(script(state, "a")).toMatchObject({ state: "pending", granted: true, fence: null, runnerId: null });
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: [] });
    expect(state.nextFence).toBe(1);
    expect(state.nextQueueSeq).toBe(2);
  });

  it("records the mutex deadline as now + mutexTimeoutMs in the inserted row", () => {
    const state = emptyState();
    start(state, "holder");
    const decision = start(state, "b", { mutexTimeoutMs: 2500 }, T0 + 7);
    const insert = decision.changes[0];
    expect(insert).toMatchObject({ type: "insert", script: { ticket: "b", queueSeq: 2, createdAt: T0 + 7, mutexDeadline: T0 + 2507 } });
    expect(script(state, "b").mutexDeadline).toBe(T0 + 2507);
  });

  it("waits forever (no deadline) when mutexTimeoutMs is 0", () => {
    const state = emptyState();
    start(state, "holder");
    start(state, "b", { mutexTimeoutMs: 0 });
    expect(script(state, "b").mutexDeadline).toBeNull();
    expect(nextDeadline(state)).toBeNull();
  });

  it("clears the deadline of a script that is granted at once", () => {
    const state = emptyState();
    const decision = start(state, "a", { mutexTimeoutMs: 1000 });
    expect(decision.changes[0]).toMatchObject({ type: "insert", script: { granted: false, mutexDeadline: T0 + 1000 } });
    expect(script(state, "a")).toMatchObject({ granted: true, mutexDeadline: null });
  });

  it("does not let the inserted row alias the live script", () => {
    const state = emptyState();
    const decision = start(state, "a");
    const insert = decision.changes[0];
    if (insert?.type !== "insert") throw new Error("expected an insert first");
    expect(insert.script).not.toBe(script(state, "a"));
    expect(insert.script.granted).toBe(false);
  });

  it("dispatches a granted script at once when a runner is connected", () => {
    const state = emptyState();
    connect(state, "r1");
    const decision = start(state, "a", {}, T0 + 5);
    expect(decision.changes.slice(1)).toEqual([
      { type: "granted", ticket: "a", at: T0 + 5 },
      { type: "dispatched", ticket: "a", fence: 1, runnerId: "r1", startedAt: T0 + 5 },
    ]);
    expect(decision.effects).toEqual([
      { type: "dispatch", ticket: "a", fence: 1 },
      { type: "notify", ticket: "a" },
    ]);
    expect(script(state, "a")).toMatchObject({ state: "running", granted: true, fence: 1, runnerId: "r1", startedAt: T0 + 5 });
  });

  it("gives every dispatch a strictly greater fence", () => {
    const state = emptyState();
    connect(state, "r1");
    expect(dispatches(start(state, "a", { mutexName: "one" }))).toEqual([["a", 1]]);
    expect(dispatches(start(state, "b", { mutexName: "two", mode: "shared" }))).toEqual([["b", 2]]);
    expect(dispatches(start(state, "c", { mutexName: "two", mode: "shared" }))).toEqual([["c", 3]]);
    expect(state.nextFence).toBe(4);
  });

  it("logs a debug line naming the holder ticket and its taskId when a start is blocked", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "t1", { taskId: "ServerTasks-1" });
    const decision = start(state, "t2", {}, T0 + 1);
    expect(decision).toEqual({
      changes: [
        expect.objectContaining({ type: "insert" }),
        {
          type: "log",
          ticket: "t2",
          text: 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by t1 (task ServerTasks-1).',
          at: T0 + 1,
          sequence: 0,
        },
      ],
      effects: [],
    });
    expect(script(state, "t2")).toMatchObject({ state: "pending", granted: false, fence: null });
  });

  it("names the holder by ticket alone when it has no taskId", () => {
    const state = emptyState();
    start(state, "t1");
    expect(logs(start(state, "t2"))).toEqual([["t2", 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by t1.']]);
  });

  it("names both the holder and the waiters ahead when a shared start queues behind a waiting exclusive one", () => {
    const state = emptyState();
    start(state, "s0", { mode: "shared", mutexName: "Deploy", taskId: "T-0" });
    start(state, "x", { mode: "exclusive", mutexName: "Deploy", taskId: "T-x" });
    expect(logs(start(state, "s1", { mode: "shared", mutexName: "Deploy" }))).toEqual([
      ["s1", 'Waiting for the mutex "Deploy" (shared, no isolation): held by s0 (task T-0), queued behind x (task T-x).'],
    ]);
  });

  it("names at most five tickets and counts the rest", () => {
    const state = emptyState();
    for (let i = 1; i <= 7; i++) start(state, `s${i}`, { mode: "shared" });
    expect(logs(start(state, "x"))).toEqual([
      ["x", 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by s1, s2, s3, s4, s5 and 2 more.'],
    ]);
  });

  it("never blocks scripts on different mutex names", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a", { mutexName: "one" });
    const decision = start(state, "b", { mutexName: "two" });
    expect(grants(decision)).toEqual(["b"]);
    expect(dispatches(decision)).toEqual([["b", 2]]);
    expect(mutexView(state, "one")).toEqual({ holders: [["a", "exclusive"]], waiting: [] });
    expect(mutexView(state, "two")).toEqual({ holders: [["b", "exclusive"]], waiting: [] });
  });

  it("grants a shared start next to shared holders", () => {
    const state = emptyState();
    start(state, "s1", { mode: "shared" });
    const decision = start(state, "s2", { mode: "shared" });
    expect(grants(decision)).toEqual(["s2"]);
    expect(logs(decision)).toEqual([]);
    expect(mutexView(state)).toEqual({ holders: [["s1", "shared"], ["s2", "shared"]], waiting: [] });
  });

  it("queues a shared start behind a waiting exclusive one even though the holders are shared", () => {
    const state = emptyState();
    start(state, "s1", { mode: "shared" });
    start(state, "x");
    const decision = start(state, "s2", { mode: "shared" });
    expect(grants(decision)).toEqual([]);
    expect(mutexView(state)).toEqual({ holders: [["s1", "shared"]], waiting: ["x", "s2"] });
  });
});

describe("runner_connected without an inventory", () => {
  it("records the runner and answers with an empty resume", () => {
    const state = emptyState();
    expect(connect(state, "r1")).toEqual({ changes: [], effects: [{ type: "welcome", resume: [], watch: [] }] });
    expect(state.runner).toEqual({ runnerId: "r1", draining: false });
  });

  it("dispatches the scripts granted while no runner was connected, in FIFO order, after the resume", () => {
    const state = emptyState();
    start(state, "a", { mutexName: "one", mode: "shared" }, T0);
    start(state, "b", { mutexName: "two" }, T0 + 1);
    start(state, "c", { mutexName: "one", mode: "shared" }, T0 + 2);
    const decision = connect(state, "r1", [], T0 + 10);
    expect(decision.changes).toEqual([
      { type: "dispatched", ticket: "a", fence: 1, runnerId: "r1", startedAt: T0 + 10 },
      { type: "dispatched", ticket: "b", fence: 2, runnerId: "r1", startedAt: T0 + 10 },
      { type: "dispatched", ticket: "c", fence: 3, runnerId: "r1", startedAt: T0 + 10 },
    ]);
    expect(decision.effects).toEqual([
      { type: "welcome", resume: [], watch: [] },
      { type: "dispatch", ticket: "a", fence: 1 },
      { type: "notify", ticket: "a" },
      { type: "dispatch", ticket: "b", fence: 2 },
      { type: "notify", ticket: "b" },
      { type: "dispatch", ticket: "c", fence: 3 },
      { type: "notify", ticket: "c" },
    ]);
  });

  it("dispatches by queueSeq, not by the order of the scripts map", () => {
    const state = restoreState(
      "m1",
      [
        row("late", { queueSeq: 9, granted: true, mutexName: "one" }),
        row("early", { queueSeq: 2, granted: true, mutexName: "two" }),
        row("middle", { queueSeq: 5, granted: true, mutexName: "three" }),
      ],
      { nextFence: 1, nextQueueSeq: 10 },
    );
    // Reverse the map's insertion order so only an explicit sort can yield FIFO order.
    state.scripts = new Map([...state.scripts.entries()].reverse());
    expect(dispatches(connect(state, "r1"))).toEqual([
      ["early", 1],
      ["middle", 2],
      ["late", 3],
    ]);
  });

  it("does not dispatch scripts that still wait for their mutex", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "b");
    expect(dispatches(connect(state, "r1"))).toEqual([["a", 1]]);
    expect(script(state, "b")).toMatchObject({ state: "pending", granted: false, fence: null });
  });
});

describe("runner_disconnected", () => {
  it("forgets the runner but leaves running scripts running", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    expect(disconnect(state)).toEqual({ changes: [], effects: [] });
    expect(state.runner).toBeNull();
    expect(script(state, "a")).toMatchObject({ state: "running", fence: 1, runnerId: "r1" });
  });

  it("keeps a script granted after the disconnect pending until a runner connects", () => {
    const state = emptyState();
    connect(state, "r1");
    disconnect(state);
    const decision = start(state, "a");
    expect(dispatches(decision)).toEqual([]);
    expect(script(state, "a")).toMatchObject({ state: "pending", granted: true });
    expect(dispatches(connect(state, "r1", [], T0 + 3))).toEqual([["a", 1]]);
  });
});

describe("exited", () => {
  it("completes the script with the right fence, releases its mutex and grants and dispatches the next waiter", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a", { taskId: "T-a" });
    start(state, "b", { taskId: "T-b" });
    start(state, "c");
    const decision = exit(state, "a", 1, { kind: "exited", code: 3 }, T0 + 100);
    expect(decision).toEqual({
      changes: [
        { type: "completed", ticket: "a", reason: { kind: "exited", code: 3 }, at: T0 + 100 },
        { type: "granted", ticket: "b", at: T0 + 100 },
        { type: "dispatched", ticket: "b", fence: 2, runnerId: "r1", startedAt: T0 + 100 },
        {
          type: "log",
          ticket: "c",
          text: 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by b (task T-b).',
          at: T0 + 100,
          sequence: 1,
        },
      ],
      effects: [
        { type: "notify", ticket: "a" },
        { type: "dispatch", ticket: "b", fence: 2 },
        { type: "notify", ticket: "b" },
      ],
    });
    expect(state.scripts.has("a")).toBe(false);
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: ["c"] });
  });

  it("passes the runner's reason through unchanged", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    const reason: CompletionReason = { kind: "signaled", signal: "SIGSEGV", number: 11 };
    expect(exit(state, "a", 1, reason).changes).toEqual([{ type: "completed", ticket: "a", reason, at: T0 }]);
  });

  it("grants a waiter while no runner is connected but leaves it pending", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    disconnect(state);
    const decision = exit(state, "a", 1);
    expect(grants(decision)).toEqual(["b"]);
    expect(dispatches(decision)).toEqual([]);
    expect(script(state, "b")).toMatchObject({ state: "pending", granted: true, fence: null });
  });

  it("grants every shared waiter up to the next exclusive one", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "x1");
    start(state, "s1", { mode: "shared" });
    start(state, "s2", { mode: "shared" });
    start(state, "x2", { taskId: "T-x2" });
    start(state, "s3", { mode: "shared" });
    const decision = exit(state, "x1", 1);
    expect(grants(decision)).toEqual(["s1", "s2"]);
    expect(dispatches(decision)).toEqual([
      ["s1", 2],
      ["s2", 3],
    ]);
    // x2 was queued behind s1 and s2; now it heads the queue and hears who it waits for.
    expect(logs(decision)).toEqual([
      ["x2", 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by s1, s2.'],
    ]);
    expect(mutexView(state)).toEqual({ holders: [["s1", "shared"], ["s2", "shared"]], waiting: ["x2", "s3"] });
  });

  it("does not log again for a head that did not change", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "s1", { mode: "shared" });
    start(state, "s2", { mode: "shared" });
    start(state, "x");
    const decision = exit(state, "s1", 1);
    expect(decision.changes).toEqual([{ type: "completed", ticket: "s1", reason: EXITED_0, at: T0 }]);
    expect(decision.effects).toEqual([{ type: "notify", ticket: "s1" }]);
    expect(mutexView(state)).toEqual({ holders: [["s2", "shared"]], waiting: ["x"] });
  });

  it("changes nothing for an exit with a stale fence", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    connect(state, "r1", []); // not listed: re-dispatched with fence 2
    expect(script(state, "a").fence).toBe(2);
    const before = snapshot(state);
    expect(exit(state, "a", 1)).toEqual({ changes: [], effects: [] });
    expect(snapshot(state)).toEqual(before);
  });

  it("changes nothing for an exit with a fence from the future", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    const before = snapshot(state);
    expect(exit(state, "a", 2)).toEqual({ changes: [], effects: [] });
    expect(snapshot(state)).toEqual(before);
  });

  it("changes nothing for an exit of a granted script that was never dispatched", () => {
    const state = emptyState();
    start(state, "a");
    const before = snapshot(state);
    expect(exit(state, "a", 1)).toEqual({ changes: [], effects: [] });
    expect(snapshot(state)).toEqual(before);
  });

  it("changes nothing for an exit of a script that still waits for its mutex", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    const before = snapshot(state);
    expect(exit(state, "b", 1)).toEqual({ changes: [], effects: [] });
    expect(exit(state, "b", 2)).toEqual({ changes: [], effects: [] });
    expect(snapshot(state)).toEqual(before);
  });

  it("changes nothing for an exit of an unknown or already completed ticket", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    exit(state, "a", 1);
    const before = snapshot(state);
    expect(exit(state, "a", 1)).toEqual({ changes: [], effects: [] });
    expect(exit(state, "nobody", 1)).toEqual({ changes: [], effects: [] });
    expect(snapshot(state)).toEqual(before);
  });

  it("removes a mutex from the state once nobody holds or waits for it", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a", { mutexName: "one" });
    start(state, "b", { mutexName: "two" });
    exit(state, "a", 1);
    expect([...state.mutexes.keys()]).toEqual(["two"]);
    exit(state, "b", 2);
    expect(state.mutexes.size).toBe(0);
  });

  it("keeps a mutex while shared holders remain", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "s1", { mode: "shared" });
    start(state, "s2", { mode: "shared" });
    exit(state, "s1", 1);
    expect(mutexView(state)).toEqual({ holders: [["s2", "shared"]], waiting: [] });
    exit(state, "s2", 2);
    expect(state.mutexes.has(MUTEX)).toBe(false);
  });
});

describe("tick", () => {
  it("expires a waiter whose deadline has passed with mutex_timeout and a line saying what it waited for", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a", { taskId: "Deploy-7" });
    start(state, "b", { mutexTimeoutMs: 500 }, T0 + 10);
    const decision = tick(state, T0 + 510);
    expect(decision).toEqual({
      changes: [
        { type: "audit", seq: 1, ticket: "b", action: "mutex-timeout", actor: "control-plane", reason: 'waited its mutexTimeoutMs of 500 ms for the mutex "RunningScript"', at: T0 + 510 },
        {
          type: "log",
          ticket: "b",
          text: 'Timed out after 500 ms waiting for the mutex "RunningScript"; held by a (task Deploy-7).',
          at: T0 + 510,
          sequence: 1,
        },
        { type: "completed", ticket: "b", reason: { kind: "mutex_timeout" }, at: T0 + 510 },
      ],
      effects: [{ type: "notify", ticket: "b" }],
    });
    expect(exitCodeFor({ kind: "mutex_timeout" })).toBe(-44);
    expect(state.scripts.has("b")).toBe(false);
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: [] });
  });

  it("does not expire a waiter one millisecond before its deadline", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "b", { mutexTimeoutMs: 500 });
    const before = snapshot(state);
    expect(tick(state, T0 + 499)).toEqual({ changes: [], effects: [] });
    expect(snapshot(state)).toEqual(before);
  });

  it("expires only the waiters whose deadline passed and names the waiters ahead of them", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "w1"); // waits forever
    start(state, "w2", { mutexTimeoutMs: 100 });
    start(state, "w3", { mutexTimeoutMs: 300 });
    const decision = tick(state, T0 + 200);
    expect(completions(decision)).toEqual([["w2", "mutex_timeout"]]);
    expect(logs(decision)).toEqual([["w2", 'Timed out after 200 ms waiting for the mutex "RunningScript"; held by a, queued behind w1.']]);
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: ["w1", "w3"] });
  });

  it("expires every waiter whose deadline passed in one late tick", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "w1", { mutexTimeoutMs: 100 });
    start(state, "w2", { mutexTimeoutMs: 300 });
    start(state, "w3");
    const decision = tick(state, T0 + 1000);
    expect(completions(decision)).toEqual([
      ["w1", "mutex_timeout"],
      ["w2", "mutex_timeout"],
    ]);
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: ["w3"] });
  });

  it("never expires a granted script, whatever deadline it asked for", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a", { mutexTimeoutMs: 10 }); // granted at once
    start(state, "b", { mutexTimeoutMs: 1000 });
    exit(state, "a", 1, EXITED_0, T0 + 5); // b granted before its deadline
    expect(script(state, "b")).toMatchObject({ granted: true, mutexDeadline: null, state: "running" });
    const before = snapshot(state);
    expect(tick(state, T0 + 1_000_000)).toEqual({ changes: [], effects: [] });
    expect(snapshot(state)).toEqual(before);
  });

  it("never expires a granted script that waits for a runner", () => {
    const state = emptyState();
    start(state, "a", { mutexTimeoutMs: 10 });
    expect(tick(state, T0 + 1_000_000)).toEqual({ changes: [], effects: [] });
    expect(script(state, "a")).toMatchObject({ state: "pending", granted: true });
  });

  it("tells the new head what it waits for when the head times out", () => {
    const state = emptyState();
    start(state, "a", { taskId: "T-a" });
    start(state, "w1", { mutexTimeoutMs: 50 });
    start(state, "w2");
    const decision = tick(state, T0 + 50);
    expect(logs(decision)).toEqual([
      ["w1", 'Timed out after 50 ms waiting for the mutex "RunningScript"; held by a (task T-a).'],
      ["w2", 'Waiting for the mutex "RunningScript" (exclusive, full isolation): held by a (task T-a).'],
    ]);
  });

  it("lets later shared waiters through when a waiting exclusive head expires", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "s0", { mode: "shared" });
    start(state, "x", { mutexTimeoutMs: 100 });
    start(state, "s1", { mode: "shared" });
    start(state, "s2", { mode: "shared" });
    const decision = tick(state, T0 + 100);
    expect(decision).toEqual({
      changes: [
        { type: "audit", seq: 1, ticket: "x", action: "mutex-timeout", actor: "control-plane", reason: 'waited its mutexTimeoutMs of 100 ms for the mutex "RunningScript"', at: T0 + 100 },
        { type: "log", ticket: "x", text: 'Timed out after 100 ms waiting for the mutex "RunningScript"; held by s0.', at: T0 + 100, sequence: 1 },
        { type: "completed", ticket: "x", reason: { kind: "mutex_timeout" }, at: T0 + 100 },
        { type: "granted", ticket: "s1", at: T0 + 100 },
        { type: "dispatched", ticket: "s1", fence: 2, runnerId: "r1", startedAt: T0 + 100 },
        { type: "granted", ticket: "s2", at: T0 + 100 },
        { type: "dispatched", ticket: "s2", fence: 3, runnerId: "r1", startedAt: T0 + 100 },
      ],
      effects: [
        { type: "notify", ticket: "x" },
        { type: "dispatch", ticket: "s1", fence: 2 },
        { type: "notify", ticket: "s1" },
        { type: "dispatch", ticket: "s2", fence: 3 },
        { type: "notify", ticket: "s2" },
      ],
    });
    expect(mutexView(state)).toEqual({ holders: [["s0", "shared"], ["s1", "shared"], ["s2", "shared"]], waiting: [] });
  });

  it("does not time out a waiter that an expiring head let through before the waiter's own deadline", () => {
    // x's deadline (T0+100) comes before s1's (T0+150); one late tick covers both. At T0+100 x gives up
    // and s1 becomes compatible, so s1 is granted before its deadline and must run, not time out.
    const state = emptyState();
    connect(state, "r1");
    start(state, "s0", { mode: "shared" });
    start(state, "x", { mutexTimeoutMs: 100 });
    start(state, "s1", { mode: "shared", mutexTimeoutMs: 150 });
    const decision = tick(state, T0 + 200);
    expect(completions(decision)).toEqual([["x", "mutex_timeout"]]);
    expect(dispatches(decision)).toEqual([["s1", 2]]);
    expect(script(state, "s1")).toMatchObject({ state: "running", granted: true, fence: 2 });
    expect(mutexView(state)).toEqual({ holders: [["s0", "shared"], ["s1", "shared"]], waiting: [] });
  });

  it("never both dispatches and times out the same script in one tick", () => {
    // s1's deadline passed while it was still blocked by x, so it times out; it must not be granted first.
    const state = emptyState();
    connect(state, "r1");
    start(state, "s0", { mode: "shared" });
    start(state, "x", { mutexTimeoutMs: 100 });
    start(state, "s1", { mode: "shared", mutexTimeoutMs: 50 });
    const decision = tick(state, T0 + 200);
    expect(completions(decision)).toEqual([
      ["s1", "mutex_timeout"],
      ["x", "mutex_timeout"],
    ]);
    expect(grants(decision)).toEqual([]);
    expect(dispatches(decision)).toEqual([]);
    expect(mutexView(state)).toEqual({ holders: [["s0", "shared"]], waiting: [] });
  });

  it("keeps the mutex while its holder runs after the last waiter expires", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "b", { mutexTimeoutMs: 1 });
    tick(state, T0 + 1);
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: [] });
  });
});

describe("nextDeadline", () => {
  it("is null when nothing waits", () => {
    expect(nextDeadline(emptyState())).toBeNull();
  });

  it("is the earliest deadline among waiting scripts", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "w1", { mutexTimeoutMs: 900 });
    start(state, "w2", { mutexTimeoutMs: 300 }, T0 + 100);
    start(state, "w3"); // waits forever: no deadline
    start(state, "w4", { mutexTimeoutMs: 600 });
    expect(nextDeadline(state)).toBe(T0 + 400);
  });

  it("ignores granted scripts, even ones that asked for a timeout", () => {
    const state = emptyState();
    start(state, "s1", { mode: "shared", mutexTimeoutMs: 5 });
    start(state, "s2", { mode: "shared", mutexTimeoutMs: 5 });
    expect(nextDeadline(state)).toBeNull();
    start(state, "x", { mutexTimeoutMs: 700 });
    expect(nextDeadline(state)).toBe(T0 + 700);
  });

  it("ignores a deadline left on a granted row restored from storage", () => {
    const state = restoreState(
      "m1",
      [
        row("holder", { queueSeq: 1, granted: true, mutexDeadline: T0 + 10 }),
        row("waiter", { queueSeq: 2, mutexDeadline: T0 + 900 }),
      ],
      { nextFence: 1, nextQueueSeq: 3 },
    );
    expect(nextDeadline(state)).toBe(T0 + 900);
    expect(completions(tick(state, T0 + 100))).toEqual([]);
    expect(state.scripts.has("holder")).toBe(true);
  });

  it("moves to the next deadline once the earliest waiter expired", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "w1", { mutexTimeoutMs: 100 });
    start(state, "w2", { mutexTimeoutMs: 250 });
    tick(state, T0 + 100);
    expect(nextDeadline(state)).toBe(T0 + 250);
  });

  it("becomes null once the waiter with a deadline is granted", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    start(state, "b", { mutexTimeoutMs: 100 });
    exit(state, "a", 1);
    expect(nextDeadline(state)).toBeNull();
  });
});

describe("runner_connected with an inventory", () => {
  it("lets a listed script with the current fence continue", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    const decision = connect(state, "r1", [{ ticket: "a", fence: 1, stored: "none" }], T0 + 50);
    expect(decision).toEqual({
      changes: [],
      effects: [{ type: "welcome", resume: [{ ticket: "a", fence: 1, action: "continue", nextSequence: 0 }], watch: [] }],
    });
    expect(script(state, "a")).toMatchObject({ state: "running", fence: 1, runnerId: "r1", startedAt: T0 });
  });

  it("re-dispatches with a new fence a running script that the same runner does not list", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    const decision = connect(state, "r1", [], T0 + 50);
    expect(decision).toEqual({
      changes: [{ type: "dispatched", ticket: "a", fence: 2, runnerId: "r1", startedAt: T0 + 50 }],
      effects: [
        { type: "welcome", resume: [], watch: [] },
        { type: "dispatch", ticket: "a", fence: 2 },
        { type: "notify", ticket: "a" },
      ],
    });
    expect(script(state, "a")).toMatchObject({ state: "running", fence: 2 });
    expect(mutexView(state)).toEqual({ holders: [["a", "exclusive"]], waiting: [] });
  });

  it("cancels the stale dispatch and re-dispatches when the same runner lists an older fence", () => {
    const state = restoreState("m1", [row("a", { queueSeq: 1, granted: true, state: "running", fence: 3, runnerId: "r1", startedAt: T0 })], {
      nextFence: 4,
      nextQueueSeq: 2,
    });
    const decision = connect(state, "r1", [{ ticket: "a", fence: 2, stored: "none" }], T0 + 1);
    expect(decision.effects).toEqual([
      { type: "welcome", resume: [{ ticket: "a", fence: 2, action: "cancel", nextSequence: 0 }], watch: [] },
      { type: "dispatch", ticket: "a", fence: 4 },
      { type: "notify", ticket: "a" },
    ]);
  });

  it("completes as lost a running script that a different runner does not list, with exit code -46", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    disconnect(state);
    const decision = connect(state, "r2", [], T0 + 50);
    expect(decision).toEqual({
      changes: [
        { type: "audit", seq: 1, ticket: "a", action: "runner-lost", actor: "control-plane", reason: "the runner reconnected without this script (it was restarted)", at: T0 + 50 },
        {
          type: "log",
          ticket: "a",
          text: "The runner reconnected without this script (it was restarted); the script's result is unknown.",
          at: T0 + 50,
          sequence: 0,
        },
        { type: "completed", ticket: "a", reason: { kind: "lost" }, at: T0 + 50 },
      ],
      effects: [
        { type: "welcome", resume: [], watch: [] },
        { type: "notify", ticket: "a" },
      ],
    });
    expect(exitCodeFor({ kind: "lost" })).toBe(-46);
    expect(state.scripts.has("a")).toBe(false);
    expect(state.mutexes.size).toBe(0);
    expect(state.runner).toEqual({ runnerId: "r2", draining: false });
    expect(state.nextAuditSeq).toBe(2);
  });

  it("releases a lost script's mutex to the next waiter", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    start(state, "c");
    disconnect(state);
    const decision = connect(state, "r2", [], T0 + 50);
    expect(completions(decision)).toEqual([["a", "lost"]]);
    expect(grants(decision)).toEqual(["b"]);
    expect(mutexView(state)).toEqual({ holders: [["b", "exclusive"]], waiting: ["c"] });
    expect(script(state, "b")).toMatchObject({ state: "running", runnerId: "r2" });
  });

  it("dispatches the waiter that a lost script releases exactly once", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    start(state, "b", { taskId: "T-b" });
    disconnect(state);
    const decision = connect(state, "r2", [], T0 + 50);
    expect(decision).toEqual({
      changes: [
        { type: "audit", seq: 1, ticket: "a", action: "runner-lost", actor: "control-plane", reason: "the runner reconnected without this script (it was restarted)", at: T0 + 50 },
        {
          type: "log",
          ticket: "a",
          text: "The runner reconnected without this script (it was restarted); the script's result is unknown.",
          at: T0 + 50,
          sequence: 0,
        },
        { type: "completed", ticket: "a", reason: { kind: "lost" }, at: T0 + 50 },
        { type: "granted", ticket: "b", at: T0 + 50 },
        { type: "dispatched", ticket: "b", fence: 2, runnerId: "r2", startedAt: T0 + 50 },
      ],
      effects: [
        { type: "welcome", resume: [], watch: [] },
        { type: "notify", ticket: "a" },
        { type: "dispatch", ticket: "b", fence: 2 },
        { type: "notify", ticket: "b" },
      ],
    });
    expect(script(state, "b").fence).toBe(2);
    expect(state.nextFence).toBe(3);
  });

  it("continues a script that a different runner lists with the current fence", () => {
    const state = emptyState();
    connect(state, "r1");
    start(state, "a");
    const decision = connect(state, "r2", [{ ticket: "a", fence: 1, stored: "none" }]);
    expect(decision).toEqual({ changes: [], effects: [{ type: "welcome", resume: [{ ticket: "a", fence: 1, action: "continue", nextSequence: 0 }], watch: [] }] });
    expect(script(state, "a").state).toBe("running");
  });

  it("tells the runner to forget, abandon or cancel scripts the core no longer tracks, by what storage knows", () => {
    const state = emptyState();
    const decision = connect(state, "r1", [
      { ticket: "done", fence: 4, stored: "completed" },
      { ticket: "dropped", fence: 5, stored: "abandoned" },
      { ticket: "stranger", fence: 6, stored: "none" },
    ]);
    expect(decision).toEqual({
      changes: [],
      effects: [
        { type: "welcome", resume: [
            { ticket: "done", fence: 4, action: "forget", nextSequence: 0 },
            { ticket: "dropped", fence: 5, action: "abandon", nextSequence: 0 },
            { ticket: "stranger", fence: 6, action: "cancel", nextSequence: 0 },
          ], watch: [] },
      ],
    });
  });

  it("cancels a listed script that the core has granted but never dispatched, then dispatches it afresh", () => {
    const state = emptyState();
    start(state, "a");
    const decision = connect(state, "r1", [{ ticket: "a", fence: 7, stored: "none" }]);
    expect(decision.effects).toEqual([
      { type: "welcome", resume: [{ ticket: "a", fence: 7, action: "cancel", nextSequence: 0 }], watch: [] },
      { type: "dispatch", ticket: "a", fence: 1 },
      { type: "notify", ticket: "a" },
    ]);
  });

  it("cancels a listed script that still waits for its mutex and leaves it waiting", () => {
    const state = emptyState();
    start(state, "a");
    start(state, "b");
    const decision = connect(state, "r1", [{ ticket: "b", fence: 9, stored: "none" }]);
    expect(decision.effects[0]).toEqual({ type: "welcome", resume: [{ ticket: "b", fence: 9, action: "cancel", nextSequence: 0 }], watch: [] });
    expect(dispatches(decision)).toEqual([["a", 1]]);
    expect(script(state, "b")).toMatchObject({ state: "pending", granted: false });
  });

  it("handles a mixed inventory: continues, re-dispatches, loses and dispatches in one step", () => {
    const state = restoreState(
      "m1",
      [
        row("kept", { queueSeq: 1, mutexName: "one", granted: true, state: "running", fence: 1, runnerId: "r1", startedAt: T0 }),
        row("missed", { queueSeq: 2, mutexName: "two", granted: true, state: "running", fence: 2, runnerId: "r1", startedAt: T0 }),
        row("old", { queueSeq: 3, mutexName: "three", granted: true, state: "running", fence: 3, runnerId: "r0", startedAt: T0 }),
        row("ready", { queueSeq: 4, mutexName: "four", granted: true }),
      ],
      { nextFence: 4, nextQueueSeq: 5 },
    );
    const decision = connect(state, "r1", [{ ticket: "kept", fence: 1, stored: "none" }], T0 + 9);
    expect(decision.effects[0]).toEqual({ type: "welcome", resume: [{ ticket: "kept", fence: 1, action: "continue", nextSequence: 0 }], watch: [] });
    expect(dispatches(decision)).toEqual([
      ["missed", 4],
      ["ready", 5],
    ]);
    expect(completions(decision)).toEqual([["old", "lost"]]);
    expect(state.mutexes.has("three")).toBe(false);
    expect([...state.scripts.keys()].sort()).toEqual(["kept", "missed", "ready"]);
  });
});

describe("restoreState", () => {
  const rows = [
    row("n1", { queueSeq: 1, mutexName: "N", granted: true, taskId: "T-n1" }),
    row("h1", { queueSeq: 2, mode: "shared", granted: true, state: "running", fence: 3, runnerId: "r1", startedAt: T0 }),
    row("h2", { queueSeq: 4, mode: "shared", granted: true, state: "running", fence: 4, runnerId: "r1", startedAt: T0 }),
    row("w1", { queueSeq: 5, mode: "exclusive", mutexDeadline: T0 + 5000 }),
    row("n2", { queueSeq: 6, mutexName: "N", mode: "shared" }),
    row("w2", { queueSeq: 7, mode: "shared" }),
    row("n3", { queueSeq: 8, mutexName: "N", mode: "exclusive" }),
    row("w3", { queueSeq: 9, mode: "shared", mutexDeadline: T0 + 3000 }),
  ];

  it.each([1, 2, 3, 4, 5, 6, 7, 8])("rebuilds holders and FIFO queues from rows given in shuffled order (seed %i)", (seed) => {
    const state = restoreState("m1", shuffled(rows, prng(seed)), { nextFence: 5, nextQueueSeq: 10 });
    expect(mutexView(state, MUTEX)).toEqual({ holders: [["h1", "shared"], ["h2", "shared"]], waiting: ["w1", "w2", "w3"] });
    expect(state.mutexes.get(MUTEX)?.queue).toEqual([
      { ticket: "w1", mode: "exclusive" },
      { ticket: "w2", mode: "shared" },
      { ticket: "w3", mode: "shared" },
    ]);
    expect(mutexView(state, "N")).toEqual({ holders: [["n1", "exclusive"]], waiting: ["n2", "n3"] });
    expect([...state.mutexes.keys()].sort()).toEqual(["N", MUTEX]);
    expect(state.scripts.size).toBe(8);
    expect(state.runner).toBeNull();
    expect(state.nextFence).toBe(5);
    expect(state.nextQueueSeq).toBe(10);
    expect(nextDeadline(state)).toBe(T0 + 3000);
  });

  it("restores an empty machine from no rows", () => {
    const state = restoreState("m1", [], { nextFence: 12, nextQueueSeq: 30 });
    expect(state.scripts.size).toBe(0);
    expect(state.mutexes.size).toBe(0);
    expect(state.nextFence).toBe(12);
    expect(state.nextQueueSeq).toBe(30);
  });

  it("continues from the restored counters and queues", () => {
    const state = restoreState("m1", shuffled(rows, prng(42)), { nextFence: 5, nextQueueSeq: 10 });
    const started = start(state, "late", { mode: "shared" }, T0 + 1);
    expect(started.changes[0]).toMatchObject({ type: "insert", script: { ticket: "late", queueSeq: 10 } });
    expect(mutexView(state)?.waiting).toEqual(["w1", "w2", "w3", "late"]);

    const connected = connect(state, "r1", [
      { ticket: "h1", fence: 3, stored: "none" },
      { ticket: "h2", fence: 4, stored: "none" },
    ]);
    expect(dispatches(connected)).toEqual([["n1", 5]]);

    expect(grants(exit(state, "h1", 3))).toEqual([]);
    const released = exit(state, "h2", 4);
    expect(grants(released)).toEqual(["w1"]);
    expect(dispatches(released)).toEqual([["w1", 6]]);
    expect(grants(exit(state, "w1", 6))).toEqual(["w2", "w3", "late"]);
  });
});

// ------------------------------------------------------------------ randomized properties

const NAMES = ["A", "B", "C"] as const;

/** What the property checker remembers across one random run. */
interface History {
  /** Tickets ever granted. */
  granted: Set<string>;
  /** The greatest queueSeq granted so far, per mutex name. */
  lastGrantedSeq: Map<string, number>;
  /** The greatest fence dispatched so far. */
  lastFence: number;
  /** queueSeq and mutex name of every script ever inserted. */
  inserted: Map<string, { queueSeq: number; mutexName: string }>;
  /** Tickets that completed. */
  completed: Set<string>;
  /** The reason kind each completed ticket completed with. */
  reasons: Map<string, CompletionReason["kind"]>;
  /** The fence of every abandoned dispatch: its process may live on and report with it. */
  abandoned: Map<string, number>;
  /** The active-script rows storage holds after applying every change so far. */
  rows: Map<string, ActiveScript>;
  /** The sequence number the next audit event must have. */
  nextAuditSeq: number;
}

/** A history with nothing seen yet. */
function newHistory(): History {
  return { granted: new Set(), lastGrantedSeq: new Map(), lastFence: 0, inserted: new Map(), completed: new Set(), reasons: new Map(), abandoned: new Map(), rows: new Map(), nextAuditSeq: 1 };
}

/** A deep copy of the state taken before an event, to judge the decision against. */
function copyState(state: MachineState): MachineState {
  return structuredClone(state);
}

/** The rules for abandoning one running script (by the abandon event or an overdue tick). */
function abandonViolations(before: MachineState, state: MachineState, decision: Decision, target: ActiveScript, killProcess: boolean): string[] {
  const problems: string[] = [];
  const ticket = target.ticket;
  if (!completions(decision).some(([t, kind]) => t === ticket && kind === "abandoned")) problems.push(`abandoned ${ticket} did not complete as abandoned`);
  const marks = decision.changes.filter((c) => c.type === "abandoned" && c.ticket === ticket);
  if (JSON.stringify(marks.map((c) => (c.type === "abandoned" ? c.fence : null))) !== JSON.stringify([target.fence])) {
    problems.push(`abandoned ${ticket} has abandoned changes ${JSON.stringify(marks)}, expected one with fence ${target.fence}`);
  }
  const effects = decision.effects.filter((e) => e.type === "abandon" && e.ticket === ticket);
  const expectedEffects = before.runner ? [{ type: "abandon", ticket, fence: target.fence, killProcess }] : [];
  if (JSON.stringify(effects) !== JSON.stringify(expectedEffects)) problems.push(`abandon effects for ${ticket} were ${JSON.stringify(effects)}`);
  const lines = logs(decision).filter(([t, text]) => t === ticket && text === abandonedLine(state.machineId)).length;
  if (lines !== 1) problems.push(`abandoned ${ticket} got the contract line ${lines} times`);
  if (state.mutexes.get(target.mutexName)?.holders.has(ticket)) problems.push(`abandoned ${ticket} still holds ${target.mutexName}`);
  return problems;
}

/** Every way the state or a decision breaks the rules; empty when all hold. `before` is the state the event met. */
function violations(state: MachineState, event: MachineEvent, decision: Decision, history: History, before: MachineState | null = null): string[] {
  const problems: string[] = [];
  const completedBefore = new Set(history.completed);

  // Walk the changes in order, as storage would apply them.
  const dispatchedNow = new Set<string>();
  for (const change of decision.changes) {
    const row = "ticket" in change && change.ticket !== null ? history.rows.get(change.ticket) : undefined;
    switch (change.type) {
      case "insert":
        history.inserted.set(change.script.ticket, { queueSeq: change.script.queueSeq, mutexName: change.script.mutexName });
        history.rows.set(change.script.ticket, { ...change.script });
        break;
      case "granted": {
        const info = history.inserted.get(change.ticket);
        if (!info) {
          problems.push(`granted unknown ticket ${change.ticket}`);
          break;
        }
        if (history.granted.has(change.ticket)) problems.push(`${change.ticket} granted twice`);
        if (history.completed.has(change.ticket)) problems.push(`${change.ticket} granted after it completed (${history.reasons.get(change.ticket)})`);
        const last = history.lastGrantedSeq.get(info.mutexName) ?? 0;
        if (info.queueSeq <= last) problems.push(`${change.ticket} (seq ${info.queueSeq}) granted after seq ${last} on ${info.mutexName}: not FIFO`);
        history.lastGrantedSeq.set(info.mutexName, Math.max(last, info.queueSeq));
        history.granted.add(change.ticket);
        if (row) Object.assign(row, { granted: true, grantedAt: change.at, mutexDeadline: null });
        break;
      }
      case "dispatched":
        if (change.fence <= history.lastFence) problems.push(`fence ${change.fence} for ${change.ticket} does not increase past ${history.lastFence}`);
        history.lastFence = Math.max(history.lastFence, change.fence);
        if (dispatchedNow.has(change.ticket)) problems.push(`${change.ticket} dispatched twice in one decision`);
        dispatchedNow.add(change.ticket);
        if (!history.granted.has(change.ticket)) problems.push(`${change.ticket} dispatched without a grant`);
        if (history.completed.has(change.ticket)) problems.push(`${change.ticket} dispatched again after it completed (${history.reasons.get(change.ticket)})`);
        if (row) {
          Object.assign(row, { state: "running", fence: change.fence, runnerId: change.runnerId, startedAt: change.startedAt, process: null });
          row.output = { ...row.output, runnerNext: 0 };
        }
        break;
      case "completed":
        if (history.completed.has(change.ticket)) problems.push(`${change.ticket} completed twice`);
        history.completed.add(change.ticket);
        history.reasons.set(change.ticket, change.reason.kind);
        history.rows.delete(change.ticket);
        if (change.reason.kind === "mutex_timeout" && history.granted.has(change.ticket)) {
          problems.push(`${change.ticket} timed out waiting for a mutex it had been granted`);
        }
        break;
      case "abandoned":
        history.abandoned.set(change.ticket, change.fence);
        break;
      case "cancel_requested":
        if (row) Object.assign(row, { cancelRequested: true, abandonDeadline: change.abandonDeadline });
        break;
      case "run_timed_out":
        if (!row || row.state !== "running") problems.push(`${change.ticket} run-timed-out while not running`);
        else if (row.runTimedOut) problems.push(`${change.ticket} run-timed-out twice`);
        if (row) row.runTimedOut = true;
        break;
      case "audit":
        if (change.seq !== history.nextAuditSeq) problems.push(`audit event numbered ${change.seq}, expected ${history.nextAuditSeq}`);
        history.nextAuditSeq = change.seq + 1;
        if (change.ticket !== null && !row) problems.push(`audit event ${change.action} for ${change.ticket}, which is not active`);
        break;
      case "log":
        if (row && change.sequence !== row.output.logNext) problems.push(`${change.ticket} logged at ${change.sequence}, expected ${row.output.logNext}`);
        if (row) row.output = { ...row.output, logNext: change.sequence + 1 };
        break;
      case "append":
        if (row) row.output = { ...change.position };
        break;
      case "process":
        if (row) row.process = { ...change.process };
        break;
      case "reattached":
        if (!row || row.state !== "running") problems.push(`${change.ticket} re-attached while not running`);
        else if (change.runnerRestarts !== row.runnerRestarts + 1) problems.push(`${change.ticket} restart count ${change.runnerRestarts} after ${row.runnerRestarts}`);
        if (row) row.runnerRestarts = change.runnerRestarts;
        break;
      case "abandoned_process":
      case "abandoned_exit":
      case "kill_delivered":
        break;
      default: {
        const unreachable: never = change;
        problems.push(`unknown change ${JSON.stringify(unreachable)}`);
      }
    }
  }
  if (state.nextFence <= history.lastFence) problems.push(`nextFence ${state.nextFence} not past ${history.lastFence}`);

  // Dispatch effects match the dispatched changes one for one.
  const effectDispatches = dispatches(decision).map(([t, f]) => `${t}@${f}`);
  const changeDispatches = decision.changes.flatMap((c) => (c.type === "dispatched" ? [`${c.ticket}@${c.fence}`] : []));
  if (JSON.stringify(effectDispatches) !== JSON.stringify(changeDispatches)) {
    problems.push(`dispatch effects ${effectDispatches} differ from dispatched changes ${changeDispatches}`);
  }
  if (event.type === "exited" && decision.changes.length > 0) {
    const completedTicket = completions(decision)[0]?.[0];
    if (completedTicket !== event.ticket) problems.push(`an exit of ${event.ticket} completed ${completedTicket}`);
  }
  // Whatever a completed (e.g. abandoned) script's process reports later changes nothing.
  if (event.type === "exited" && completedBefore.has(event.ticket) && (decision.changes.length > 0 || decision.effects.length > 0)) {
    problems.push(`an exit of ${event.ticket} (fence ${event.fence}) after it completed changed something`);
  }

  for (const [name, mutex] of state.mutexes) {
    if (mutex.name !== name) problems.push(`mutex keyed ${name} is named ${mutex.name}`);
    if (isIdle(mutex)) problems.push(`idle mutex ${name} kept in state`);
    const modes = [...mutex.holders.values()];
    if (modes.includes("exclusive") && modes.length > 1) problems.push(`${name} has an exclusive holder alongside others: ${[...mutex.holders.keys()]}`);
    const head = mutex.queue[0];
    if (head && compatible(mutex, head.mode)) problems.push(`${name}: head waiter ${head.ticket} is compatible with the holders but waits`);
    let previousSeq = 0;
    for (const waiter of mutex.queue) {
      const waiting = state.scripts.get(waiter.ticket);
      if (!waiting) {
        problems.push(`${name}: waiter ${waiter.ticket} is not an active script`);
        continue;
      }
      if (waiting.granted || waiting.mutexName !== name || waiting.mode !== waiter.mode) problems.push(`${name}: waiter ${waiter.ticket} disagrees with its script`);
      if (waiting.queueSeq <= previousSeq) problems.push(`${name}: queue not in arrival order at ${waiter.ticket}`);
      previousSeq = waiting.queueSeq;
      if (waiting.queueSeq <= (history.lastGrantedSeq.get(name) ?? 0)) problems.push(`${name}: ${waiter.ticket} was overtaken by a later arrival`);
    }
    for (const [ticket, mode] of mutex.holders) {
      const holder = state.scripts.get(ticket);
      if (!holder || !holder.granted || holder.mutexName !== name || holder.mode !== mode) problems.push(`${name}: holder ${ticket} disagrees with its script`);
    }
    // An abandoned or cancelled (or otherwise completed) script never holds or waits for a mutex afterwards.
    for (const ticket of [...mutex.holders.keys(), ...mutex.queue.map((w) => w.ticket)]) {
      const reason = history.reasons.get(ticket);
      if (reason) problems.push(`${ticket} completed (${reason}) but still holds or waits for ${name}`);
    }
  }

  for (const active of state.scripts.values()) {
    const mutex = state.mutexes.get(active.mutexName);
    const holds = mutex?.holders.has(active.ticket) ?? false;
    const waits = mutex?.queue.filter((w) => w.ticket === active.ticket).length ?? 0;
    if (active.granted ? !holds || waits !== 0 : holds || waits !== 1) problems.push(`${active.ticket} is neither exactly a holder nor exactly a waiter`);
    if (active.state === "running" && (!active.granted || active.fence === null || active.runnerId === null)) problems.push(`${active.ticket} runs without a grant or fence`);
    if (state.runner && !state.runner.draining && active.state === "pending" && active.granted) problems.push(`${active.ticket} is granted but not dispatched while a runner is connected`);
    if (event.type === "tick" && !active.granted && active.mutexDeadline !== null && active.mutexDeadline <= event.now) {
      problems.push(`${active.ticket} outlived its deadline`);
    }
    if (event.type === "tick" && active.state === "running" && active.abandonDeadline !== null && active.abandonDeadline <= event.now) {
      problems.push(`${active.ticket} outlived its abandon deadline`);
    }
    if (event.type === "tick" && active.state === "running" && active.runTimeoutMs > 0 && active.startedAt !== null && active.startedAt + active.runTimeoutMs <= event.now) {
      if (!active.runTimedOut || !active.cancelRequested || active.abandonDeadline === null) problems.push(`${active.ticket} outlived its run timeout without a cancel and an abandon deadline`);
    }
    if (active.state === "pending" && (active.cancelRequested || active.abandonDeadline !== null)) problems.push(`pending ${active.ticket} carries a cancel request`);
    if (history.completed.has(active.ticket)) problems.push(`${active.ticket} completed but still active`);
    // A grant is always persisted in the decision that made it.
    if (before && active.granted && !before.scripts.get(active.ticket)?.granted && !grants(decision).includes(active.ticket)) {
      problems.push(`${active.ticket} became a holder without a granted change`);
    }
  }
  if (!state.runner && dispatchedNow.size > 0) problems.push("dispatched while no runner is connected");
  for (const [ticket] of dispatches(decision)) {
    if (completedBefore.has(ticket)) problems.push(`completed ${ticket} dispatched again`);
  }
  const deadline = nextDeadline(state);
  if (event.type === "tick" && deadline !== null && deadline <= event.now) problems.push(`nextDeadline ${deadline} already passed`);
  // nextDeadline is the earliest mutex deadline of a waiter, or abandon deadline or unserved run timeout of a running script.
  const dues = [...state.scripts.values()].flatMap((s) => {
    if (!s.granted) return s.mutexDeadline !== null ? [s.mutexDeadline] : [];
    if (s.state !== "running") return [];
    const run = s.runTimeoutMs > 0 && !s.runTimedOut && s.startedAt !== null ? [s.startedAt + s.runTimeoutMs] : [];
    return [...(s.abandonDeadline !== null ? [s.abandonDeadline] : []), ...run];
  });
  const earliest = dues.length ? Math.min(...dues) : null;
  if (deadline !== earliest) problems.push(`nextDeadline ${deadline} is not the earliest deadline ${earliest}`);
  // The changes are all that storage gets: the rows they build are the active scripts, field for field.
  if (before) {
    const stored = JSON.stringify([...history.rows.values()].sort((a, b) => a.queueSeq - b.queueSeq));
    const live = JSON.stringify([...state.scripts.values()].sort((a, b) => a.queueSeq - b.queueSeq));
    if (stored !== live) problems.push(`rows built from the changes differ from the state:\n  stored ${stored}\n  live   ${live}`);
  }

  if (before) problems.push(...eventViolations(before, state, event, decision));
  return problems;
}

/** Rules for cancel, abandon, overdue ticks and reconnects, judged against the state the event met. */
function eventViolations(before: MachineState, state: MachineState, event: MachineEvent, decision: Decision): string[] {
  const problems: string[] = [];
  const empty = decision.changes.length === 0 && decision.effects.length === 0;
  if (event.type === "cancel" || event.type === "abandon") {
    const target = before.scripts.get(event.ticket);
    if (!target) {
      if (!empty) problems.push(`${event.type} of inactive ${event.ticket} changed something`);
    } else if (target.state === "pending") {
      if (JSON.stringify(completions(decision)) !== JSON.stringify([[event.ticket, "cancelled"]])) problems.push(`${event.type} of pending ${event.ticket} did not complete it as cancelled`);
      if (JSON.stringify(audits(decision)) !== JSON.stringify([[event.ticket, event.type, event.by.actor, event.by.reason]])) problems.push(`${event.type} of pending ${event.ticket} recorded ${JSON.stringify(audits(decision))}`);
      if (decision.changes.some((c) => c.type === "abandoned" || c.type === "cancel_requested")) problems.push(`${event.type} of pending ${event.ticket} marked it abandoned or cancel-requested`);
      if (decision.effects.some((e) => e.type === "abandon" || e.type === "cancel")) problems.push(`${event.type} of pending ${event.ticket} sent a cancel or abandon`);
    } else if (event.type === "cancel") {
      const after = state.scripts.get(event.ticket);
      if (!after || after.state !== "running" || !after.cancelRequested || after.fence !== target.fence) problems.push(`cancelled running ${event.ticket} is not running with a cancel request`);
      if (completions(decision).length > 0 || grants(decision).length > 0) problems.push(`cancel of running ${event.ticket} completed or granted something`);
      const effects = decision.effects.filter((e) => e.type === "cancel");
      const expected = before.runner ? [{ type: "cancel", ticket: event.ticket, fence: target.fence }] : [];
      if (JSON.stringify(effects) !== JSON.stringify(expected)) problems.push(`cancel effects for ${event.ticket} were ${JSON.stringify(effects)}`);
      if (target.abandonDeadline !== null && (after?.abandonDeadline ?? null) !== Math.min(target.abandonDeadline, event.abandonAfterMs === null ? Infinity : event.now + event.abandonAfterMs)) {
        problems.push(`cancel moved the abandon deadline of ${event.ticket} from ${target.abandonDeadline} to ${after?.abandonDeadline}`);
      }
      const requested = decision.changes.filter((c) => c.type === "cancel_requested").length;
      const moved = (after?.abandonDeadline ?? null) !== target.abandonDeadline;
      if (requested !== (!target.cancelRequested || moved ? 1 : 0)) problems.push(`cancel of ${event.ticket} recorded ${requested} cancel_requested changes`);
      // A cancel that changes something is recorded (one event, its line), and the first one also says what follows.
      const expectedLines = (requested ? 1 : 0) + (target.cancelRequested ? 0 : 1);
      if (logs(decision).length !== expectedLines) problems.push(`cancel of ${event.ticket} logged ${logs(decision).length} lines, expected ${expectedLines}`);
      const recorded = JSON.stringify(audits(decision));
      const expectedAudits = requested ? [[event.ticket, "cancel", event.by.actor, event.by.reason]] : [];
      if (recorded !== JSON.stringify(expectedAudits)) problems.push(`cancel of ${event.ticket} recorded ${recorded}`);
    } else {
      problems.push(...abandonViolations(before, state, decision, target, event.killProcess));
      const recorded = JSON.stringify(audits(decision).map(([t, action, actor]) => [t, action, actor]));
      const expectedAudits = [[event.ticket, "abandon", event.by.actor], ...(event.killProcess ? [[event.ticket, "kill-requested", event.by.actor]] : [])];
      if (recorded !== JSON.stringify(expectedAudits)) problems.push(`abandon of ${event.ticket} recorded ${recorded}`);
      if (completions(decision).length !== 1) problems.push(`abandon of ${event.ticket} completed ${JSON.stringify(completions(decision))}`);
      // The release happens in this very decision and lets exactly the next compatible waiters through.
      const mutex = structuredClone(before.mutexes.get(target.mutexName)!);
      const expected = leaveMutex(mutex, target.ticket);
      if (JSON.stringify(grants(decision)) !== JSON.stringify(expected)) problems.push(`abandon of ${event.ticket} granted ${JSON.stringify(grants(decision))}, expected ${JSON.stringify(expected)}`);
      const dispatched = dispatches(decision).map(([t]) => t);
      if (JSON.stringify(dispatched) !== JSON.stringify(state.runner ? expected : [])) problems.push(`abandon of ${event.ticket} dispatched ${JSON.stringify(dispatched)}`);
    }
  }
  if (event.type === "exited" && event.survivors?.length) {
    // The survivors are listed in the same decision that completes the script, before the mutex is released.
    const completedAt = decision.changes.findIndex((c) => c.type === "completed" && c.ticket === event.ticket);
    const listedAt = decision.changes.findIndex((c) => c.type === "abandoned" && c.ticket === event.ticket && JSON.stringify(c.processes) === JSON.stringify(event.survivors));
    if (completedAt >= 0 && !(listedAt >= 0 && listedAt < completedAt)) problems.push(`lost ${event.ticket} completed without its survivors listed first`);
    if (completedAt < 0 && listedAt >= 0) problems.push(`survivors of ${event.ticket} listed without its completion`);
  }
  if (event.type === "tick") {
    for (const target of before.scripts.values()) {
      if (target.state === "running" && target.abandonDeadline !== null && target.abandonDeadline <= event.now) {
        problems.push(...abandonViolations(before, state, decision, target, false));
      }
    }
    // What the control plane decides by itself is recorded as its own.
    for (const [ticket, action, actor] of audits(decision)) {
      if (actor !== "control-plane" || !["auto-abandon", "mutex-timeout", "run-timeout"].includes(action)) problems.push(`a tick recorded ${action} by ${actor} for ${ticket}`);
    }
    const completedHere = completions(decision);
    for (const [ticket, kind] of completedHere) {
      const action = kind === "abandoned" ? "auto-abandon" : kind === "mutex_timeout" ? "mutex-timeout" : null;
      if (action && !audits(decision).some(([t, a]) => t === ticket && a === action)) problems.push(`${ticket} completed (${kind}) by a tick without an ${action} event`);
    }
  }
  if (event.type === "exited" || event.type === "runner_connected") {
    for (const [ticket, kind] of completions(decision)) {
      if (kind === "lost" && !audits(decision).some(([t, a, actor]) => t === ticket && a === "runner-lost" && actor === "control-plane")) problems.push(`lost ${ticket} recorded no runner-lost event`);
    }
  }
  if (event.type === "runner_connected") {
    const welcome = decision.effects.find((e) => e.type === "welcome");
    for (const entry of event.inventory) {
      if (entry.stored !== "abandoned" || before.scripts.has(entry.ticket)) continue;
      const action = welcome?.type === "welcome" ? welcome.resume.find((d) => d.ticket === entry.ticket)?.action : undefined;
      if (action !== "abandon") problems.push(`abandoned ${entry.ticket} listed by the runner got ${action}`);
      if (decision.changes.some((c) => "ticket" in c && c.ticket === entry.ticket)) problems.push(`abandoned ${entry.ticket} listed by the runner changed state`);
    }
    for (const target of before.scripts.values()) {
      const listed = event.inventory.some((e) => e.ticket === target.ticket && e.fence === target.fence);
      const cancels = decision.effects.filter((e) => e.type === "cancel" && e.ticket === target.ticket).length;
      if (target.state === "running" && target.cancelRequested && listed && cancels !== 1) problems.push(`listed cancel-requested ${target.ticket} got ${cancels} cancel effects`);
    }
  }
  return problems;
}

/** Every mutex's holders (as a sorted set) and FIFO queue, by name, as comparable data. */
function mutexesView(state: MachineState): unknown {
  return [...state.mutexes.values()]
    .map((m) => ({ name: m.name, holders: [...m.holders.entries()].sort(), queue: m.queue.map((w) => `${w.ticket}:${w.mode}`) }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** Runs one random sequence of events and returns the first broken rule, if any. */
function randomRun(seed: number, steps: number, options: { restarts: boolean }): string | null {
  const random = prng(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const state = emptyState();
  state.machineId = `m${seed}`;
  const history = newHistory();
  let now = T0;
  let runnerNumber = 1;
  let ticketNumber = 0;
  const trace: string[] = [];

  const apply = (event: MachineEvent): string | null => {
    trace.push(JSON.stringify(event));
    const before = copyState(state);
    const problems = violations(state, event, handle(state, event), history, before);
    return problems.length ? `seed ${seed}, step ${trace.length}: ${problems.join("; ")}\n  events:\n  ${trace.join("\n  ")}` : null;
  };

  if (random() < 0.6) {
    const failure = apply({ type: "runner_connected", runnerId: `r${runnerNumber}`, inventory: [], now });
    if (failure) return failure;
  }
  for (let step = 0; step < steps; step++) {
    const roll = random();
    let event: MachineEvent;
    const active = [...state.scripts.values()];
    const abandoned = [...history.abandoned.entries()];
    // Mostly an active script; now and then a completed or unknown one.
    const someTicket = (): string =>
      active.length > 0 && random() < 0.9 ? pick(active).ticket : random() < 0.5 && ticketNumber > 0 ? `t${1 + Math.floor(random() * ticketNumber)}` : "nobody";
    if (roll < 0.34 || active.length === 0) {
      now += Math.floor(random() * 5);
      event = {
        type: "start",
        now,
        script: {
          ticket: `t${++ticketNumber}`,
          mode: random() < 0.5 ? "exclusive" : "shared",
          mutexName: pick(NAMES),
          taskId: random() < 0.3 ? `task-${ticketNumber}` : null,
          mutexTimeoutMs: random() < 0.5 ? 0 : 1 + Math.floor(random() * 60),
          runTimeoutMs: random() < 0.6 ? 0 : 1 + Math.floor(random() * 60),
        },
      };
    } else if (roll < 0.58) {
      if (abandoned.length > 0 && random() < 0.15) {
        // The abandoned process reports after all, under its old fence.
        const [ticket, fence] = pick(abandoned);
        event = { type: "exited", ticket, fence, reason: { kind: "exited", code: Math.floor(random() * 3) }, now };
      } else {
        const target = pick(active);
        const current = target.fence ?? 1;
        const fence = random() < 0.85 ? current : Math.max(1, current - 1 - Math.floor(random() * 2));
        const reason: CompletionReason =
          target.cancelRequested && random() < 0.5 ? { kind: "cancelled" } : random() < 0.15 ? { kind: "lost" } : { kind: "exited", code: Math.floor(random() * 3) };
        // A restarted runner that had to stop the script may name processes that would not die.
        const survivors = reason.kind === "lost" && random() < 0.6 ? [{ pid: 1_000 + step }, { pid: 2_000 + step, startTime: step }] : undefined;
        event = { type: "exited", ticket: target.ticket, fence, reason, ...(survivors ? { survivors } : {}), now };
      }
    } else if (roll < 0.72) {
      // Sometimes exactly at the next deadline (as the alarm fires), otherwise some time later.
      const due = nextDeadline(state);
      now = due !== null && due >= now && random() < 0.3 ? due : now + Math.floor(random() * 40);
      event = { type: "tick", now };
    } else if (roll < 0.82) {
      event = { type: "cancel", ticket: someTicket(), abandonAfterMs: random() < 0.4 ? null : Math.floor(random() * 80), by: { actor: "server", reason: null }, now };
    } else if (roll < 0.89) {
      event = { type: "abandon", ticket: someTicket(), killProcess: random() < 0.3, by: { actor: "operator:alice", reason: "stuck" }, now };
    } else if (options.restarts && roll < 0.92) {
      // The object restarts: it rebuilds the core from what storage holds; the runner's socket may survive.
      trace.push("(object restart)");
      const live = mutexesView(state);
      const restored = restoreState(
        state.machineId,
        shuffled([...history.rows.values()].map((r) => ({ ...r })), random),
        { nextFence: state.nextFence, nextQueueSeq: state.nextQueueSeq, nextAuditSeq: state.nextAuditSeq },
        state.killGraceMs,
      );
      restored.runner = state.runner && random() < 0.5 ? { ...state.runner } : null;
      Object.assign(state, restored);
      const rebuilt = mutexesView(state);
      if (JSON.stringify(rebuilt) !== JSON.stringify(live)) {
        return `seed ${seed}, step ${trace.length}: the restart rebuilt mutexes ${JSON.stringify(rebuilt)}, not ${JSON.stringify(live)}\n  events:\n  ${trace.join("\n  ")}`;
      }
      continue;
    } else if (state.runner) {
      event = { type: "runner_disconnected", now };
    } else {
      const restart = options.restarts && random() < 0.5;
      if (restart) runnerNumber++;
      const runnerId = `r${runnerNumber}`;
      // A restarted runner knows nothing; a reconnecting one lists what it runs, sometimes missing a dispatch,
      // and the abandoned processes it still watches.
      const inventory: InventoryEntry[] = restart
        ? []
        : [
            ...active
              .filter((s) => s.state === "running" && s.runnerId === runnerId && (!options.restarts || random() < 0.8))
              .map((s) => ({ ticket: s.ticket, fence: s.fence!, stored: "none" as const })),
            ...abandoned.filter(() => random() < 0.3).map(([ticket, fence]) => ({ ticket, fence, stored: "abandoned" as const })),
          ];
      event = { type: "runner_connected", runnerId, inventory, now };
    }
    const failure = apply(event);
    if (failure) return failure;
  }
  return null;
}

describe("randomized event sequences", () => {
  it("keep the mutex, fencing, cancel and abandon rules after every start, exit, tick, cancel, abandon and reconnect (500 seeded runs)", () => {
    for (let seed = 1; seed <= 500; seed++) {
      const failure = randomRun(seed, 60, { restarts: false });
      expect(failure, failure ?? "").toBeNull();
    }
  });

  it("keep the mutex, fencing, cancel and abandon rules when runners restart and miss dispatches and the object restarts from storage (500 seeded runs)", () => {
    for (let seed = 1001; seed <= 1500; seed++) {
      const failure = randomRun(seed, 60, { restarts: true });
      expect(failure, failure ?? "").toBeNull();
    }
  });

  it("can detect a broken rule (the checker is not vacuous)", () => {
    // Hand the checker a state where a shared waiter sits behind nothing: it must complain.
    const state = emptyState();
    start(state, "s1", { mode: "shared" });
    const history: History = { ...newHistory(), granted: new Set(["s1"]), lastGrantedSeq: new Map([[MUTEX, 1]]) };
    state.mutexes.get(MUTEX)!.queue.push({ ticket: "ghost", mode: "shared" });
    const problems = violations(state, { type: "tick", now: T0 }, { changes: [], effects: [] }, history);
    expect(problems).toContain(`${MUTEX}: head waiter ghost is compatible with the holders but waits`);
    expect(problems).toContain(`${MUTEX}: waiter ghost is not an active script`);
  });

  it("can detect an abandon that keeps the mutex, grants nobody and lets the ticket be dispatched again", () => {
    // A fake decision for abandoning a running script: it completes it but leaves it holding the mutex
    // over a waiter, and then dispatches it afresh.
    const state = emptyState();
    state.machineId = "m1";
    connect(state, "r1");
    start(state, "a");
    start(state, "b");
    const history = newHistory();
    history.inserted.set("a", { queueSeq: 1, mutexName: MUTEX });
    history.inserted.set("b", { queueSeq: 2, mutexName: MUTEX });
    history.granted.add("a");
    history.lastGrantedSeq.set(MUTEX, 1);
    history.lastFence = 1;
    const before = copyState(state);
    state.scripts.delete("a");
    const decision: Decision = {
      changes: [
        { type: "completed", ticket: "a", reason: { kind: "abandoned" }, at: T0 },
        { type: "dispatched", ticket: "a", fence: 2, runnerId: "r1", startedAt: T0 },
      ],
      effects: [{ type: "dispatch", ticket: "a", fence: 2 }],
    };
    state.nextFence = 3;
    const problems = violations(state, { type: "abandon", ticket: "a", killProcess: false, by: { actor: "server", reason: null }, now: T0 }, decision, history, before);
    expect(problems).toContain("a dispatched again after it completed (abandoned)");
    expect(problems).toContain(`a completed (abandoned) but still holds or waits for ${MUTEX}`);
    expect(problems).toContain("abandoned a still holds RunningScript");
    expect(problems).toContain("abandoned a got the contract line 0 times");
    expect(problems).toContain('abandon of a granted [], expected ["b"]');
  });
});
