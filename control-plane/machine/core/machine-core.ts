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
 */
import type { CompletionReason } from "../../../shared/exit-codes.js";
import { isIdle, leaveMutex, newMutex, requestMutex, type LockMode, type MutexState } from "./mutex.js";

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
}

/** Everything the core decides over. */
export interface MachineState {
  /** Named in the abandon log line. */
  machineId: string;
  scripts: Map<string, ActiveScript>;
  mutexes: Map<string, MutexState>;
  /** The connected runner that completed its handshake, if any. */
  runner: { runnerId: string } | null;
  nextFence: number;
  nextQueueSeq: number;
}

/** A new script as accepted by the API. */
export interface NewScript {
  ticket: string;
  mode: LockMode;
  mutexName: string;
  taskId: string | null;
  mutexTimeoutMs: number;
}

/** One entry of a reconnecting runner's inventory, with what storage knows of it when it is not active. */
export interface InventoryEntry {
  ticket: string;
  fence: number;
  /** For scripts the core no longer has: whether storage completed that exact dispatch. */
  stored: "completed" | "abandoned" | "none";
}

/** What the runner should do with a script it listed; mirrors the protocol's resume actions. */
export type ResumeDecision = { ticket: string; fence: number; action: "continue" | "cancel" | "abandon" | "forget" };

/** Inputs to the core. */
export type MachineEvent =
  | { type: "start"; script: NewScript; now: number }
  | { type: "runner_connected"; runnerId: string; inventory: InventoryEntry[]; now: number }
  | { type: "runner_disconnected"; now: number }
  | { type: "exited"; ticket: string; fence: number; reason: CompletionReason; now: number }
  | { type: "cancel"; ticket: string; abandonAfterMs: number | null; now: number }
  | { type: "abandon"; ticket: string; killProcess: boolean; now: number }
  | { type: "tick"; now: number };

/** What to persist. */
export type Change =
  | { type: "insert"; script: ActiveScript }
  | { type: "granted"; ticket: string }
  | { type: "dispatched"; ticket: string; fence: number; runnerId: string; startedAt: number }
  | { type: "completed"; ticket: string; reason: CompletionReason; at: number }
  | { type: "cancel_requested"; ticket: string; abandonDeadline: number | null }
  /** A running dispatch was abandoned: its process may live on and is listed until the runner reports it gone. */
  | { type: "abandoned"; ticket: string; fence: number; at: number }
  | { type: "log"; ticket: string; text: string; at: number };

/** What to do outside storage. */
export type Effect =
  | { type: "dispatch"; ticket: string; fence: number }
  | { type: "resume"; decisions: ResumeDecision[] }
  | { type: "cancel"; ticket: string; fence: number }
  | { type: "abandon"; ticket: string; fence: number; killProcess: boolean }
  | { type: "notify"; ticket: string };

/** The result of one event. */
export interface Decision {
  changes: Change[];
  effects: Effect[];
}

/** Creates an empty machine state. */
export function emptyState(): MachineState {
  return { machineId: "", scripts: new Map(), mutexes: new Map(), runner: null, nextFence: 1, nextQueueSeq: 1 };
}

/** Rebuilds the state from stored active scripts (in any order) and counters. */
export function restoreState(
  machineId: string,
  scripts: ActiveScript[],
  counters: { nextFence: number; nextQueueSeq: number },
): MachineState {
  const state = emptyState();
  state.machineId = machineId;
  state.nextFence = counters.nextFence;
  state.nextQueueSeq = counters.nextQueueSeq;
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
  for (const script of state.scripts.values()) {
    const due = script.granted ? (script.state === "running" ? script.abandonDeadline : null) : script.mutexDeadline;
    if (due !== null && (earliest === null || due < earliest)) earliest = due;
  }
  return earliest;
}

/** Applies one event to the state (in place) and returns what to persist and do. */
export function handle(state: MachineState, event: MachineEvent): Decision {
  const out: Decision = { changes: [], effects: [] };
  switch (event.type) {
    case "start":
      start(state, event.script, event.now, out);
      break;
    case "runner_connected":
      runnerConnected(state, event.runnerId, event.inventory, event.now, out);
      break;
    case "runner_disconnected":
      state.runner = null;
      break;
    case "exited": {
      const script = state.scripts.get(event.ticket);
      // Fencing: only the current dispatch of a running script may complete it.
      if (script && script.state === "running" && script.fence === event.fence) {
        complete(state, script, event.reason, event.now, out);
      }
      break;
    }
    case "cancel":
      cancel(state, event.ticket, event.abandonAfterMs, event.now, out);
      break;
    case "abandon":
      abandon(state, event.ticket, event.killProcess, event.now, out);
      break;
    case "tick":
      serveDeadlines(state, event.now, out);
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
    mutexDeadline: input.mutexTimeoutMs > 0 ? now + input.mutexTimeoutMs : null,
    fence: null,
    runnerId: null,
    startedAt: null,
    cancelRequested: false,
    abandonDeadline: null,
  };
  state.scripts.set(script.ticket, script);
  out.changes.push({ type: "insert", script: { ...script } });
  const mutex = mutexFor(state, script.mutexName);
  if (requestMutex(mutex, script.ticket, script.mode)) {
    grant(state, script, now, out);
  } else {
    out.changes.push({ type: "log", ticket: script.ticket, text: waitingLine(state, mutex, script), at: now });
  }
}

function grant(state: MachineState, script: ActiveScript, now: number, out: Decision): void {
  script.granted = true;
  script.mutexDeadline = null;
  out.changes.push({ type: "granted", ticket: script.ticket });
  if (state.runner) dispatch(state, script, state.runner.runnerId, now, out);
}

function dispatch(state: MachineState, script: ActiveScript, runnerId: string, now: number, out: Decision): void {
  script.state = "running";
  script.fence = state.nextFence++;
  script.runnerId = runnerId;
  script.startedAt = now;
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
  if (script) out.changes.push({ type: "log", ticket: script.ticket, text: waitingLine(state, mutex, script), at: now });
}

function runnerConnected(state: MachineState, runnerId: string, inventory: InventoryEntry[], now: number, out: Decision): void {
  state.runner = { runnerId };
  const listed = new Map(inventory.map((entry) => [entry.ticket, entry]));
  const decisions: ResumeDecision[] = [];
  for (const entry of inventory) {
    const script = state.scripts.get(entry.ticket);
    let action: ResumeDecision["action"];
    if (script && script.state === "running" && script.fence === entry.fence) action = "continue";
    else if (!script && entry.stored === "completed") action = "forget";
    else if (!script && entry.stored === "abandoned") action = "abandon";
    else action = "cancel"; // a stale dispatch, or a script nobody tracks: nobody wants its result.
    decisions.push({ ticket: entry.ticket, fence: entry.fence, action });
  }
  out.effects.push({ type: "resume", decisions });

  // Decide which scripts to look at before completing any: a completion grants and dispatches waiters,
  // and those fresh dispatches must not be mistaken for missing ones.
  const running = [...state.scripts.values()].filter((s) => s.state === "running").sort((a, b) => a.queueSeq - b.queueSeq);
  for (const script of running) {
    const entry = listed.get(script.ticket);
    if (entry && entry.fence === script.fence) {
      // A cancel sent while the runner was away (or lost with the old connection) is sent again.
      if (script.cancelRequested) out.effects.push({ type: "cancel", ticket: script.ticket, fence: script.fence });
      continue;
    }
    if (script.runnerId === runnerId && script.cancelRequested) {
      // It never reached the runner and was cancelled meanwhile: it must not run now.
      out.changes.push({ type: "log", ticket: script.ticket, text: "Cancelled before it ran; the script never started.", at: now });
      complete(state, script, { kind: "cancelled" }, now, out);
    } else if (script.runnerId === runnerId) {
      // The same runner process never received this dispatch (it would list it): send it again.
      dispatch(state, script, runnerId, now, out);
    } else {
      out.changes.push({
        type: "log",
        ticket: script.ticket,
        text: "The runner reconnected without this script (it was restarted); the script's result is unknown.",
        at: now,
      });
      complete(state, script, { kind: "lost" }, now, out);
    }
  }
  for (const script of [...state.scripts.values()].sort((a, b) => a.queueSeq - b.queueSeq)) {
    if (script.state === "pending" && script.granted) dispatch(state, script, runnerId, now, out);
  }
}

/** The honest line every abandoned script's log gets (the contract's wording). */
export function abandonedLine(machineId: string): string {
  return `The control plane has abandoned this script. The underlying process may still be running on machine ${machineId}.`;
}

function cancel(state: MachineState, ticket: string, abandonAfterMs: number | null, now: number, out: Decision): void {
  const script = state.scripts.get(ticket);
  if (!script) return; // complete (or unknown): a cancel changes nothing
  if (script.state === "pending") {
    out.changes.push({ type: "log", ticket, text: "Cancelled before it ran; the script never started.", at: now });
    complete(state, script, { kind: "cancelled" }, now, out);
    return;
  }
  const deadline = abandonAfterMs === null ? null : now + abandonAfterMs;
  const firstCancel = !script.cancelRequested;
  const earlier = deadline !== null && (script.abandonDeadline === null || deadline < script.abandonDeadline);
  if (firstCancel || earlier) {
    script.cancelRequested = true;
    if (earlier) script.abandonDeadline = deadline;
    out.changes.push({ type: "cancel_requested", ticket, abandonDeadline: script.abandonDeadline });
  }
  if (firstCancel) {
    const escalation = deadline === null ? "" : ` It will be abandoned if it is still running after ${abandonAfterMs} ms.`;
    out.changes.push({ type: "log", ticket, text: `Cancellation requested; asking the runner to stop the process tree.${escalation}`, at: now });
  }
  // Sent again on every cancel: harmless for the runner, and it recovers a cancel lost with a connection.
  if (state.runner) out.effects.push({ type: "cancel", ticket, fence: script.fence! });
}

function abandon(state: MachineState, ticket: string, killProcess: boolean, now: number, out: Decision): void {
  const script = state.scripts.get(ticket);
  if (!script) return; // complete: its real result stands
  if (script.state === "pending") {
    out.changes.push({ type: "log", ticket, text: "Abandoned before it ran; the script never started.", at: now });
    complete(state, script, { kind: "cancelled" }, now, out);
    return;
  }
  abandonRunning(state, script, killProcess, now, out);
}

/** Completes a running script as abandoned: the mutex is released now, whatever its process does. */
function abandonRunning(state: MachineState, script: ActiveScript, killProcess: boolean, now: number, out: Decision): void {
  const fence = script.fence!;
  out.changes.push({ type: "log", ticket: script.ticket, text: abandonedLine(state.machineId), at: now });
  out.changes.push({ type: "abandoned", ticket: script.ticket, fence, at: now });
  if (state.runner) out.effects.push({ type: "abandon", ticket: script.ticket, fence, killProcess });
  complete(state, script, { kind: "abandoned" }, now, out);
}

/**
 * Serves every deadline that has passed, in the order they fell due, as if each had been served on
 * time: an abandon that fell due first can grant a waiter whose own timeout came later.
 */
function serveDeadlines(state: MachineState, now: number, out: Decision): void {
  const due: Array<{ at: number; script: ActiveScript; kind: "abandon" | "timeout" }> = [];
  for (const script of state.scripts.values()) {
    if (!script.granted && script.mutexDeadline !== null && script.mutexDeadline <= now) {
      due.push({ at: script.mutexDeadline, script, kind: "timeout" });
    } else if (script.state === "running" && script.abandonDeadline !== null && script.abandonDeadline <= now) {
      due.push({ at: script.abandonDeadline, script, kind: "abandon" });
    }
  }
  due.sort((a, b) => a.at - b.at || a.script.queueSeq - b.script.queueSeq);
  for (const { script, kind } of due) {
    // An earlier deadline in this tick may have completed this script or granted it the mutex.
    if (!state.scripts.has(script.ticket)) continue;
    if (kind === "timeout" && !script.granted) timeOut(state, script, now, out);
    if (kind === "abandon" && script.state === "running") {
      out.changes.push({
        type: "log",
        ticket: script.ticket,
        text: "The script was still running when the abandon deadline set by its cancel passed; abandoning it.",
        at: now,
      });
      abandonRunning(state, script, false, now, out);
    }
  }
}

function timeOut(state: MachineState, script: ActiveScript, now: number, out: Decision): void {
  const mutex = state.mutexes.get(script.mutexName);
  const waitedMs = now - script.createdAt;
  out.changes.push({
    type: "log",
    ticket: script.ticket,
    text: `Timed out after ${waitedMs} ms waiting for the mutex "${script.mutexName}"${mutex ? `; ${describeBlockers(state, mutex, script)}` : ""}.`,
    at: now,
  });
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

