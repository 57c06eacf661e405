/**
 * What the runner reports after its hello — `started`, `output`, `exit`, `abandoned_exit` — as decisions of the
 * core. Fencing comes first: a report changes a script only when it carries the fence of the script's current
 * dispatch (anything else is a late report of a stale or abandoned dispatch). Pure, like the rest of the core.
 */
import type { CompletionReason } from "../../../shared/exit-codes.js";
import { CloseCode, type Outcome, type RunnerMessage } from "../../../shared/protocol.js";
import { handle, type ActiveScript, type Decision, type MachineState } from "./machine-core.js";
import { planOutput } from "./output.js";

/** A runner message other than `hello`. */
export type RunnerReport = Exclude<RunnerMessage, { type: "hello" }>;

/** What a report is judged with besides the state. */
export interface ReportContext {
  now: number;
  /** The per-script output cap, in bytes. */
  maxOutputBytes: number;
}

/** The one mapping from what the runner saw to why the script completed. */
export function reasonFromOutcome(outcome: Outcome): CompletionReason {
  switch (outcome.kind) {
    case "exited":
      return { kind: "exited", code: outcome.code };
    case "signaled":
      return { kind: "signaled", signal: outcome.signal, number: outcome.number };
    case "failed":
      return { kind: "failed", message: outcome.message };
    case "cancelled":
      return { kind: "cancelled" };
    case "lost":
      return { kind: "lost" };
    default: {
      const unreachable: never = outcome;
      throw new Error(`unknown outcome ${JSON.stringify(unreachable)}`);
    }
  }
}

/** The script if `fence` is its current dispatch and it is running; null for anything stale. */
export function currentDispatch(state: MachineState, ticket: string, fence: number): ActiveScript | null {
  const script = state.scripts.get(ticket);
  return script && script.state === "running" && script.fence === fence ? script : null;
}

/** Applies one runner report to the state (in place) and returns what to persist and do. */
export function onRunnerReport(state: MachineState, report: RunnerReport, context: ReportContext): Decision {
  const out: Decision = { changes: [], effects: [] };
  switch (report.type) {
    case "started": {
      const process = { pid: report.pid, ...(report.startTime === undefined ? {} : { startTime: report.startTime }), ...(report.bootId === undefined ? {} : { bootId: report.bootId }) };
      const script = currentDispatch(state, report.ticket, report.fence);
      if (!script) {
        // Abandoned before its process was known: the abandoned entry learns which process to watch.
        out.changes.push({ type: "abandoned_process", ticket: report.ticket, fence: report.fence, process });
      } else if (!sameProcess(script.process, process)) {
        script.process = process;
        out.changes.push({ type: "process", ticket: report.ticket, fence: report.fence, process });
      }
      return out;
    }
    case "output": {
      const script = currentDispatch(state, report.ticket, report.fence);
      if (!script) return out; // a stale dispatch or an abandoned script: it can change nothing
      const plan = planOutput(script.output, { sequence: report.sequence, lines: report.lines, blocks: report.blocks }, context.maxOutputBytes);
      if (plan.kind === "gap") {
        out.effects.push({ type: "close", code: CloseCode.OutOfOrder, reason: `output for ${report.ticket} starts at ${report.sequence}, expected ${plan.expected}` });
        return out;
      }
      const before = script.output;
      script.output = plan.position;
      if (plan.position.runnerNext !== before.runnerNext) {
        out.changes.push({ type: "append", ticket: report.ticket, first: plan.first, pieces: plan.pieces, position: plan.position });
        out.effects.push({ type: "notify", ticket: report.ticket });
      }
      out.effects.push({ type: "ack", ticket: report.ticket, fence: report.fence, nextSequence: plan.position.runnerNext });
      return out;
    }
    case "exit": {
      const script = currentDispatch(state, report.ticket, report.fence);
      if (!script) {
        // Already stored (a resend after a lost exit_ack) or stale: acknowledge so the runner can forget it.
        out.effects.push({ type: "exit_ack", ticket: report.ticket, fence: report.fence });
        return out;
      }
      if (report.lineCount > script.output.runnerNext) {
        out.effects.push({ type: "close", code: CloseCode.OutOfOrder, reason: `exit for ${report.ticket} before all of its output` });
        return out;
      }
      const survivors = report.outcome.kind === "lost" ? report.outcome.survivors : [];
      const decision = handle(state, { type: "exited", ticket: report.ticket, fence: report.fence, reason: reasonFromOutcome(report.outcome), survivors, now: context.now });
      decision.effects.push({ type: "exit_ack", ticket: report.ticket, fence: report.fence });
      return decision;
    }
    case "draining":
      // The runner is about to go: nothing of a script changes (the machine object records that it drains).
      return out;
    case "abandoned_exit":
      // The process is gone: it no longer needs to be listed as possibly running. It can touch nothing else.
      out.changes.push({ type: "abandoned_exit", ticket: report.ticket, fence: report.fence, pid: report.pid });
      return out;
    default: {
      const unreachable: never = report;
      throw new Error(`unhandled runner report ${JSON.stringify(unreachable)}`);
    }
  }
}

function sameProcess(a: { pid: number; startTime?: number; bootId?: string } | null, b: { pid: number; startTime?: number; bootId?: string }): boolean {
  return a !== null && a.pid === b.pid && a.startTime === b.startTime && a.bootId === b.bootId;
}
