/**
 * The machine core: one machine's isolation mutexes and the lifecycle of its active scripts, as
 * `(state, event) → (changes, effects)`. It does no I/O and knows nothing of workerd: the machine object
 * loads the state, hands each event to `handle`, persists the changes and carries out the effects.
 *
 * Script lifecycle:
 *   pending (waiting for its mutex) ─grant→ pending (granted, waiting for a runner) ─dispatch→ running
 *   ─exit→ complete. A waiting script may time out (-44); a running script whose runner restarted
 *   completes as lost (-46). Cancel completes a pending script at once (-43) and asks the runner to stop
 *   a running one; abandon completes a running script at once (-48) and releases its mutex, whatever the
 *   runner does. Completed scripts leave the core; their rows stay in storage.
 *
 * Every action that changes a script's course is recorded as an `audit` change in the decision that makes it, with
 * who asked (or `control-plane` for what the core decides by itself: an abandon deadline, a mutex timeout, a run
 * timeout, a lost runner) and why, and a `debug` line saying it in the script's log. A run timeout (`runTimeoutMs`)
 * is a deadline like the others: past it the script is cancelled, with an abandon deadline that leaves the runner
 * its kill grace and 30 s more.
 *
 * What the runner reports (started, output, exit) goes through `runner-reports.ts` first, which checks its
 * fencing and plans its output (`output.ts`); a reconnecting runner's inventory is classified in
 * `inventory.ts`. Each change names everything storage must write, so that the machine object can persist a
 * decision in one transaction without reading anything back.
 */
import type { AuditAction } from "../../../shared/api.js";
import type { CompletionReason } from "../../../shared/exit-codes.js";
import type { CloseCode, ProcessRef } from "../../../shared/protocol.js";
import { planWelcome, type AbandonedProcess, type InventoryEntry, type ResumeEntry, type WatchEntry } from "./inventory.js";
import { isIdle, leaveMutex, newMutex, requestMutex, type LockMode, type MutexState } from "./mutex.js";
import type { LogPiece, OutputPosition } from "./output.js";

export type { AbandonedProcess, InventoryEntry, ResumeEntry, WatchEntry } from "./inventory.js";
export type { LogPiece, OutputPosition } from "./output.js";

/** A script that is not complete yet. */
export interface ActiveScript {
  ticket: string;
  state: "pending" | "running";
  mode: LockMode;
  mutexName: string;
  taskId: string | null;
  /** Epoch ms. */
  createdAt: number;
  /** Order of arrival; restores the FIFO queue after a restart. */
  queueSeq: number;
  granted: boolean;
  /** When it was granted its mutex (epoch ms); null while it waits. */
  grantedAt: number | null;
  /** Epoch ms after which waiting for the mutex fails with -44; null = wait forever. */
  mutexDeadline: number | null;
  /** Fencing token of the current dispatch; null until dispatched. */
  fence: number | null;
  /** The runner process the script was dispatched to. */
  runnerId: string | null;
  startedAt: number | null;
  /** A cancel was requested while it ran; sent again to a reconnecting runner. */
  cancelRequested: boolean;
  /** Epoch ms at which a cancelled script that still runs is abandoned; null = never. */
  abandonDeadline: number | null;
  /** Longest it may run (from its dispatch) before the control plane cancels it; 0 = no limit. */
  runTimeoutMs: number;
  /** The run timeout was served (the control plane cancelled it), so it is not served again. */
  runTimedOut: boolean;
  /** Where its log stands: the next sequences, the bytes stored, whether the output cap was reached. */
  output: OutputPosition;
  /** The process of the current dispatch, once the runner reported it (`started`); null until then. */
  process: ProcessRef | null;
  /** How many runner restarts the script lived through: each new runner process that re-attached to it. */
  runnerRestarts: number;
}

/** Everything the core decides over. */
export interface MachineState {
  /** Named in the abandon log line. */
  machineId: string;
  scripts: Map<string, ActiveScript>;
  mutexes: Map<string, MutexState>;
  /**
   * The connected runner that completed its handshake, if any. `draining`: it was asked to stop (SIGTERM) and takes
   * no new scripts; scripts granted meanwhile stay pending (holding their mutex) until the next runner connects.
   */
  runner: { runnerId: string; draining: boolean } | null;
  /** The kill grace (SIGTERM to SIGKILL) the last runner announced; a run timeout's abandon allows for it. */
  killGraceMs: number;
  nextFence: number;
  nextQueueSeq: number;
  /** The sequence number the next audit event gets (per machine, never reused). */
  nextAuditSeq: number;
}

/** The kill grace assumed of a runner that does not announce one (the runner's own default). */
export const DEFAULT_KILL_GRACE_MS = 10_000;
/** How long after the runner's kill grace a run timeout's cancel may take before the script is abandoned. */
export const RUN_TIMEOUT_ABANDON_SLACK_MS = 30_000;

/** Who acted: `server`, `server:<requestedBy>`, `operator:<name>`, or `control-plane`. */
export type Actor = string;
/** The actor of what the control plane decides by itself. */
export const CONTROL_PLANE: Actor = "control-plane";

/** A new script as accepted by the API. */
export interface NewScript {
  ticket: string;
  mode: LockMode;
  mutexName: string;
  taskId: string | null;
  mutexTimeoutMs: number;
  /** 0 = no limit. */
  runTimeoutMs: number;
}

/** Who asked for a cancel or an abandon, and why (recorded in the audit trail and the log). */
export interface Requester {
  actor: Actor;
  reason: string | null;
}

/** Inputs to the core. */
export type MachineEvent =
  | { type: "start"; script: NewScript; now: number }
  /** `abandoned`: what storage lists as abandoned-maybe-running (for the welcome's resume and watch). */
  | { type: "runner_connected"; runnerId: string; inventory: InventoryEntry[]; abandoned?: AbandonedProcess[]; killGraceMs?: number; now: number }
  | { type: "runner_disconnected"; now: number }
  /** The connected runner takes no new scripts any more: it is about to stop, leaving its scripts to the next one. */
  | { type: "runner_draining"; now: number }
  /** `survivors`: processes of a lost script that would not die; they are listed as abandoned. */
  | { type: "exited"; ticket: string; fence: number; reason: CompletionReason; survivors?: ProcessRef[]; now: number }
  | { type: "cancel"; ticket: string; abandonAfterMs: number | null; by: Requester; now: number }
  | { type: "abandon"; ticket: string; killProcess: boolean; by: Requester; now: number }
  | { type: "tick"; now: number }
  /** An administrative action on the machine itself, recorded in its audit trail (`ticket` null). */
  | { type: "admin"; action: "runner-token-issued" | "runner-token-revoked"; by: Requester; now: number };

/** What to persist. Each change carries every value storage writes, so a decision is written without reads. */
export type Change =
  | { type: "insert"; script: ActiveScript }
  | { type: "granted"; ticket: string; at: number }
  | { type: "dispatched"; ticket: string; fence: number; runnerId: string; startedAt: number }
  | { type: "completed"; ticket: string; reason: CompletionReason; at: number }
  | { type: "cancel_requested"; ticket: string; abandonDeadline: number | null }
  /** The run timeout was served: the control plane cancelled the script (once). */
  | { type: "run_timed_out"; ticket: string }
  /** A new runner process re-attached to the running script (its `runnerRestarts`-th restart). */
  | { type: "reattached"; ticket: string; runnerId: string; runnerRestarts: number }
  /**
   * An audit event: who changed a script's course (or, with `ticket` null, an administrative action), when and why.
   * `seq` numbers the machine's events; the fleet feed de-duplicates by it.
   */
  | { type: "audit"; seq: number; ticket: string | null; action: AuditAction; actor: Actor; reason: string | null; at: number }
  /**
   * Processes of a dispatch that may live on, listed until the runner reports each gone: an abandoned script's
   * process (none known yet: listed without a pid), or a lost script's survivors. `killRequested`: a kill was
   * asked for while no runner could hear it; it goes out with the next welcome.
   */
  | { type: "abandoned"; ticket: string; fence: number; at: number; processes: ProcessRef[]; killRequested: boolean }
  /** A control-plane line in a script's log, at `sequence`. */
  | { type: "log"; ticket: string; text: string; at: number; sequence: number }
  /** The runner's output: `pieces` stored from sequence `first`, and where the log stands after them. */
  | { type: "append"; ticket: string; first: number; pieces: LogPiece[]; position: OutputPosition }
  /** The process the current dispatch started (written lazily: see `LAZY_CHANGES`). */
  | { type: "process"; ticket: string; fence: number; process: ProcessRef }
  /** A `started` that arrived after its dispatch was abandoned: the abandoned entry without a pid gets it. */
  | { type: "abandoned_process"; ticket: string; fence: number; process: ProcessRef }
  /** An abandoned process is gone. */
  | { type: "abandoned_exit"; ticket: string; fence: number; pid: number }
  /** A requested kill went out with a welcome: for one process (`pid`) or every process of the dispatch (null). */
  | { type: "kill_delivered"; ticket: string; fence: number; pid: number | null };

/**
 * Changes that may wait for the next write (or a second) instead of costing a commit of their own: nothing
 * depends on them before then, and the runner repeats `started` after a reconnect until an acknowledgement
 * (which goes out only after a write that included them) shows that it arrived.
 */
export const LAZY_CHANGES: ReadonlySet<Change["type"]> = new Set(["process"]);

/** What to do outside storage. */
export type Effect =
  | { type: "dispatch"; ticket: string; fence: number }
  /** The answer to a runner's hello: one resume entry per inventory entry, and the processes to watch. */
  | { type: "welcome"; resume: ResumeEntry[]; watch: WatchEntry[] }
  | { type: "cancel"; ticket: string; fence: number }
  | { type: "abandon"; ticket: string; fence: number; killProcess: boolean }
  | { type: "ack"; ticket: string; fence: number; nextSequence: number }
  | { type: "exit_ack"; ticket: string; fence: number }
  /** The runner broke the protocol: close its connection with this code. */
  | { type: "close"; code: CloseCode; reason: string }
  | { type: "notify"; ticket: string };

/** The result of one event. */
export interface Decision {
  changes: Change[];
  effects: Effect[];
}

/** Creates an empty machine state. */
export function emptyState(): MachineState {
  return { machineId: "", scripts: new Map(), mutexes: new Map(), runner: null, killGraceMs: DEFAULT_KILL_GRACE_MS, nextFence: 1, nextQueueSeq: 1, nextAuditSeq: 1 };
}

/** Rebuilds the state from stored active scripts (in any order) and counters. */
export function restoreState(
  machineId: string,
  scripts: ActiveScript[],
  counters: { nextFence: number; nextQueueSeq: number; nextAuditSeq?: number },
  killGraceMs: number = DEFAULT_KILL_GRACE_MS,
): MachineState {
  const state = emptyState();
  state.machineId = machineId;
  state.nextFence = counters.nextFence;
  state.nextQueueSeq = counters.nextQueueSeq;
  state.nextAuditSeq = counters.nextAuditSeq ?? 1;
  state.killGraceMs = killGraceMs;
  const ordered = [...scripts].sort((a, b) => a.queueSeq - b.queueSeq);
  for (const script of ordered) {
    state.scripts.set(script.ticket, script);
    const mutex = mutexFor(state, script.mutexName);
    if (script.granted) mutex.holders.set(script.ticket, script.mode);
    else mutex.queue.push({ ticket: script.ticket, mode: script.mode });
  }
  return state;
}

/** The earliest deadline the machine must wake up for, or null. */
export function nextDeadline(state: MachineState): number | null {
  let earliest: number | null = null;
  const consider = (due: number | null) => {
    if (due !== null && (earliest === null || due < earliest)) earliest = due;
  };
  for (const script of state.scripts.values()) {
    if (!script.granted) consider(script.mutexDeadline);
    else if (script.state === "running") {
      consider(script.abandonDeadline);
      consider(runDeadline(script));
    }
  }
  return earliest;
}

/** When a running script's run timeout falls due, unless it has none or it was served already. */
export function runDeadline(script: ActiveScript): number | null {
  if (script.runTimeoutMs <= 0 || script.runTimedOut || script.state !== "running" || script.startedAt === null) return null;
  return script.startedAt + script.runTimeoutMs;
}

/** Applies one event to the state (in place) and returns what to persist and do. */
export function handle(state: MachineState, event: MachineEvent): Decision {
  const out: Decision = { changes: [], effects: [] };
  switch (event.type) {
    case "start":
      start(state, event.script, event.now, out);
      break;
    case "runner_connected":
      if (event.killGraceMs !== undefined) state.killGraceMs = event.killGraceMs;
      runnerConnected(state, event.runnerId, event.inventory, event.abandoned ?? [], event.now, out);
      break;
    case "runner_disconnected":
      state.runner = null;
      break;
    case "runner_draining":
      if (state.runner) state.runner.draining = true;
      break;
    case "exited": {
      const script = state.scripts.get(event.ticket);
      // Fencing: only the current dispatch of a running script may complete it.
      if (script && script.state === "running" && script.fence === event.fence) {
        if (event.reason.kind === "lost") loseTrack(state, script, event.survivors ?? [], event.now, out);
        complete(state, script, event.reason, event.now, out);
      }
      break;
    }
    case "cancel":
      cancel(state, event.ticket, event.abandonAfterMs, event.by, event.now, out);
      break;
    case "abandon":
      abandon(state, event.ticket, event.killProcess, event.by, event.now, out);
      break;
    case "tick":
      serveDeadlines(state, event.now, out);
      break;
    case "admin":
      audit(state, null, event.action, event.by, null, event.now, out);
      break;
    default: {
      const unreachable: never = event;
      throw new Error(`unhandled machine event ${JSON.stringify(unreachable)}`);
    }
  }
  return out;
}

function mutexFor(state: MachineState, name: string): MutexState {
  let mutex = state.mutexes.get(name);
  if (!mutex) {
    mutex = newMutex(name);
    state.mutexes.set(name, mutex);
  }
  return mutex;
}

function start(state: MachineState, input: NewScript, now: number, out: Decision): void {
  const script: ActiveScript = {
    ticket: input.ticket,
    state: "pending",
    mode: input.mode,
    mutexName: input.mutexName,
    taskId: input.taskId,
    createdAt: now,
    queueSeq: state.nextQueueSeq++,
    granted: false,
    grantedAt: null,
    mutexDeadline: input.mutexTimeoutMs > 0 ? now + input.mutexTimeoutMs : null,
    fence: null,
    runnerId: null,
    startedAt: null,
    cancelRequested: false,
    abandonDeadline: null,
    runTimeoutMs: input.runTimeoutMs,
    runTimedOut: false,
    output: { logNext: 0, runnerNext: 0, logBytes: 0, truncated: false },
    process: null,
    runnerRestarts: 0,
  };
  state.scripts.set(script.ticket, script);
  out.changes.push({ type: "insert", script: { ...script } });
  const mutex = mutexFor(state, script.mutexName);
  if (requestMutex(mutex, script.ticket, script.mode)) {
    grant(state, script, now, out);
  } else {
    log(script, waitingLine(state, mutex, script), now, out);
  }
}

/** Adds a control-plane line to a script's log, at its next sequence. */
function log(script: ActiveScript, text: string, now: number, out: Decision): void {
  const sequence = script.output.logNext;
  script.output = { ...script.output, logNext: sequence + 1 };
  out.changes.push({ type: "log", ticket: script.ticket, text, at: now, sequence });
}

/**
 * Records an audit event about a script (or, with a null script, the machine) and, for a script, the `debug` line
 * that says it in its log (`line`).
 */
function audit(state: MachineState, script: ActiveScript | null, action: AuditAction, by: Requester, line: string | null, now: number, out: Decision): void {
  out.changes.push({ type: "audit", seq: state.nextAuditSeq++, ticket: script?.ticket ?? null, action, actor: by.actor, reason: by.reason, at: now });
  if (script && line !== null) log(script, line, now, out);
}

/** The log line of an action someone asked for: `Cancel requested by operator:alice: stuck in AV scan`. */
export function requestedLine(what: string, by: Requester): string {
  return `${what} requested by ${by.actor}${by.reason === null ? "" : `: ${by.reason}`}`;
}

function grant(state: MachineState, script: ActiveScript, now: number, out: Decision): void {
  script.granted = true;
  script.grantedAt = now;
  script.mutexDeadline = null;
  out.changes.push({ type: "granted", ticket: script.ticket, at: now });
  if (state.runner && !state.runner.draining) dispatch(state, script, state.runner.runnerId, now, out);
}

function dispatch(state: MachineState, script: ActiveScript, runnerId: string, now: number, out: Decision): void {
  script.state = "running";
  script.fence = state.nextFence++;
  script.runnerId = runnerId;
  script.startedAt = now;
  // A new dispatch numbers its lines from 0 again and starts a process of its own.
  script.output = { ...script.output, runnerNext: 0 };
  script.process = null;
  out.changes.push({ type: "dispatched", ticket: script.ticket, fence: script.fence, runnerId, startedAt: now });
  out.effects.push({ type: "dispatch", ticket: script.ticket, fence: script.fence });
  out.effects.push({ type: "notify", ticket: script.ticket });
}

/** Completes an active script, releases its mutex and lets the next waiters through. */
function complete(state: MachineState, script: ActiveScript, reason: CompletionReason, now: number, out: Decision): void {
  state.scripts.delete(script.ticket);
  out.changes.push({ type: "completed", ticket: script.ticket, reason, at: now });
  out.effects.push({ type: "notify", ticket: script.ticket });
  const mutex = state.mutexes.get(script.mutexName);
  if (!mutex) return;
  const headBefore = mutex.queue[0]?.ticket;
  for (const ticket of leaveMutex(mutex, script.ticket)) {
    const next = state.scripts.get(ticket);
    if (next) grant(state, next, now, out);
  }
  announceNewHead(state, mutex, headBefore, now, out);
  if (isIdle(mutex)) state.mutexes.delete(mutex.name);
}

/** When the head of a queue changed and it still waits, its log says what it now waits for. */
function announceNewHead(state: MachineState, mutex: MutexState, headBefore: string | undefined, now: number, out: Decision): void {
  const head = mutex.queue[0];
  if (!head || head.ticket === headBefore) return;
  const script = state.scripts.get(head.ticket);
  if (script) log(script, waitingLine(state, mutex, script), now, out);
}

function runnerConnected(
  state: MachineState,
  runnerId: string,
  inventory: InventoryEntry[],
  abandoned: AbandonedProcess[],
  now: number,
  out: Decision,
): void {
  state.runner = { runnerId, draining: false };
  const listed = new Map(inventory.map((entry) => [entry.ticket, entry]));
  const welcome = planWelcome(state, inventory, abandoned);
  out.changes.push(...welcome.delivered);
  out.effects.push({ type: "welcome", resume: welcome.resume, watch: welcome.watch });

  // Decide which scripts to look at before completing any: a completion grants and dispatches waiters,
  // and those fresh dispatches must not be mistaken for missing ones.
  const running = [...state.scripts.values()].filter((s) => s.state === "running").sort((a, b) => a.queueSeq - b.queueSeq);
  for (const script of running) {
    const entry = listed.get(script.ticket);
    if (entry && entry.fence === script.fence) {
      // A runner process that re-attached to what its predecessor started: counted once per runner process (it
      // lists the script as re-attached in every hello it sends).
      if (entry.reattached && script.runnerId !== runnerId) {
        script.runnerId = runnerId;
        script.runnerRestarts += 1;
        out.changes.push({ type: "reattached", ticket: script.ticket, runnerId, runnerRestarts: script.runnerRestarts });
        const line = `The runner restarted and re-attached to this script, which kept running (runner restart ${script.runnerRestarts}).`;
        audit(state, script, "reattached", { actor: CONTROL_PLANE, reason: "the runner restarted and re-attached to the running script" }, line, now, out);
      }
      // A cancel sent while the runner was away (or lost with the old connection) is sent again.
      if (script.cancelRequested) out.effects.push({ type: "cancel", ticket: script.ticket, fence: script.fence });
      continue;
    }
    if (script.runnerId === runnerId && script.cancelRequested) {
      // It never reached the runner and was cancelled meanwhile: it must not run now.
      log(script, "Cancelled before it ran; the script never started.", now, out);
      complete(state, script, { kind: "cancelled" }, now, out);
    } else if (script.runnerId === runnerId) {
      // The same runner process never received this dispatch (it would list it): send it again.
      dispatch(state, script, runnerId, now, out);
    } else {
      const line = "The runner reconnected without this script (it was restarted); the script's result is unknown.";
      audit(state, script, "runner-lost", { actor: CONTROL_PLANE, reason: "the runner reconnected without this script (it was restarted)" }, line, now, out);
      complete(state, script, { kind: "lost" }, now, out);
    }
  }
  for (const script of [...state.scripts.values()].sort((a, b) => a.queueSeq - b.queueSeq)) {
    if (script.state === "pending" && script.granted) dispatch(state, script, runnerId, now, out);
  }
}

/**
 * A new runner process found the script left by its predecessor and stopped it (outcome `lost`): says so, and
 * lists the processes that would not die as abandoned in the same decision that completes the script and
 * releases its mutex, so that the next script never runs beside a process nobody can see.
 */
function loseTrack(state: MachineState, script: ActiveScript, survivors: ProcessRef[], now: number, out: Decision): void {
  const line = "The runner restarted and could not re-attach to this script, so it stopped it; the script's result is unknown.";
  const reason = `the runner restarted and could not re-attach to this script${survivors.length ? `; ${survivors.length} of its processes would not die` : ""}`;
  audit(state, script, "runner-lost", { actor: CONTROL_PLANE, reason }, line, now, out);
  if (survivors.length === 0) return;
  const shown = survivors.slice(0, NAMED).map((p) => p.pid).join(", ");
  const more = survivors.length > NAMED ? ` and ${survivors.length - NAMED} more` : "";
  log(
    script,
    `${survivors.length === 1 ? "A process" : `${survivors.length} processes`} of this script would not die and may still be running on machine ${state.machineId} (pid ${shown}${more}); listed as abandoned until the runner sees ${survivors.length === 1 ? "it" : "them"} exit.`,
    now,
    out,
  );
  out.changes.push({ type: "abandoned", ticket: script.ticket, fence: script.fence!, at: now, processes: survivors, killRequested: false });
}

/** The honest line every abandoned script's log gets (the contract's wording). */
export function abandonedLine(machineId: string): string {
  return `The control plane has abandoned this script. The underlying process may still be running on machine ${machineId}.`;
}

function cancel(state: MachineState, ticket: string, abandonAfterMs: number | null, by: Requester, now: number, out: Decision): void {
  const script = state.scripts.get(ticket);
  if (!script) return; // complete (or unknown): a cancel changes nothing, so nothing is recorded
  if (script.state === "pending") {
    audit(state, script, "cancel", by, requestedLine("Cancel", by), now, out);
    log(script, "Cancelled before it ran; the script never started.", now, out);
    complete(state, script, { kind: "cancelled" }, now, out);
    return;
  }
  requestCancel(state, script, abandonAfterMs === null ? null : now + abandonAfterMs, "cancel", by, requestedLine("Cancel", by), now, out);
}

/**
 * Asks the runner to stop a running script, with an abandon deadline (null: none). Only a cancel that changes
 * something — the first one, or one that brings the abandon deadline forward — is recorded (`action`, `line`);
 * the cancel itself is sent again every time (harmless for the runner, and it recovers one lost with a connection).
 * Returns whether it changed anything.
 */
function requestCancel(
  state: MachineState,
  script: ActiveScript,
  deadline: number | null,
  action: "cancel" | "run-timeout",
  by: Requester,
  line: string,
  now: number,
  out: Decision,
): boolean {
  const firstCancel = !script.cancelRequested;
  const earlier = deadline !== null && (script.abandonDeadline === null || deadline < script.abandonDeadline);
  if (firstCancel || earlier) {
    audit(state, script, action, by, line, now, out);
    script.cancelRequested = true;
    if (earlier) script.abandonDeadline = deadline;
    out.changes.push({ type: "cancel_requested", ticket: script.ticket, abandonDeadline: script.abandonDeadline });
  }
  if (firstCancel) {
    const escalation = deadline === null ? "" : ` It will be abandoned if it is still running after ${deadline - now} ms.`;
    log(script, `Cancellation requested; asking the runner to stop the process tree.${escalation}`, now, out);
  }
  if (state.runner) out.effects.push({ type: "cancel", ticket: script.ticket, fence: script.fence! });
  return firstCancel || earlier;
}

function abandon(state: MachineState, ticket: string, killProcess: boolean, by: Requester, now: number, out: Decision): void {
  const script = state.scripts.get(ticket);
  if (!script) return; // complete: its real result stands, and nothing is recorded
  audit(state, script, "abandon", by, requestedLine("Abandon", by), now, out);
  if (script.state === "pending") {
    log(script, "Abandoned before it ran; the script never started.", now, out);
    complete(state, script, { kind: "cancelled" }, now, out);
    return;
  }
  if (killProcess) audit(state, script, "kill-requested", by, requestedLine("Kill of its process tree", by), now, out);
  abandonRunning(state, script, killProcess, now, out);
}

/** Completes a running script as abandoned: the mutex is released now, whatever its process does. */
function abandonRunning(state: MachineState, script: ActiveScript, killProcess: boolean, now: number, out: Decision): void {
  const fence = script.fence!;
  log(script, abandonedLine(state.machineId), now, out);
  // A kill asked for while no runner is connected is kept with the entry and goes out with the next welcome.
  const processes = script.process ? [script.process] : [];
  out.changes.push({ type: "abandoned", ticket: script.ticket, fence, at: now, processes, killRequested: killProcess && !state.runner });
  if (state.runner) out.effects.push({ type: "abandon", ticket: script.ticket, fence, killProcess });
  complete(state, script, { kind: "abandoned" }, now, out);
}

/**
 * Serves every deadline that has passed, in the order they fell due, as if each had been served on
 * time: an abandon that fell due first can grant a waiter whose own timeout came later.
 */
function serveDeadlines(state: MachineState, now: number, out: Decision): void {
  const due: Array<{ at: number; script: ActiveScript; kind: "abandon" | "timeout" | "run" }> = [];
  for (const script of state.scripts.values()) {
    if (!script.granted) {
      if (script.mutexDeadline !== null && script.mutexDeadline <= now) due.push({ at: script.mutexDeadline, script, kind: "timeout" });
      continue;
    }
    if (script.state !== "running") continue;
    if (script.abandonDeadline !== null && script.abandonDeadline <= now) due.push({ at: script.abandonDeadline, script, kind: "abandon" });
    const run = runDeadline(script);
    if (run !== null && run <= now) due.push({ at: run, script, kind: "run" });
  }
  due.sort((a, b) => a.at - b.at || a.script.queueSeq - b.script.queueSeq);
  for (const { script, kind } of due) {
    // An earlier deadline in this tick may have completed this script or granted it the mutex.
    if (!state.scripts.has(script.ticket)) continue;
    if (kind === "timeout" && !script.granted) timeOut(state, script, now, out);
    if (kind === "abandon" && script.state === "running" && script.abandonDeadline !== null && script.abandonDeadline <= now) {
      const line = "The script was still running when the abandon deadline set by its cancel passed; abandoning it.";
      audit(state, script, "auto-abandon", { actor: CONTROL_PLANE, reason: "still running when the abandon deadline set by its cancel passed" }, line, now, out);
      abandonRunning(state, script, false, now, out);
    }
    if (kind === "run" && script.state === "running" && !script.runTimedOut) runTimeout(state, script, now, out);
  }
}

/**
 * A script ran past its `runTimeoutMs`: the control plane cancels it, and abandons it if the cancel has not
 * landed once the runner's kill grace and 30 s more have passed, so that a hung script frees its machine.
 */
function runTimeout(state: MachineState, script: ActiveScript, now: number, out: Decision): void {
  script.runTimedOut = true;
  out.changes.push({ type: "run_timed_out", ticket: script.ticket });
  const slackMs = state.killGraceMs + RUN_TIMEOUT_ABANDON_SLACK_MS;
  const line = `The script ran longer than its run timeout of ${script.runTimeoutMs} ms; the control plane cancels it, and abandons it if it is still running ${slackMs} ms from now (the runner's kill grace and 30 s).`;
  const by = { actor: CONTROL_PLANE, reason: `ran longer than its run timeout of ${script.runTimeoutMs} ms` };
  requestCancel(state, script, now + slackMs, "run-timeout", by, line, now, out);
}

function timeOut(state: MachineState, script: ActiveScript, now: number, out: Decision): void {
  const mutex = state.mutexes.get(script.mutexName);
  const waitedMs = now - script.createdAt;
  // The reason names the timeout the caller set (the alarm may serve it a little later than that).
  const timeoutMs = (script.mutexDeadline ?? now) - script.createdAt;
  const line = `Timed out after ${waitedMs} ms waiting for the mutex "${script.mutexName}"${mutex ? `; ${describeBlockers(state, mutex, script)}` : ""}.`;
  audit(state, script, "mutex-timeout", { actor: CONTROL_PLANE, reason: `waited its mutexTimeoutMs of ${timeoutMs} ms for the mutex "${script.mutexName}"` }, line, now, out);
  complete(state, script, { kind: "mutex_timeout" }, now, out);
}

const NAMED = 5;

function label(state: MachineState, ticket: string): string {
  const taskId = state.scripts.get(ticket)?.taskId;
  return taskId ? `${ticket} (task ${taskId})` : ticket;
}

function listTickets(state: MachineState, tickets: string[]): string {
  const named = tickets.slice(0, NAMED).map((t) => label(state, t));
  const more = tickets.length - named.length;
  return more > 0 ? `${named.join(", ")} and ${more} more` : named.join(", ");
}

/** Names what a waiting script waits for: the holders, and the waiters queued ahead of it. */
function describeBlockers(state: MachineState, mutex: MutexState, script: ActiveScript): string {
  const holders = [...mutex.holders.keys()];
  const position = mutex.queue.findIndex((w) => w.ticket === script.ticket);
  const ahead = mutex.queue.slice(0, Math.max(position, 0)).map((w) => w.ticket);
  const parts: string[] = [];
  if (holders.length) parts.push(`held by ${listTickets(state, holders)}`);
  if (ahead.length) parts.push(`queued behind ${listTickets(state, ahead)}`);
  return parts.length ? parts.join(", ") : "waiting for its turn";
}

function waitingLine(state: MachineState, mutex: MutexState, script: ActiveScript): string {
  const need = script.mode === "exclusive" ? "exclusive, full isolation" : "shared, no isolation";
  return `Waiting for the mutex "${mutex.name}" (${need}): ${describeBlockers(state, mutex, script)}.`;
}

