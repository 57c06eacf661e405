/** The fleet-wide audit feed, newest first, optionally for one machine, a page at a time. */
import type { AuditFeed } from "../../../shared/api.js";
import { Layout, type Viewer } from "./layout.js";
import { ErrorText, machinePath, RelTime, scriptPath } from "./parts.js";

/** What the audit page shows. */
export interface AuditPageProps {
  now: number;
  viewer: Viewer;
  feed: AuditFeed;
  machineId: string;
  /** The cursor this page was read from (null: the newest events). */
  cursor: string | null;
  error?: string | null;
}

/** The audit page's URL for a machine filter (and a cursor). */
export function auditHref(machineId: string, cursor: string | null = null): string {
  const query = new URLSearchParams();
  if (machineId) query.set("machineId", machineId);
  if (cursor) query.set("cursor", cursor);
  const text = query.toString();
  return text ? `/audit?${text}` : "/audit";
}

/** The audit page. */
export function AuditPage(props: AuditPageProps) {
  const { now, feed, machineId } = props;
  return (
    <Layout title="Audit" now={now} viewer={props.viewer} section="audit" refreshMs={props.cursor ? undefined : 10_000}>
      <div class="page-head">
        <h1>Audit</h1>
        <p>Who cancelled, abandoned or changed what, when and why; newest first, kept 90 days.</p>
      </div>
      <form class="filters" method="get" action="/audit" role="search" aria-label="Filter the audit feed">
        <div class="field">
          <label for="machineId">Machine id</label>
          <input type="search" id="machineId" name="machineId" value={machineId} maxlength={64} pattern="[A-Za-z0-9._\-]*" spellcheck={false} autocomplete="off" />
        </div>
        <button type="submit">Filter</button>
        {machineId ? <a href="/audit">All machines</a> : null}
      </form>
      <ErrorText text={props.error} />
      <section id="audit-events" class="panel" data-live aria-labelledby="events-heading">
        <h2 id="events-heading">{machineId ? `Events of ${machineId}` : "Events"}</h2>
        {feed.events.length === 0 ? (
          <p class="empty">No events.</p>
        ) : (
          <table class="cards">
            <thead>
              <tr>
                <th scope="col">Action</th>
                <th scope="col">Machine</th>
                <th scope="col">Script</th>
                <th scope="col">By</th>
                <th scope="col">Reason</th>
                <th scope="col">When</th>
              </tr>
            </thead>
            <tbody>
              {feed.events.map((event) => (
                <tr>
                  <td>{event.action}</td>
                  <td data-label="Machine" class={event.machineId ? undefined : "none"}>{event.machineId ? <a href={machinePath(event.machineId)}>{event.machineId}</a> : "—"}</td>
                  <td data-label="Script" class={event.machineId && event.ticket ? undefined : "none"}>{event.machineId && event.ticket ? <a href={scriptPath(event.machineId, event.ticket)}>{event.ticket}</a> : "—"}</td>
                  <td data-label="By">{event.actor}</td>
                  <td data-label="Reason" class={event.reason ? undefined : "none"}>{event.reason ?? "—"}</td>
                  <td data-label="When">
                    <RelTime iso={event.at} now={now} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <nav class="pager" aria-label="Pages">
          {props.cursor ? <a href={auditHref(machineId)}>Newest events</a> : null}
          {feed.nextCursor ? <a href={auditHref(machineId, feed.nextCursor)}>Older events</a> : null}
        </nav>
      </section>
    </Layout>
  );
}
