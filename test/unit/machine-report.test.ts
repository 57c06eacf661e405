/**
 * The machine's report to the registry, on a real SQLite (sql.js) with a recording port: a transactional outbox. The
 * report's version is stored in the transaction of the decision that changed the summary or recorded events; the
 * push goes out after a short delay (one per burst, one in flight), is retried by the alarm when it fails, and is
 * re-sent every few minutes while the machine is in use. Events are kept until the registry has them.
 */
import { describe, expect, it } from "vitest";
import { REPORT_PUSH_DELAY_MS, REPORT_REFRESH_MS, REPORT_RETRY_MS } from "../../control-plane/machine/report.js";
import { LIMITS } from "../../shared/api.js";
import { testMachine, type TestMachine } from "../helpers/machine-engine.js";
import { nthWrite, WRITE } from "../helpers/sqljs-storage.js";
import { SERVER } from "./core-fixtures.js";

const OCCURRED = "2026-12-02T08:00:00.000Z";

/** Pushes what the engine scheduled (its coalescing delay passed) and waits for the push to settle. */
async function flush(m: TestMachine): Promise<void> {
  m.port.runScheduled();
  // The push awaits the port's report; let it settle.
  for (let i = 0; i < 5; i += 1) await Promise.resolve();
}

/** The stored report version. */
function storedVersion(m: TestMachine): number {
  const row = m.storage.db.exec("SELECT value FROM meta WHERE key = 'report'")[0]?.values[0]?.[0];
  return row === undefined ? 0 : JSON.parse(String(row)).version;
}

function auditRows(m: TestMachine): unknown[][] {
  return m.storage.db.exec("SELECT seq, ticket, action, pushed, detached FROM audit ORDER BY seq")[0]?.values ?? [];
}

describe("the outbox", () => {
  it("stores the report's new version in the transaction of the decision that changed the summary", async () => {
    const m = await testMachine();
    const version = storedVersion(m);
    m.storage.failWhen(nthWrite(2));
    expect(m.engine.start({ ticket: "a", requestHash: "h", payloadJson: "{}", isolation: "full", mutexName: "M", mutexTimeoutMs: 0, runTimeoutMs: 0, taskId: null, waitMs: 0 }, m.clock.now)).toMatchObject({ ok: false, status: 503 });
    m.storage.failWhen(null);
    expect(storedVersion(m)).toBe(version);
    m.start("a");
    expect(storedVersion(m)).toBe(version + 1);
    const before = m.storage.statements.length;
    m.start("b");
    // One transaction: the version is written with the script's own rows.
    const writes = m.storage.statements.slice(before).filter((s) => WRITE.test(s.query)).map((s) => s.query);
    expect(writes.some((q) => q.includes("INSERT INTO scripts")) && writes.some((q) => q.includes("INSERT INTO meta"))).toBe(true);
  });

  it("pushes once after a burst of changes, with the summary and the events the registry lacks, then stores that it has them", async () => {
    const m = await testMachine();
    await flush(m); // the registration's report
    m.port.reports.length = 0;
    m.connect("r1");
    m.start("a");
    m.start("b");
    m.engine.cancel("b", null, { actor: "operator:alice", reason: "not now" }, m.clock.now);
    expect(m.port.scheduled).toHaveLength(1);
    expect(m.port.scheduled[0]!.delayMs).toBe(REPORT_PUSH_DELAY_MS);
    expect(m.port.reports).toHaveLength(0); // nothing waits for the registry
    await flush(m);
    expect(m.port.reports).toHaveLength(1);
    const report = m.port.reports[0]!;
    expect(report).toMatchObject({ machineId: "m1", version: storedVersion(m), summary: { connected: true, holders: ["a"], waiting: 0, abandoned: 0, runnerVersion: "0.1.0" } });
    expect(report.events.map((e) => [e.ticket, e.action, e.actor, e.reason])).toEqual([["b", "cancel", "operator:alice", "not now"]]);
    expect(auditRows(m)).toEqual([[2, "b", "cancel", 1, 0]]); // pushed; the registration's event went once pushed
    expect(m.engine.reportDirty()).toBe(false);
  });

  it("pushes nothing for a decision the summary does not show, such as output", async () => {
    const m = await testMachine();
    m.connect("r1");
    m.start("a");
    await flush(m);
    const pushed = m.port.reports.length;
    const version = storedVersion(m);
    m.report({ type: "output", ticket: "a", fence: 1, sequence: 0, lines: [{ source: "stdout", text: "hello", occurred: OCCURRED }] });
    expect(storedVersion(m)).toBe(version);
    expect(m.port.scheduled).toHaveLength(0);
    await flush(m);
    expect(m.port.reports).toHaveLength(pushed);
  });

  it("keeps the report when the push fails and retries it from the alarm, backing off", async () => {
    const m = await testMachine();
    m.port.registry = () => {
      throw new Error("registry down");
    };
    m.start("a");
    await flush(m);
    expect(m.engine.reportDirty()).toBe(true);
    expect(m.port.alarms.at(-1)).toBe(m.clock.now + REPORT_RETRY_MS);
    m.clock.now += REPORT_RETRY_MS;
    await m.engine.alarm(m.clock.now, null);
    expect(m.port.reports).toHaveLength(2);
    expect(m.port.alarms.at(-1)).toBe(m.clock.now + 2 * REPORT_RETRY_MS); // doubled
    m.port.registry = () => ({ summary: "applied" });
    m.clock.now += 2 * REPORT_RETRY_MS;
    await m.engine.alarm(m.clock.now, null);
    expect(m.engine.reportDirty()).toBe(false);
    expect(auditRows(m).every((row) => row[3] === 1)).toBe(true);
  });

  it("tries a summary the registry does not know yet again later, but keeps the events it took", async () => {
    const m = await testMachine();
    m.port.registry = () => ({ summary: "unknown" });
    await flush(m);
    expect(m.engine.reportDirty()).toBe(true);
    expect(auditRows(m)).toEqual([]); // the registration's event: pushed, then dropped here
    m.port.registry = () => ({ summary: "applied" });
    m.clock.now += REPORT_RETRY_MS;
    await m.engine.alarm(m.clock.now, null);
    expect(m.engine.reportDirty()).toBe(false);
  });

  it("keeps a deleted script's events that the registry lacks, detached from its ticket, until they are pushed", async () => {
    const m = await testMachine();
    await flush(m);
    m.start("a");
    m.engine.cancel("a", null, SERVER, m.clock.now);
    expect(m.engine.complete("a", 0, LIMITS.logPageLines)).toMatchObject({ ok: true, value: { events: [{ action: "cancel", actor: "server" }] } });
    expect(auditRows(m)).toEqual([[2, "a", "cancel", 0, 1]]);
    // A new script with the same ticket does not inherit them.
    m.start("a");
    expect(m.engine.status("a", 0, 10)).toMatchObject({ ok: true, value: { events: [] } });
    await flush(m);
    expect(m.port.reports.at(-1)!.events.map((e) => [e.ticket, e.action])).toEqual([["a", "cancel"]]);
    expect(auditRows(m)).toEqual([]);
  });

  it("pushes again at once when the summary changed while a push was under way", async () => {
    const m = await testMachine();
    let release: () => void = () => undefined;
    m.port.registry = () => new Promise((resolve) => (release = () => resolve({ summary: "applied" })));
    m.start("a");
    m.port.runScheduled();
    m.start("b"); // while the first push is in flight: no second push now
    expect(m.port.scheduled).toHaveLength(0);
    expect(m.port.reports).toHaveLength(1);
    release();
    for (let i = 0; i < 5; i += 1) await Promise.resolve();
    expect(m.port.scheduled).toHaveLength(1);
    m.port.registry = () => ({ summary: "applied" });
    await flush(m);
    expect(m.port.reports).toHaveLength(2);
    expect(m.port.reports[1]!.summary.waiting).toBe(1);
    expect(m.engine.reportDirty()).toBe(false);
  });

  it("re-sends the summary from the alarm every few minutes while the machine is in use, and never while it is idle", async () => {
    const m = await testMachine();
    await flush(m);
    // Idle: nothing is due for the report.
    expect(m.port.alarms.at(-1) ?? null).toBeNull();
    m.start("a");
    await flush(m);
    const acceptedAt = m.clock.now;
    expect(m.port.alarms.at(-1)).toBe(acceptedAt + REPORT_REFRESH_MS);
    const pushed = m.port.reports.length;
    m.clock.now = acceptedAt + REPORT_REFRESH_MS;
    await m.engine.alarm(m.clock.now, null);
    expect(m.port.reports).toHaveLength(pushed + 1);
    expect(m.port.reports.at(-1)!.version).toBe(m.port.reports.at(-2)!.version); // the same summary, re-sent
    expect(m.port.alarms.at(-1)).toBe(m.clock.now + REPORT_REFRESH_MS);
  });

  it("after a restart, marks a summary that moved (the runner connection did not survive) and pushes what the registry lacks", async () => {
    const m = await testMachine();
    m.connect("r1");
    await flush(m);
    const version = storedVersion(m);
    // The object restarts: the runner's socket is gone.
    const fresh = m.reload();
    fresh.dropStoredConnection();
    fresh.rearm(m.clock.now);
    expect(storedVersion(m)).toBe(version + 1);
    expect(fresh.reportDirty()).toBe(true);
  });
});

describe("administrative events and removal", () => {
  it("records runner-token-issued and runner-token-revoked, and revokes only a token there is", async () => {
    const m = await testMachine();
    expect(m.engine.revokeRunnerToken("server", m.clock.now)).toBe(true);
    expect(m.engine.tokenMatches("a".repeat(64))).toBe(false);
    expect(m.engine.revokeRunnerToken("server", m.clock.now)).toBe(false);
    expect(auditRows(m).map((row) => row[2])).toEqual(["runner-token-issued", "runner-token-revoked"]);
  });

  it("refuses removal while a script is pending or running, and otherwise hands over the events the registry lacks", async () => {
    const m = await testMachine();
    m.start("a");
    expect(m.engine.removal("m1")).toMatchObject({ ok: false, status: 409, code: "machine_busy" });
    m.engine.cancel("a", null, SERVER, m.clock.now);
    const removal = m.engine.removal("m1");
    expect(removal.ok).toBe(true);
    if (removal.ok) expect(removal.value.events.map((e) => e.action)).toEqual(["runner-token-issued", "cancel"]);
    m.engine.forget();
    expect(m.engine.registered()).toBe(false);
  });
});
