/** Small pieces the console's pages share: times, state badges, exit codes, links. */
import type { AuditEvent, FeedEvent, ScriptState } from "../../../shared/api.js";
import { ExitCode } from "../../../shared/exit-codes.js";
import { formatExact, formatRelative, type RelativeStyle } from "../time.js";

/** The console path of a machine. */
export function machinePath(machineId: string): string {
  return `/machines/${encodeURIComponent(machineId)}`;
}

/** The console path of a script. */
export function scriptPath(machineId: string, ticket: string): string {
  return `${machinePath(machineId)}/scripts/${encodeURIComponent(ticket)}`;
}

/**
 * A time shown relative to `now` ("3 min ago", or with `for`, how long: "3 min"), the exact time on hover; the
 * browser script keeps the text current. Nothing (a dash) when there is no time.
 */
export function RelTime(props: { iso: string | null | undefined; now: number; style?: RelativeStyle }) {
  if (!props.iso) return <span class="meta">—</span>;
  const style = props.style ?? "ago";
  return (
    <time datetime={props.iso} title={formatExact(props.iso)} data-rel={style}>
      {formatRelative(props.iso, props.now, style)}
    </time>
  );
}

/** A script's state as a badge (its colour is never the only sign: the word is there). */
export function StateBadge(props: { state: ScriptState; exitCode?: number | null | undefined }) {
  const tone = props.state === "running" ? "run" : props.state === "pending" ? "" : props.exitCode === 0 ? "ok" : "warn";
  return <span class={`badge ${tone}`.trim()}>{props.state}</span>;
}

/** What an exit code means, in a few words. */
export function describeExit(code: number): string {
  switch (code) {
    case 0:
      return "success";
    case ExitCode.Fatal:
      return "the runner could not run it";
    case ExitCode.Cancelled:
      return "cancelled";
    case ExitCode.MutexTimeout:
      return "timed out waiting for its mutex";
    case ExitCode.Unknown:
      return "result unknown: the runner lost track of it";
    case ExitCode.Abandoned:
      return "abandoned: its process may still be running";
    default:
      return code > 128 && code < 160 ? `killed by signal ${code - 128}` : "failed";
  }
}

/** An exit code with its meaning, or a dash while there is none. */
export function ExitCodeText(props: { code: number | null | undefined }) {
  if (props.code === null || props.code === undefined) return <span class="meta">—</span>;
  return (
    <span>
      <code>{String(props.code)}</code> <span class="meta">{describeExit(props.code)}</span>
    </span>
  );
}

/** A short notice after an action (`role=status`, so screen readers announce it). */
export function Notice(props: { text: string | null }) {
  return props.text ? (
    <p class="notice" role="status">
      {props.text}
    </p>
  ) : null;
}

/** An error sentence (`role=alert`). */
export function ErrorText(props: { text: string | null | undefined }) {
  return props.text ? (
    <p class="error" role="alert">
      {props.text}
    </p>
  ) : null;
}

/** Audit events as a table (cards on a narrow screen); `where`: with the machine and the script of each. */
export function EventsTable(props: { events: Array<AuditEvent & Partial<Pick<FeedEvent, "machineId" | "ticket">>>; now: number; where?: boolean }) {
  return (
    <table class="cards">
      <thead>
        <tr>
          <th scope="col">Action</th>
          {props.where ? <th scope="col">Machine</th> : null}
          {props.where ? <th scope="col">Script</th> : null}
          <th scope="col">By</th>
          <th scope="col">Reason</th>
          <th scope="col">When</th>
        </tr>
      </thead>
      <tbody>
        {props.events.map((event) => (
          <tr>
            <td>{event.action}</td>
            {props.where ? (
              <td data-label="Machine" class={event.machineId ? undefined : "none"}>
                {event.machineId ? <a href={machinePath(event.machineId)}>{event.machineId}</a> : "—"}
              </td>
            ) : null}
            {props.where ? (
              <td data-label="Script" class={event.machineId && event.ticket ? undefined : "none"}>
                {event.machineId && event.ticket ? <a href={scriptPath(event.machineId, event.ticket)}>{event.ticket}</a> : "—"}
              </td>
            ) : null}
            <td data-label="By">{event.actor}</td>
            <td data-label="Reason" class={event.reason ? undefined : "none"}>
              {event.reason ?? "—"}
            </td>
            <td data-label="When">
              <RelTime iso={event.at} now={props.now} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
