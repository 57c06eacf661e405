/**
 * The machine core: one machine's isolation mutexes and the lifecycle of its active scripts, as
 * `(state, event) → (changes, effects)`. It does no I/O and knows nothing of workerd: the machine object
 * loads the state, hands each event to `handle`, persists the changes and carries out the effects.
 *
 * Script lifecycle:
 *   pending (waiting for its mutex) ─grant→ pending (granted, waiting for a runner) ─dispatch→ running
 *   ─exit→ complete. A waiting script may time out (-44); a running script whose runner restarted
 *   completes as lost (-46). Completed scripts leave the core; their rows stay in storage.
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
}

/** Everything the core decides over. */
export interface MachineState {
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
  | { type: "tick"; now: number };

/** What to persist. */
export type Change =
  | { type: "insert"; script: ActiveScript }
  | { type: "granted"; ticket: string }
  | { type: "dispatched"; ticket: string; fence: number; runnerId: string; startedAt: number }
  | { type: "completed"; ticket: string; reason: CompletionReason; at: number }
  | { type: "log"; ticket: string; text: string; at: number };

/** What to do outside storage. */
export type Effect =
  | { type: "dispatch"; ticket: string; fence: number }
  | { type: "resume"; decisions: ResumeDecision[] }
  | { type: "notify"; ticket: string };

/** The result of one event. */
export interface Decision {
  changes: Change[];
  effects: Effect[];
}

/** Creates an empty machine state. */
export function emptyState(): MachineState {
  return { scripts: new Map(), mutexes: new Map(), runner: null, nextFence: 1, nextQueueSeq: 1 };
}

/** Rebuilds the state from stored active scripts (in any order) and counters. */
export function restoreState(
  scripts: ActiveScript[],
  counters: { nextFence: number; nextQueueSeq: number },
): MachineState {
  const state = emptyState();
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
    if (script.granted || script.mutexDeadline === null) continue;
    if (earliest === null || script.mutexDeadline < earliest) earliest = script.mutexDeadline;
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
    case "tick":
      expireWaiters(state, event.now, out);
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
    if (entry && entry.fence === script.fence) continue;
    if (script.runnerId === runnerId) {
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

function expireWaiters(state: MachineState, now: number, out: Decision): void {
  const expired = [...state.scripts.values()]
    .filter((s) => !s.granted && s.mutexDeadline !== null && s.mutexDeadline <= now)
    .sort((a, b) => a.mutexDeadline! - b.mutexDeadline! || a.queueSeq - b.queueSeq);
  for (const script of expired) {
    // An earlier expiry in this tick may have let this one through (or completed it): then it no longer waits.
    if (script.granted || !state.scripts.has(script.ticket)) continue;
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

