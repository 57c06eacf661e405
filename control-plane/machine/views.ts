/** The API's shapes of a machine and its scripts, built from stored rows and the core's state. Pure. */
import type { AuditAction, AuditEvent, MachineView, MutexView, ScriptStatus, ScriptSummary, LogLine } from "../../shared/api.js";
import type { MachineState } from "./core/machine-core.js";
import { heldMode } from "./core/mutex.js";
import type { AbandonedRow, AuditRow, ScriptRow } from "./storage.js";

/**
 * Bytes a status page's JSON takes besides its `logs` entries (ticket, state, exit code, next sequence): a page's
 * lines get `LIMITS.logPageBytes` minus this and minus what its audit events take.
 */
export const STATUS_ENVELOPE_BYTES = 1024;

/** What the machine object knows of the runner's connection. */
export interface RunnerFacts {
  connected: boolean;
  /** It said it is draining (SIGTERM) and takes no new scripts. */
  draining: boolean;
  version: string | null;
  connectedAt: number | null;
  lastSeenAt: number | null;
  capabilities: string[];
}

/** The machine view (`scripts` only when given). */
export function machineView(machineId: string, state: MachineState, runner: RunnerFacts, abandoned: AbandonedRow[], scripts: ScriptRow[] | null): MachineView {
  const mutexes: MutexView[] = [...state.mutexes.values()]
    .map((m) => ({ name: m.name, mode: heldMode(m), holders: [...m.holders.keys()], waiting: m.queue.map((w) => w.ticket) }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const view: MachineView = {
    machineId,
    runner: {
      connected: runner.connected,
      draining: runner.draining,
      version: runner.version,
      connectedAt: runner.connectedAt !== null ? iso(runner.connectedAt) : null,
      lastSeenAt: runner.lastSeenAt !== null ? iso(runner.lastSeenAt) : null,
      capabilities: runner.capabilities,
    },
    mutexes,
    abandoned: abandoned.map((row) => ({ ticket: row.ticket, pid: row.pid === 0 ? null : row.pid, abandonedAt: iso(row.abandoned_at) })),
  };
  if (scripts) view.scripts = scripts.map(summary);
  return view;
}

/** A script's audit events as the API shows them, oldest first. */
export function auditEvents(rows: readonly AuditRow[]): AuditEvent[] {
  // The actions were written by the core, from the closed union.
  return rows.map((row) => ({ at: iso(row.at), action: row.action as AuditAction, actor: row.actor, reason: row.reason }));
}

/** A script's status with a page of its logs that starts at `logSequence`, and its audit events. */
export function scriptStatus(row: ScriptRow, logSequence: number, logs: LogLine[], events: AuditEvent[]): ScriptStatus {
  const last = logs[logs.length - 1];
  const nextLogSequence = last ? last.sequence + 1 : Math.min(logSequence, row.log_next);
  return {
    ticket: row.ticket,
    state: row.state,
    exitCode: row.state === "complete" ? row.exit_code : null,
    logs,
    nextLogSequence,
    hasMoreLogs: nextLogSequence < row.log_next,
    events,
  };
}

/** A script as the machine view lists it. */
export function summary(row: ScriptRow): ScriptSummary {
  const out: ScriptSummary = {
    ticket: row.ticket,
    state: row.state,
    isolation: row.isolation,
    mutexName: row.mutex_name,
    createdAt: iso(row.created_at),
    runnerRestarts: row.runner_restarts,
  };
  if (row.task_id !== null) out.taskId = row.task_id;
  if (row.started_at !== null) out.startedAt = iso(row.started_at);
  if (row.completed_at !== null) out.completedAt = iso(row.completed_at);
  if (row.state === "complete") out.exitCode = row.exit_code;
  return out;
}

/** Epoch ms as an ISO-8601 string. */
export function iso(ms: number): string {
  return new Date(ms).toISOString();
}
