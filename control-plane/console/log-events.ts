/**
 * The console's live log as events: each line is an `event: log` whose `id` is its log sequence, so that after a
 * dropped connection the browser's EventSource reconnects with `Last-Event-ID` and the stream resumes at the next
 * line (no line lost or doubled); one `event: status` (no id) ends it once the script is complete. Pure.
 */
import type { LogLine, ScriptStatus } from "../../shared/api.js";

/**
 * The first line a (re)connecting stream sends: one after `Last-Event-ID` when the browser sends it (a reconnect),
 * else the `from` query (the page's next line), else 0. Null when either is not a non-negative integer.
 */
export function resumeFrom(lastEventId: string | undefined, from: string | undefined): number | null {
  const parse = (raw: string) => (/^\d{1,15}$/.test(raw) ? Number(raw) : null);
  if (lastEventId !== undefined && lastEventId !== "") {
    const last = parse(lastEventId.trim());
    return last === null ? null : last + 1;
  }
  if (from === undefined || from === "") return 0;
  return parse(from);
}

/** One line as an event. */
export function logEvent(line: LogLine): string {
  return `id: ${line.sequence}\nevent: log\ndata: ${JSON.stringify(line)}\n\n`;
}

/** The final event: the state and exit code (no id: a reconnect resumes after the last line). */
export function statusEvent(status: Pick<ScriptStatus, "state" | "exitCode" | "nextLogSequence">): string {
  return `event: status\ndata: ${JSON.stringify({ state: status.state, exitCode: status.exitCode, nextLogSequence: status.nextLogSequence })}\n\n`;
}
