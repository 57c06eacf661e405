/**
 * The audit trail and the run timeout in the machine core, and the machine's summary for the fleet list: who changed
 * a script's course (recorded in the decision that changes it, numbered per machine, with its log line), the run
 * timeout as a deadline of the one alarm, and what the summary says of holders, queue and stuck processes.
 */
import { describe, expect, it } from "vitest";
import { DEFAULT_KILL_GRACE_MS, handle, nextDeadline, RUN_TIMEOUT_ABANDON_SLACK_MS } from "../../control-plane/machine/core/machine-core.js";
import { STUCK_AFTER_MS, summarize } from "../../control-plane/machine/core/summary.js";
import { T0, abandon, audits, cancel, completions, connect, exit, logs, machine, script, start, tick } from "./core-fixtures.js";

const NO_FACTS = { connected: false, draining: false, runnerVersion: null, abandoned: 0, oldestAbandonedAt: null };

describe("audit events", () => {
  it("numbers a machine's events in order across scripts and decisions", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a", { mode: "shared" });
    start(state, "b", { mode: "shared" });
    const first = cancel(state, "a", null, T0 + 1, { actor: "operator:alice", reason: "stuck" });
    const second = abandon(state, "b", true, T0 + 2, { actor: "server:bob", reason: null });
    const seqs = [...first.changes, ...second.changes].flatMap((c) => (c.type === "audit" ? [c.seq] : []));
    expect(seqs).toEqual([1, 2, 3]);
    expect(state.nextAuditSeq).toBe(4);
    expect(audits(first)).toEqual([["a", "cancel", "operator:alice", "stuck"]]);
    expect(audits(second)).toEqual([
      ["b", "abandon", "server:bob", null],
      ["b", "kill-requested", "server:bob", null],
    ]);
  });

  it("says each requested action in the script's log, with the reason when one was given", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a");
    expect(logs(cancel(state, "a", null, T0, { actor: "operator:alice", reason: "stuck in AV scan" }))[0]).toEqual(["a", "Cancel requested by operator:alice: stuck in AV scan"]);
    expect(logs(abandon(state, "a", false, T0, { actor: "server", reason: null }))[0]).toEqual(["a", "Abandon requested by server"]);
  });

  it("records nothing for a cancel or abandon of a complete or unknown script, nor for a cancel that changes nothing", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a");
    exit(state, "a", 1);
    expect(audits(cancel(state, "a"))).toEqual([]);
    expect(audits(abandon(state, "a"))).toEqual([]);
    expect(audits(cancel(state, "nobody"))).toEqual([]);
    start(state, "b");
    cancel(state, "b", 1_000);
    expect(audits(cancel(state, "b", 5_000))).toEqual([]); // later deadline: nothing changes
    expect(audits(cancel(state, "b", 10))).toEqual([["b", "cancel", "server", null]]); // earlier: it does
  });

  it("records an administrative action on the machine with no ticket and no log line", () => {
    const state = machine("m1");
    const decision = handle(state, { type: "admin", action: "runner-token-revoked", by: { actor: "server", reason: null }, now: T0 });
    expect(decision).toEqual({ changes: [{ type: "audit", seq: 1, ticket: null, action: "runner-token-revoked", actor: "server", reason: null, at: T0 }], effects: [] });
  });
});

describe("the run timeout", () => {
  it("is a deadline from the dispatch, not from the start request", () => {
    const state = machine("m1");
    start(state, "a", { runTimeoutMs: 1_000 });
    expect(nextDeadline(state)).toBeNull(); // pending: no runner yet
    connect(state, "r1", [], T0 + 500);
    expect(nextDeadline(state)).toBe(T0 + 1_500);
  });

  it("cancels the script at its run timeout as the control plane, with an abandon deadline of the runner's kill grace and 30 s", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a", { runTimeoutMs: 1_000 });
    expect(tick(state, T0 + 999)).toEqual({ changes: [], effects: [] });
    const decision = tick(state, T0 + 1_000);
    expect(audits(decision)).toEqual([["a", "run-timeout", "control-plane", "ran longer than its run timeout of 1000 ms"]]);
    expect(decision.changes).toContainEqual({ type: "run_timed_out", ticket: "a" });
    expect(decision.changes).toContainEqual({ type: "cancel_requested", ticket: "a", abandonDeadline: T0 + 1_000 + DEFAULT_KILL_GRACE_MS + RUN_TIMEOUT_ABANDON_SLACK_MS });
    expect(decision.effects).toEqual([{ type: "cancel", ticket: "a", fence: 1 }]);
    expect(logs(decision).map(([, text]) => text)[0]).toMatch(/^The script ran longer than its run timeout of 1000 ms; the control plane cancels it/);
    expect(script(state, "a")).toMatchObject({ state: "running", cancelRequested: true, runTimedOut: true });
    // Served once; what is left is the abandon deadline.
    expect(nextDeadline(state)).toBe(T0 + 41_000);
    expect(tick(state, T0 + 2_000)).toEqual({ changes: [], effects: [] });
    const overdue = tick(state, T0 + 41_000);
    expect(completions(overdue)).toEqual([["a", "abandoned"]]);
    expect(audits(overdue)).toEqual([["a", "auto-abandon", "control-plane", "still running when the abandon deadline set by its cancel passed"]]);
  });

  it("allows for the kill grace the runner announced", () => {
    const state = machine("m1");
    handle(state, { type: "runner_connected", runnerId: "r1", inventory: [], killGraceMs: 60_000, now: T0 });
    start(state, "a", { runTimeoutMs: 100 });
    const decision = tick(state, T0 + 100);
    expect(decision.changes).toContainEqual({ type: "cancel_requested", ticket: "a", abandonDeadline: T0 + 100 + 60_000 + 30_000 });
  });

  it("brings an earlier cancel's later abandon deadline forward, and records nothing when the cancel already abandons sooner", () => {
    const late = machine("m1");
    connect(late, "r1");
    start(late, "a", { runTimeoutMs: 100 });
    cancel(late, "a", 3_600_000);
    const forward = tick(late, T0 + 100);
    expect(audits(forward).map(([, action]) => action)).toEqual(["run-timeout"]);
    expect(script(late, "a").abandonDeadline).toBe(T0 + 100 + 40_000);

    const soon = machine("m1");
    connect(soon, "r1");
    start(soon, "a", { runTimeoutMs: 100 });
    cancel(soon, "a", 1_000);
    const nothing = tick(soon, T0 + 100);
    expect(audits(nothing)).toEqual([]);
    expect(nothing.changes).toEqual([{ type: "run_timed_out", ticket: "a" }]);
    expect(script(soon, "a").abandonDeadline).toBe(T0 + 1_000);
  });

  it("never times out a script without a run timeout", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a");
    expect(tick(state, T0 + 365 * 86_400_000)).toEqual({ changes: [], effects: [] });
  });
});

describe("the machine's summary", () => {
  it("lists the holders of every mutex, counts the waiters, and dates the hold from the start (or the grant while no runner runs it)", () => {
    const state = machine("m1");
    start(state, "a", { mutexName: "A" }, T0);
    start(state, "w", { mutexName: "A" }, T0 + 1);
    start(state, "b", { mutexName: "B", mode: "shared" }, T0 + 5);
    const idle = summarize(state, NO_FACTS);
    expect(idle).toMatchObject({ holders: ["a", "b"], waiting: 1, heldSince: T0, stuckAt: T0 + STUCK_AFTER_MS });
    connect(state, "r1", [], T0 + 100);
    expect(summarize(state, { ...NO_FACTS, connected: true })).toMatchObject({ connected: true, holders: ["a", "b"], heldSince: T0 + 100 });
  });

  it("counts as stuck from a holder's run timeout when it is shorter than an hour, or from the oldest abandoned process", () => {
    const state = machine("m1");
    connect(state, "r1");
    start(state, "a", { runTimeoutMs: 60_000 });
    expect(summarize(state, NO_FACTS).stuckAt).toBe(T0 + 60_000);
    expect(summarize(state, { ...NO_FACTS, abandoned: 2, oldestAbandonedAt: T0 - 5 }).stuckAt).toBe(T0 - 5);
    exit(state, "a", 1);
    expect(summarize(state, NO_FACTS)).toMatchObject({ holders: [], heldSince: null, stuckAt: null, waiting: 0 });
  });
});
