/**
 * The registry's storage on a real SQLite: machines with the hashes of their runner tokens, so that the edge
 * refuses a bad runner token, for a registered machine or not, before any machine object is woken (bug 14); the
 * machines' summaries and the fleet's counters; the audit feed; the operators.
 */
import { describe, expect, it } from "vitest";
import type { MachineReport, ReportEvent, ReportSummary } from "../../control-plane/machine/report.js";
import { MachineSummary } from "../../shared/api.js";
import {
  addOperator,
  adoptRunnerToken,
  applyReport,
  authenticateOperator,
  checkRunnerToken,
  feedPage,
  fleetCounts,
  LAST_USED_GRANULARITY_MS,
  listMachines,
  listOperators,
  listPage,
  type ListPage,
  migrate,
  operatorGeneration,
  pruneEvents,
  recordEvent,
  removeMachine,
  removeOperator,
  revokeRunnerToken,
  setRunnerToken,
} from "../../control-plane/registry/registry-store.js";
import { openSqlJsStorage, WRITE } from "../helpers/sqljs-storage.js";

const A = "a".repeat(64);
const B = "b".repeat(64);

async function registry() {
  const storage = await openSqlJsStorage();
  storage.transactionSync(() => migrate(storage.sql));
  return storage;
}

describe("checkRunnerToken", () => {
  it("accepts the current token's hash and refuses another token and an unknown machine alike", async () => {
    const { sql } = await registry();
    setRunnerToken(sql, "web-01", A, 1);
    expect(checkRunnerToken(sql, "web-01", A)).toBe("accepted");
    expect(checkRunnerToken(sql, "web-01", B)).toBe("refused");
    expect(checkRunnerToken(sql, "nobody", A)).toBe("refused");
  });

  it("refuses the previous token once a new one is issued", async () => {
    const { sql } = await registry();
    setRunnerToken(sql, "web-01", A, 1);
    setRunnerToken(sql, "web-01", B, 2);
    expect(checkRunnerToken(sql, "web-01", A)).toBe("refused");
    expect(checkRunnerToken(sql, "web-01", B)).toBe("accepted");
    expect(listMachines(sql)).toEqual(["web-01"]);
  });
});

describe("a registry from before token hashes", () => {
  it("keeps its machines, leaves their tokens to the machine objects until one is accepted, then checks them itself", async () => {
    const storage = await openSqlJsStorage();
    storage.sql.exec("CREATE TABLE machines (machine_id TEXT PRIMARY KEY, registered_at INTEGER NOT NULL)");
    storage.sql.exec("INSERT INTO machines (machine_id, registered_at) VALUES ('old-1', 5), ('old-2', 6)");
    storage.transactionSync(() => migrate(storage.sql));
    storage.transactionSync(() => migrate(storage.sql)); // again: nothing to do
    expect(listMachines(storage.sql)).toEqual(["old-1", "old-2"]);
    // Their summaries are rendered by the migration: nothing known yet, registered at their registration time.
    const page = summaries(listPage(storage.sql, { limit: 10, after: null, prefix: null, status: null, now: 0 }));
    expect(page).toEqual(
      ["old-1", "old-2"].map((machineId, i) => ({
        machineId,
        runner: { connected: false, draining: false, version: null, lastSeenAt: null },
        holders: [],
        heldSince: null,
        waiting: 0,
        abandoned: 0,
        updatedAt: new Date(5 + i).toISOString(),
      })),
    );
    expect(fleetCounts(storage.sql, null, 0)).toEqual({ total: 2, connected: 0, disconnected: 2, busy: 0, stuck: 0 });
    expect(checkRunnerToken(storage.sql, "old-1", A)).toBe("unverified");
    adoptRunnerToken(storage.sql, "old-1", A);
    adoptRunnerToken(storage.sql, "old-1", B); // only the first accepted token is adopted
    expect(checkRunnerToken(storage.sql, "old-1", A)).toBe("accepted");
    expect(checkRunnerToken(storage.sql, "old-1", B)).toBe("refused");
    expect(checkRunnerToken(storage.sql, "new-1", A)).toBe("refused");
  });
});

// ---------------------------------------------------------------------------------------------------
// the fleet: summaries, counts, pages

const SUMMARY: ReportSummary = { connected: false, draining: false, runnerVersion: null, lastSeenAt: null, holders: [], heldSince: null, waiting: 0, abandoned: 0, stuckAt: null };

/** A report of machine `id` at `version`, with summary fields and events as given. */
function report(id: string, version: number, summary: Partial<typeof SUMMARY> = {}, events: ReportEvent[] = [], incarnation = `inc-${id}`): MachineReport {
  return { machineId: id, incarnation, version, updatedAt: 1_000 + version, summary: { ...SUMMARY, ...summary }, events };
}

function event(seq: number, action: ReportEvent["action"] = "cancel", at = 5_000 + seq, ticket: string | null = "t"): ReportEvent {
  return { seq, ticket, action, actor: "server", reason: null, at };
}

/** The summaries of a page, as the API sends them. */
function summaries(page: ListPage): MachineSummary[] {
  return JSON.parse(page.machinesJson) as MachineSummary[];
}

async function fleet(ids: string[]) {
  const storage = await registry();
  for (const id of ids) setRunnerToken(storage.sql, id, A, 1, `inc-${id}`);
  return storage;
}

describe("machine reports", () => {
  it("keeps the newest summary whatever order reports arrive in, and moves the counters with it", async () => {
    const { sql } = await fleet(["m1", "m2"]);
    expect(applyReport(sql, report("m1", 2, { connected: true, holders: ["a"] }))).toEqual({ summary: "applied" });
    expect(applyReport(sql, report("m1", 1, { connected: false }))).toEqual({ summary: "current" });
    expect(fleetCounts(sql, null, 0)).toEqual({ total: 2, connected: 1, disconnected: 1, busy: 1, stuck: 0 });
    expect(applyReport(sql, report("m1", 3, { connected: true, holders: [] }))).toEqual({ summary: "applied" });
    expect(fleetCounts(sql, null, 0)).toEqual({ total: 2, connected: 1, disconnected: 1, busy: 0, stuck: 0 });
  });

  it("writes nothing for a re-sent summary but the runner's last sign of life", async () => {
    const storage = await fleet(["m1"]);
    applyReport(storage.sql, report("m1", 4, { lastSeenAt: 10 }));
    const writes = () => storage.statements.filter((s) => WRITE.test(s.query)).length;
    const before = writes();
    expect(applyReport(storage.sql, report("m1", 4, { lastSeenAt: 10 }))).toEqual({ summary: "current" });
    expect(writes()).toBe(before);
    applyReport(storage.sql, report("m1", 4, { lastSeenAt: 20 }));
    expect(writes()).toBe(before + 1);
    expect(summaries(listPage(storage.sql, { limit: 10, after: null, prefix: null, status: null, now: 0 }))[0]!.runner.lastSeenAt).toBe(new Date(20).toISOString());
  });

  it("does not apply a summary of a machine it does not know, or of an earlier life of it, but keeps its events", async () => {
    const { sql } = await fleet(["m1"]);
    expect(applyReport(sql, report("stranger", 1, {}, [event(1)]))).toEqual({ summary: "unknown" });
    expect(applyReport(sql, report("m1", 9, { holders: ["x"] }, [], "inc-old"))).toEqual({ summary: "unknown" });
    expect(summaries(listPage(sql, { limit: 10, after: null, prefix: null, status: null, now: 0 })).map((s) => s.machineId)).toEqual(["m1"]);
    expect(feedPage(sql, { machineId: "stranger", limit: 10, before: null, cutoff: 0 }).events).toHaveLength(1);
  });

  it("keeps each event once however often it is pushed", async () => {
    const { sql } = await fleet(["m1"]);
    applyReport(sql, report("m1", 1, {}, [event(1), event(2)]));
    applyReport(sql, report("m1", 1, {}, [event(2), event(3)]));
    expect(feedPage(sql, { machineId: "m1", limit: 10, before: null, cutoff: 0 }).events.map((e) => e.at)).toEqual([5_003, 5_002, 5_001].map((ms) => new Date(ms).toISOString()));
  });

  it("starts a machine registered again after its removal with an empty summary", async () => {
    const { sql } = await fleet(["m1"]);
    applyReport(sql, report("m1", 5, { connected: true, holders: ["a"] }));
    setRunnerToken(sql, "m1", B, 2, "inc-new");
    expect(fleetCounts(sql, null, 0)).toEqual({ total: 1, connected: 0, disconnected: 1, busy: 0, stuck: 0 });
    expect(applyReport(sql, report("m1", 1, { holders: ["b"] }, [], "inc-new"))).toEqual({ summary: "applied" });
  });

  it("forgets a removed machine, moves the counters, keeps its handed-over events and records the removal", async () => {
    const { sql } = await fleet(["m1", "m2"]);
    applyReport(sql, report("m1", 1, { connected: true, holders: ["a"] }));
    expect(removeMachine(sql, "m1", "server", { incarnation: "inc-m1", events: [event(7)] }, 9_000)).toBe(true);
    expect(fleetCounts(sql, null, 0)).toEqual({ total: 1, connected: 0, disconnected: 1, busy: 0, stuck: 0 });
    expect(checkRunnerToken(sql, "m1", A)).toBe("refused");
    expect(feedPage(sql, { machineId: "m1", limit: 10, before: null, cutoff: 0 }).events.map((e) => e.action)).toEqual(["machine-removed", "cancel"]);
    expect(removeMachine(sql, "m1", "server", null, 9_001)).toBe(false);
  });

  it("refuses a revoked runner token until another is issued", async () => {
    const { sql } = await fleet(["m1"]);
    expect(revokeRunnerToken(sql, "m1")).toBe(true);
    expect(checkRunnerToken(sql, "m1", A)).toBe("refused");
    expect(revokeRunnerToken(sql, "nobody")).toBe(false);
    setRunnerToken(sql, "m1", B, 2, "inc-m1");
    expect(checkRunnerToken(sql, "m1", B)).toBe("accepted");
  });
});

describe("the fleet list", () => {
  const ids = Array.from({ length: 30 }, (_, i) => `${i < 20 ? "web" : "db"}-${String(i).padStart(2, "0")}`);

  it("pages in id order after the cursor, with prefix and status filters, each page one indexed query", async () => {
    const storage = await fleet(ids);
    const { sql } = storage;
    applyReport(sql, report("web-01", 1, { connected: true }));
    applyReport(sql, report("web-02", 1, { holders: ["t"], stuckAt: 100 }));
    applyReport(sql, report("db-25", 1, { holders: ["t"], stuckAt: 5_000 }));
    const page1 = listPage(sql, { limit: 8, after: null, prefix: "web-", status: null, now: 1_000 });
    expect(summaries(page1).map((s) => s.machineId)).toEqual(ids.slice(0, 8));
    expect(page1.last).toBe("web-07");
    const page3 = listPage(sql, { limit: 8, after: "web-15", prefix: "web-", status: null, now: 1_000 });
    expect(summaries(page3).map((s) => s.machineId)).toEqual(ids.slice(16, 20));
    expect(page3.last).toBeNull();
    expect(page1.counts).toEqual({ total: 20, connected: 1, disconnected: 19, busy: 1, stuck: 1 });
    expect(summaries(listPage(sql, { limit: 100, after: null, prefix: null, status: "busy", now: 1_000 })).map((s) => s.machineId)).toEqual(["db-25", "web-02"]);
    expect(summaries(listPage(sql, { limit: 100, after: null, prefix: null, status: "stuck", now: 1_000 })).map((s) => s.machineId)).toEqual(["web-02"]);
    expect(listPage(sql, { limit: 100, after: null, prefix: null, status: "stuck", now: 5_000 }).counts.stuck).toBe(2);
    expect(summaries(listPage(sql, { limit: 100, after: null, prefix: null, status: "connected", now: 1_000 })).map((s) => s.machineId)).toEqual(["web-01"]);
    expect(summaries(listPage(sql, { limit: 100, after: null, prefix: "db-", status: "disconnected", now: 1_000 }))).toHaveLength(10);
    // The unfiltered counts come from the counters and an index range, never a scan of the fleet.
    const from = storage.statements.length;
    listPage(sql, { limit: 100, after: "web-03", prefix: null, status: null, now: 1_000 });
    const plans = storage.statements.slice(from).flatMap((s) => storage.queryPlan(s));
    expect(plans.filter((step) => /^SCAN machines\b/.test(step))).toEqual([]);
  });
});

describe("a summary as SQLite renders it", () => {
  it("is exactly the declared MachineSummary, with times as Date.prototype.toISOString writes them", async () => {
    const { sql } = await fleet(["web-01"]);
    const times = [0, 1, 999, 1_000, 1_796_199_383_162, 1_796_199_383_999, 1_700_000_000_001, 253_402_300_799_999];
    for (const [i, at] of times.entries()) {
      applyReport(sql, report("web-01", i + 1, { connected: i % 2 === 0, runnerVersion: 'v"1', lastSeenAt: at, heldSince: at, holders: ["a", "b"], waiting: 3, abandoned: 1 }));
      const [summary] = summaries(listPage(sql, { limit: 1, after: null, prefix: null, status: null, now: 0 }));
      expect(MachineSummary.strict().safeParse(summary).success).toBe(true);
      expect(summary).toEqual({
        machineId: "web-01",
        runner: { connected: i % 2 === 0, draining: false, version: 'v"1', lastSeenAt: new Date(at).toISOString() },
        holders: ["a", "b"],
        heldSince: new Date(at).toISOString(),
        waiting: 3,
        abandoned: 1,
        updatedAt: new Date(1_000 + i + 1).toISOString(),
      });
    }
    expect(listPage(sql, { limit: 5, after: "web-01", prefix: null, status: null, now: 0 })).toMatchObject({ machinesJson: "[]", last: null });
  });
});

describe("the audit feed", () => {
  it("pages newest first by time then arrival, filters by machine, and leaves out what is past retention", async () => {
    const { sql } = await fleet(["m1", "m2"]);
    applyReport(sql, report("m1", 1, {}, [event(1, "cancel", 100), event(2, "abandon", 300)]));
    applyReport(sql, report("m2", 1, {}, [event(1, "mutex-timeout", 200), event(2, "run-timeout", 300)]));
    recordEvent(sql, { machineId: null, ticket: null, action: "operator-added", actor: "server", reason: "alice", at: 250 });
    const seen: string[] = [];
    let before: { at: number; id: number } | null = null;
    for (;;) {
      const page = feedPage(sql, { machineId: null, limit: 2, before, cutoff: 0 });
      seen.push(...page.events.map((e) => `${e.machineId}:${e.action}`));
      if (!page.last) break;
      before = page.last;
    }
    expect(seen).toEqual(["m2:run-timeout", "m1:abandon", "null:operator-added", "m2:mutex-timeout", "m1:cancel"]);
    expect(feedPage(sql, { machineId: "m1", limit: 10, before: null, cutoff: 0 }).events.map((e) => e.action)).toEqual(["abandon", "cancel"]);
    expect(feedPage(sql, { machineId: null, limit: 10, before: null, cutoff: 250 }).events.map((e) => e.action)).toEqual(["run-timeout", "abandon"]);
    expect(pruneEvents(sql, 250, 100)).toBe(3);
    expect(feedPage(sql, { machineId: null, limit: 10, before: null, cutoff: 0 }).events).toHaveLength(2);
  });
});

describe("operators", () => {
  it("adds, replaces (a new generation: the old token stops), lists, authenticates and removes operators, with their events", async () => {
    const { sql } = await registry();
    const added = addOperator(sql, { name: "alice", role: "operator", tokenHash: A, expiresAt: 10_000 }, "server", 1_000);
    expect(added).toEqual({ name: "alice", role: "operator", createdAt: new Date(1_000).toISOString(), expiresAt: new Date(10_000).toISOString(), lastUsedAt: null });
    expect(authenticateOperator(sql, A, 2_000)).toEqual({ name: "alice", role: "operator", generation: 1 });
    addOperator(sql, { name: "alice", role: "viewer", tokenHash: B, expiresAt: 20_000 }, "server", 3_000);
    expect(authenticateOperator(sql, A, 3_001)).toBeNull();
    expect(authenticateOperator(sql, B, 3_001)).toEqual({ name: "alice", role: "viewer", generation: 2 });
    expect(operatorGeneration(sql, "alice", 3_001)).toBe(2);
    expect(listOperators(sql)).toEqual([{ name: "alice", role: "viewer", createdAt: new Date(1_000).toISOString(), expiresAt: new Date(20_000).toISOString(), lastUsedAt: new Date(3_001).toISOString() }]);
    expect(removeOperator(sql, "alice", "server", 4_000)).toBe(true);
    expect(removeOperator(sql, "alice", "server", 4_001)).toBe(false);
    expect(authenticateOperator(sql, B, 4_002)).toBeNull();
    expect(operatorGeneration(sql, "alice", 4_002)).toBeNull();
    expect(feedPage(sql, { machineId: null, limit: 10, before: null, cutoff: 0 }).events.map((e) => `${e.action} ${e.reason}`)).toEqual([
      "operator-removed alice",
      `operator-added alice: role viewer, token expires ${new Date(20_000).toISOString()} (its previous token revoked)`,
      `operator-added alice: role operator, token expires ${new Date(10_000).toISOString()}`,
    ]);
  });

  it("refuses an expired token, and notes a token's use at most once a minute", async () => {
    const storage = await registry();
    addOperator(storage.sql, { name: "bob", role: "viewer", tokenHash: A, expiresAt: 1_000_000 }, "server", 0);
    authenticateOperator(storage.sql, A, 1_000);
    const writes = () => storage.statements.filter((s) => WRITE.test(s.query)).length;
    const before = writes();
    authenticateOperator(storage.sql, A, 1_000 + LAST_USED_GRANULARITY_MS - 1);
    expect(writes()).toBe(before);
    authenticateOperator(storage.sql, A, 1_000 + LAST_USED_GRANULARITY_MS);
    expect(writes()).toBe(before + 1);
    expect(authenticateOperator(storage.sql, A, 1_000_000)).toBeNull();
  });
});
