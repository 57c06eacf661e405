/**
 * The machine engine on a real SQLite (sql.js): each decision of the core stored in one transaction, memory read
 * back from storage when a write fails, a restarted runner's lost script with its surviving processes, kills and
 * process identities carried to the next welcome, the lazy write of `started`, the schema migration of the
 * abandoned list, and bounded deletes.
 */
import { describe, expect, it } from "vitest";
import { STORAGE_FAILURE_CLOSE, StorageUnavailable } from "../../control-plane/machine/engine.js";
import { MIGRATIONS, migrate, setMeta } from "../../control-plane/machine/storage.js";
import { LIMITS } from "../../shared/api.js";
import { dump, recordingPort, testMachine, TOKEN_HASH, type TestMachine } from "../helpers/machine-engine.js";
import { goneAtNextWrite, nthWrite, openSqlJsStorage, WRITE } from "../helpers/sqljs-storage.js";
import { MachineEngine } from "../../control-plane/machine/engine.js";
import { DEFAULT_LIMITS } from "../../control-plane/machine/limits.js";
import { SERVER, snapshot } from "./core-fixtures.js";

const OCCURRED = "2026-12-02T08:00:00.000Z";

/** An output frame of lines. */
function output(ticket: string, fence: number, sequence: number, texts: string[]) {
  return { type: "output" as const, ticket, fence, sequence, lines: texts.map((text) => ({ source: "stdout" as const, text, occurred: OCCURRED })) };
}

/** A machine with a runner connected, `a` running under fence 1 and `b`, `c` waiting behind it. */
async function busyMachine(): Promise<TestMachine> {
  const m = await testMachine();
  m.connect("r1");
  m.start("a");
  m.start("b");
  m.start("c");
  m.report({ type: "started", ticket: "a", fence: 1, pid: 4242, startTime: 9000, bootId: "boot-1" });
  m.report(output("a", 1, 0, ["one", "two"]));
  return m;
}

/** The status of a script, which must exist. */
function status(m: TestMachine, ticket: string) {
  const result = m.engine.status(ticket, 0, LIMITS.logPageLines);
  if (!result.ok) throw new Error(`no status for ${ticket}: ${result.code}`);
  return result.value;
}

/** How many writes `action` makes on a machine that `prepare` made. */
async function writesOf(prepare: () => Promise<TestMachine>, action: (m: TestMachine) => void): Promise<number> {
  const m = await prepare();
  const from = m.storage.statements.length;
  action(m);
  return m.storage.statements.slice(from).filter((s) => WRITE.test(s.query)).length;
}

describe("a decision is stored in one transaction (bug 6)", () => {
  it("keeps storage and memory as they were when any write of an abandon fails, answers 503 storage_unavailable and closes the runner connection", async () => {
    const abandonA = (m: TestMachine) => m.engine.abandon("a", false, SERVER, m.clock.now);
    const writes = await writesOf(busyMachine, abandonA);
    expect(writes).toBeGreaterThan(5); // log, abandoned, completed, granted, dispatched, ... : a real multi-write decision
    for (let n = 0; n < writes; n += 1) {
      const m = await busyMachine();
      const stored = dump(m.storage);
      const sentBefore = m.port.sent.length;
      m.storage.failWhen(nthWrite(n));
      expect(abandonA(m), `write ${n}`).toMatchObject({ ok: false, status: 503, code: "storage_unavailable" });
      m.storage.failWhen(null);
      expect(dump(m.storage), `write ${n}: storage unchanged`).toEqual(stored);
      expect(snapshot(m.engine.state), `write ${n}: memory is what storage holds`).toEqual(snapshot(m.reload().state));
      expect(m.engine.state.scripts.get("a")).toMatchObject({ state: "running", fence: 1 });
      expect(m.port.sent.slice(sentBefore), `write ${n}: nothing sent`).toEqual([]);
      expect(m.port.closes).toEqual([{ code: STORAGE_FAILURE_CLOSE, reason: expect.any(String) }]);

      // Once storage works again the same request succeeds, and the runner resumes.
      const welcome = m.connect("r1", [{ ticket: "a", fence: 1, nextSequence: 2 }]);
      expect(welcome.resume).toEqual([{ ticket: "a", fence: 1, action: "continue", nextSequence: 2 }]);
      expect(abandonA(m)).toMatchObject({ ok: true, value: { state: "complete", exitCode: -48 } });
      expect(m.sentOf("dispatch").map((d) => d.ticket)).toEqual(["a", "b"]);
    }
  });

  it("stores nothing of an output frame whose write fails, sends no ack for it, and takes the resend after the runner reconnects", async () => {
    const m = await busyMachine();
    const stored = dump(m.storage);
    const acks = m.sentOf("ack").length;
    m.storage.failWhen(nthWrite(1));
    expect(() => m.report(output("a", 1, 2, ["three", "four"]))).toThrow(StorageUnavailable);
    m.storage.failWhen(null);
    expect(dump(m.storage)).toEqual(stored);
    expect(m.sentOf("ack")).toHaveLength(acks);
    expect(m.engine.state.scripts.get("a")!.output).toMatchObject({ runnerNext: 2, logNext: 2 });
    expect(m.port.closes.map((c) => c.code)).toEqual([STORAGE_FAILURE_CLOSE]);

    expect(m.connect("r1", [{ ticket: "a", fence: 1, nextSequence: 2 }]).resume[0]).toMatchObject({ action: "continue", nextSequence: 2 });
    m.report(output("a", 1, 2, ["three", "four"]));
    expect(m.sentOf("ack").at(-1)).toEqual({ type: "ack", ticket: "a", fence: 1, nextSequence: 4 });
    expect(status(m, "a").logs.map((l) => l.text)).toEqual(["one", "two", "three", "four"]);
  });

  it("resets the object when storage cannot even be read back after a failed write", async () => {
    const m = await busyMachine();
    m.storage.failWhen(goneAtNextWrite());
    expect(m.engine.abandon("a", false, SERVER, m.clock.now)).toMatchObject({ ok: false, status: 503 });
    expect(m.port.resets).toHaveLength(1);
  });

  it("stays a new machine, without a reset, when any write of its first registration fails, and registers on the next try", async () => {
    // The first registration makes the schema in the same transaction: a failure rolls the schema back too, and
    // reading memory back must then find a new machine, not "no such table" (which reset the object: HTTP 500).
    const fresh = () => {
      const port = recordingPort(() => engine, () => 1_700_000_000_000);
      const engine: MachineEngine = new MachineEngine(storage, port, DEFAULT_LIMITS);
      engine.load(null);
      return { engine, port };
    };
    let storage = await openSqlJsStorage();
    const writes = (() => {
      const from = storage.statements.length;
      fresh().engine.setRunnerToken("m1", TOKEN_HASH, "server", 1_700_000_000_000);
      return storage.statements.slice(from).filter((s) => WRITE.test(s.query)).length;
    })();
    expect(writes).toBeGreaterThan(5);
    for (let n = 0; n < writes; n += 1) {
      storage = await openSqlJsStorage();
      const { engine, port } = fresh();
      storage.failWhen(nthWrite(n));
      expect(() => engine.setRunnerToken("m1", TOKEN_HASH, "server", 1_700_000_000_000), `write ${n}`).toThrow(StorageUnavailable);
      storage.failWhen(null);
      expect(port.resets, `write ${n}`).toEqual([]);
      expect(engine.registered(), `write ${n}`).toBe(false);
      expect(dump(storage), `write ${n}`).toEqual({});
      engine.setRunnerToken("m1", TOKEN_HASH, "server", 1_700_000_000_000);
      expect(engine.registered(), `write ${n}`).toBe(true);
      expect(engine.view({ connected: false, lastSeen: null }, false).machineId, `write ${n}`).toBe("m1");
    }
  });

  it("sets the alarm again after the platform failed to set it, even when the deadline did not move", async () => {
    const m = await testMachine();
    m.start("a");
    m.start("b", { mutexTimeoutMs: 5_000 });
    const deadline = m.clock.now + 5_000;
    expect(m.port.alarms.at(-1)).toBe(deadline);
    const set = m.port.alarms.length;
    m.start("c");
    expect(m.port.alarms).toHaveLength(set); // unchanged: not set again
    m.engine.alarmFailed();
    m.start("d");
    expect(m.port.alarms.slice(set)).toEqual([deadline]);
  });
});

describe("a script left by a restarted runner (bug 2)", () => {
  /** `a` continued by a new runner process (r2) that found it left by r1. */
  async function continued(): Promise<TestMachine> {
    const m = await busyMachine();
    m.disconnect();
    const welcome = m.connect("r2", [{ ticket: "a", fence: 1, nextSequence: 2 }]);
    expect(welcome.resume).toEqual([{ ticket: "a", fence: 1, action: "continue", nextSequence: 2 }]);
    expect(m.engine.view({ connected: true, lastSeen: null }, false).mutexes).toEqual([
      { name: "RunningScript", mode: "exclusive", holders: ["a"], waiting: ["b", "c"] },
    ]);
    return m;
  }

  const lost = (survivors: Array<{ pid: number; startTime?: number; bootId?: string }>) => ({
    type: "exit" as const,
    ticket: "a",
    fence: 1,
    lineCount: 3,
    outcome: { kind: "lost" as const, signals: ["SIGTERM", "SIGKILL"], survivors },
  });
  const stoppedLine = { type: "output" as const, ticket: "a", fence: 1, sequence: 2, lines: [{ source: "debug" as const, text: "stopped", occurred: OCCURRED }] };

  it("completes the script with -46 and lists every surviving process as abandoned in the same step that releases its mutex", async () => {
    const m = await continued();
    m.report(stoppedLine);
    m.report(lost([{ pid: 4242, startTime: 9000, bootId: "boot-1" }, { pid: 4300 }]));
    expect(status(m, "a")).toMatchObject({ state: "complete", exitCode: -46 });
    expect(status(m, "a").logs.map((l) => l.text)).toEqual([
      "one",
      "two",
      "stopped",
      "The runner restarted and could not re-attach to this script, so it stopped it; the script's result is unknown.",
      "2 processes of this script would not die and may still be running on machine m1 (pid 4242, 4300); listed as abandoned until the runner sees them exit.",
    ]);
    const view = m.engine.view({ connected: true, lastSeen: null }, false);
    expect(view.abandoned.map((a) => [a.ticket, a.pid])).toEqual([
      ["a", 4242],
      ["a", 4300],
    ]);
    expect(view.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["b"], waiting: ["c"] }]);
    expect(m.sentOf("dispatch").map((d) => d.ticket)).toEqual(["a", "b"]);
    expect(m.sentOf("exit_ack").at(-1)).toEqual({ type: "exit_ack", ticket: "a", fence: 1 });
    // The survivors are watched, with what names them for good, by the next runner connection.
    expect(m.connect("r2").watch).toEqual([
      { ticket: "a", fence: 1, pid: 4242, startTime: 9000, bootId: "boot-1" },
      { ticket: "a", fence: 1, pid: 4300 },
    ]);
  });

  it("keeps the script running with its mutex and lists no survivor when any write of the lost outcome fails", async () => {
    const prepare = async () => {
      const m = await continued();
      m.report(stoppedLine);
      return m;
    };
    const writes = await writesOf(prepare, (m) => m.report(lost([{ pid: 4242 }, { pid: 4300 }])));
    expect(writes).toBeGreaterThan(4);
    for (let n = 0; n < writes; n += 1) {
      const m = await prepare();
      const stored = dump(m.storage);
      m.storage.failWhen(nthWrite(n));
      expect(() => m.report(lost([{ pid: 4242 }, { pid: 4300 }]))).toThrow(StorageUnavailable);
      m.storage.failWhen(null);
      expect(dump(m.storage), `write ${n}`).toEqual(stored);
      expect(m.engine.state.scripts.get("a")).toMatchObject({ state: "running" });
      expect(m.engine.view({ connected: false, lastSeen: null }, false).abandoned).toEqual([]);
      expect(m.sentOf("exit_ack")).toEqual([]);
    }
  });

  it("removes only the reported process from the abandoned list on abandoned_exit: entries are keyed by ticket, fence and pid", async () => {
    const m = await continued();
    m.report(stoppedLine);
    m.report(lost([{ pid: 4242 }, { pid: 4300 }]));
    m.report({ type: "abandoned_exit", ticket: "a", fence: 1, pid: 4300 });
    expect(m.engine.view({ connected: true, lastSeen: null }, false).abandoned.map((a) => a.pid)).toEqual([4242]);
    m.report({ type: "abandoned_exit", ticket: "a", fence: 2, pid: 4242 }); // another dispatch: not this entry
    expect(m.engine.view({ connected: true, lastSeen: null }, false).abandoned.map((a) => a.pid)).toEqual([4242]);
    m.report({ type: "abandoned_exit", ticket: "a", fence: 1, pid: 4242 });
    expect(m.engine.view({ connected: true, lastSeen: null }, false).abandoned).toEqual([]);
  });

  it("completes a lost script with no survivors without listing anything as abandoned", async () => {
    const m = await continued();
    m.report(stoppedLine);
    m.report(lost([]));
    expect(status(m, "a")).toMatchObject({ state: "complete", exitCode: -46 });
    expect(m.engine.view({ connected: true, lastSeen: null }, false).abandoned).toEqual([]);
  });
});

describe("abandoned processes across runner connections (bugs 7 and 8)", () => {
  it("keeps a kill asked for while no runner was connected and delivers it once with the next welcome: killProcess on the resume answer, kill on the watch entry", async () => {
    const m = await busyMachine();
    m.disconnect();
    expect(m.engine.abandon("a", true, SERVER, m.clock.now)).toMatchObject({ ok: true, value: { state: "complete", exitCode: -48 } });
    const welcome = m.connect("r1", [{ ticket: "a", fence: 1 }]);
    expect(welcome.resume).toEqual([{ ticket: "a", fence: 1, action: "abandon", nextSequence: 0, killProcess: true }]);
    expect(welcome.watch).toEqual([{ ticket: "a", fence: 1, pid: 4242, startTime: 9000, bootId: "boot-1", kill: true }]);
    // Delivered: the next welcome watches the process but asks for no kill again.
    const again = m.connect("r1", [{ ticket: "a", fence: 1 }]);
    expect(again.resume).toEqual([{ ticket: "a", fence: 1, action: "abandon", nextSequence: 0 }]);
    expect(again.watch).toEqual([{ ticket: "a", fence: 1, pid: 4242, startTime: 9000, bootId: "boot-1" }]);
  });

  it("asks a restarted runner, which does not list the script, to kill the watched process", async () => {
    const m = await busyMachine();
    m.disconnect();
    m.engine.abandon("a", true, SERVER, m.clock.now);
    const welcome = m.connect("r2");
    expect(welcome.resume).toEqual([]);
    expect(welcome.watch).toEqual([{ ticket: "a", fence: 1, pid: 4242, startTime: 9000, bootId: "boot-1", kill: true }]);
  });

  it("sends the kill to a connected runner at once and keeps no request for later", async () => {
    const m = await busyMachine();
    m.engine.abandon("a", true, SERVER, m.clock.now);
    expect(m.sentOf("abandon")).toEqual([{ type: "abandon", ticket: "a", fence: 1, killProcess: true }]);
    expect(m.connect("r1").watch).toEqual([{ ticket: "a", fence: 1, pid: 4242, startTime: 9000, bootId: "boot-1" }]);
  });

  it("fills in the process of a dispatch abandoned before its started arrived, with its start time and boot id", async () => {
    const m = await testMachine();
    m.connect("r1");
    m.start("a");
    m.engine.abandon("a", false, SERVER, m.clock.now);
    expect(m.engine.view({ connected: true, lastSeen: null }, false).abandoned.map((a) => a.pid)).toEqual([null]);
    m.report({ type: "started", ticket: "a", fence: 1, pid: 777, startTime: 12, bootId: "boot-9" });
    expect(m.engine.view({ connected: true, lastSeen: null }, false).abandoned.map((a) => a.pid)).toEqual([777]);
    expect(m.connect("r1").watch).toEqual([{ ticket: "a", fence: 1, pid: 777, startTime: 12, bootId: "boot-9" }]);
    // The entry is gone once the runner reports that process gone.
    m.report({ type: "abandoned_exit", ticket: "a", fence: 1, pid: 777 });
    expect(m.engine.view({ connected: true, lastSeen: null }, false).abandoned).toEqual([]);
  });
});

describe("started", () => {
  it("writes the pid, start time and boot id with the next change rather than in a write of its own, and before the ack that confirms it", async () => {
    const m = await testMachine();
    m.connect("r1");
    m.start("a");
    const from = m.storage.statements.length;
    m.report({ type: "started", ticket: "a", fence: 1, pid: 4242, startTime: 9000, bootId: "boot-1" });
    expect(m.storage.statements.slice(from).filter((s) => WRITE.test(s.query))).toEqual([]);
    m.report(output("a", 1, 0, ["hello"]));
    const row = m.storage.db.exec("SELECT pid, start_time, boot_id FROM scripts WHERE ticket = 'a'")[0]!.values[0];
    expect(row).toEqual([4242, 9000, "boot-1"]);
    expect(m.sentOf("ack")).toEqual([{ type: "ack", ticket: "a", fence: 1, nextSequence: 1 }]);
  });

  it("writes a started report that nothing else follows within the lazy-write delay", async () => {
    const m = await testMachine();
    m.connect("r1");
    m.start("a");
    m.report({ type: "started", ticket: "a", fence: 1, pid: 4242 });
    m.engine.flushLazy(); // what the one-second timer does
    expect(m.storage.db.exec("SELECT pid FROM scripts WHERE ticket = 'a'")[0]!.values[0]).toEqual([4242]);
    expect(m.reload().state.scripts.get("a")).toEqual(m.engine.state.scripts.get("a"));
  });
});

describe("schema migration of the abandoned list", () => {
  it("keeps the abandoned rows of a version 4 database when the list becomes keyed by ticket, fence and pid", async () => {
    const storage = await openSqlJsStorage();
    for (const statements of MIGRATIONS.slice(0, 4)) for (const statement of statements) storage.sql.exec(statement);
    setMeta(storage.sql, "schema_version", "4");
    setMeta(storage.sql, "machine_id", "old-1");
    storage.sql.exec("INSERT INTO abandoned (ticket, fence, pid, abandoned_at) VALUES ('t1', 3, 4242, 1000), ('t2', 5, NULL, 2000)");
    storage.transactionSync(() => migrate(storage.sql));
    const engine = new MachineEngine(storage, { send() {}, closeRunner() {}, notify() {}, setAlarm() {}, reset() {}, lastSeen: () => null, report: async () => ({ summary: "applied" }), now: () => 0, schedule: () => ({ cancel() {} }) }, DEFAULT_LIMITS);
    engine.load(null);
    expect(engine.view({ connected: false, lastSeen: null }, false).abandoned).toEqual([
      { ticket: "t1", pid: 4242, abandonedAt: new Date(1000).toISOString() },
      { ticket: "t2", pid: null, abandonedAt: new Date(2000).toISOString() },
    ]);
    storage.sql.exec("INSERT INTO abandoned (ticket, fence, pid, abandoned_at) VALUES ('t1', 3, 4243, 3000)");
    expect(storage.db.exec("SELECT COUNT(*) FROM abandoned WHERE ticket = 't1' AND fence = 3")[0]!.values[0]).toEqual([2]);
  });
});

describe("deleting a complete script (bug 3)", () => {
  it("answers one page no larger than a GET page, however much the script printed, and deletes everything of it", async () => {
    const m = await testMachine();
    m.connect("r1");
    m.start("big");
    const line = "x".repeat(1000);
    let sequence = 0;
    for (let frame = 0; frame < 12; frame += 1) {
      m.report(output("big", 1, sequence, Array.from({ length: 1024 }, () => line)));
      sequence += 1024;
    }
    m.report({ type: "exit", ticket: "big", fence: 1, lineCount: sequence, outcome: { kind: "exited", code: 0 } });
    const page = m.engine.complete("big", 5, LIMITS.logPageLines);
    if (!page.ok) throw new Error(page.code);
    expect(Buffer.byteLength(JSON.stringify(page.value))).toBeLessThanOrEqual(LIMITS.logPageBytes);
    expect(page.value.logs[0]!.sequence).toBe(5);
    expect(page.value.hasMoreLogs).toBe(true);
    expect(m.engine.status("big", 0, 1)).toMatchObject({ ok: false, code: "unknown_script" });
    expect(m.storage.db.exec("SELECT COUNT(*) FROM log_chunks")[0]!.values[0]).toEqual([0]);
    expect(m.sentOf("delete_workspace")).toEqual([{ type: "delete_workspace", ticket: "big" }]);
  });

  it("answers a limited page when asked for fewer lines", async () => {
    const m = await testMachine();
    m.connect("r1");
    m.start("t");
    m.report(output("t", 1, 0, ["a", "b", "c", "d"]));
    m.report({ type: "exit", ticket: "t", fence: 1, lineCount: 4, outcome: { kind: "exited", code: 0 } });
    const page = m.engine.complete("t", 1, 2);
    expect(page).toMatchObject({ ok: true, value: { nextLogSequence: 3, hasMoreLogs: true } });
    if (page.ok) expect(page.value.logs.map((l) => l.text)).toEqual(["b", "c"]);
  });
});
