/**
 * A machine engine on a real SQLite (sql.js) with a port that records what the engine asks of the platform:
 * frames sent to the runner, connection closes, wake-ups, alarms. For unit tests of the engine and its storage.
 */
import { MachineEngine, type MachinePort } from "../../control-plane/machine/engine.js";
import { DEFAULT_LIMITS, type MachineLimits } from "../../control-plane/machine/limits.js";
import type { MachineReport, ReportAck } from "../../control-plane/machine/report.js";
import { PROTOCOL_VERSION, type RunnerMessage } from "../../shared/protocol.js";
import { openSqlJsStorage, type SqlJsStorage } from "./sqljs-storage.js";

/** What the engine asked of the platform, in order. */
export interface RecordingPort extends MachinePort {
  /** Every frame sent to the runner, parsed. */
  sent: any[];
  closes: Array<{ code: number; reason: string }>;
  notified: string[];
  alarms: Array<number | null>;
  resets: string[];
  /** Whether a runner connection is open, as the object's socket would be. */
  connected: boolean;
  /** Every report pushed to the registry, in order. */
  reports: MachineReport[];
  /** How the registry answers the next report (a thrown error: the push fails). Default: applied. */
  registry: (report: MachineReport) => ReportAck | Promise<ReportAck>;
  /** Tasks the engine scheduled (the report's coalescing delay) and not cancelled, for the test to run. */
  scheduled: Array<{ task: () => void; delayMs: number }>;
  /** Runs every scheduled task. */
  runScheduled(): void;
}

/** A port that records everything; `closeRunner` reports the close back to the engine as the object does. */
export function recordingPort(engine: () => MachineEngine, now: () => number): RecordingPort {
  const port: RecordingPort = {
    sent: [],
    closes: [],
    notified: [],
    alarms: [],
    resets: [],
    connected: false,
    send: (frame) => {
      if (port.connected) port.sent.push(JSON.parse(frame));
    },
    closeRunner: (code, reason) => {
      if (!port.connected) return;
      port.connected = false;
      port.closes.push({ code, reason });
      engine().runnerGone(now());
    },
    notify: (ticket) => port.notified.push(ticket),
    setAlarm: (at) => port.alarms.push(at),
    reset: (reason) => port.resets.push(reason),
    lastSeen: () => (port.connected ? now() : null),
    now,
    reports: [],
    scheduled: [],
    schedule: (task, delayMs) => {
      const entry = { task, delayMs };
      port.scheduled.push(entry);
      return {
        cancel: () => {
          const at = port.scheduled.indexOf(entry);
          if (at >= 0) port.scheduled.splice(at, 1);
        },
      };
    },
    runScheduled: () => {
      for (const entry of port.scheduled.splice(0)) entry.task();
    },
    registry: () => ({ summary: "applied" }),
    report: async (report) => {
      port.reports.push(report);
      return port.registry(report);
    },
  };
  return port;
}

/** A registered machine on a fresh database. */
export interface TestMachine {
  engine: MachineEngine;
  storage: SqlJsStorage;
  port: RecordingPort;
  /** The clock every call uses; tests move it. */
  clock: { now: number };
  /** A fresh engine loaded from the same storage (as after a restart). */
  reload(): MachineEngine;
  /** A runner (by id) says hello on a new connection, listing `inventory`; returns the welcome it got. */
  connect(runnerId: string, inventory?: Array<{ ticket: string; fence: number; nextSequence?: number; exited?: boolean }>): any;
  /** The runner's connection closes. */
  disconnect(): void;
  /** The connected runner reports something (anything but hello). */
  report(message: Exclude<RunnerMessage, { type: "hello" }>): void;
  /** Starts a script with a minimal payload. */
  start(ticket: string, options?: { isolation?: "full" | "none"; mutexName?: string; mutexTimeoutMs?: number; runTimeoutMs?: number }): void;
  /** The frames of one type sent so far. */
  sentOf(type: string): any[];
}

/** The hash every test machine's runner token has. */
export const TOKEN_HASH = "a".repeat(64);

/** Opens a registered machine `m1` on a fresh database. */
export async function testMachine(limits: MachineLimits = DEFAULT_LIMITS, machineId = "m1"): Promise<TestMachine> {
  const storage = await openSqlJsStorage();
  const clock = { now: 1_700_000_000_000 };
  let engine: MachineEngine;
  const port = recordingPort(() => engine, () => clock.now);
  engine = new MachineEngine(storage, port, limits);
  engine.load(null);
  engine.setRunnerToken(machineId, TOKEN_HASH, "server", clock.now);
  let connections = 0;
  const machine: TestMachine = {
    get engine() {
      return engine;
    },
    storage,
    port,
    clock,
    reload() {
      const fresh: MachineEngine = new MachineEngine(storage, recordingPort((): MachineEngine => fresh, () => clock.now), limits);
      fresh.load(null);
      return fresh;
    },
    connect(runnerId, inventory = []) {
      if (port.connected) {
        port.connected = false;
        engine.runnerGone(clock.now);
      }
      const hello: Extract<RunnerMessage, { type: "hello" }> = {
        type: "hello",
        protocol: PROTOCOL_VERSION,
        runnerId,
        version: "0.1.0",
        capabilities: ["script.v1", "script.abandon"],
        inventory: inventory.map((i) => ({ ticket: i.ticket, fence: i.fence, nextSequence: i.nextSequence ?? 0, exited: i.exited ?? false })),
      };
      connections += 1;
      port.connected = true;
      engine.runnerConnected(hello, `conn-${connections}`, clock.now);
      return port.sent.filter((m) => m.type === "welcome").at(-1);
    },
    disconnect() {
      if (!port.connected) return;
      port.connected = false;
      engine.runnerGone(clock.now);
    },
    report(message) {
      engine.report(message, clock.now);
    },
    start(ticket, options = {}) {
      const result = engine.start(
        {
          ticket,
          requestHash: `hash-${ticket}`,
          payloadJson: JSON.stringify({ scriptBody: "true", shell: "bash", arguments: [], environment: {}, files: [] }),
          isolation: options.isolation ?? "full",
          mutexName: options.mutexName ?? "RunningScript",
          mutexTimeoutMs: options.mutexTimeoutMs ?? 0,
          runTimeoutMs: options.runTimeoutMs ?? 0,
          taskId: null,
          waitMs: 0,
        },
        clock.now,
      );
      if (!result.ok) throw new Error(`start ${ticket}: ${result.code}`);
    },
    sentOf: (type) => port.sent.filter((m) => m.type === type),
  };
  return machine;
}

/** Every row of every table, as one comparable value (what storage holds). */
export function dump(storage: SqlJsStorage): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  const tables = storage.db.exec("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")[0]?.values ?? [];
  for (const [name] of tables) out[String(name)] = storage.db.exec(`SELECT * FROM "${String(name)}" ORDER BY 1, 2`)[0]?.values ?? [];
  return out;
}
