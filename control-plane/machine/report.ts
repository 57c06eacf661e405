/**
 * The machine's report to the registry: its summary for the fleet list and the audit events the registry does not
 * have yet, and when to push it. The engine pushes a report after a decision that changed either (coalesced: one
 * push in flight, after a short delay), retries a failed one from the alarm with a backoff, and re-sends the summary
 * every few minutes while the machine is in use, so that a write the registry lost heals. Pure.
 */
import type { AuditAction } from "../../shared/api.js";
import type { SummaryCore } from "./core/summary.js";

/** How long after a change the report goes out, so that a burst of changes makes one push. */
export const REPORT_PUSH_DELAY_MS = 100;
/** When a push did not go out (the object went away first), the alarm tries again this long after the change. */
export const REPORT_RETRY_MS = 30_000;
/** The longest wait between retries of a push that keeps failing. */
export const REPORT_MAX_BACKOFF_MS = 5 * 60_000;
/**
 * How often a machine in use (a runner connected, scripts active or abandoned processes listed) re-sends its summary
 * although nothing changed: at 10,000 machines, about 33 pushes a second, most of which the registry answers
 * without a write.
 */
export const REPORT_REFRESH_MS = 5 * 60_000;
/** Most audit events one push carries; more go with the next push, at once. */
export const REPORT_EVENTS_PER_PUSH = 500;

/** One audit event as the registry receives it. */
export interface ReportEvent {
  /** The machine's sequence number of the event (with the machine's incarnation, its identity in the feed). */
  seq: number;
  ticket: string | null;
  action: AuditAction;
  actor: string;
  reason: string | null;
  /** Epoch ms. */
  at: number;
}

/** The summary as pushed: the core's, and the runner's last sign of life. */
export interface ReportSummary extends SummaryCore {
  lastSeenAt: number | null;
}

/** What a machine pushes to the registry. */
export interface MachineReport {
  machineId: string;
  /** The machine's life: a machine removed and registered again starts a new one. */
  incarnation: string;
  /** Grows with every change of the summary (or new events): the registry keeps the newest it saw. */
  version: number;
  /** When the summary last changed (epoch ms). */
  updatedAt: number;
  summary: ReportSummary;
  /** Events the registry may not have yet, oldest first (it keeps each once). */
  events: ReportEvent[];
}

/**
 * What the registry did with a report: `applied` its summary, already had it or a newer one (`current`), or does not
 * know the machine (`unknown`: not registered yet, or removed), in which case the summary is tried again later. The
 * events are kept in every case.
 */
export interface ReportAck {
  summary: "applied" | "current" | "unknown";
}

/** When the report is due: a retry while the registry lacks something, else the periodic re-send (or never). */
export function reportDueAt(report: { dirty: boolean; retryAt: number | null; acceptedAt: number; inUse: boolean }): number | null {
  if (report.dirty) return report.retryAt;
  return report.inUse ? report.acceptedAt + REPORT_REFRESH_MS : null;
}

/** When to try again after `failures` pushes failed in a row: doubling from the retry interval, at most 5 minutes. */
export function nextReportAttempt(now: number, failures: number): number {
  return now + Math.min(REPORT_MAX_BACKOFF_MS, REPORT_RETRY_MS * 2 ** Math.max(0, failures - 1));
}
