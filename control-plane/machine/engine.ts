/**
 * The machine engine: one machine's state and storage, without the platform. It loads the state, hands every
 * event to the pure core, persists each decision in one storage transaction, and carries out the decision's
 * effects through a small port that the Durable Object implements (send to the runner, close its connection,
 * wake waiting requests, set the alarm). A write that fails rolls back whole, and memory is read back from
 * storage, so memory never runs ahead of what is stored: the request gets 503 `storage_unavailable`, the runner
 * reconnects and resumes.
 */
import { LIMITS, type MachineView, type ScriptStatus } from "../../shared/api.js";
import { CloseCode, PROTOCOL_VERSION, type ControlMessage, type RunnerMessage } from "../../shared/protocol.js";
import { constantTimeEqual } from "../crypto.js";
import type { Storage } from "../sql.js";
import { storedOutcome, type StoredScript } from "./core/inventory.js";
import { emptyState, handle, LAZY_CHANGES, nextDeadline, restoreState, type Change, type Decision, type Effect, type MachineEvent, type MachineState } from "./core/machine-core.js";
import { checkLiveness, DEAD_AFTER_MS, HEARTBEAT_MS, nextAlarm, pruneBatch, PRUNE_SCRIPTS, retentionCutoff } from "./core/policy.js";
import { onRunnerReport, type RunnerReport } from "./core/runner-reports.js";
import type { CompletionReason } from "../../shared/exit-codes.js";
import type { MachineLimits } from "./limits.js";
import { readLogs } from "./logs.js";
import { fail, ok, storageUnavailable, unknownScript, type RpcResult } from "./results.js";
import * as db from "./storage.js";
import { machineView, scriptStatus, STATUS_ENVELOPE_BYTES } from "./views.js";

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
}

/** What `startScript` receives from the edge, already validated. */
export interface StartInput {
  ticket: string;
  requestHash: string;
  payloadJson: string;
  isolation: "full" | "none";
  mutexName: string;
  mutexTimeoutMs: number;
  taskId: string | null;
  waitMs: number;
}

/** What one decision writes besides its changes. */
interface DecisionWrites {
  /** The row of a script the decision inserts. */
  insert?: db.NewScriptRow;
  /** Bookkeeping that belongs in the same transaction. */
  also?: () => void;
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
  private written: db.Counters = { nextFence: 1, nextQueueSeq: 1 };

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
  rearm(): void {
    const stored = this.alarmAt;
    const due = this.dueAt();
    if (stored !== null && stored !== undefined && (due === null || due > stored)) return;
    this.scheduleAlarm();
  }

  private readState(): void {
    const counters = db.readCounters(this.sql);
    this.state = restoreState(db.getMeta(this.sql, "machine_id") ?? "", db.loadActiveScripts(this.sql), counters);
    this.written = counters;
    const info = db.getMeta(this.sql, "runner_info");
    this.runnerInfo = info ? (JSON.parse(info) as RunnerInfo) : null;
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
    this.state.runner = { runnerId: this.runnerInfo.runnerId };
    this.heartbeatCheckAt = lastSeen + DEAD_AFTER_MS;
  }

  /** The recorded runner connection did not survive (the object restarted): the runner will reconnect. */
  dropStoredConnection(): void {
    this.write(() => db.deleteMeta(this.sql, "current_connection"));
  }

  // ---------------------------------------------------------------- the runner token

  /** Registers the machine if new and sets the hash of its runner token (the previous token stops working). */
  setRunnerToken(machineId: string, tokenHash: string): void {
    const isNew = !this.registered();
    this.write(() => {
      if (isNew) {
        db.migrate(this.sql);
        db.setMeta(this.sql, "machine_id", machineId);
      }
      db.setMeta(this.sql, "runner_token_hash", tokenHash);
    });
    if (isNew) this.readState();
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
      },
    };
    return this.request(() => {
      this.run(event, { insert: { requestHash: input.requestHash, payloadJson: input.payloadJson } });
      return { created: true };
    });
  }

  /** Cancels a script (see the core); answers its status. */
  cancel(ticket: string, abandonAfterMs: number | null, now: number): RpcResult<ScriptStatus> {
    if (!db.getScript(this.sql, ticket)) return unknownScript(ticket);
    return this.request(() => {
      this.run({ type: "cancel", ticket, abandonAfterMs, now });
      return this.page(db.getScript(this.sql, ticket)!, 0, LIMITS.logPageLines);
    });
  }

  /** Abandons a script (see the core); answers its status. */
  abandon(ticket: string, killProcess: boolean, now: number): RpcResult<ScriptStatus> {
    if (!db.getScript(this.sql, ticket)) return unknownScript(ticket);
    return this.request(() => {
      this.run({ type: "abandon", ticket, killProcess, now });
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
    return scriptStatus(row, logSequence, readLogs(this.sql, row.ticket, logSequence, limit, LIMITS.logPageBytes - STATUS_ENVELOPE_BYTES));
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
    if (hello.protocol !== PROTOCOL_VERSION) {
      return { code: CloseCode.UnsupportedProtocol, reason: `protocol ${hello.protocol} is not supported; this control plane speaks ${PROTOCOL_VERSION}` };
    }
    if (!this.tokenMatches(tokenHash)) return { code: CloseCode.TokenRevoked, reason: "runner token revoked" };
    return null;
  }

  /** A runner completed its handshake on `connectionId`: records it and answers with a welcome. */
  runnerConnected(hello: Extract<RunnerMessage, { type: "hello" }>, connectionId: string, now: number): void {
    this.connectionId = connectionId;
    this.runnerInfo = { runnerId: hello.runnerId, version: hello.version, capabilities: hello.capabilities, connectedAt: now, lastMessageAt: now };
    this.heartbeatCheckAt = now + DEAD_AFTER_MS;
    const inventory = hello.inventory.map((item) => ({
      ticket: item.ticket,
      fence: item.fence,
      stored: this.state.scripts.has(item.ticket) ? ("none" as const) : storedOutcome(storedScript(db.getScript(this.sql, item.ticket)), item.fence),
    }));
    const abandoned = db.abandonedProcesses(db.listAbandoned(this.sql));
    const info = JSON.stringify(this.runnerInfo);
    this.decide(() => handle(this.state, { type: "runner_connected", runnerId: hello.runnerId, inventory, abandoned, now }), {
      also: () => {
        db.setMeta(this.sql, "current_connection", connectionId);
        db.setMeta(this.sql, "runner_info", info);
      },
    });
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
    });
  }

  /** A frame arrived from the connected runner (a sign of life). */
  touched(now: number): void {
    if (this.runnerInfo) this.runnerInfo.lastMessageAt = now;
  }

  /** A report from the connected runner (anything but hello). */
  report(report: RunnerReport, now: number): void {
    this.decide(() => onRunnerReport(this.state, report, { now, maxOutputBytes: this.limits.maxOutputBytes }));
  }

  // ---------------------------------------------------------------- the alarm

  /** Every deadline: the runner's liveness (`lastSeen`: its last sign of life, null when none is connected), retention, the core's. */
  alarm(now: number, lastSeen: number | null): void {
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
    return nextAlarm({
      coreDeadline: nextDeadline(this.state),
      heartbeatCheckAt: this.heartbeatCheckAt,
      oldestCompletion: db.oldestCompletion(this.sql),
      retentionMs: this.limits.retentionMs,
    });
  }

  private scheduleAlarm(): void {
    const due = this.dueAt();
    if (due === this.alarmAt) return;
    this.alarmAt = due;
    this.port.setAlarm(due);
  }

  // ---------------------------------------------------------------- deciding and persisting

  /** Runs an event through the core, persists its decision in one transaction, then carries out its effects. */
  run(event: MachineEvent, writes: DecisionWrites = {}): void {
    this.decide(() => handle(this.state, event), writes);
  }

  private decide(decideNow: () => Decision, writes: DecisionWrites = {}): void {
    let decision: Decision;
    try {
      decision = decideNow();
    } catch (error) {
      // The core may have changed memory before it threw: read it back before anything else happens.
      this.recover(error);
    }
    if (!writes.insert && !writes.also && decision.effects.length === 0 && decision.changes.length > 0 && decision.changes.every((c) => LAZY_CHANGES.has(c.type))) {
      this.lazy.push(...decision.changes);
      this.lazyTimer ??= setTimeout(() => this.flushLazy(), LAZY_WRITE_DELAY_MS);
      return;
    }
    const changes = this.lazy.length ? [...this.lazy, ...decision.changes] : decision.changes;
    const counters = { nextFence: this.state.nextFence, nextQueueSeq: this.state.nextQueueSeq };
    const movedCounters = counters.nextFence !== this.written.nextFence || counters.nextQueueSeq !== this.written.nextQueueSeq;
    if (changes.length > 0 || writes.also || movedCounters) {
      this.write(() => {
        for (const change of changes) db.writeChange(this.sql, change, change.type === "insert" ? writes.insert : undefined);
        if (movedCounters) db.writeCounters(this.sql, counters, this.written);
        writes.also?.();
      });
      this.written = counters;
      this.clearLazy();
    }
    for (const effect of decision.effects) this.carryOut(effect);
    this.scheduleAlarm();
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
      this.port.reset(`machine storage failed and could not be read back: ${describe(readError)}`);
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
        this.send({
          type: "welcome",
          protocol: PROTOCOL_VERSION,
          machineId: this.state.machineId,
          connectionId: this.connectionId ?? "",
          heartbeatMs: HEARTBEAT_MS,
          resume: effect.resume,
          watch: effect.watch,
        });
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
