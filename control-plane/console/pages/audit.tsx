/** The fleet-wide audit feed, newest first, optionally for one machine, a page at a time. */
import type { AuditFeed } from "../../../shared/api.js";
import { Layout, type Viewer } from "./layout.js";
import { ErrorText, EventsTable } from "./parts.js";

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
          <EventsTable events={feed.events} now={now} where />
        )}
        <nav class="pager" aria-label="Pages">
          {props.cursor ? <a href={auditHref(machineId)}>Newest events</a> : null}
          {feed.nextCursor ? <a href={auditHref(machineId, feed.nextCursor)}>Older events</a> : null}
        </nav>
      </section>
    </Layout>
  );
}
