/**
 * One script: its state and exit code, where it stands in its mutex's queue, Cancel and Abandon (for those who may
 * act, while it is not complete), its audit events, and its log — rendered as far as it goes when the page is made,
 * then followed live by the browser script over the console's own event stream.
 */
import type { AuditEvent, LogLine, MutexView, ScriptStatus, ScriptSummary } from "../../../shared/api.js";
import { Layout, type Viewer } from "./layout.js";
import { ErrorText, EventsTable, ExitCodeText, machinePath, Notice, RelTime, scriptPath, StateBadge } from "./parts.js";

/** What the script page shows. */
export interface ScriptPageProps {
  now: number;
  viewer: Viewer;
  machineId: string;
  /** Its status, with the page of log lines from `from`. */
  status: ScriptStatus;
  /** Its entry in the machine view (task id, mutex, times), when the view lists it. */
  summary: ScriptSummary | null;
  /** The mutex it holds or waits for, when it does. */
  mutex: MutexView | null;
  /** The first log line shown. */
  from: number;
  canAct: boolean;
  /** A sentence about the action just taken. */
  notice: string | null;
  /** What was wrong with a posted form. */
  error?: string | null;
}

/** The script page. */
export function ScriptPage(props: ScriptPageProps) {
  const { now, machineId, status, summary } = props;
  const path = scriptPath(machineId, status.ticket);
  return (
    <Layout title={`${status.ticket} on ${machineId}`} now={now} viewer={props.viewer} refreshMs={5_000}>
      <p class="crumbs">
        <a href="/">Fleet</a> › <a href={machinePath(machineId)}>{machineId}</a> › script
      </p>
      <div class="page-head">
        <h1>{status.ticket}</h1>
        <p>
          on <a href={machinePath(machineId)}>{machineId}</a>
          {summary?.taskId ? ` for task ${summary.taskId}` : ""}
        </p>
      </div>
      <Notice text={props.notice} />
      <ErrorText text={props.error} />
      <div class="grid">
        <section id="script-status" class="panel" data-live aria-labelledby="status-heading">
          <h2 id="status-heading">Status</h2>
          <dl class="facts">
            <dt>State</dt>
            <dd>
              <StateBadge state={status.state} exitCode={status.exitCode} /> <Position ticket={status.ticket} state={status.state} mutex={props.mutex} />
            </dd>
            <dt>Exit code</dt>
            <dd>
              <ExitCodeText code={status.exitCode} />
            </dd>
            <dt>Mutex</dt>
            <dd>{summary ? <span><code>{summary.mutexName}</code> <span class="meta">{summary.isolation === "full" ? "exclusive (isolation full)" : "shared (isolation none)"}</span></span> : "—"}</dd>
            <dt>Created</dt>
            <dd>
              <RelTime iso={summary?.createdAt} now={now} />
            </dd>
            <dt>Started</dt>
            <dd>
              <RelTime iso={summary?.startedAt} now={now} />
            </dd>
            <dt>Completed</dt>
            <dd>
              <RelTime iso={summary?.completedAt} now={now} />
            </dd>
          </dl>
        </section>
        <section id="script-events" class="panel" data-live aria-labelledby="events-heading">
          <h2 id="events-heading">Audit events</h2>
          <Events events={status.events} now={now} />
        </section>
      </div>
      {status.state === "complete" ? null : (
        <section id="script-actions" class="panel" data-live aria-labelledby="actions-heading">
          <h2 id="actions-heading">Act on this script</h2>
          {props.canAct ? <Actions path={path} machineId={machineId} formToken={props.viewer.formToken} /> : <p class="empty">You are signed in as a viewer: you can watch, not act.</p>}
        </section>
      )}
      <section class="panel" aria-labelledby="log-heading">
        <h2 id="log-heading">Log</h2>
        <p class="hint">
          {props.from > 0 ? (
            <>
              Lines before {String(props.from + 1)} are not shown. <a href={`${path}?from=0`}>Show from the first line</a>.{" "}
            </>
          ) : null}
          {status.state === "complete" ? "The script is complete: this is all of its output." : "New lines appear as they arrive (without JavaScript, reload the page)."}
        </p>
        <div class="log" tabindex={0} role="region" aria-label="Log lines">
          <ol id="log" class="log-lines" role="log" aria-live="off" data-stream={`${path}/log`} data-next={String(status.nextLogSequence)} data-complete={String(status.state === "complete")}>
            {status.logs.map((line) => (
              <LogLineItem line={line} />
            ))}
          </ol>
        </div>
        <p id="log-status" class="hint log-status" aria-live="polite"></p>
      </section>
    </Layout>
  );
}

/** One log line; the browser script builds the same markup for the lines it receives. */
function LogLineItem(props: { line: LogLine }) {
  const { line } = props;
  return (
    <li class={line.source} data-seq={String(line.sequence)}>
      <span class="seq" aria-hidden="true">
        {String(line.sequence + 1)}
      </span>
      {line.source === "stdout" ? null : <span class="src">{line.source === "stderr" ? "err" : "tendril"}</span>}
      <span class="text">{line.text}</span>
    </li>
  );
}

/** Where a pending script stands: holding its mutex (waiting for a runner), or its place in the queue. */
function Position(props: { ticket: string; state: ScriptStatus["state"]; mutex: MutexView | null }) {
  const { ticket, state, mutex } = props;
  if (state !== "pending" || !mutex) return null;
  if (mutex.holders.includes(ticket)) return <span class="meta">holds its mutex; waits for a runner</span>;
  const place = mutex.waiting.indexOf(ticket);
  if (place < 0) return null;
  return (
    <span class="meta">
      {`waiting for its mutex: ${ordinal(place + 1)} in the queue, behind ${[...mutex.holders, ...mutex.waiting.slice(0, place)].join(", ") || "nobody"}`}
    </span>
  );
}

function ordinal(n: number): string {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : (["th", "st", "nd", "rd"][n % 10] ?? "th");
  return `${n}${suffix}`;
}

function Events(props: { events: AuditEvent[]; now: number }) {
  if (props.events.length === 0) return <p class="empty">None: nobody has cancelled or abandoned it, and the control plane has not stepped in.</p>;
  return <EventsTable events={props.events} now={props.now} />;
}

/** Cancel and Abandon, as plain forms: they work without JavaScript. */
function Actions(props: { path: string; machineId: string; formToken: string }) {
  return (
    <div class="actions">
      <form class="action" method="post" action={`${props.path}/cancel`}>
        <h3>Cancel</h3>
        <p>Stops its whole process tree (SIGTERM, then SIGKILL after the runner's grace period). A script still waiting never runs.</p>
        <label for="cancel-reason">Reason (recorded in the audit trail)</label>
        <textarea id="cancel-reason" name="reason" rows={2} maxlength={500}></textarea>
        <input type="hidden" name="formToken" value={props.formToken} />
        <button type="submit">Cancel the script</button>
      </form>
      <form class="action danger" method="post" action={`${props.path}/abandon`}>
        <h3>Abandon</h3>
        <p>
          <strong>
            Abandoning releases its mutex now, so the next script can start, but its process may keep running on <span class="nowrap">{props.machineId}</span>.
          </strong>
        </p>
        <label for="abandon-reason">Reason (required, recorded in the audit trail)</label>
        <textarea id="abandon-reason" name="reason" rows={2} maxlength={500} required></textarea>
        <div class="check">
          <input type="checkbox" id="abandon-kill" name="killProcess" value="yes" />
          <label for="abandon-kill">Also ask the runner to kill its process tree (best effort; nothing waits for it)</label>
        </div>
        <div class="check">
          <input type="checkbox" id="abandon-confirm" name="confirm" value="yes" required />
          <label for="abandon-confirm">Yes, abandon it: I understand its process may keep running.</label>
        </div>
        <input type="hidden" name="formToken" value={props.formToken} />
        <button type="submit" class="danger">
          Abandon the script
        </button>
      </form>
    </div>
  );
}
