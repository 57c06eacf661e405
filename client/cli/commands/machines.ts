/**
 * `tendril machines`: the fleet a page at a time — each machine's runner, mutex holders, waiters and abandoned
 * processes — with the fleet's counts, and the pids of the abandoned processes of the machines on the page.
 */
import type { AbandonedView, FleetCounts, FleetStatus, MachineSummary } from "../../../shared/api.js";
import type { TendrilClient } from "../../sdk.js";
import { CLI_EXIT } from "../exit-codes.js";
import { describeError, formatAge, formatTable, formatTime } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** Flags of `tendril machines`. */
export interface MachinesFlags extends ServerFlags {
  /** Machines per page (1–500). */
  limit?: number;
  /** Start after the page that printed this cursor. */
  cursor?: string;
  /** Follow the cursor to the last page. */
  all?: boolean;
  /** Only machine ids starting with this. */
  prefix?: string;
  status?: FleetStatus;
  json?: boolean;
}

/** Machine views read at once when listing abandoned processes (one call per machine that has any). */
const VIEW_CONCURRENCY = 8;

/** `tendril machines`: one page (or all) as a table with the counts, or the API's JSON. */
export async function listMachines(flags: MachinesFlags): Promise<number> {
  const client = await clientFor(flags);
  const machines: MachineSummary[] = [];
  let cursor = flags.cursor;
  let nextCursor: string | null;
  let counts: FleetCounts;
  do {
    const page = await client.listMachines({ limit: flags.limit, cursor, prefix: flags.prefix, status: flags.status });
    machines.push(...page.machines);
    counts = page.counts;
    nextCursor = page.nextCursor;
    cursor = nextCursor ?? undefined;
  } while (flags.all && cursor !== undefined);

  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ machines, nextCursor, counts }, null, 2)}\n`);
  } else {
    process.stdout.write(`${describeCounts(counts, flags.prefix)}\n`);
    if (machines.length === 0) process.stdout.write(describeEmpty(flags, counts));
    else {
      process.stdout.write(formatMachinesTable(machines));
      const abandoned = await abandonedProcesses(client, machines.filter((machine) => machine.abandoned > 0));
      if (abandoned.length > 0) process.stdout.write(`\nabandoned processes that may still be running:\n${abandoned}`);
    }
  }
  if (nextCursor !== null) {
    // On stderr, so that the table (or the JSON) on stdout stays whole for whatever reads it.
    const again = [
      flags.prefix && `--prefix ${flags.prefix}`,
      flags.status && `--status ${flags.status}`,
      flags.limit && `--limit ${flags.limit}`,
    ].filter(Boolean);
    process.stderr.write(`more machines: tendril machines ${[...again, `--cursor ${nextCursor}`].join(" ")}   (or --all for every page)\n`);
  }
  return CLI_EXIT.ok;
}

/** The fleet's counts in one line: `fleet: 12 machines — 10 connected, 2 disconnected, 3 busy, 1 stuck`. */
export function describeCounts(counts: FleetCounts, prefix?: string): string {
  const within = prefix === undefined ? "" : ` whose id starts with ${prefix}`;
  return (
    `fleet: ${counts.total} machine${counts.total === 1 ? "" : "s"}${within}: ${counts.connected} connected, ` +
    `${counts.disconnected} disconnected, ${counts.busy} busy, ${counts.stuck} stuck`
  );
}

/** One row per machine: runner, version, holders and since when, waiters, abandoned processes. */
export function formatMachinesTable(machines: readonly MachineSummary[], now = Date.now()): string {
  const rows = machines.map((machine) => [
    machine.machineId,
    machine.runner.connected ? (machine.runner.draining ? "draining" : "connected") : "offline",
    machine.runner.version ?? "-",
    machine.holders.length ? machine.holders.join(", ") : "-",
    machine.heldSince ? formatAge(machine.heldSince, now) : "-",
    String(machine.waiting),
    String(machine.abandoned),
  ]);
  return formatTable(["MACHINE", "RUNNER", "VERSION", "HELD BY", "HELD FOR", "WAITING", "ABANDONED"], rows);
}

/** The abandoned processes of `machines`, read from each one's view (the fleet list carries only their number). */
async function abandonedProcesses(client: TendrilClient, machines: readonly MachineSummary[]): Promise<string> {
  const rows: string[][] = [];
  for (let start = 0; start < machines.length; start += VIEW_CONCURRENCY) {
    const batch = machines.slice(start, start + VIEW_CONCURRENCY);
    const views = await Promise.all(
      batch.map((machine) =>
        client.getMachine(machine.machineId).then(
          (view) => ({ machineId: machine.machineId, abandoned: view.abandoned as AbandonedView[], error: undefined }),
          (error: unknown) => ({ machineId: machine.machineId, abandoned: [] as AbandonedView[], error }),
        ),
      ),
    );
    for (const view of views) {
      if (view.error !== undefined) rows.push([view.machineId, "?", "?", `could not read its view: ${describeError(view.error)}`]);
      for (const entry of view.abandoned) {
        rows.push([view.machineId, entry.ticket, entry.pid === null ? "(not reported yet)" : String(entry.pid), formatTime(entry.abandonedAt)]);
      }
    }
  }
  return rows.length === 0 ? "" : formatTable(["MACHINE", "TICKET", "PID", "ABANDONED (UTC)"], rows);
}

function describeEmpty(flags: MachinesFlags, counts: FleetCounts): string {
  if (counts.total === 0 && flags.prefix === undefined) return "no machines registered yet (register one with: tendril register <machine>)\n";
  return "no machines on this page match\n";
}
