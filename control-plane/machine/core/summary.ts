/**
 * A machine's summary for the fleet list, computed from the core's state and a few facts the engine keeps: who holds
 * the mutexes and since when, how many wait, how many abandoned processes may still run, and from when the machine
 * counts as stuck. Pure; the engine pushes it to the registry when it changes (`summaryKey` tells).
 */
import type { MachineState } from "./machine-core.js";

/** A holder that has held its mutex this long (or past its own `runTimeoutMs`, if shorter) makes its machine stuck. */
export const STUCK_AFTER_MS = 60 * 60 * 1000;

/** What the engine knows besides the core's state. */
export interface SummaryFacts {
  connected: boolean;
  /** True while the runner takes no new scripts before it goes (a later issue sets it). */
  draining: boolean;
  runnerVersion: string | null;
  /** Abandoned processes that may still run. */
  abandoned: number;
  /** When the oldest of them was abandoned (epoch ms), or null. */
  oldestAbandonedAt: number | null;
}

/** A machine's summary, times as epoch ms. */
export interface SummaryCore {
  connected: boolean;
  draining: boolean;
  runnerVersion: string | null;
  /** Tickets holding any mutex, mutexes by name. */
  holders: string[];
  /** Since when the longest holder holds its mutex (its start, or its grant while no runner ran it). */
  heldSince: number | null;
  /** Scripts waiting for a mutex. */
  waiting: number;
  abandoned: number;
  /**
   * From when the machine is stuck: the earliest of the oldest abandoned process's time and each holder's hold
   * start plus the shorter of an hour and its `runTimeoutMs`. Null: nothing can make it stuck as it stands.
   */
  stuckAt: number | null;
}

/** Summarizes a machine. */
export function summarize(state: MachineState, facts: SummaryFacts): SummaryCore {
  const holders: string[] = [];
  let waiting = 0;
  let heldSince: number | null = null;
  let stuckAt: number | null = facts.oldestAbandonedAt;
  const earliest = (a: number | null, b: number) => (a === null || b < a ? b : a);
  for (const mutex of [...state.mutexes.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    waiting += mutex.queue.length;
    for (const ticket of mutex.holders.keys()) {
      holders.push(ticket);
      const script = state.scripts.get(ticket);
      const since = script ? (script.startedAt ?? script.grantedAt ?? script.createdAt) : null;
      if (!script || since === null) continue;
      heldSince = earliest(heldSince, since);
      const limit = script.runTimeoutMs > 0 ? Math.min(STUCK_AFTER_MS, script.runTimeoutMs) : STUCK_AFTER_MS;
      stuckAt = earliest(stuckAt, since + limit);
    }
  }
  return {
    connected: facts.connected,
    draining: facts.draining,
    runnerVersion: facts.runnerVersion,
    holders,
    heldSince,
    waiting,
    abandoned: facts.abandoned,
    stuckAt,
  };
}

/** A comparable form of a summary: two summaries with the same key need not be pushed twice. */
export function summaryKey(summary: SummaryCore): string {
  return JSON.stringify(summary);
}
