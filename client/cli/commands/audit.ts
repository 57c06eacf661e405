/** `tendril audit`: the fleet-wide audit feed, newest first, a page at a time (or every page with `--all`). */
import type { FeedEvent } from "../../../shared/api.js";
import { CLI_EXIT } from "../exit-codes.js";
import { formatTable, formatTime, oneLine } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** Flags of `tendril audit`. */
export interface AuditFlags extends ServerFlags {
  /** Only this machine's events. */
  machine?: string;
  /** Events per page (1–500). */
  limit?: number;
  /** Start after the page that printed this cursor. */
  cursor?: string;
  /** Follow the cursor to the oldest event kept. */
  all?: boolean;
  json?: boolean;
}

/** `tendril audit`: one page (or all of them) as a table or as the API's JSON; says how to get the next page. */
export async function showAudit(flags: AuditFlags): Promise<number> {
  const client = await clientFor(flags);
  const events: FeedEvent[] = [];
  let cursor = flags.cursor;
  let nextCursor: string | null;
  do {
    const page = await client.audit({ machineId: flags.machine, limit: flags.limit, cursor });
    events.push(...page.events);
    nextCursor = page.nextCursor;
    cursor = nextCursor ?? undefined;
  } while (flags.all && cursor !== undefined);

  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ events, nextCursor }, null, 2)}\n`);
  } else if (events.length === 0) {
    const scope = flags.machine === undefined ? "" : ` for machine ${flags.machine}`;
    process.stdout.write(`no audit events${scope}${flags.cursor === undefined ? "" : " after that cursor"}\n`);
  } else {
    process.stdout.write(formatAuditTable(events));
  }
  if (nextCursor !== null) {
    // On stderr, so that the table (or the JSON) on stdout stays whole for whatever reads it.
    const again = [flags.machine && `--machine ${flags.machine}`, flags.limit && `--limit ${flags.limit}`].filter(Boolean).join(" ");
    process.stderr.write(`older events: tendril audit ${again ? `${again} ` : ""}--cursor ${nextCursor}   (or --all for every page)\n`);
  }
  return CLI_EXIT.ok;
}

/** The feed as a table: time (UTC), machine, ticket, action, actor, reason; `-` where there is none. */
export function formatAuditTable(events: readonly FeedEvent[]): string {
  const rows = events.map((event) => [
    formatTime(event.at),
    event.machineId ?? "-",
    event.ticket ?? "-",
    event.action,
    event.actor,
    event.reason === null ? "-" : oneLine(event.reason),
  ]);
  return formatTable(["TIME (UTC)", "MACHINE", "TICKET", "ACTION", "ACTOR", "REASON"], rows);
}
