/** The fleet: its counts (live), a filter by id prefix and status, and one page of machines from the registry. */
import type { FleetStatus, MachineList, MachineSummary } from "../../../shared/api.js";
import { STUCK_AFTER_MS } from "../../machine/core/summary.js";
import { Layout, type Viewer } from "./layout.js";
import { ErrorText, machinePath, RelTime, scriptPath } from "./parts.js";

/** What the fleet page shows. */
export interface FleetPageProps {
  now: number;
  viewer: Viewer;
  list: MachineList;
  prefix: string;
  status: FleetStatus | null;
  /** The cursor this page was read from (null: the first page). */
  cursor: string | null;
  error?: string | null;
}

const STATUSES: Array<{ status: FleetStatus | null; label: string; key: keyof MachineList["counts"] }> = [
  { status: null, label: "machines", key: "total" },
  { status: "connected", label: "connected", key: "connected" },
  { status: "disconnected", label: "disconnected", key: "disconnected" },
  { status: "busy", label: "busy", key: "busy" },
  { status: "stuck", label: "stuck", key: "stuck" },
];

/** The fleet page's URL for a filter (and a cursor). */
export function fleetHref(prefix: string, status: FleetStatus | null, cursor: string | null = null): string {
  const query = new URLSearchParams();
  if (prefix) query.set("prefix", prefix);
  if (status) query.set("status", status);
  if (cursor) query.set("cursor", cursor);
  const text = query.toString();
  return text ? `/?${text}` : "/";
}

/** The fleet page. */
export function FleetPage(props: FleetPageProps) {
  const { now, list, prefix, status } = props;
  const scope = prefix ? ` whose id starts with “${prefix}”` : "";
  return (
    <Layout title="Fleet" now={now} viewer={props.viewer} section="fleet" refreshMs={5_000}>
      <div class="page-head">
        <h1>Fleet</h1>
        <p>Every machine{scope}, its runner and its mutexes, as the machines last reported.</p>
      </div>
      <section id="fleet-counts" data-live aria-labelledby="counts-heading">
        <h2 id="counts-heading" class="visually-hidden">
          Counts
        </h2>
        <ul class="counts">
          {STATUSES.map((entry) => (
            <li class={`${entry.status ?? "total"}${entry.status === "stuck" && list.counts.stuck > 0 ? " alert" : ""}`}>
              <a href={fleetHref(prefix, entry.status)} aria-current={entry.status === status ? "true" : undefined}>
                <span class="n">{String(list.counts[entry.key])}</span>
                <span class="label">{entry.label}</span>
              </a>
            </li>
          ))}
        </ul>
      </section>
      <form class="filters" method="get" action="/" role="search" aria-label="Filter machines">
        <div class="field">
          <label for="prefix">Machine id starts with</label>
          <input type="search" id="prefix" name="prefix" value={prefix} maxlength={64} pattern="[A-Za-z0-9._\-]*" spellcheck={false} autocomplete="off" />
        </div>
        <div class="field">
          <label for="status">Status</label>
          <select id="status" name="status">
            <option value="" selected={status === null}>
              any
            </option>
            {STATUSES.filter((entry) => entry.status !== null).map((entry) => (
              <option value={entry.status!} selected={entry.status === status}>
                {entry.label}
              </option>
            ))}
          </select>
        </div>
        <button type="submit">Filter</button>
      </form>
      <ErrorText text={props.error} />
      <section id="fleet-machines" class="panel" data-live aria-labelledby="machines-heading">
        <h2 id="machines-heading">{status ? `Machines: ${status}` : "Machines"}</h2>
        {list.machines.length === 0 ? (
          <p class="empty">No machine matches.</p>
        ) : (
          <table class="cards">
            <thead>
              <tr>
                <th scope="col">Machine</th>
                <th scope="col">Runner</th>
                <th scope="col">Holding a mutex</th>
                <th scope="col">Waiting</th>
                <th scope="col">Abandoned</th>
                <th scope="col">Last seen</th>
              </tr>
            </thead>
            <tbody>
              {list.machines.map((machine) => (
                <MachineRow machine={machine} now={now} />
              ))}
            </tbody>
          </table>
        )}
        <nav class="pager" aria-label="Pages">
          {props.cursor ? <a href={fleetHref(prefix, status)}>First page</a> : null}
          {list.nextCursor ? <a href={fleetHref(prefix, status, list.nextCursor)}>Next page</a> : null}
        </nav>
      </section>
    </Layout>
  );
}

function MachineRow(props: { machine: MachineSummary; now: number }) {
  const { machine, now } = props;
  const runner = machine.runner;
  return (
    <tr>
      <td>
        <a href={machinePath(machine.machineId)}>{machine.machineId}</a>
      </td>
      <td data-label="Runner">
        <span>
          {runner.connected ? <span class="badge ok">connected</span> : <span class="badge">disconnected</span>}
          {runner.draining ? <> <span class="badge warn">draining</span></> : null}
          {runner.version ? <span class="meta"> {runner.version}</span> : null}
        </span>
      </td>
      <td data-label="Holding">
        {machine.holders.length === 0 ? (
          <span class="meta">—</span>
        ) : (
          <span>
            {machine.holders.map((ticket, i) => (
              <>
                {i > 0 ? ", " : ""}
                <a href={scriptPath(machine.machineId, ticket)}>{ticket}</a>
              </>
            ))}
            {machine.heldSince ? (
              <span class={now - Date.parse(machine.heldSince) > STUCK_AFTER_MS ? "badge warn" : "meta"}>
                {" "}
                for <RelTime iso={machine.heldSince} now={now} style="for" />
              </span>
            ) : null}
          </span>
        )}
      </td>
      <td data-label="Waiting" class="num">
        {String(machine.waiting)}
      </td>
      <td data-label="Abandoned" class="num">
        {machine.abandoned > 0 ? <span class="badge warn">{`${machine.abandoned} may still run`}</span> : "0"}
      </td>
      <td data-label="Last seen" class={runner.lastSeenAt ? undefined : "none"}>
        <RelTime iso={runner.lastSeenAt} now={now} />
      </td>
    </tr>
  );
}
