/**
 * Shared fixtures for the machine core's tests (machine-core*.test.ts): one wrapper per event, extractors that
 * turn a decision into plain data, views of the state, stored rows, and a seeded PRNG for randomized runs.
 */
import {
  emptyState,
  handle,
  type ActiveScript,
  type Decision,
  type InventoryEntry,
  type MachineState,
  type NewScript,
  type Requester,
} from "../../control-plane/machine/core/machine-core.js";
import type { LockMode } from "../../control-plane/machine/core/mutex.js";
import type { CompletionReason } from "../../shared/exit-codes.js";

/** The time of every event unless a test says otherwise. */
export const T0 = 1_700_000_000_000;
/** The mutex of every script unless a test says otherwise. */
export const MUTEX = "RunningScript";
export const EXITED_0: CompletionReason = { kind: "exited", code: 0 };

/** An empty machine with this id (the abandon line names it). */
export function machine(machineId: string): MachineState {
  const state = emptyState();
  state.machineId = machineId;
  return state;
}

// ---------------------------------------------------------------------------------------------------
// events

export interface StartOptions {
  mode?: LockMode;
  mutexName?: string;
  taskId?: string | null;
  mutexTimeoutMs?: number;
  runTimeoutMs?: number;
}

/** Who asks, unless a test says otherwise: the server token with no reason. */
export const SERVER: Requester = { actor: "server", reason: null };

export function newScript(ticket: string, options: StartOptions = {}): NewScript {
  return {
    ticket,
    mode: options.mode ?? "exclusive",
    mutexName: options.mutexName ?? MUTEX,
    taskId: options.taskId ?? null,
    mutexTimeoutMs: options.mutexTimeoutMs ?? 0,
    runTimeoutMs: options.runTimeoutMs ?? 0,
  };
}

export function start(state: MachineState, ticket: string, options: StartOptions = {}, now = T0): Decision {
  return handle(state, { type: "start", script: newScript(ticket, options), now });
}

export function connect(state: MachineState, runnerId: string, inventory: InventoryEntry[] = [], now = T0): Decision {
  return handle(state, { type: "runner_connected", runnerId, inventory, now });
}

export function disconnect(state: MachineState, now = T0): Decision {
  return handle(state, { type: "runner_disconnected", now });
}

export function exit(state: MachineState, ticket: string, fence: number, reason: CompletionReason = EXITED_0, now = T0): Decision {
  return handle(state, { type: "exited", ticket, fence, reason, now });
}

export function cancel(state: MachineState, ticket: string, abandonAfterMs: number | null = null, now = T0, by: Requester = SERVER): Decision {
  return handle(state, { type: "cancel", ticket, abandonAfterMs, by, now });
}

export function abandon(state: MachineState, ticket: string, killProcess = false, now = T0, by: Requester = SERVER): Decision {
  return handle(state, { type: "abandon", ticket, killProcess, by, now });
}

export function tick(state: MachineState, now: number): Decision {
  return handle(state, { type: "tick", now });
}

// ---------------------------------------------------------------------------------------------------
// decisions as plain data

/** `[ticket, fence]` of every dispatch effect, in order. */
export function dispatches(decision: Decision): Array<[string, number]> {
  return decision.effects.flatMap((e) => (e.type === "dispatch" ? [[e.ticket, e.fence] as [string, number]] : []));
}

/** `[ticket, reason kind]` of every completed change, in order. */
export function completions(decision: Decision): Array<[string, string]> {
  return decision.changes.flatMap((c) => (c.type === "completed" ? [[c.ticket, c.reason.kind] as [string, string]] : []));
}

/** `[ticket, text]` of every log change, in order. */
export function logs(decision: Decision): Array<[string, string]> {
  return decision.changes.flatMap((c) => (c.type === "log" ? [[c.ticket, c.text] as [string, string]] : []));
}

/** `[ticket, action, actor, reason]` of every audit change, in order. */
export function audits(decision: Decision): Array<[string | null, string, string, string | null]> {
  return decision.changes.flatMap((c) => (c.type === "audit" ? [[c.ticket, c.action, c.actor, c.reason] as [string | null, string, string, string | null]] : []));
}

/** The decision without its audit changes (for tests about something else). */
export function withoutAudits(decision: Decision): Decision {
  return { changes: decision.changes.filter((c) => c.type !== "audit"), effects: decision.effects };
}

/** Tickets of every granted change, in order. */
export function grants(decision: Decision): string[] {
  return decision.changes.flatMap((c) => (c.type === "granted" ? [c.ticket] : []));
}

// ---------------------------------------------------------------------------------------------------
// the state

export function script(state: MachineState, ticket: string): ActiveScript {
  const found = state.scripts.get(ticket);
  if (!found) throw new Error(`no active script ${ticket}`);
  return found;
}

/** A mutex's holders and waiters as plain data. */
export function mutexView(state: MachineState, name: string = MUTEX): { holders: Array<[string, LockMode]>; waiting: string[] } | null {
  const mutex = state.mutexes.get(name);
  if (!mutex) return null;
  return { holders: [...mutex.holders.entries()], waiting: mutex.queue.map((w) => w.ticket) };
}

/** A deep, comparable copy of the whole state. */
export function snapshot(state: MachineState): unknown {
  return {
    machineId: state.machineId,
    scripts: [...state.scripts.entries()].map(([k, v]) => [k, { ...v, output: { ...v.output }, process: v.process ? { ...v.process } : null }]),
    mutexes: [...state.mutexes.entries()].map(([k, m]) => [k, { name: m.name, holders: [...m.holders.entries()], queue: m.queue.map((w) => ({ ...w })) }]),
    runner: state.runner ? { ...state.runner } : null,
    killGraceMs: state.killGraceMs,
    nextFence: state.nextFence,
    nextQueueSeq: state.nextQueueSeq,
    nextAuditSeq: state.nextAuditSeq,
  };
}

/** A stored row of an active script, as storage would hand it to restoreState. */
export function row(ticket: string, fields: Partial<ActiveScript> & { queueSeq: number }): ActiveScript {
  return {
    ticket,
    state: "pending",
    mode: "exclusive",
    mutexName: MUTEX,
    taskId: null,
    createdAt: T0,
    granted: false,
    grantedAt: null,
    mutexDeadline: null,
    fence: null,
    runnerId: null,
    startedAt: null,
    cancelRequested: false,
    abandonDeadline: null,
    runTimeoutMs: 0,
    runTimedOut: false,
    output: { logNext: 0, runnerNext: 0, logBytes: 0, truncated: false },
    process: null,
    runnerRestarts: 0,
    ...fields,
  };
}

// ---------------------------------------------------------------------------------------------------
// randomized runs

/** Deterministic PRNG (mulberry32) so every randomized run can be replayed from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function shuffled<T>(items: T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
