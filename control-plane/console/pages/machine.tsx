/**
 * One machine: its runner, each mutex with its holder(s) and how long they have held it and the queue in order (each
 * waiter's task id and wait), the abandoned processes that may still run, and its recent scripts. Live: the browser
 * script refreshes the sections every few seconds.
 */
import type { MachineView, MutexView, ScriptSummary } from "../../../shared/api.js";
import { Layout, type Viewer } from "./layout.js";
import { ExitCodeText, RelTime, scriptPath, StateBadge } from "./parts.js";

/** Scripts listed under "Recent scripts". */
const RECENT_SCRIPTS = 25;

/** What the machine page shows. */
export interface MachinePageProps {
  now: number;
  viewer: Viewer;
  view: MachineView;
}

/** The machine page. */
export function MachinePage(props: MachinePageProps) {
  const { now, view } = props;
  const scripts = new Map((view.scripts ?? []).map((script) => [script.ticket, script]));
  const busy = view.mutexes.filter((mutex) => mutex.holders.length > 0 || mutex.waiting.length > 0);
  return (
    <Layout title={view.machineId} now={now} viewer={props.viewer} refreshMs={3_000}>
      <p class="crumbs">
        <a href="/">Fleet</a> › machine
      </p>
      <div class="page-head">
        <h1>{view.machineId}</h1>
        {view.runner.connected ? <span class="badge ok">runner connected</span> : <span class="badge warn">runner disconnected</span>}
        {view.runner.draining ? <span class="badge warn">draining</span> : null}
        {view.abandoned.length > 0 ? <span class="badge bad">{`${view.abandoned.length} abandoned may still run`}</span> : null}
      </div>
      <section id="machine-mutexes" class="panel" data-live aria-labelledby="mutexes-heading">
        <h2 id="mutexes-heading">Mutexes</h2>
        {busy.length === 0 ? <p class="empty">Free: no script holds or waits for a mutex.</p> : busy.map((mutex, index) => <Mutex id={`mutex-${index}`} machineId={view.machineId} mutex={mutex} scripts={scripts} now={now} />)}
      </section>
      <div class="grid">
        <section id="machine-runner" class="panel" data-live aria-labelledby="runner-heading">
          <h2 id="runner-heading">Runner</h2>
          <dl class="facts">
            <dt>Connected</dt>
            <dd>
              {view.runner.connected ? (
                <span>
                  yes, since <RelTime iso={view.runner.connectedAt} now={now} />
                </span>
              ) : (
                "no"
              )}
            </dd>
            <dt>Last seen</dt>
            <dd>
              <RelTime iso={view.runner.lastSeenAt} now={now} />
            </dd>
            <dt>Version</dt>
            <dd>{view.runner.version ?? "—"}</dd>
            <dt>Draining</dt>
            <dd>{view.runner.draining ? "yes: it takes no new scripts" : "no"}</dd>
          </dl>
        </section>
        <section id="machine-abandoned" class="panel" data-live aria-labelledby="abandoned-heading">
          <h2 id="abandoned-heading">Abandoned, may still be running</h2>
          {view.abandoned.length === 0 ? (
            <p class="empty">None: no process of an abandoned script is known to be alive.</p>
          ) : (
            <table class="cards">
              <thead>
                <tr>
                  <th scope="col">Script</th>
                  <th scope="col">Process id</th>
                  <th scope="col">Abandoned</th>
                </tr>
              </thead>
              <tbody>
                {view.abandoned.map((process) => (
                  <tr>
                    <td>
                      <a href={scriptPath(view.machineId, process.ticket)}>{process.ticket}</a>
                    </td>
                    <td data-label="Process id" class="num">
                      {process.pid === null ? "not reported yet" : <code>{String(process.pid)}</code>}
                    </td>
                    <td data-label="Abandoned">
                      <RelTime iso={process.abandonedAt} now={now} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
      </div>
      <section id="machine-scripts" class="panel" data-live aria-labelledby="scripts-heading">
        <h2 id="scripts-heading">Recent scripts</h2>
        <RecentScripts machineId={view.machineId} scripts={(view.scripts ?? []).slice(0, RECENT_SCRIPTS)} now={now} />
      </section>
    </Layout>
  );
}

function Mutex(props: { id: string; machineId: string; mutex: MutexView; scripts: Map<string, ScriptSummary>; now: number }) {
  const { id, machineId, mutex, scripts, now } = props;
  return (
    <article class="mutex" aria-labelledby={id}>
      <h3 id={id}>
        <code>{mutex.name}</code> <span class={`badge ${mutex.mode === "free" ? "" : "run"}`}>{mutex.mode === "free" ? "free" : `held ${mutex.mode}`}</span>
      </h3>
      <h4>Held by</h4>
      {mutex.holders.length === 0 ? (
        <p class="empty">Nobody.</p>
      ) : (
        <ul class="plain holders">
          {mutex.holders.map((ticket) => {
            const script = scripts.get(ticket);
            // A holder's hold begins when it starts (or, not started yet for want of a runner, about when it was made).
            const since = script?.startedAt ?? script?.createdAt;
            return (
              <li>
                <a href={scriptPath(machineId, ticket)}>{ticket}</a>{" "}
                {script ? <StateBadge state={script.state} exitCode={script.exitCode} /> : null}{" "}
                <span class="meta">{script?.taskId ? `task ${script.taskId}` : "no task id"}</span>{" "}
                {since ? (
                  <span class="meta">
                    held <RelTime iso={since} now={now} style="for" />
                  </span>
                ) : null}
              </li>
            );
          })}
        </ul>
      )}
      <h4>{mutex.waiting.length === 0 ? "Queue" : `Queue: ${mutex.waiting.length} waiting, in the order they will run`}</h4>
      {mutex.waiting.length === 0 ? (
        <p class="empty">Nobody waits.</p>
      ) : (
        <ol class="queue">
          {mutex.waiting.map((ticket) => {
            const script = scripts.get(ticket);
            return (
              <li>
                <div class="line">
                  <a href={scriptPath(machineId, ticket)}>{ticket}</a>{" "}
                  <span class="meta">{script?.taskId ? `task ${script.taskId}` : "no task id"}</span>{" "}
                  {script ? (
                    <span class="meta">
                      waiting <RelTime iso={script.createdAt} now={now} style="for" />
                    </span>
                  ) : null}
                </div>
              </li>
            );
          })}
        </ol>
      )}
    </article>
  );
}

function RecentScripts(props: { machineId: string; scripts: ScriptSummary[]; now: number }) {
  const { machineId, scripts, now } = props;
  if (scripts.length === 0) return <p class="empty">No scripts are stored for this machine.</p>;
  return (
    <table class="cards">
      <thead>
        <tr>
          <th scope="col">Script</th>
          <th scope="col">Task</th>
          <th scope="col">State</th>
          <th scope="col">Exit code</th>
          <th scope="col">Mutex</th>
          <th scope="col">Created</th>
          <th scope="col">Completed</th>
        </tr>
      </thead>
      <tbody>
        {scripts.map((script) => (
          <tr>
            <td>
              <a href={scriptPath(machineId, script.ticket)}>{script.ticket}</a>
            </td>
            <td data-label="Task" class={script.taskId ? undefined : "none"}>
              {script.taskId ?? "—"}
            </td>
            <td data-label="State">
              <StateBadge state={script.state} exitCode={script.exitCode} />
            </td>
            <td data-label="Exit code" class={script.exitCode === undefined || script.exitCode === null ? "none" : undefined}>
              <ExitCodeText code={script.exitCode} />
            </td>
            <td data-label="Mutex">
              <span>
                <code>{script.mutexName}</code> <span class="meta">{script.isolation === "full" ? "exclusive" : "shared"}</span>
              </span>
            </td>
            <td data-label="Created">
              <RelTime iso={script.createdAt} now={now} />
            </td>
            <td data-label="Completed" class={script.completedAt ? undefined : "none"}>
              <RelTime iso={script.completedAt} now={now} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

