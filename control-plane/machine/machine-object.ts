/**
 * MachineObject: one Durable Object per machine. It owns the machine's isolation mutexes, its scripts,
 * their logs and the runner's WebSocket. Entry points stay thin: load state, hand the event to the pure
 * core (`core/machine-core.ts`), persist its changes (`storage.ts`) and carry out its effects.
 *
 * Everything that must survive hibernation lives in SQLite, in the socket's attachment or in the alarm;
 * in-memory fields are caches rebuilt in the constructor.
 */
import { DurableObject } from "cloudflare:workers";
import { LIMITS, type LogLine, type MachineView, type MutexView, type ScriptStatus, type ScriptSummary } from "../../shared/api.js";
import { exitCodeFor, type CompletionReason } from "../../shared/exit-codes.js";
import {
  CloseCode,
  HEARTBEAT_PING,
  HEARTBEAT_PONG,
  PROTOCOL_VERSION,
  blockLines,
  outputLineCount,
  parseRunnerMessage,
  splitBlock,
  type ControlMessage,
  type Outcome,
  type OutputBlock,
  type OutputLine,
  type RunnerMessage,
} from "../../shared/protocol.js";
import { bearerToken, constantTimeEqual, randomToken, sha256Hex } from "../crypto.js";
import { machineLimits, type Env, type MachineLimits } from "../env.js";
import {
  emptyState,
  handle,
  nextDeadline,
  restoreState,
  type Decision,
  type InventoryEntry,
  type MachineEvent,
  type MachineState,
} from "./core/machine-core.js";
import { heldMode } from "./core/mutex.js";
import { fail, ok, unknownMachine, unknownScript, type RpcResult } from "./results.js";
import * as db from "./storage.js";

/** How often runners are told to send a heartbeat ping. */
const HEARTBEAT_MS = 10_000;
/** A runner socket with no ping and no message for this long is dead (half-open) and is closed. */
const DEAD_AFTER_MS = 25_000;
/** Expired scripts pruned per alarm, so that one alarm stays short. */
const PRUNE_BATCH = 200;
/** The longest a reported pid waits in memory for a write to go with (see `unwrittenPids`). */
const PID_WRITE_DELAY_MS = 1_000;
/** The tag every runner socket carries. */
const RUNNER_TAG = "runner";

/** What a runner socket remembers across hibernation. */
interface SocketAttachment {
  connectionId: string;
  tokenHash: string;
  connectedAt: number;
  /** Set once the runner's `hello` was accepted. */
  runnerId: string | null;
}

/** The runner's last known identity, kept in meta. */
interface RunnerInfo {
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

/** One page of a live stream. */
export interface StreamPage {
  logs: LogLine[];
  nextLogSequence: number;
  /** The final status (without logs) once the script is complete and every line was returned. */
  final: ScriptStatus | null;
}

/** The Durable Object behind each machine. */
export class MachineObject extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  private state: MachineState = emptyState();
  private machineId = "";
  private alarmAt: number | null = null;
  private runnerSocket: WebSocket | null = null;
  private runnerInfo: RunnerInfo | null = null;
  private readonly attachments = new WeakMap<WebSocket, SocketAttachment>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly limits: MachineLimits;
  /** When the runner socket is next checked for life; null while no runner is connected. */
  private heartbeatCheckAt: number | null = null;
  /**
   * Pids from `started` reports not yet written: each is written with the next change to storage (or after
   * `PID_WRITE_DELAY_MS`), so that a dispatch costs no commit of its own for it. Nothing depends on the pid
   * before that write, and the runner keeps sending `started` after every reconnect until an acknowledgement
   * shows that it arrived; every acknowledgement goes out after a write that included the pid.
   */
  private readonly unwrittenPids = new Map<string, { fence: number; pid: number }>();
  private pidWriteTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.limits = machineLimits(env);
    // Heartbeats are answered by the runtime without waking the object.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(HEARTBEAT_PING, HEARTBEAT_PONG));
    void ctx.blockConcurrencyWhile(async () => {
      this.alarmAt = await ctx.storage.getAlarm();
      if (db.isInitialized(this.sql)) {
        db.migrate(this.sql);
        this.load();
        // Re-arm from storage: every deadline lives in SQLite, so the alarm can always be rebuilt.
        this.scheduleAlarm();
      }
    });
  }

  /** Rebuilds the in-memory caches from storage and the live sockets. */
  private load(): void {
    this.machineId = db.getMeta(this.sql, "machine_id") ?? "";
    this.state = restoreState(this.machineId, db.loadActiveScripts(this.sql), {
      nextFence: Number(db.getMeta(this.sql, "next_fence") ?? "1"),
      nextQueueSeq: Number(db.getMeta(this.sql, "next_queue_seq") ?? "1"),
    });
    const info = db.getMeta(this.sql, "runner_info");
    this.runnerInfo = info ? (JSON.parse(info) as RunnerInfo) : null;
    const current = db.getMeta(this.sql, "current_connection");
    this.runnerSocket = null;
    for (const ws of this.ctx.getWebSockets(RUNNER_TAG)) {
      const attachment = this.attachment(ws);
      if (attachment && attachment.connectionId === current && attachment.runnerId) this.runnerSocket = ws;
    }
    if (this.runnerSocket && this.runnerInfo) {
      this.state.runner = { runnerId: this.runnerInfo.runnerId };
      this.heartbeatCheckAt = Date.now() + DEAD_AFTER_MS;
    } else if (current) {
      // The socket did not survive (the object was restarted): the runner will reconnect.
      db.deleteMeta(this.sql, "current_connection");
    }
  }

  private registered(): boolean {
    return this.machineId !== "";
  }

  // ---------------------------------------------------------------- RPC: machines

  /** Creates the machine if new and issues a fresh runner token, revoking (and disconnecting) the old one. */
  async issueRunnerToken(machineId: string): Promise<RpcResult<{ machineId: string; runnerToken: string }>> {
    const token = randomToken("trt_");
    const hash = await sha256Hex(token);
    if (!this.registered()) {
      db.migrate(this.sql);
      db.setMeta(this.sql, "machine_id", machineId);
      this.load();
    }
    db.setMeta(this.sql, "runner_token_hash", hash);
    for (const ws of this.ctx.getWebSockets(RUNNER_TAG)) {
      this.closeSocket(ws, CloseCode.TokenRevoked, "runner token revoked");
    }
    return ok({ machineId: this.machineId, runnerToken: token });
  }

  /** The machine view; `withScripts` false for the machine list. */
  async view(machineId: string, withScripts: boolean): Promise<RpcResult<MachineView>> {
    if (!this.registered()) return unknownMachine(machineId);
    const info = this.runnerInfo;
    const connected = this.runnerSocket !== null;
    const lastSeen = this.runnerSocket ? this.lastSeen(this.runnerSocket) : (info?.lastMessageAt ?? null);
    const mutexes: MutexView[] = [...this.state.mutexes.values()]
      .map((m) => ({ name: m.name, mode: heldMode(m), holders: [...m.holders.keys()], waiting: m.queue.map((w) => w.ticket) }))
      .sort((a, b) => a.name.localeCompare(b.name));
    const view: MachineView = {
      machineId: this.machineId,
      runner: {
        connected,
        version: info?.version ?? null,
        connectedAt: info ? iso(info.connectedAt) : null,
        lastSeenAt: lastSeen !== null ? iso(lastSeen) : null,
        capabilities: info?.capabilities ?? [],
      },
      mutexes,
      abandoned: db.listAbandoned(this.sql).map((row) => ({ ticket: row.ticket, pid: row.pid, abandonedAt: iso(row.abandoned_at) })),
    };
    if (withScripts) view.scripts = db.listScripts(this.sql, LIMITS.viewScripts).map(summary);
    return ok(view);
  }

  // ---------------------------------------------------------------- RPC: scripts

  /** Starts a script (idempotent by ticket); optionally waits up to `waitMs` for it to complete. */
  async startScript(machineId: string, input: StartInput): Promise<RpcResult<{ created: boolean; status: ScriptStatus }>> {
    if (!this.registered()) return unknownMachine(machineId);
    const existing = db.getScript(this.sql, input.ticket);
    let created = false;
    if (existing) {
      if (existing.request_hash !== input.requestHash) {
        return fail(409, "ticket_conflict", `Ticket ${input.ticket} already names a different script on this machine.`);
      }
    } else {
      const decision = handle(this.state, {
        type: "start",
        now: Date.now(),
        script: {
          ticket: input.ticket,
          mode: input.isolation === "full" ? "exclusive" : "shared",
          mutexName: input.mutexName,
          taskId: input.taskId,
          mutexTimeoutMs: input.mutexTimeoutMs,
        },
      });
      this.apply(decision, { requestHash: input.requestHash, payloadJson: input.payloadJson });
      created = true;
    }
    if (input.waitMs > 0) await this.waitForCompletion(input.ticket, input.waitMs);
    const row = db.getScript(this.sql, input.ticket);
    if (!row) return unknownScript(input.ticket);
    return ok({ created, status: this.status(row, 0, LIMITS.logPageLines) });
  }

  /** Cancels a script: a pending one completes at once (-43); a running one is stopped by its runner. */
  async cancelScript(machineId: string, ticket: string, abandonAfterMs: number | null): Promise<RpcResult<ScriptStatus>> {
    if (!this.registered()) return unknownMachine(machineId);
    if (!db.getScript(this.sql, ticket)) return unknownScript(ticket);
    this.run({ type: "cancel", ticket, abandonAfterMs, now: Date.now() });
    return ok(this.status(db.getScript(this.sql, ticket)!, 0, LIMITS.logPageLines));
  }

  /**
   * Abandons a script: a running one completes at once with -48 and its mutex goes to the next waiter,
   * even with no runner connected; the runner is told to stop tracking it (and to kill it only when asked).
   */
  async abandonScript(machineId: string, ticket: string, killProcess: boolean): Promise<RpcResult<ScriptStatus>> {
    if (!this.registered()) return unknownMachine(machineId);
    if (!db.getScript(this.sql, ticket)) return unknownScript(ticket);
    this.run({ type: "abandon", ticket, killProcess, now: Date.now() });
    return ok(this.status(db.getScript(this.sql, ticket)!, 0, LIMITS.logPageLines));
  }

  /** A script's status with one page of logs. */
  async getStatus(machineId: string, ticket: string, logSequence: number, limit: number): Promise<RpcResult<ScriptStatus>> {
    if (!this.registered()) return unknownMachine(machineId);
    const row = db.getScript(this.sql, ticket);
    if (!row) return unknownScript(ticket);
    return ok(this.status(row, logSequence, limit));
  }

  /** Waits up to `waitMs` for new lines (or completion) after `logSequence`, then returns them. */
  async streamPage(machineId: string, ticket: string, logSequence: number, waitMs: number): Promise<RpcResult<StreamPage>> {
    if (!this.registered()) return unknownMachine(machineId);
    let row = db.getScript(this.sql, ticket);
    if (!row) return unknownScript(ticket);
    if (row.state !== "complete" && row.log_next <= logSequence) {
      await this.waitForChange(ticket, waitMs);
      row = db.getScript(this.sql, ticket);
      if (!row) return unknownScript(ticket);
    }
    const page = this.status(row, logSequence, LIMITS.logPageLines);
    const final = page.state === "complete" && !page.hasMoreLogs ? { ...page, logs: [] } : null;
    return ok({ logs: page.logs, nextLogSequence: page.nextLogSequence, final });
  }

  /** Returns a complete script's final status with its remaining logs, then deletes it. */
  async completeScript(machineId: string, ticket: string, logSequence: number): Promise<RpcResult<ScriptStatus>> {
    if (!this.registered()) return unknownMachine(machineId);
    const row = db.getScript(this.sql, ticket);
    if (!row) return unknownScript(ticket);
    if (row.state !== "complete") {
      return fail(409, "not_complete", `Script ${ticket} is ${row.state}; only a complete script can be deleted.`);
    }
    const status = this.status(row, logSequence, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    db.deleteScript(this.sql, ticket);
    this.send({ type: "delete_workspace", ticket });
    this.notify(ticket);
    return ok(status);
  }

  private status(row: db.ScriptRow, logSequence: number, limit: number, maxBytes: number = LIMITS.logPageBytes): ScriptStatus {
    const logs = db.readLogs(this.sql, row.ticket, logSequence, limit, maxBytes);
    const last = logs[logs.length - 1];
    const nextLogSequence = last ? last.sequence + 1 : Math.min(logSequence, row.log_next);
    return {
      ticket: row.ticket,
      state: row.state,
      exitCode: row.state === "complete" ? row.exit_code : null,
      logs,
      nextLogSequence,
      hasMoreLogs: nextLogSequence < row.log_next,
    };
  }

  // ---------------------------------------------------------------- waiting

  private waitForChange(ticket: string, waitMs: number): Promise<void> {
    return new Promise((resolve) => {
      let set = this.waiters.get(ticket);
      if (!set) {
        set = new Set();
        this.waiters.set(ticket, set);
      }
      const waiters = set;
      const done = () => {
        clearTimeout(timer);
        waiters.delete(done);
        if (waiters.size === 0 && this.waiters.get(ticket) === waiters) this.waiters.delete(ticket);
        resolve();
      };
      const timer = setTimeout(done, waitMs);
      waiters.add(done);
    });
  }

  private async waitForCompletion(ticket: string, waitMs: number): Promise<void> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const row = db.getScript(this.sql, ticket);
      const left = deadline - Date.now();
      if (!row || row.state === "complete" || left <= 0) return;
      await this.waitForChange(ticket, left);
    }
  }

  private notify(ticket: string): void {
    const set = this.waiters.get(ticket);
    if (!set) return;
    for (const wake of [...set]) wake();
  }

  // ---------------------------------------------------------------- the core's decisions

  /** Runs an event through the core and applies the decision. */
  private run(event: MachineEvent): void {
    this.apply(handle(this.state, event));
  }

  /** Writes the pids that `started` reports left in memory (see `unwrittenPids`). */
  private writePids(): void {
    if (this.pidWriteTimer !== null) clearTimeout(this.pidWriteTimer);
    this.pidWriteTimer = null;
    for (const [ticket, { fence, pid }] of this.unwrittenPids) {
      db.setPid(this.sql, ticket, fence, pid);
      // Abandoned before its pid was written: the abandoned list gets it instead.
      db.setAbandonedPid(this.sql, ticket, fence, pid);
    }
    this.unwrittenPids.clear();
  }

  /** Persists a decision's changes, then carries out its effects. */
  private apply(decision: Decision, insert?: { requestHash: string; payloadJson: string }): void {
    this.writePids();
    for (const change of decision.changes) {
      switch (change.type) {
        case "insert":
          if (!insert) throw new Error("insert without a payload");
          db.insertScript(this.sql, change.script, insert.requestHash, insert.payloadJson);
          break;
        case "granted":
          db.markGranted(this.sql, change.ticket);
          break;
        case "dispatched":
          db.markDispatched(this.sql, change.ticket, change.fence, change.runnerId, change.startedAt);
          break;
        case "completed":
          db.markCompleted(this.sql, change.ticket, exitCodeFor(change.reason), change.reason, change.at);
          break;
        case "cancel_requested":
          db.markCancelRequested(this.sql, change.ticket, change.abandonDeadline);
          break;
        case "abandoned":
          db.insertAbandoned(this.sql, change.ticket, change.fence, change.at);
          break;
        case "log":
          db.appendLogs(this.sql, change.ticket, [{ source: "debug", text: change.text, occurred: iso(change.at) }], 0);
          break;
        default: {
          const unreachable: never = change;
          throw new Error(`unhandled change ${JSON.stringify(unreachable)}`);
        }
      }
    }
    if (decision.changes.length > 0) {
      db.setMeta(this.sql, "next_fence", String(this.state.nextFence));
      db.setMeta(this.sql, "next_queue_seq", String(this.state.nextQueueSeq));
    }
    for (const effect of decision.effects) {
      switch (effect.type) {
        case "dispatch":
          this.sendDispatch(effect.ticket, effect.fence);
          break;
        case "resume":
          this.send({
            type: "welcome",
            protocol: PROTOCOL_VERSION,
            machineId: this.machineId,
            connectionId: this.runnerSocket ? (this.attachment(this.runnerSocket)?.connectionId ?? "") : "",
            heartbeatMs: HEARTBEAT_MS,
            resume: effect.decisions.map((d) => ({
              ...d,
              nextSequence: d.action === "continue" ? (db.getScript(this.sql, d.ticket)?.runner_next ?? 0) : 0,
            })),
            watch: db
              .listAbandoned(this.sql)
              .flatMap((row) => (row.pid === null ? [] : [{ ticket: row.ticket, fence: row.fence, pid: row.pid }])),
          });
          break;
        case "cancel":
          this.send({ type: "cancel", ticket: effect.ticket, fence: effect.fence });
          break;
        case "abandon":
          this.send({ type: "abandon", ticket: effect.ticket, fence: effect.fence, killProcess: effect.killProcess });
          break;
        case "notify":
          this.notify(effect.ticket);
          break;
        default: {
          const unreachable: never = effect;
          throw new Error(`unhandled effect ${JSON.stringify(unreachable)}`);
        }
      }
    }
    this.scheduleAlarm();
  }

  private sendDispatch(ticket: string, fence: number): void {
    const payloadJson = db.getPayloadJson(this.sql, ticket);
    if (payloadJson === null || !this.runnerSocket) return;
    // The payload was validated on the way in; splice it in without re-serialising it.
    this.sendRaw(`{"type":"dispatch","ticket":${JSON.stringify(ticket)},"fence":${fence},"script":${payloadJson}}`);
  }

  /**
   * Keeps the single alarm at the earliest deadline: the core's (mutex timeouts, abandon after cancel),
   * the runner's liveness check, and the retention of completed scripts.
   */
  private scheduleAlarm(): void {
    const oldest = db.oldestCompletion(this.sql);
    const candidates = [nextDeadline(this.state), this.heartbeatCheckAt, oldest === null ? null : oldest + this.limits.retentionMs];
    let due: number | null = null;
    for (const at of candidates) if (at !== null && (due === null || at < due)) due = at;
    if (due === this.alarmAt) return;
    this.alarmAt = due;
    if (due === null) void this.ctx.storage.deleteAlarm();
    else void this.ctx.storage.setAlarm(due);
  }

  /** Every deadline. Each due action is idempotent, so a repeated or early alarm is harmless. */
  override async alarm(): Promise<void> {
    if (!this.registered()) return;
    this.alarmAt = null;
    const now = Date.now();
    this.checkRunnerAlive(now);
    this.pruneExpired(now);
    this.run({ type: "tick", now });
  }

  /** Closes a runner socket that has been silent too long (a half-open connection), so that it reconnects. */
  private checkRunnerAlive(now: number): void {
    const ws = this.runnerSocket;
    if (!ws) {
      this.heartbeatCheckAt = null;
      return;
    }
    const lastSeen = this.lastSeen(ws);
    if (now - lastSeen >= DEAD_AFTER_MS) {
      this.closeSocket(ws, CloseCode.HeartbeatTimeout, `no heartbeat for ${now - lastSeen} ms`);
      this.heartbeatCheckAt = null;
    } else {
      this.heartbeatCheckAt = lastSeen + DEAD_AFTER_MS;
    }
  }

  /** The last sign of life on a runner socket: a heartbeat ping, a message, or the connection itself. */
  private lastSeen(ws: WebSocket): number {
    const pinged = this.ctx.getWebSocketAutoResponseTimestamp(ws)?.getTime() ?? 0;
    const attachment = this.attachment(ws);
    return Math.max(pinged, this.runnerInfo?.lastMessageAt ?? 0, attachment?.connectedAt ?? 0);
  }

  /** Deletes completed scripts the server never deleted once they are older than the retention. */
  private pruneExpired(now: number): void {
    for (const ticket of db.expiredScripts(this.sql, now - this.limits.retentionMs, PRUNE_BATCH)) {
      db.deleteScript(this.sql, ticket);
      this.send({ type: "delete_workspace", ticket });
      this.notify(ticket);
    }
  }

  // ---------------------------------------------------------------- runner socket

  /** The runner's WebSocket upgrade: authenticated here, where the token hash lives. */
  override async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const machineId = url.searchParams.get("machineId") ?? "";
    if (!this.registered()) return errorResponse(unknownMachine(machineId));
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return errorResponse(fail(400, "invalid_request", "The runner endpoint only accepts WebSocket upgrades."));
    }
    const presented = bearerToken(request.headers.get("Authorization"));
    const expected = db.getMeta(this.sql, "runner_token_hash");
    const presentedHash = presented ? await sha256Hex(presented) : "";
    if (!presented || !expected || !constantTimeEqual(presentedHash, expected)) {
      return new Response(JSON.stringify({ error: { code: "unauthorized", message: "Missing or invalid runner token for this machine." } }), {
        status: 401,
        headers: { "content-type": "application/json" },
      });
    }
    const pair = new WebSocketPair();
    const server = pair[1];
    const attachment: SocketAttachment = { connectionId: crypto.randomUUID(), tokenHash: presentedHash, connectedAt: Date.now(), runnerId: null };
    this.ctx.acceptWebSocket(server, [RUNNER_TAG]);
    server.serializeAttachment(attachment);
    this.attachments.set(server, attachment);
    return new Response(null, { status: 101, webSocket: pair[0] });
  }

  override async webSocketMessage(ws: WebSocket, data: string | ArrayBuffer): Promise<void> {
    const attachment = this.attachment(ws);
    if (!attachment) return this.closeSocket(ws, CloseCode.HandshakeRequired, "unknown connection");
    const parsed = parseRunnerMessage(data);
    if (!parsed.ok) return this.closeSocket(ws, parsed.code, parsed.reason);
    const message = parsed.message;
    if (attachment.runnerId === null) {
      if (message.type !== "hello") return this.closeSocket(ws, CloseCode.HandshakeRequired, "the first frame must be hello");
      return this.onHello(ws, attachment, message);
    }
    if (ws !== this.runnerSocket) return this.closeSocket(ws, CloseCode.Replaced, "a newer connection replaced this one");
    if (this.runnerInfo) this.runnerInfo.lastMessageAt = Date.now();
    switch (message.type) {
      case "hello":
        return this.closeSocket(ws, CloseCode.HandshakeRequired, "hello was already received");
      case "started":
        return this.onStarted(message);
      case "output":
        return this.onOutput(ws, message);
      case "exit":
        return this.onExit(ws, message);
      case "abandoned_exit":
        // The abandoned process is gone: it no longer needs to be listed as possibly running.
        return db.deleteAbandoned(this.sql, message.ticket, message.fence);
      default: {
        const unreachable: never = message;
        throw new Error(`unhandled runner message ${JSON.stringify(unreachable)}`);
      }
    }
  }

  override async webSocketClose(ws: WebSocket, code: number, reason: string): Promise<void> {
    this.forgetSocket(ws);
    // Answer the close so that the runner sees its own code instead of waiting for a timeout.
    if (code !== 1005 && code !== 1006 && code !== 1015) {
      try {
        ws.close(code, reason);
      } catch {
        // already closed
      }
    }
  }

  override async webSocketError(ws: WebSocket): Promise<void> {
    this.forgetSocket(ws);
  }

  private forgetSocket(ws: WebSocket): void {
    if (ws !== this.runnerSocket) return;
    this.runnerSocket = null;
    this.heartbeatCheckAt = null;
    db.deleteMeta(this.sql, "current_connection");
    if (this.runnerInfo) db.setMeta(this.sql, "runner_info", JSON.stringify(this.runnerInfo));
    this.run({ type: "runner_disconnected", now: Date.now() });
  }

  private onHello(ws: WebSocket, attachment: SocketAttachment, hello: Extract<RunnerMessage, { type: "hello" }>): void {
    if (hello.protocol !== PROTOCOL_VERSION) {
      return this.closeSocket(ws, CloseCode.UnsupportedProtocol, `protocol ${hello.protocol} is not supported; this control plane speaks ${PROTOCOL_VERSION}`);
    }
    if (attachment.tokenHash !== db.getMeta(this.sql, "runner_token_hash")) {
      return this.closeSocket(ws, CloseCode.TokenRevoked, "runner token revoked");
    }
    for (const other of this.ctx.getWebSockets(RUNNER_TAG)) {
      if (other !== ws) this.closeSocket(other, CloseCode.Replaced, "a newer connection replaced this one");
    }
    attachment.runnerId = hello.runnerId;
    ws.serializeAttachment(attachment);
    this.runnerSocket = ws;
    const now = Date.now();
    this.runnerInfo = { runnerId: hello.runnerId, version: hello.version, capabilities: hello.capabilities, connectedAt: now, lastMessageAt: now };
    db.setMeta(this.sql, "current_connection", attachment.connectionId);
    db.setMeta(this.sql, "runner_info", JSON.stringify(this.runnerInfo));
    this.heartbeatCheckAt = now + DEAD_AFTER_MS;
    const inventory: InventoryEntry[] = hello.inventory.map((item) => {
      const row = this.state.scripts.has(item.ticket) ? null : db.getScript(this.sql, item.ticket);
      let stored: InventoryEntry["stored"] = "none";
      if (row && row.state === "complete" && row.fence === item.fence) {
        stored = parseReason(row.reason)?.kind === "abandoned" ? "abandoned" : "completed";
      }
      return { ticket: item.ticket, fence: item.fence, stored };
    });
    this.run({ type: "runner_connected", runnerId: hello.runnerId, inventory, now });
  }

  /** True when the report belongs to the script's current dispatch (fencing). */
  private currentDispatch(ticket: string, fence: number): db.ScriptRow | null {
    const row = db.getScript(this.sql, ticket);
    return row && row.state === "running" && row.fence === fence ? row : null;
  }

  private onStarted(message: Extract<RunnerMessage, { type: "started" }>): void {
    if (!this.currentDispatch(message.ticket, message.fence)) {
      db.setAbandonedPid(this.sql, message.ticket, message.fence, message.pid);
      return;
    }
    this.unwrittenPids.set(message.ticket, { fence: message.fence, pid: message.pid });
    this.pidWriteTimer ??= setTimeout(() => this.writePids(), PID_WRITE_DELAY_MS);
  }

  private onOutput(ws: WebSocket, message: Extract<RunnerMessage, { type: "output" }>): void {
    // The ack below confirms `started` to the runner: the pid must be stored by then.
    this.writePids();
    const row = this.currentDispatch(message.ticket, message.fence);
    if (!row) return; // a stale dispatch or an abandoned script: it can change nothing
    if (message.sequence > row.runner_next) {
      return this.closeSocket(ws, CloseCode.OutOfOrder, `output for ${message.ticket} starts at ${message.sequence}, expected ${row.runner_next}`);
    }
    // A resend may repeat lines already stored: only those from `runner_next` on are new.
    const known = row.runner_next - message.sequence;
    const fresh = Math.max(0, outputLineCount(message) - known);
    if (fresh > 0) {
      if (message.blocks) this.storeBlocks(row.ticket, message.blocks, known);
      else {
        const lines = message.lines!.slice(known);
        db.appendLogs(this.sql, row.ticket, this.withinOutputCap(row, lines), lines.length);
      }
      this.notify(message.ticket);
    }
    this.send({ type: "ack", ticket: message.ticket, fence: message.fence, nextSequence: row.runner_next + fresh });
  }

  /**
   * Stores blocks after their first `skip` lines. A block is stored as it came (one row, no object per line)
   * unless it is too long for one row or reaches the output cap: then it goes line by line, cut and capped.
   */
  private storeBlocks(ticket: string, blocks: readonly OutputBlock[], skip: number): void {
    for (const whole of blocks) {
      if (skip >= whole.count) {
        skip -= whole.count;
        continue;
      }
      const block = skip > 0 ? splitBlock(whole, skip)[1] : whole;
      skip = 0;
      const row = db.getScript(this.sql, ticket)!;
      const size = block.text.length - (block.count - 1);
      if (!row.output_truncated && block.text.length <= db.MAX_BLOCK_CHARS && row.log_bytes + size <= this.limits.maxOutputBytes) {
        db.appendBlock(this.sql, ticket, block);
      } else {
        const lines = blockLines([block]);
        db.appendLogs(this.sql, ticket, this.withinOutputCap(row, lines), lines.length);
      }
    }
  }

  /**
   * The part of `lines` that still fits under the per-script output cap. Past the cap, lines are counted
   * (so the runner can forget them) but not stored, and one debug line says so.
   */
  private withinOutputCap(row: db.ScriptRow, lines: OutputLine[]): db.NewLogLine[] {
    if (row.output_truncated) return [];
    let bytes = row.log_bytes;
    const kept: db.NewLogLine[] = [];
    for (const line of lines) {
      bytes += line.text.length;
      if (bytes > this.limits.maxOutputBytes) {
        db.markOutputTruncated(this.sql, row.ticket);
        kept.push({
          source: "debug",
          text: `Output truncated: this script wrote more than ${this.limits.maxOutputBytes} bytes; later output is not stored.`,
          occurred: line.occurred,
        });
        return kept;
      }
      kept.push(line);
    }
    return kept;
  }

  private onExit(ws: WebSocket, message: Extract<RunnerMessage, { type: "exit" }>): void {
    const row = this.currentDispatch(message.ticket, message.fence);
    if (!row) {
      // Already stored (a resend after a lost exit_ack) or stale: acknowledge so the runner can forget it.
      this.send({ type: "exit_ack", ticket: message.ticket, fence: message.fence });
      return;
    }
    if (message.lineCount > row.runner_next) {
      return this.closeSocket(ws, CloseCode.OutOfOrder, `exit for ${message.ticket} before all of its output`);
    }
    this.run({ type: "exited", ticket: message.ticket, fence: message.fence, reason: reasonFromOutcome(message.outcome), now: Date.now() });
    this.send({ type: "exit_ack", ticket: message.ticket, fence: message.fence });
  }

  private attachment(ws: WebSocket): SocketAttachment | null {
    let attachment = this.attachments.get(ws);
    if (!attachment) {
      const raw: unknown = ws.deserializeAttachment();
      if (!isAttachment(raw)) return null;
      attachment = raw;
      this.attachments.set(ws, attachment);
    }
    return attachment;
  }

  private send(message: ControlMessage): void {
    this.sendRaw(JSON.stringify(message));
  }

  private sendRaw(frame: string): void {
    if (!this.runnerSocket) return;
    try {
      this.runnerSocket.send(frame);
    } catch {
      // The socket is closing; the runner resumes through its inventory when it reconnects.
    }
  }

  private closeSocket(ws: WebSocket, code: CloseCode, reason: string): void {
    try {
      ws.close(code, reason);
    } catch {
      // already closed
    }
    this.forgetSocket(ws);
  }
}

function isAttachment(value: unknown): value is SocketAttachment {
  return typeof value === "object" && value !== null && typeof (value as { connectionId?: unknown }).connectionId === "string";
}

/** The one mapping from what the runner saw to why the script completed. */
function reasonFromOutcome(outcome: Outcome): CompletionReason {
  switch (outcome.kind) {
    case "exited":
      return { kind: "exited", code: outcome.code };
    case "signaled":
      return { kind: "signaled", signal: outcome.signal, number: outcome.number };
    case "failed":
      return { kind: "failed", message: outcome.message };
    case "cancelled":
      return { kind: "cancelled" };
    default: {
      const unreachable: never = outcome;
      throw new Error(`unknown outcome ${JSON.stringify(unreachable)}`);
    }
  }
}

function parseReason(raw: string | null): CompletionReason | null {
  if (!raw) return null;
  try {
    return JSON.parse(raw) as CompletionReason;
  } catch {
    return null;
  }
}

function summary(row: db.ScriptRow): ScriptSummary {
  const out: ScriptSummary = {
    ticket: row.ticket,
    state: row.state,
    isolation: row.isolation,
    mutexName: row.mutex_name,
    createdAt: iso(row.created_at),
  };
  if (row.task_id !== null) out.taskId = row.task_id;
  if (row.started_at !== null) out.startedAt = iso(row.started_at);
  if (row.completed_at !== null) out.completedAt = iso(row.completed_at);
  if (row.state === "complete") out.exitCode = row.exit_code;
  return out;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function errorResponse(error: { status: number; code: string; message: string }): Response {
  return new Response(JSON.stringify({ error: { code: error.code, message: error.message } }), {
    status: error.status,
    headers: { "content-type": "application/json" },
  });
}
