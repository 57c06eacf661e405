/**
 * The machine engine: one machine's state and storage, without the platform. It loads the state, hands every
 * event to the pure core, persists each decision in one storage transaction, and carries out the decision's
 * effects through a small port that the Durable Object implements (send to the runner, close its connection,
 * wake waiting requests, set the alarm). A write that fails rolls back whole, and memory is read back from
 * storage, so memory never runs ahead of what is stored: the request gets 503 `storage_unavailable`, the runner
 * reconnects and resumes.
 *
 * It also keeps the machine's report to the registry (a transactional outbox): a decision that changes the machine's
 * summary or records audit events bumps the report's version in the same transaction, and the engine then pushes
 * the summary and the events the registry lacks, off the request path, coalescing bursts (one push in flight, after
 * a short delay). A failed push is retried by the alarm, and the alarm re-sends the summary now and then so that a
 * write the registry lost heals.
 */
import { LIMITS, type AuditAction, type MachineView, type ScriptStatus } from "../../shared/api.js";
import { CloseCode, PROTOCOL_VERSION, SUPPORTED_PROTOCOLS, type ControlMessage, type RunnerMessage } from "../../shared/protocol.js";
import { constantTimeEqual } from "../crypto.js";
import type { Storage } from "../sql.js";
import { storedOutcome, type StoredScript } from "./core/inventory.js";
import {
  DEFAULT_KILL_GRACE_MS,
  emptyState,
  handle,
  LAZY_CHANGES,
  nextDeadline,
  restoreState,
  type Change,
  type Decision,
  type Effect,
  type MachineEvent,
  type MachineState,
  type Requester,
} from "./core/machine-core.js";
import { checkLiveness, DEAD_AFTER_MS, HEARTBEAT_MS, nextAlarm, pruneBatch, PRUNE_SCRIPTS, retentionCutoff } from "./core/policy.js";
import { onRunnerReport, type RunnerReport } from "./core/runner-reports.js";
import { summarize, summaryKey, type SummaryCore } from "./core/summary.js";
import type { CompletionReason } from "../../shared/exit-codes.js";
import type { MachineLimits } from "./limits.js";
import { readLogs } from "./logs.js";
import { fail, ok, storageUnavailable, unknownScript, type RpcResult } from "./results.js";
import * as db from "./storage.js";
import { auditEvents, machineView, scriptStatus, STATUS_ENVELOPE_BYTES } from "./views.js";
import {
  nextReportAttempt,
  REPORT_EVENTS_PER_PUSH,
  REPORT_PUSH_DELAY_MS,
  REPORT_RETRY_MS,
  reportDueAt,
  type MachineReport,
  type ReportAck,
  type ReportEvent,
} from "./report.js";

/** The longest a lazy change (see `LAZY_CHANGES`) waits in memory for a write to go with. */
const LAZY_WRITE_DELAY_MS = 1_000;

/**
 * The close code for a runner connection whose frame could not be stored (WebSocket's "internal error"): the
 * runner reconnects and resumes from its inventory, resending what was not acknowledged.
 */
export const STORAGE_FAILURE_CLOSE = CloseCode.StorageFailure;

/** What the engine needs from the platform besides storage. */
export interface MachinePort {
  /** Sends one frame to the connected runner; nothing when none is connected. */
  send(frame: string): void;
  /** Closes the current runner connection (it reconnects and resumes); the object then calls `runnerGone`. */
  closeRunner(code: number, reason: string): void;
  /** Wakes the requests that wait for a change of this script. */
  notify(ticket: string): void;
  /** Sets the one alarm to `at`, or deletes it (null). On failure the object calls `alarmFailed`. */
  setAlarm(at: number | null): void;
  /** Resets the object: its memory cannot be trusted and storage could not be read back. */
  reset(reason: string): void;
  /** The connected runner's last sign of life (epoch ms), or null when none is connected. */
  lastSeen(): number | null;
  /** Sends the machine's report to the registry; resolves with what the registry kept. */
  report(report: MachineReport): Promise<ReportAck>;
  /** The time now (epoch ms), for work the engine starts by itself (a delayed push). */
  now(): number;
  /** Runs `task` once, `delayMs` from now, unless `cancel` is called first (the report's coalescing delay). */
  schedule(task: () => void, delayMs: number): { cancel(): void };
}

/** A change could not be stored: nothing of it was kept, and memory was read back from storage. */
export class StorageUnavailable extends Error {
  override readonly name = "StorageUnavailable";
}

/** The runner's last known identity, kept in meta. */
export interface RunnerInfo {
  runnerId: string;
  version: string;
  capabilities: string[];
  connectedAt: number;
  lastMessageAt: number;
  /** The grace it gives a process between SIGTERM and SIGKILL (absent: the default, 10 s). */
  killGraceMs?: number;
  /** The protocol version spoken on its connection (absent: a record from before versions: 1). */
  protocol?: number;
  /** It said it is draining (SIGTERM): it takes no new scripts until a runner connects again. */
  draining?: boolean;
}

/** The machine's report as storage keeps it: the summary's version, when it last changed, and its key. */
interface ReportState {
  version: number;
  changedAt: number;
  key: string;
}

/** What the registry last accepted: the summary's version, and when. */
interface ReportAccepted {
  version: number;
  at: number;
}

/** A new machine's counters, report and what the registry accepted of it. */
const NEW_COUNTERS: db.Counters = { nextFence: 1, nextQueueSeq: 1, nextAuditSeq: 1 };
const NO_REPORT: ReportState = { version: 0, changedAt: 0, key: "" };
const NOTHING_ACCEPTED: ReportAccepted = { version: 0, at: 0 };

/** Change types that can alter the machine's summary (holders, queue, abandoned list). */
const SUMMARY_CHANGES: ReadonlySet<Change["type"]> = new Set(["insert", "granted", "dispatched", "completed", "abandoned", "abandoned_process", "abandoned_exit"]);
/** Change types after which the abandoned list's count must be read again. */
const ABANDONED_CHANGES: ReadonlySet<Change["type"]> = new Set(["abandoned", "abandoned_process", "abandoned_exit"]);

/** What `startScript` receives from the edge, already validated. */
export interface StartInput {
  ticket: string;
  requestHash: string;
  payloadJson: string;
  isolation: "full" | "none";
  mutexName: string;
  mutexTimeoutMs: number;
  runTimeoutMs: number;
  taskId: string | null;
  waitMs: number;
}

/** What one decision writes besides its changes. */
interface DecisionWrites {
  /** The row of a script the decision inserts. */
  insert?: db.NewScriptRow;
  /** Bookkeeping that belongs in the same transaction, written before the changes (a new machine's schema). */
  before?: () => void;
  /** Bookkeeping that belongs in the same transaction. */
  also?: () => void;
  /** The runner connected or went: the summary may have changed even without a change of the core. */
  connection?: boolean;
}

/** One machine: its state, its storage and the rules between them. */
export class MachineEngine {
  state: MachineState = emptyState();
  runnerInfo: RunnerInfo | null = null;
  /** The runner connection whose hello was accepted, while it is open. */
  connectionId: string | null = null;
  /** When the runner connection is next checked for life; null while no runner is connected. */
  heartbeatCheckAt: number | null = null;
  /** Lazy changes not written yet (see `LAZY_CHANGES`). */
  private lazy: Change[] = [];
  private lazyTimer: ReturnType<typeof setTimeout> | null = null;
  /** The alarm as last set; undefined when unknown (setting it failed), so that it is set again. */
  private alarmAt: number | null | undefined = undefined;
  /** The counters as last written, so that a decision that does not move them does not write them. */
  private written: db.Counters = { ...NEW_COUNTERS };
  /** This machine's life, from storage (a removed machine registered again is a new one). */
  private incarnation = "";
  /** The report's version as stored, and what the registry last accepted. */
  private reportState: ReportState = { ...NO_REPORT };
  private reportAccepted: ReportAccepted = { ...NOTHING_ACCEPTED };
  /** The abandoned list's count and oldest time, read again after a decision that touches it. */
  private abandoned = { count: 0, oldest: null as number | null };
  /** When the report is next tried while the registry lacks something (null: nothing to retry). */
  private reportRetryAt: number | null = null;
  /** Failed pushes in a row (for the retry's backoff). */
  private reportFailures = 0;
  private reportInFlight = false;
  private reportTimer: { cancel(): void } | null = null;

  constructor(
    private readonly storage: Storage,
    private readonly port: MachinePort,
    readonly limits: MachineLimits,
  ) {}

  private get sql() {
    return this.storage.sql;
  }

  /** True once the machine was registered (it has a runner token). */
  registered(): boolean {
    return this.state.machineId !== "";
  }

  // ---------------------------------------------------------------- loading

  /**
   * Loads a registered machine from storage (migrating its schema first); a new object stays empty. `alarmAt`:
   * the alarm as the runtime has it, so that an unchanged alarm is not set again.
   */
  load(alarmAt: number | null): void {
    this.alarmAt = alarmAt;
    if (!db.isInitialized(this.sql)) return;
    this.storage.transactionSync(() => db.migrate(this.sql));
    this.readState();
  }

  /**
   * Sets the alarm to the earliest deadline storage holds (after a load), but never later than the alarm already
   * set: an object woken by its own alarm is loaded before the handler runs, and moving that alarm later would
   * cancel the handler (workerd logs "NOSENTRY ... alarm handler canceled") and put the check off again. An
   * early alarm is harmless: the handler serves what is due and sets the next one.
   */
  rearm(now: number = Date.now()): void {
    // After a restart the runner connection is gone (or not): what the registry was last told may be out of date.
    if (this.registered()) {
      this.checkSummary(now);
      // A report the registry lacks (the push was lost with the previous instance) goes out at once.
      if (this.reportDirty()) this.reportRetryAt = now;
    }
    const stored = this.alarmAt;
    const due = this.dueAt();
    if (stored !== null && stored !== undefined && (due === null || due > stored)) return;
    this.scheduleAlarm();
  }

  /** Reads the machine's memory back from storage; with nothing stored (a new machine whose first registration was rolled back, schema and all), a new object's. */
  private readState(): void {
    const stored = db.isInitialized(this.sql);
    const meta = (key: string) => (stored ? db.getMeta(this.sql, key) : null);
    const counters = stored ? db.readCounters(this.sql) : { ...NEW_COUNTERS };
    const info = meta("runner_info");
    this.runnerInfo = info ? (JSON.parse(info) as RunnerInfo) : null;
    const scripts = stored ? db.loadActiveScripts(this.sql) : [];
    this.state = restoreState(meta("machine_id") ?? "", scripts, counters, this.runnerInfo?.killGraceMs ?? DEFAULT_KILL_GRACE_MS);
    this.written = counters;
    this.incarnation = meta("incarnation") ?? "";
    this.reportState = parseJson<ReportState>(meta("report")) ?? { ...NO_REPORT };
    this.reportAccepted = parseJson<ReportAccepted>(meta("report_accepted")) ?? { ...NOTHING_ACCEPTED };
    this.abandoned = this.registered() ? db.abandonedStats(this.sql) : { count: 0, oldest: null };
  }

  /** The runner connection storage recorded as current, if any (it may not have survived a restart). */
  storedConnectionId(): string | null {
    return db.getMeta(this.sql, "current_connection");
  }

  /**
   * The recorded runner connection survived (hibernation): the runner is still connected. Its liveness is checked
   * from its last sign of life (`lastSeen`), not from the wake-up: waking counts as no sign of life, or a silent
   * runner would be given 25 s more at every wake and never be closed.
   */
  resumeConnection(connectionId: string, lastSeen: number): void {
    if (!this.runnerInfo) return;
    this.connectionId = connectionId;
    this.state.runner = { runnerId: this.runnerInfo.runnerId, draining: this.runnerInfo.draining === true };
    this.heartbeatCheckAt = lastSeen + DEAD_AFTER_MS;
  }

  /** The recorded runner connection did not survive (the object restarted): the runner will reconnect. */
  dropStoredConnection(): void {
    this.write(() => db.deleteMeta(this.sql, "current_connection"));
  }

  /** This machine's life (a removed machine registered again is another one). */
  machineIncarnation(): string {
    return this.incarnation;
  }

  // ---------------------------------------------------------------- the runner token

  /**
   * Registers the machine if new and sets the hash of its runner token (the previous token stops working), with the
   * audit event `runner-token-issued`, in one transaction.
   */
  setRunnerToken(machineId: string, tokenHash: string, actor: string, now: number): void {
    const isNew = !this.registered();
    this.decide(() => handle(this.state, { type: "admin", action: "runner-token-issued", by: { actor, reason: null }, now }), {
      before: isNew
        ? () => {
            db.migrate(this.sql);
            db.setMeta(this.sql, "machine_id", machineId);
          }
        : undefined,
      also: () => db.setMeta(this.sql, "runner_token_hash", tokenHash),
    }, now);
    if (isNew) this.readState();
  }

  /**
   * Revokes the runner token without issuing another (no runner can connect until one is issued), with the audit
   * event `runner-token-revoked`. Returns false, recording nothing, when there was no token to revoke.
   */
  revokeRunnerToken(actor: string, now: number): boolean {
    if (db.getMeta(this.sql, "runner_token_hash") === null) return false;
    this.decide(() => handle(this.state, { type: "admin", action: "runner-token-revoked", by: { actor, reason: null }, now }), {
      also: () => db.deleteMeta(this.sql, "runner_token_hash"),
    }, now);
    return true;
  }

  /**
   * Whether the machine may be removed: not while a script is pending or running (409 `machine_busy`). When it may,
   * answers the audit events the registry does not have yet, which the removal hands over to it (this machine's
   * storage is about to be deleted).
   */
  removal(machineId: string): RpcResult<{ events: MachineReport["events"]; incarnation: string }> {
    const busy = [...this.state.scripts.values()];
    if (busy.length > 0) {
      const named = busy.slice(0, 3).map((s) => `${s.ticket} (${s.state})`).join(", ");
      return fail(409, "machine_busy", `Machine ${machineId} has ${busy.length} script(s) pending or running (${named}${busy.length > 3 ? ", ..." : ""}); cancel or abandon them first.`);
    }
    return ok({ events: db.unpushedEvents(this.sql, Number.MAX_SAFE_INTEGER).map(reportEvent), incarnation: this.incarnation });
  }

  /** Forgets everything in memory: the machine's storage was deleted (it was removed), so it is unknown from now on. */
  forget(): void {
    this.clearLazy();
    this.reportTimer?.cancel();
    this.reportTimer = null;
    this.state = emptyState();
    this.runnerInfo = null;
    this.connectionId = null;
    this.heartbeatCheckAt = null;
    this.alarmAt = undefined;
    this.written = { nextFence: 1, nextQueueSeq: 1, nextAuditSeq: 1 };
    this.incarnation = "";
    this.reportState = { version: 0, changedAt: 0, key: "" };
    this.reportAccepted = { version: 0, at: 0 };
    this.abandoned = { count: 0, oldest: null };
    this.reportRetryAt = null;
    this.reportFailures = 0;
  }

  /** True when `tokenHash` is the hash of the machine's current runner token (constant time). */
  tokenMatches(tokenHash: string): boolean {
    const expected = db.getMeta(this.sql, "runner_token_hash");
    return expected !== null && constantTimeEqual(tokenHash, expected);
  }

  // ---------------------------------------------------------------- requests

  /** The machine view; `withScripts` false for the machine list. `lastSeen`: the connection's last sign of life. */
  view(connection: { connected: boolean; lastSeen: number | null }, withScripts: boolean): MachineView {
    const info = this.runnerInfo;
    const runner = {
      connected: connection.connected,
      draining: connection.connected && info?.draining === true,
      version: info?.version ?? null,
      connectedAt: info?.connectedAt ?? null,
      lastSeenAt: connection.connected ? connection.lastSeen : (info?.lastMessageAt ?? null),
      capabilities: info?.capabilities ?? [],
    };
    const scripts = withScripts ? db.listScripts(this.sql, LIMITS.viewScripts) : null;
    return machineView(this.state.machineId, this.state, runner, db.listAbandoned(this.sql), scripts);
  }

  /** Creates a script unless its ticket exists (then the same request is answered as it stands). */
  start(input: StartInput, now: number): RpcResult<{ created: boolean }> {
    const existing = db.getScript(this.sql, input.ticket);
    if (existing) {
      if (existing.request_hash !== input.requestHash) {
        return fail(409, "ticket_conflict", `Ticket ${input.ticket} already names a different script on this machine.`);
      }
      return ok({ created: false });
    }
    const event: MachineEvent = {
      type: "start",
      now,
      script: {
        ticket: input.ticket,
        mode: input.isolation === "full" ? "exclusive" : "shared",
        mutexName: input.mutexName,
        taskId: input.taskId,
        mutexTimeoutMs: input.mutexTimeoutMs,
        runTimeoutMs: input.runTimeoutMs,
      },
    };
    return this.request(() => {
      this.run(event, { insert: { requestHash: input.requestHash, payloadJson: input.payloadJson } });
      return { created: true };
    });
  }

  /** Cancels a script (see the core) on behalf of `by`; answers its status. */
  cancel(ticket: string, abandonAfterMs: number | null, by: Requester, now: number): RpcResult<ScriptStatus> {
    if (!db.getScript(this.sql, ticket)) return unknownScript(ticket);
    return this.request(() => {
      this.run({ type: "cancel", ticket, abandonAfterMs, by, now });
      return this.page(db.getScript(this.sql, ticket)!, 0, LIMITS.logPageLines);
    });
  }

  /** Abandons a script (see the core) on behalf of `by`; answers its status. */
  abandon(ticket: string, killProcess: boolean, by: Requester, now: number): RpcResult<ScriptStatus> {
    if (!db.getScript(this.sql, ticket)) return unknownScript(ticket);
    return this.request(() => {
      this.run({ type: "abandon", ticket, killProcess, by, now });
      return this.page(db.getScript(this.sql, ticket)!, 0, LIMITS.logPageLines);
    });
  }

  /** A script's status with one page of logs. */
  status(ticket: string, logSequence: number, limit: number): RpcResult<ScriptStatus> {
    const row = db.getScript(this.sql, ticket);
    return row ? ok(this.page(row, logSequence, limit)) : unknownScript(ticket);
  }

  /** Where a script stands, for requests that wait for it to change; null when it does not exist. */
  progress(ticket: string): { state: db.ScriptRow["state"]; logNext: number } | null {
    const row = db.getScript(this.sql, ticket);
    return row ? { state: row.state, logNext: row.log_next } : null;
  }

  /**
   * A complete script's final status with one page of its logs (bounded like any page, whatever the script
   * printed), then deletes it and tells the runner to delete its workspace.
   */
  complete(ticket: string, logSequence: number, limit: number): RpcResult<ScriptStatus> {
    const row = db.getScript(this.sql, ticket);
    if (!row) return unknownScript(ticket);
    if (row.state !== "complete") return fail(409, "not_complete", `Script ${ticket} is ${row.state}; only a complete script can be deleted.`);
    const status = this.page(row, logSequence, limit);
    return this.request(() => {
      this.write(() => db.deleteScript(this.sql, ticket));
      this.send({ type: "delete_workspace", ticket });
      this.port.notify(ticket);
      return status;
    });
  }

  private page(row: db.ScriptRow, logSequence: number, limit: number): ScriptStatus {
    const events = auditEvents(db.scriptEvents(this.sql, row.ticket));
    // The events take their share of the page's 4 MiB, so that the answer stays under it whatever they say.
    // (3 bytes per UTF-16 unit bounds its UTF-8.)
    const envelope = STATUS_ENVELOPE_BYTES + JSON.stringify(events).length * 3;
    return scriptStatus(row, logSequence, readLogs(this.sql, row.ticket, logSequence, limit, LIMITS.logPageBytes - envelope), events);
  }

  /** Runs a request's writes; a storage failure becomes 503 `storage_unavailable`. */
  private request<T>(body: () => T): RpcResult<T> {
    try {
      return ok(body());
    } catch (error) {
      if (error instanceof StorageUnavailable) return storageUnavailable();
      throw error;
    }
  }

  // ---------------------------------------------------------------- the runner

  /** Why a hello must be refused (a close code and reason), or null when the handshake may proceed. */
  refuseHello(hello: Extract<RunnerMessage, { type: "hello" }>, tokenHash: string): { code: CloseCode; reason: string } | null {
    if (!SUPPORTED_PROTOCOLS.includes(hello.protocol)) {
      return { code: CloseCode.UnsupportedProtocol, reason: `protocol ${hello.protocol} is not supported; this control plane speaks ${SUPPORTED_PROTOCOLS.join(" and ")}` };
    }
    if (!this.tokenMatches(tokenHash)) return { code: CloseCode.TokenRevoked, reason: "runner token revoked" };
    return null;
  }

  /** A runner completed its handshake on `connectionId`: records it and answers with a welcome. */
  runnerConnected(hello: Extract<RunnerMessage, { type: "hello" }>, connectionId: string, now: number): void {
    this.connectionId = connectionId;
    this.runnerInfo = {
      runnerId: hello.runnerId,
      version: hello.version,
      capabilities: hello.capabilities,
      connectedAt: now,
      lastMessageAt: now,
      // The connection speaks the version the runner offered (each side answers in the version it was spoken to).
      protocol: hello.protocol,
      ...(hello.killGraceMs === undefined ? {} : { killGraceMs: hello.killGraceMs }),
    };
    this.heartbeatCheckAt = now + DEAD_AFTER_MS;
    const inventory = hello.inventory.map((item) => ({
      ticket: item.ticket,
      fence: item.fence,
      stored: this.state.scripts.has(item.ticket) ? ("none" as const) : storedOutcome(storedScript(db.getScript(this.sql, item.ticket)), item.fence),
      ...(item.reattached === true ? { reattached: true } : {}),
    }));
    const abandoned = db.abandonedProcesses(db.listAbandoned(this.sql));
    const info = JSON.stringify(this.runnerInfo);
    const killGraceMs = hello.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
    this.decide(() => handle(this.state, { type: "runner_connected", runnerId: hello.runnerId, inventory, abandoned, killGraceMs, now }), {
      also: () => {
        db.setMeta(this.sql, "current_connection", connectionId);
        db.setMeta(this.sql, "runner_info", info);
      },
      connection: true,
    }, now);
  }

  /** The runner's connection closed: it is gone until it reconnects. */
  runnerGone(now: number): void {
    if (this.connectionId === null) return;
    this.connectionId = null;
    this.heartbeatCheckAt = null;
    const info = this.runnerInfo ? JSON.stringify(this.runnerInfo) : null;
    this.decide(() => handle(this.state, { type: "runner_disconnected", now }), {
      also: () => {
        db.deleteMeta(this.sql, "current_connection");
        if (info) db.setMeta(this.sql, "runner_info", info);
      },
      connection: true,
    }, now);
  }

  /** A frame arrived from the connected runner (a sign of life). */
  touched(now: number): void {
    if (this.runnerInfo) this.runnerInfo.lastMessageAt = now;
  }

  /**
   * The connected runner is draining (SIGTERM): it takes no new scripts; those granted meanwhile wait, holding their
   * mutex, for the next runner. Kept with the runner's info, so that the machine view and the fleet list show it.
   */
  runnerDraining(now: number): void {
    if (!this.runnerInfo || this.runnerInfo.draining) return;
    this.runnerInfo.draining = true;
    const info = JSON.stringify(this.runnerInfo);
    this.decide(() => handle(this.state, { type: "runner_draining", now }), { also: () => db.setMeta(this.sql, "runner_info", info), connection: true }, now);
  }

  /** A report from the connected runner (anything but hello). */
  report(report: RunnerReport, now: number): void {
    this.decide(() => onRunnerReport(this.state, report, { now, maxOutputBytes: this.limits.maxOutputBytes }), {}, now);
  }

  // ---------------------------------------------------------------- the alarm

  /**
   * Every deadline: the runner's liveness (`lastSeen`: its last sign of life, null when none is connected),
   * retention, the core's, and the report to the registry (a retry, or the periodic re-send). Resolves once the
   * report, if one was due, has been pushed (or has failed, to be retried later).
   */
  alarm(now: number, lastSeen: number | null): Promise<void> {
    this.alarmAt = null; // it fired
    if (lastSeen === null) {
      this.heartbeatCheckAt = null;
    } else {
      const check = checkLiveness(lastSeen, now);
      if (check.dead) this.port.closeRunner(CloseCode.HeartbeatTimeout, `no heartbeat for ${check.silentMs} ms`);
      else this.heartbeatCheckAt = check.nextCheckAt;
    }
    this.prune(now);
    this.run({ type: "tick", now });
    const due = this.reportDue();
    if (due !== null && due <= now) return this.pushReport(now);
    return Promise.resolve();
  }

  /** Setting the alarm failed: it is set again after the next decision. */
  alarmFailed(): void {
    this.alarmAt = undefined;
  }

  /** Deletes completed scripts the server never deleted once they are older than the retention, a batch at a time. */
  private prune(now: number): void {
    const batch = pruneBatch(db.expiredScripts(this.sql, retentionCutoff(now, this.limits.retentionMs), PRUNE_SCRIPTS));
    if (batch.length === 0) return;
    this.write(() => {
      for (const ticket of batch) db.deleteScript(this.sql, ticket);
    });
    for (const ticket of batch) {
      this.send({ type: "delete_workspace", ticket });
      this.port.notify(ticket);
    }
  }

  private dueAt(): number | null {
    const due = nextAlarm({
      coreDeadline: nextDeadline(this.state),
      heartbeatCheckAt: this.heartbeatCheckAt,
      oldestCompletion: db.oldestCompletion(this.sql),
      retentionMs: this.limits.retentionMs,
    });
    const report = this.reportDue();
    return report !== null && (due === null || report < due) ? report : due;
  }

  private scheduleAlarm(): void {
    const due = this.dueAt();
    if (due === this.alarmAt) return;
    this.alarmAt = due;
    this.port.setAlarm(due);
  }

  // ---------------------------------------------------------------- the report to the registry

  /** The machine's summary for the fleet list, as it stands. */
  summary(abandoned: { count: number; oldest: number | null } = this.abandoned): SummaryCore {
    return summarize(this.state, {
      connected: this.connectionId !== null,
      draining: this.connectionId !== null && this.runnerInfo?.draining === true,
      runnerVersion: this.runnerInfo?.version ?? null,
      abandoned: abandoned.count,
      oldestAbandonedAt: abandoned.oldest,
    });
  }

  /** True while the registry lacks the report's current version (or events). */
  reportDirty(): boolean {
    return this.reportState.version > this.reportAccepted.version;
  }

  /**
   * Inside a decision's transaction: the report's next version when the decision recorded events or changed the
   * summary (stored now, with the decision), or null when the registry has nothing new to learn.
   */
  private nextReport(now: number, recorded: boolean, abandoned: { count: number; oldest: number | null }): ReportState | null {
    const key = summaryKey(this.summary(abandoned));
    if (!recorded && key === this.reportState.key) return null;
    const next = { version: this.reportState.version + 1, changedAt: now, key };
    db.setMeta(this.sql, "report", JSON.stringify(next));
    return next;
  }

  /** The report's new version was stored: it is pushed soon, and retried by the alarm should that push not happen. */
  private reportChanged(report: ReportState, now: number): void {
    this.reportState = report;
    this.reportRetryAt ??= now + REPORT_RETRY_MS;
  }

  /**
   * After a load: when the summary differs from the one last reported (the runner connection did not survive a
   * restart, or the machine predates reports), a new version is stored.
   */
  private checkSummary(now: number): void {
    const key = summaryKey(this.summary());
    if (key !== this.reportState.key) {
      const next = { version: this.reportState.version + 1, changedAt: now, key };
      try {
        this.write(() => db.setMeta(this.sql, "report", JSON.stringify(next)));
      } catch (error) {
        if (!(error instanceof StorageUnavailable)) throw error;
        return;
      }
      this.reportState = next;
    }
  }

  /** When the alarm must push the report, or null. */
  private reportDue(): number | null {
    // A push under way sets the next time itself when it ends.
    if (!this.registered() || this.reportInFlight) return null;
    const inUse = this.connectionId !== null || this.state.scripts.size > 0 || this.abandoned.count > 0;
    return reportDueAt({ dirty: this.reportDirty(), retryAt: this.reportRetryAt, acceptedAt: this.reportAccepted.at, inUse });
  }

  /** Pushes the report after a short delay, unless a push is already planned or under way (it pushes again after). */
  private schedulePush(): void {
    if (this.reportInFlight || this.reportTimer !== null) return;
    this.reportTimer = this.port.schedule(() => {
      this.reportTimer = null;
      void this.pushReport(this.port.now());
    }, REPORT_PUSH_DELAY_MS);
  }

  /**
   * Pushes the summary and the events the registry lacks (off every request's path: nothing waits for it), then
   * stores what the registry accepted. A failure is retried by the alarm, with a backoff; never throws.
   */
  async pushReport(now: number): Promise<void> {
    this.reportTimer?.cancel();
    this.reportTimer = null;
    if (this.reportInFlight || !this.registered()) return;
    const incarnation = this.incarnation;
    const version = this.reportState.version;
    let events: ReportEvent[];
    try {
      events = db.unpushedEvents(this.sql, REPORT_EVENTS_PER_PUSH).map(reportEvent);
    } catch (error) {
      console.error("machine", this.state.machineId, "could not read its report:", describe(error));
      this.reportRetryAt = nextReportAttempt(now, ++this.reportFailures);
      this.scheduleAlarm();
      return;
    }
    const connected = this.connectionId !== null;
    const report: MachineReport = {
      machineId: this.state.machineId,
      incarnation,
      version,
      updatedAt: this.reportState.changedAt || now,
      summary: { ...this.summary(), lastSeenAt: connected ? (this.port.lastSeen() ?? this.runnerInfo?.lastMessageAt ?? null) : (this.runnerInfo?.lastMessageAt ?? null) },
      events,
    };
    this.reportInFlight = true;
    let ack: ReportAck | null = null;
    try {
      ack = await this.port.report(report);
    } catch (error) {
      console.error("machine", report.machineId, "could not report to the registry:", describe(error));
    } finally {
      this.reportInFlight = false;
    }
    // Removed (and maybe registered again) meanwhile: that storage is gone, nothing to record.
    if (!this.registered() || this.incarnation !== incarnation) return;
    const accepted = ack !== null && ack.summary !== "unknown";
    if (ack) {
      try {
        this.write(() => {
          if (events.length > 0) db.markEventsPushed(this.sql, events[events.length - 1]!.seq);
          if (accepted) db.setMeta(this.sql, "report_accepted", JSON.stringify({ version, at: now }));
        });
        if (accepted) this.reportAccepted = { version, at: now };
      } catch (error) {
        if (!(error instanceof StorageUnavailable)) throw error;
        ack = null;
      }
    }
    this.reportFailures = ack && accepted ? 0 : this.reportFailures + 1;
    const more = events.length === REPORT_EVENTS_PER_PUSH;
    if (!this.reportDirty() && !more) {
      this.reportRetryAt = null;
    } else if (ack && accepted) {
      // Changed again while the push was under way (or more events wait): push again.
      this.reportRetryAt = now + REPORT_RETRY_MS;
      this.schedulePush();
    } else {
      this.reportRetryAt = nextReportAttempt(now, this.reportFailures);
    }
    this.scheduleAlarm();
  }

  // ---------------------------------------------------------------- deciding and persisting

  /** Runs an event through the core, persists its decision in one transaction, then carries out its effects. */
  run(event: MachineEvent, writes: DecisionWrites = {}): void {
    this.decide(() => handle(this.state, event), writes, event.now);
  }

  private decide(decideNow: () => Decision, writes: DecisionWrites, now: number): void {
    let decision: Decision;
    try {
      decision = decideNow();
    } catch (error) {
      // The core may have changed memory before it threw: read it back before anything else happens.
      this.recover(error);
    }
    if (!writes.insert && !writes.also && !writes.before && decision.effects.length === 0 && decision.changes.length > 0 && decision.changes.every((c) => LAZY_CHANGES.has(c.type))) {
      this.lazy.push(...decision.changes);
      this.lazyTimer ??= setTimeout(() => this.flushLazy(), LAZY_WRITE_DELAY_MS);
      return;
    }
    const changes = this.lazy.length ? [...this.lazy, ...decision.changes] : decision.changes;
    const counters = { nextFence: this.state.nextFence, nextQueueSeq: this.state.nextQueueSeq, nextAuditSeq: this.state.nextAuditSeq };
    const movedCounters =
      counters.nextFence !== this.written.nextFence || counters.nextQueueSeq !== this.written.nextQueueSeq || counters.nextAuditSeq !== this.written.nextAuditSeq;
    let reported = false;
    if (changes.length > 0 || writes.also || writes.before || movedCounters) {
      const recorded = changes.some((c) => c.type === "audit");
      const summaryMayMove = writes.connection === true || changes.some((c) => SUMMARY_CHANGES.has(c.type));
      const abandonedMoved = changes.some((c) => ABANDONED_CHANGES.has(c.type));
      let abandoned = this.abandoned;
      let report: ReportState | null = null;
      this.write(() => {
        writes.before?.();
        for (const change of changes) db.writeChange(this.sql, change, change.type === "insert" ? writes.insert : undefined);
        if (movedCounters) db.writeCounters(this.sql, counters, this.written);
        writes.also?.();
        // The outbox: the report's new version is stored with the decision that changed it.
        if (abandonedMoved) abandoned = db.abandonedStats(this.sql);
        if (recorded || summaryMayMove) report = this.nextReport(now, recorded, abandoned);
      });
      this.written = counters;
      this.abandoned = abandoned;
      if (report) {
        this.reportChanged(report, now);
        reported = true;
      }
      this.clearLazy();
    }
    for (const effect of decision.effects) this.carryOut(effect);
    this.scheduleAlarm();
    if (reported) this.schedulePush();
  }

  /** Writes the lazy changes waiting in memory. */
  flushLazy(): void {
    if (this.lazyTimer !== null) clearTimeout(this.lazyTimer);
    this.lazyTimer = null;
    if (this.lazy.length === 0) return;
    const changes = this.lazy;
    try {
      this.write(() => {
        for (const change of changes) db.writeChange(this.sql, change);
      });
      this.lazy = [];
    } catch (error) {
      // Memory was read back and the runner disconnected: it sends `started` again after it reconnects.
      if (!(error instanceof StorageUnavailable)) throw error;
    }
  }

  private clearLazy(): void {
    if (this.lazyTimer !== null) clearTimeout(this.lazyTimer);
    this.lazyTimer = null;
    this.lazy = [];
  }

  /** Runs `body` in one transaction; when it fails nothing of it is kept, and memory is read back from storage. */
  private write<T>(body: () => T): T {
    try {
      return this.storage.transactionSync(body);
    } catch (error) {
      this.recover(new StorageUnavailable(`storage failed: ${describe(error)}`, { cause: error }));
    }
  }

  /**
   * Brings memory back to what storage holds after a failure, then throws `error`. Lazy changes are dropped (the
   * runner repeats what they came from), and the runner connection is closed: its frames since the failure may
   * have been decided against a state that was never stored, so it reconnects and resumes from its inventory.
   */
  private recover(error: unknown): never {
    this.clearLazy();
    this.alarmAt = undefined;
    const hadRunner = this.connectionId !== null;
    this.connectionId = null;
    this.heartbeatCheckAt = null;
    try {
      this.readState();
    } catch (readError) {
      this.port.reset(`machine storage failed (${describe(error)}) and could not be read back: ${describe(readError)}`);
      throw error;
    }
    if (hadRunner) this.port.closeRunner(STORAGE_FAILURE_CLOSE, "the control plane could not store a change; reconnect");
    throw error;
  }

  // ---------------------------------------------------------------- effects

  private carryOut(effect: Effect): void {
    switch (effect.type) {
      case "dispatch": {
        const payloadJson = db.getPayloadJson(this.sql, effect.ticket);
        if (payloadJson === null || this.connectionId === null) return;
        // The payload was validated on the way in; splice it in without serialising it again.
        this.port.send(`{"type":"dispatch","ticket":${JSON.stringify(effect.ticket)},"fence":${effect.fence},"script":${payloadJson}}`);
        return;
      }
      case "welcome":
        this.send(
          welcomeFor(this.runnerInfo?.protocol ?? PROTOCOL_VERSION, {
            machineId: this.state.machineId,
            connectionId: this.connectionId ?? "",
            heartbeatMs: HEARTBEAT_MS,
            resume: effect.resume,
            watch: effect.watch,
          }),
        );
        return;
      case "cancel":
        this.send({ type: "cancel", ticket: effect.ticket, fence: effect.fence });
        return;
      case "abandon":
        this.send({ type: "abandon", ticket: effect.ticket, fence: effect.fence, killProcess: effect.killProcess });
        return;
      case "ack":
        this.send({ type: "ack", ticket: effect.ticket, fence: effect.fence, nextSequence: effect.nextSequence });
        return;
      case "exit_ack":
        this.send({ type: "exit_ack", ticket: effect.ticket, fence: effect.fence });
        return;
      case "close":
        this.port.closeRunner(effect.code, effect.reason);
        return;
      case "notify":
        this.port.notify(effect.ticket);
        return;
      default: {
        const unreachable: never = effect;
        throw new Error(`unhandled effect ${JSON.stringify(unreachable)}`);
      }
    }
  }

  private send(message: ControlMessage): void {
    this.port.send(JSON.stringify(message));
  }
}

/** A stored audit event as the registry receives it (the action was written by this code, from the closed union). */
function reportEvent(row: db.AuditRow): ReportEvent {
  return { seq: row.seq, ticket: row.ticket, action: row.action as AuditAction, actor: row.actor, reason: row.reason, at: row.at };
}

function parseJson<T>(text: string | null): T | null {
  if (text === null) return null;
  try {
    return JSON.parse(text) as T;
  } catch {
    return null;
  }
}

/** What inventory classification needs of a stored script row. */
function storedScript(row: db.ScriptRow | null): StoredScript | null {
  if (!row) return null;
  let reason: CompletionReason | null = null;
  try {
    reason = row.reason ? (JSON.parse(row.reason) as CompletionReason) : null;
  } catch {
    reason = null;
  }
  return { state: row.state, fence: row.fence, reason };
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The welcome in the version the runner spoke: a version-1 runner parses it strictly, so it gets none of version
 * 2's fields (a kill requested while it was away is then not carried out: it predates kill delivery).
 */
export function welcomeFor(
  protocol: number,
  welcome: Omit<Extract<ControlMessage, { type: "welcome" }>, "type" | "protocol">,
): Extract<ControlMessage, { type: "welcome" }> {
  if (protocol >= 2) return { type: "welcome", protocol, ...welcome };
  return {
    type: "welcome",
    protocol: 1,
    ...welcome,
    resume: welcome.resume.map(({ ticket, fence, action, nextSequence }) => ({ ticket, fence, action, nextSequence })),
    watch: welcome.watch.map(({ ticket, fence, pid }) => ({ ticket, fence, pid })),
  };
}
