/**
 * A reconnecting runner's inventory, classified: what the runner should do with each script it still tracks
 * (the welcome's `resume`), and which abandoned processes it should watch (the welcome's `watch`), with the
 * kills that were asked for while no runner could hear them. Pure; the machine core calls it on `hello`.
 */
import type { CompletionReason } from "../../../shared/exit-codes.js";
import type { ProcessRef } from "../../../shared/protocol.js";
import type { Change, MachineState } from "./machine-core.js";

/** Most entries one welcome's `watch` may carry (the protocol's bound). */
export const MAX_WATCH = 10_000;

/** One entry of a reconnecting runner's inventory, with what storage knows of it when it is not active. */
export interface InventoryEntry {
  ticket: string;
  fence: number;
  /** For scripts the core no longer has: whether storage completed that exact dispatch. */
  stored: "completed" | "abandoned" | "none";
  /** The runner process re-attached to it after a restart (protocol 2). */
  reattached?: boolean;
}

/** An abandoned process that storage lists as maybe running. */
export interface AbandonedProcess {
  ticket: string;
  fence: number;
  /** Null until the runner reported the process (`started` came after the abandon, or never). */
  process: ProcessRef | null;
  /** A kill was asked for while no runner was connected and has not gone out yet. */
  killRequested: boolean;
}

/** The welcome's answer for one inventory entry (the protocol's resume entry). */
export interface ResumeEntry {
  ticket: string;
  fence: number;
  action: "continue" | "cancel" | "abandon" | "forget";
  /** For `continue`: the first line the control plane does not have; 0 otherwise. */
  nextSequence: number;
  /** For `abandon`: kill the process tree, as the abandon asked while the runner was away. */
  killProcess?: true;
}

/** An abandoned process the runner should watch (the protocol's watch entry). */
export interface WatchEntry {
  ticket: string;
  fence: number;
  pid: number;
  startTime?: number;
  bootId?: string;
  /** Kill it first (best effort): its abandon asked for that while no runner could hear it. */
  kill?: true;
}

/** What storage keeps of a script that the core no longer has, as far as classifying an inventory goes. */
export interface StoredScript {
  state: "pending" | "running" | "complete";
  fence: number | null;
  reason: CompletionReason | null;
}

/** Whether storage completed the very dispatch `fence` of a script the core no longer tracks, and how. */
export function storedOutcome(row: StoredScript | null, fence: number): InventoryEntry["stored"] {
  if (!row || row.state !== "complete" || row.fence !== fence) return "none";
  return row.reason?.kind === "abandoned" ? "abandoned" : "completed";
}

/**
 * The welcome for a runner that lists `inventory`, given the abandoned processes storage lists:
 * - `continue` a script running under that very fence (from the first line the control plane lacks);
 * - `forget` a dispatch whose exit is stored; `abandon` one that was abandoned (with `killProcess` when a kill
 *   was asked for while the runner was away);
 * - `cancel` anything else (a stale fence, a ticket nobody tracks): nobody wants its result.
 * Every abandoned process with a known pid is watched. `delivered` clears the kill requests this welcome carries.
 */
export function planWelcome(
  state: MachineState,
  inventory: InventoryEntry[],
  abandoned: AbandonedProcess[],
): { resume: ResumeEntry[]; watch: WatchEntry[]; delivered: Change[] } {
  const killFor = new Set(abandoned.filter((a) => a.killRequested).map((a) => key(a.ticket, a.fence)));
  const delivered: Change[] = [];
  const deliveredAll = new Set<string>();
  const resume = inventory.map((entry): ResumeEntry => {
    const script = state.scripts.get(entry.ticket);
    if (script && script.state === "running" && script.fence === entry.fence) {
      return { ticket: entry.ticket, fence: entry.fence, action: "continue", nextSequence: script.output.runnerNext };
    }
    if (!script && entry.stored === "completed") return { ticket: entry.ticket, fence: entry.fence, action: "forget", nextSequence: 0 };
    if (!script && entry.stored === "abandoned") {
      const k = key(entry.ticket, entry.fence);
      if (!killFor.has(k)) return { ticket: entry.ticket, fence: entry.fence, action: "abandon", nextSequence: 0 };
      // The runner still tracks the process tree: it kills all of it.
      deliveredAll.add(k);
      delivered.push({ type: "kill_delivered", ticket: entry.ticket, fence: entry.fence, pid: null });
      return { ticket: entry.ticket, fence: entry.fence, action: "abandon", nextSequence: 0, killProcess: true };
    }
    return { ticket: entry.ticket, fence: entry.fence, action: "cancel", nextSequence: 0 };
  });
  const watch: WatchEntry[] = [];
  for (const entry of abandoned) {
    if (!entry.process || watch.length >= MAX_WATCH) continue;
    const item: WatchEntry = { ticket: entry.ticket, fence: entry.fence, pid: entry.process.pid };
    if (entry.process.startTime !== undefined) item.startTime = entry.process.startTime;
    if (entry.process.bootId !== undefined) item.bootId = entry.process.bootId;
    if (entry.killRequested) {
      item.kill = true;
      if (!deliveredAll.has(key(entry.ticket, entry.fence))) {
        delivered.push({ type: "kill_delivered", ticket: entry.ticket, fence: entry.fence, pid: entry.process.pid });
      }
    }
    watch.push(item);
  }
  return { resume, watch, delivered };
}

function key(ticket: string, fence: number): string {
  return `${fence}:${ticket}`;
}
