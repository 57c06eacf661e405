/**
 * MachineObject: one Durable Object per machine, and only the platform's side of it. The machine's rules live in
 * the pure core (`core/`), and its state and storage in the engine (`engine.ts`), which decides, persists each
 * decision in one transaction and asks this object to carry out the effects: send to the runner's WebSocket,
 * close it, wake waiting requests, set the alarm.
 *
 * Everything that must survive hibernation lives in SQLite, in the socket's attachment or in the alarm;
 * in-memory fields are caches rebuilt in the constructor.
 */
import { DurableObject } from "cloudflare:workers";
import { LIMITS, type LogLine, type MachineView, type ScriptStatus } from "../../shared/api.js";
import { CloseCode, HEARTBEAT_PING, HEARTBEAT_PONG, parseRunnerMessage, type RunnerMessage } from "../../shared/protocol.js";
import { bearerToken, randomToken, sha256Hex } from "../crypto.js";
import { registryStub, type Env } from "../env.js";
import type { Requester } from "./core/machine-core.js";
import { MachineEngine, StorageUnavailable, type MachinePort, type StartInput } from "./engine.js";
import { machineLimits } from "./limits.js";
import type { MachineReport } from "./report.js";
import { fail, ok, storageUnavailable, unknownMachine, unknownScript, type RpcResult } from "./results.js";
import { Waiters } from "./waiters.js";
import { traceStage } from "../trace.js";

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

/** One page of a live stream. */
export interface StreamPage {
  logs: LogLine[];
  nextLogSequence: number;
  /** The final status (without logs) once the script is complete and every line was returned. */
  final: ScriptStatus | null;
}

/** The Durable Object behind each machine. */
export class MachineObject extends DurableObject<Env> {
  private readonly engine: MachineEngine;
  private runnerSocket: WebSocket | null = null;
  private readonly attachments = new WeakMap<WebSocket, SocketAttachment>();
  private readonly waiters = new Waiters();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.engine = new MachineEngine(ctx.storage, this.port(), machineLimits(env));
    // Heartbeats are answered by the runtime without waking the object.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(HEARTBEAT_PING, HEARTBEAT_PONG));
    void ctx.blockConcurrencyWhile(async () => this.load(await ctx.storage.getAlarm()));
  }

  /** Rebuilds memory from storage and the sockets that survived, and re-arms the alarm from storage. */
  private load(alarmAt: number | null): void {
    this.engine.load(alarmAt);
    if (!this.engine.registered()) return;
    const current = this.engine.storedConnectionId();
    for (const ws of this.ctx.getWebSockets(RUNNER_TAG)) {
      const attachment = this.attachment(ws);
      if (attachment && attachment.connectionId === current && attachment.runnerId) this.runnerSocket = ws;
    }
    if (this.runnerSocket && current) this.engine.resumeConnection(current, this.lastSeen(this.runnerSocket));
    else if (current) this.engine.dropStoredConnection();
    // Every deadline lives in SQLite, so the alarm can always be rebuilt.
    this.engine.rearm();
  }

  /** What the engine asks of the platform. */
  private port(): MachinePort {
    return {
      send: (frame) => {
        if (!this.runnerSocket) return;
        try {
          this.runnerSocket.send(frame);
        } catch {
          // The socket is closing; the runner resumes through its inventory when it reconnects.
        }
      },
      closeRunner: (code, reason) => {
        if (this.runnerSocket) this.closeSocket(this.runnerSocket, code, reason);
      },
      notify: (ticket) => this.waiters.notify(ticket),
      setAlarm: (at) => {
        const done = at === null ? this.ctx.storage.deleteAlarm() : this.ctx.storage.setAlarm(at);
        done.catch((error: unknown) => {
          console.error("MachineObject", this.ctx.id.toString(), "could not set the alarm", error);
          this.engine.alarmFailed();
        });
      },
      reset: (reason) => this.ctx.abort(reason),
      lastSeen: () => (this.runnerSocket ? this.lastSeen(this.runnerSocket) : null),
      report: (report: MachineReport) => registryStub(this.env).report(report),
      now: () => Date.now(),
      // A short timer keeps the object awake until it fires; should the object go anyway, the alarm retries.
      schedule: (task, delayMs) => {
        const timer = setTimeout(task, delayMs);
        return { cancel: () => clearTimeout(timer) };
      },
    };
  }

  // ---------------------------------------------------------------- RPC: machines

  /**
   * Creates the machine if new and issues a fresh runner token, revoking (and disconnecting) the old one; `actor`
   * goes into the audit trail. Answers the token (and the machine's incarnation, for the registry).
   */
  async issueRunnerToken(machineId: string, actor: string): Promise<RpcResult<{ machineId: string; runnerToken: string; incarnation: string }>> {
    const token = randomToken("trt_");
    const hash = await sha256Hex(token);
    try {
      this.engine.setRunnerToken(machineId, hash, actor, Date.now());
    } catch (error) {
      if (error instanceof StorageUnavailable) return storageUnavailable();
      throw error;
    }
    this.closeRunnerSockets();
    return ok({ machineId, runnerToken: token, incarnation: this.engine.machineIncarnation() });
  }

  /** Revokes the runner token without issuing another, and disconnects the runner (4001). */
  async revokeRunnerToken(machineId: string, actor: string): Promise<RpcResult<{ revoked: boolean }>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    let revoked: boolean;
    try {
      revoked = this.engine.revokeRunnerToken(actor, Date.now());
    } catch (error) {
      if (error instanceof StorageUnavailable) return storageUnavailable();
      throw error;
    }
    this.closeRunnerSockets();
    return ok({ revoked });
  }

  /**
   * Removes the machine: refused (409 `machine_busy`) while a script is pending or running; otherwise deletes all of
   * its storage and its alarm, disconnects its runner (4001) and forgets it, so that later calls answer 404. Answers
   * the audit events the registry did not have yet, for the edge to hand over with the removal.
   */
  async removeMachine(machineId: string): Promise<RpcResult<{ events: MachineReport["events"]; incarnation: string }>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    let result: RpcResult<{ events: MachineReport["events"]; incarnation: string }> = unknownMachine(machineId);
    // Nothing may slip in between the check and the deletion (a start would be deleted with the rest).
    await this.ctx.blockConcurrencyWhile(async () => {
      if (!this.engine.registered()) return;
      result = this.engine.removal(machineId);
      if (!result.ok) return;
      this.engine.forget();
      await this.ctx.storage.deleteAlarm();
      await this.ctx.storage.deleteAll();
      this.closeRunnerSockets();
    });
    return result;
  }

  /** The machine view; `withScripts` false for the machine list. */
  async view(machineId: string, withScripts: boolean): Promise<RpcResult<MachineView>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    const socket = this.runnerSocket;
    return ok(this.engine.view({ connected: socket !== null, lastSeen: socket ? this.lastSeen(socket) : null }, withScripts));
  }

  // ---------------------------------------------------------------- RPC: scripts

  /** Starts a script (idempotent by ticket); optionally waits up to `waitMs` for it to complete. */
  async startScript(machineId: string, input: StartInput): Promise<RpcResult<{ created: boolean; status: ScriptStatus }>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    traceStage(this.env, input.ticket, "object");
    const started = this.engine.start(input, Date.now());
    if (!started.ok) return started;
    if (input.waitMs > 0) {
      await this.waitForCompletion(input.ticket, input.waitMs);
      traceStage(this.env, input.ticket, "woke");
    }
    const status = this.engine.status(input.ticket, 0, LIMITS.logPageLines);
    return status.ok ? ok({ created: started.value.created, status: status.value }) : status;
  }

  /**
   * Cancels a script on behalf of `by` (recorded in its audit trail): a pending one completes at once (-43); a running
   * one is stopped by its runner.
   */
  async cancelScript(machineId: string, ticket: string, abandonAfterMs: number | null, by: Requester): Promise<RpcResult<ScriptStatus>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    return this.engine.cancel(ticket, abandonAfterMs, by, Date.now());
  }

  /**
   * Abandons a script: a running one completes at once with -48 and its mutex goes to the next waiter,
   * even with no runner connected; the runner is told to stop tracking it (and to kill it only when asked).
   */
  async abandonScript(machineId: string, ticket: string, killProcess: boolean, by: Requester): Promise<RpcResult<ScriptStatus>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    return this.engine.abandon(ticket, killProcess, by, Date.now());
  }

  /** A script's status with one page of logs. */
  async getStatus(machineId: string, ticket: string, logSequence: number, limit: number): Promise<RpcResult<ScriptStatus>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    return this.engine.status(ticket, logSequence, limit);
  }

  /** Waits up to `waitMs` for new lines (or completion) after `logSequence`, then returns them. */
  async streamPage(machineId: string, ticket: string, logSequence: number, waitMs: number): Promise<RpcResult<StreamPage>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    const progress = this.engine.progress(ticket);
    if (!progress) return unknownScript(ticket);
    if (progress.state !== "complete" && progress.logNext <= logSequence) await this.waiters.wait(ticket, waitMs);
    const page = this.engine.status(ticket, logSequence, LIMITS.logPageLines);
    if (!page.ok) return page;
    const final = page.value.state === "complete" && !page.value.hasMoreLogs ? { ...page.value, logs: [] } : null;
    return ok({ logs: page.value.logs, nextLogSequence: page.value.nextLogSequence, final });
  }

  /** Returns a complete script's final status with one page of its logs, then deletes it. */
  async completeScript(machineId: string, ticket: string, logSequence: number, limit: number = LIMITS.logPageLines): Promise<RpcResult<ScriptStatus>> {
    if (!this.engine.registered()) return unknownMachine(machineId);
    return this.engine.complete(ticket, logSequence, limit);
  }

  private async waitForCompletion(ticket: string, waitMs: number): Promise<void> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const progress = this.engine.progress(ticket);
      const left = deadline - Date.now();
      if (!progress || progress.state === "complete" || left <= 0) return;
      await this.waiters.wait(ticket, left);
    }
  }

  // ---------------------------------------------------------------- the alarm

  /** Every deadline. Each due action is idempotent, so a repeated or early alarm is harmless. */
  override async alarm(): Promise<void> {
    if (!this.engine.registered()) return;
    // A storage failure throws: the runtime retries the alarm, and memory was read back meanwhile.
    await this.engine.alarm(Date.now(), this.runnerSocket ? this.lastSeen(this.runnerSocket) : null);
  }

  /** The last sign of life on a runner socket: a heartbeat ping, a message, or the connection itself. */
  private lastSeen(ws: WebSocket): number {
    const pinged = this.ctx.getWebSocketAutoResponseTimestamp(ws)?.getTime() ?? 0;
    return Math.max(pinged, this.engine.runnerInfo?.lastMessageAt ?? 0, this.attachment(ws)?.connectedAt ?? 0);
  }

  // ---------------------------------------------------------------- runner socket

  /**
   * The runner's WebSocket upgrade. The edge let it through only with the machine's current token (per the
   * registry); the token is checked again here, where it is authoritative, in case it was just revoked.
   */
  override async fetch(request: Request): Promise<Response> {
    const machineId = new URL(request.url).searchParams.get("machineId") ?? "";
    if (!this.engine.registered()) return errorResponse(unknownMachine(machineId));
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return errorResponse(fail(400, "invalid_request", "The runner endpoint only accepts WebSocket upgrades."));
    }
    const presented = bearerToken(request.headers.get("Authorization"));
    const presentedHash = presented ? await sha256Hex(presented) : "";
    if (!presented || !this.engine.tokenMatches(presentedHash)) {
      return errorResponse({ status: 401, code: "unauthorized", message: "Missing or invalid runner token for this machine." });
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
    try {
      if (attachment.runnerId === null) {
        if (message.type !== "hello") return this.closeSocket(ws, CloseCode.HandshakeRequired, "the first frame must be hello");
        return this.onHello(ws, attachment, message);
      }
      if (ws !== this.runnerSocket) return this.closeSocket(ws, CloseCode.Replaced, "a newer connection replaced this one");
      if (message.type === "hello") return this.closeSocket(ws, CloseCode.HandshakeRequired, "hello was already received");
      const now = Date.now();
      this.engine.touched(now);
      if (message.type === "draining") this.engine.runnerDraining(now);
      else this.engine.report(message, now);
      if (message.type === "exit") traceStage(this.env, message.ticket, "exit-in");
    } catch (error) {
      // Nothing of the frame was kept and the connection was closed: the runner reconnects and resends.
      if (!(error instanceof StorageUnavailable)) throw error;
      console.error("MachineObject", this.ctx.id.toString(), error.message);
    }
  }

  private onHello(ws: WebSocket, attachment: SocketAttachment, hello: Extract<RunnerMessage, { type: "hello" }>): void {
    const refusal = this.engine.refuseHello(hello, attachment.tokenHash);
    if (refusal) return this.closeSocket(ws, refusal.code, refusal.reason);
    for (const other of this.ctx.getWebSockets(RUNNER_TAG)) {
      if (other !== ws) this.closeSocket(other, CloseCode.Replaced, "a newer connection replaced this one");
    }
    attachment.runnerId = hello.runnerId;
    ws.serializeAttachment(attachment);
    this.runnerSocket = ws;
    this.engine.runnerConnected(hello, attachment.connectionId, Date.now());
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
    try {
      this.engine.runnerGone(Date.now());
    } catch (error) {
      if (!(error instanceof StorageUnavailable)) throw error;
      console.error("MachineObject", this.ctx.id.toString(), error.message);
    }
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

  /** Disconnects every runner socket: its token was replaced or revoked, or the machine removed (4001). */
  private closeRunnerSockets(): void {
    for (const ws of this.ctx.getWebSockets(RUNNER_TAG)) this.closeSocket(ws, CloseCode.TokenRevoked, "runner token revoked");
  }

  private closeSocket(ws: WebSocket, code: number, reason: string): void {
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

function errorResponse(error: { status: number; code: string; message: string }): Response {
  return new Response(JSON.stringify({ error: { code: error.code, message: error.message } }), {
    status: error.status,
    headers: { "content-type": "application/json" },
  });
}
