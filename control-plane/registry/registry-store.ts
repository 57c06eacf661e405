/**
 * The registry's SQLite storage: one row per registered machine (the hash of its runner token, so that the edge can
 * refuse a bad runner token without waking any machine object, and the summary the machine last reported, for the
 * fleet list), the fleet's counters, the fleet-wide audit feed, and the operators. Pure storage over `Sql`; the
 * registry object runs each call in one transaction.
 */
import type { FeedEvent, FleetCounts, FleetStatus, MachineSummary, OperatorRole, OperatorView } from "../../shared/api.js";
import { constantTimeEqual } from "../crypto.js";
import type { MachineReport, ReportAck, ReportEvent } from "../machine/report.js";
import type { Sql } from "../sql.js";
import { CONSOLE_TABLES } from "./console-store.js";

/** An epoch-ms column as an ISO-8601 string (or JSON null), computed by SQLite: `Date.prototype.toISOString`'s form. */
function isoSql(column: string): string {
  return `strftime('%Y-%m-%dT%H:%M:%fZ', ${column} / 1000.0, 'unixepoch')`;
}

/** One `MachineSummary` as JSON, built by SQLite from a row of `machines` (for rows from before `summary_json`). */
const SUMMARY_JSON = `json_object(
  'machineId', machine_id,
  'runner', json_object(
    'connected', CASE WHEN connected = 1 THEN json('true') ELSE json('false') END,
    'draining', CASE WHEN draining = 1 THEN json('true') ELSE json('false') END,
    'version', runner_version,
    'lastSeenAt', ${isoSql("last_seen_at")}),
  'holders', json(holders),
  'heldSince', ${isoSql("held_since")},
  'waiting', waiting,
  'abandoned', abandoned,
  'updatedAt', ${isoSql("IFNULL(updated_at, registered_at)")})`;

/** Ordered migrations; entry i moves the schema from version i to i+1. */
const MIGRATIONS: string[][] = [
  // The first registries had this table and no meta: IF NOT EXISTS lets them migrate too.
  [`CREATE TABLE IF NOT EXISTS machines (machine_id TEXT PRIMARY KEY, registered_at INTEGER NOT NULL)`],
  // NULL: registered before the registry kept token hashes (the machine object still checks those). '': revoked.
  [`ALTER TABLE machines ADD COLUMN runner_token_hash TEXT`],
  [
    // The summary each machine reports (report_version orders its reports; incarnation names the machine's life).
    `ALTER TABLE machines ADD COLUMN incarnation TEXT`,
    `ALTER TABLE machines ADD COLUMN report_version INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE machines ADD COLUMN connected INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE machines ADD COLUMN draining INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE machines ADD COLUMN runner_version TEXT`,
    `ALTER TABLE machines ADD COLUMN last_seen_at INTEGER`,
    `ALTER TABLE machines ADD COLUMN holders TEXT NOT NULL DEFAULT '[]'`,
    `ALTER TABLE machines ADD COLUMN held_since INTEGER`,
    `ALTER TABLE machines ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE machines ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE machines ADD COLUMN busy INTEGER NOT NULL DEFAULT 0`,
    // From when the machine counts as stuck (something abandoned, or a holder past an hour or its run timeout).
    `ALTER TABLE machines ADD COLUMN stuck_at INTEGER`,
    `ALTER TABLE machines ADD COLUMN updated_at INTEGER`,
    `UPDATE machines SET updated_at = registered_at`,
    // The summary as the list sends it, rendered when it changes (not on every read): a page is their concatenation.
    `ALTER TABLE machines ADD COLUMN summary_json TEXT NOT NULL DEFAULT '{}'`,
    `UPDATE machines SET summary_json = ${SUMMARY_JSON}`,
    // A page filtered by status reads one of these in id order; `stuck` is counted by a range of stuck_at.
    `CREATE INDEX machines_connected ON machines (machine_id) WHERE connected = 1`,
    `CREATE INDEX machines_disconnected ON machines (machine_id) WHERE connected = 0`,
    `CREATE INDEX machines_busy ON machines (machine_id) WHERE busy = 1`,
    `CREATE INDEX machines_stuck ON machines (stuck_at) WHERE stuck_at IS NOT NULL`,
    // The unfiltered list's counts, kept as rows change, so that no page scans the fleet.
    `CREATE TABLE fleet_counts (id INTEGER PRIMARY KEY CHECK (id = 1), total INTEGER NOT NULL, connected INTEGER NOT NULL, busy INTEGER NOT NULL)`,
    `INSERT INTO fleet_counts (id, total, connected, busy) SELECT 1, COUNT(*), 0, 0 FROM machines`,
    // The feed. A machine's event is (machine_id, source = its incarnation, seq): kept once however often it is pushed.
    `CREATE TABLE audit (
       id INTEGER PRIMARY KEY,
       machine_id TEXT,
       source TEXT,
       seq INTEGER,
       ticket TEXT,
       action TEXT NOT NULL,
       actor TEXT NOT NULL,
       reason TEXT,
       at INTEGER NOT NULL
     )`,
    `CREATE UNIQUE INDEX audit_identity ON audit (machine_id, source, seq) WHERE seq IS NOT NULL`,
    `CREATE INDEX audit_by_time ON audit (at, id)`,
    `CREATE INDEX audit_by_machine ON audit (machine_id, at, id)`,
    // Tokens are stored hashed; generation grows when a token is replaced (console sessions check it).
    `CREATE TABLE operators (
       name TEXT PRIMARY KEY,
       role TEXT NOT NULL,
       token_hash TEXT NOT NULL UNIQUE,
       generation INTEGER NOT NULL,
       created_at INTEGER NOT NULL,
       expires_at INTEGER NOT NULL,
       last_used_at INTEGER
     )`,
  ],
  // The console's sign-in slowdown and its signed-out sessions (console-store.ts).
  CONSOLE_TABLES,
];

/** Brings the schema to the newest version; safe on every start (run it in one transaction). */
export function migrate(sql: Sql): void {
  sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
  const row = sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = 'schema_version'").toArray()[0];
  for (let version = Number(row?.value ?? "0"); version < MIGRATIONS.length; version += 1) {
    for (const statement of MIGRATIONS[version]!) sql.exec(statement);
    sql.exec(
      "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      String(version + 1),
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// machines and their runner tokens

/** The fleet's counters (total, connected, busy): changed by `delta` with every row that moves them. */
function moveCounts(sql: Sql, delta: { total?: number; connected?: number; busy?: number }): void {
  if (!delta.total && !delta.connected && !delta.busy) return;
  sql.exec(
    "UPDATE fleet_counts SET total = total + ?, connected = connected + ?, busy = busy + ? WHERE id = 1",
    delta.total ?? 0,
    delta.connected ?? 0,
    delta.busy ?? 0,
  );
}

/**
 * Records a machine (if new) with the hash of its newly issued runner token. `incarnation` names the machine's
 * life: a machine registered again after its storage was deleted starts with an empty summary.
 */
export function setRunnerToken(sql: Sql, machineId: string, tokenHash: string, now: number, incarnation: string | null = null): void {
  const row = sql.exec<{ incarnation: string | null; connected: number; busy: number }>("SELECT incarnation, connected, busy FROM machines WHERE machine_id = ?", machineId).toArray()[0];
  if (!row) {
    sql.exec(
      "INSERT INTO machines (machine_id, registered_at, runner_token_hash, incarnation, updated_at, summary_json) VALUES (?, ?, ?, ?, ?, ?)",
      machineId,
      now,
      tokenHash,
      incarnation,
      now,
      emptySummaryJson(machineId, now),
    );
    moveCounts(sql, { total: 1 });
    return;
  }
  if (incarnation !== null && row.incarnation !== null && row.incarnation !== incarnation) {
    sql.exec(
      `UPDATE machines SET runner_token_hash = ?, incarnation = ?, report_version = 0, connected = 0, draining = 0, runner_version = NULL,
         last_seen_at = NULL, holders = '[]', held_since = NULL, waiting = 0, abandoned = 0, busy = 0, stuck_at = NULL, updated_at = ?,
         summary_json = ?
       WHERE machine_id = ?`,
      tokenHash,
      incarnation,
      now,
      emptySummaryJson(machineId, now),
      machineId,
    );
    moveCounts(sql, { connected: -row.connected, busy: -row.busy });
    return;
  }
  sql.exec("UPDATE machines SET runner_token_hash = ?, incarnation = IFNULL(incarnation, ?) WHERE machine_id = ?", tokenHash, incarnation, machineId);
}

/** Revokes a machine's runner token (no runner passes the edge until another is issued); false for an unknown machine. */
export function revokeRunnerToken(sql: Sql, machineId: string): boolean {
  sql.exec("UPDATE machines SET runner_token_hash = '' WHERE machine_id = ?", machineId);
  return sql.exec<{ n: number }>("SELECT changes() AS n").one().n > 0;
}

/**
 * What the registry says of a runner token presented for a machine: `accepted` (it is the machine's current
 * token), `refused` (an unknown machine, another token, or a revoked one), or `unverified` (a machine registered
 * before the registry kept hashes: its object decides, and `adoptRunnerToken` records the hash once it accepted).
 */
export type TokenVerdict = "accepted" | "refused" | "unverified";

/** Checks a runner token's hash against the machine's, in constant time. */
export function checkRunnerToken(sql: Sql, machineId: string, tokenHash: string): TokenVerdict {
  const row = sql.exec<{ runner_token_hash: string | null }>("SELECT runner_token_hash FROM machines WHERE machine_id = ?", machineId).toArray()[0];
  if (!row) return "refused";
  if (row.runner_token_hash === null) return "unverified";
  return constantTimeEqual(tokenHash, row.runner_token_hash) ? "accepted" : "refused";
}

/** Records the hash of a token that the machine object accepted, for a machine registered before hashes were kept. */
export function adoptRunnerToken(sql: Sql, machineId: string, tokenHash: string): void {
  sql.exec("UPDATE machines SET runner_token_hash = ? WHERE machine_id = ? AND runner_token_hash IS NULL", tokenHash, machineId);
}

/** Every registered machine id, sorted. */
export function listMachines(sql: Sql): string[] {
  return sql
    .exec<{ machine_id: string }>("SELECT machine_id FROM machines ORDER BY machine_id")
    .toArray()
    .map((row) => row.machine_id);
}

/**
 * Forgets a removed machine (its row, summary and token hash) and records `machine-removed`, with the events its
 * object handed over (it could not push them any more). Returns false, recording nothing of the removal, when the
 * registry did not know the machine.
 */
export function removeMachine(sql: Sql, machineId: string, actor: string, handed: { incarnation: string; events: ReportEvent[] } | null, now: number): boolean {
  if (handed) insertEvents(sql, machineId, handed.incarnation, handed.events);
  const row = sql.exec<{ connected: number; busy: number }>("SELECT connected, busy FROM machines WHERE machine_id = ?", machineId).toArray()[0];
  if (!row) return false;
  sql.exec("DELETE FROM machines WHERE machine_id = ?", machineId);
  moveCounts(sql, { total: -1, connected: -row.connected, busy: -row.busy });
  recordEvent(sql, { machineId, ticket: null, action: "machine-removed", actor, reason: null, at: now });
  return true;
}

// ---------------------------------------------------------------------------------------------------
// the machines' reports

type MachineRow = {
  machine_id: string;
  incarnation: string | null;
  report_version: number;
  connected: number;
  draining: number;
  runner_version: string | null;
  last_seen_at: number | null;
  holders: string;
  held_since: number | null;
  waiting: number;
  abandoned: number;
  busy: number;
  stuck_at: number | null;
  updated_at: number | null;
  registered_at: number;
};

/**
 * Takes a machine's report: its events are kept (once each, whatever happens to the summary); its summary replaces
 * the row's when it is newer than what the row has (reports can race), and the counters move with it. A re-sent
 * summary of the same version only refreshes `lastSeenAt` (and writes nothing when that did not move either).
 */
export function applyReport(sql: Sql, report: MachineReport): ReportAck {
  if (report.events.length > 0) insertEvents(sql, report.machineId, report.incarnation, report.events);
  const row = sql
    .exec<Pick<MachineRow, "incarnation" | "report_version" | "connected" | "busy" | "last_seen_at">>(
      "SELECT incarnation, report_version, connected, busy, last_seen_at FROM machines WHERE machine_id = ?",
      report.machineId,
    )
    .toArray()[0];
  // Not registered yet (the token is recorded right after the machine's first report may leave), or removed.
  if (!row || (row.incarnation !== null && row.incarnation !== report.incarnation)) return { summary: "unknown" };
  const s = report.summary;
  if (row.incarnation === report.incarnation && report.version <= row.report_version) {
    if (report.version === row.report_version && s.lastSeenAt !== null && s.lastSeenAt !== row.last_seen_at) {
      sql.exec(
        "UPDATE machines SET last_seen_at = ?, summary_json = json_set(summary_json, '$.runner.lastSeenAt', ?) WHERE machine_id = ?",
        s.lastSeenAt,
        iso(s.lastSeenAt),
        report.machineId,
      );
    }
    return { summary: "current" };
  }
  const busy = s.holders.length > 0 ? 1 : 0;
  const connected = s.connected ? 1 : 0;
  sql.exec(
    `UPDATE machines SET incarnation = ?, report_version = ?, connected = ?, draining = ?, runner_version = ?, last_seen_at = ?, holders = ?,
       held_since = ?, waiting = ?, abandoned = ?, busy = ?, stuck_at = ?, updated_at = ?, summary_json = ?
     WHERE machine_id = ?`,
    report.incarnation,
    report.version,
    connected,
    s.draining ? 1 : 0,
    s.runnerVersion,
    s.lastSeenAt,
    JSON.stringify(s.holders),
    s.heldSince,
    s.waiting,
    s.abandoned,
    busy,
    s.stuckAt,
    report.updatedAt,
    JSON.stringify(summaryOf(report)),
    report.machineId,
  );
  moveCounts(sql, { connected: connected - row.connected, busy: busy - row.busy });
  return { summary: "applied" };
}

/** A page of the fleet list. */
export interface ListQuery {
  limit: number;
  /** The last machine id of the previous page. */
  after: string | null;
  prefix: string | null;
  status: FleetStatus | null;
  now: number;
}

/** Ids are `[A-Za-z0-9._-]`, all below `~`: every id that starts with `prefix` sorts before `prefix + "~"`. */
const PREFIX_END = "~";

/** A page of the fleet list: its summaries as the JSON text of an array, where it ended (when more follow), the counts. */
export interface ListPage {
  machinesJson: string;
  last: string | null;
  counts: FleetCounts;
}

/**
 * One page of the fleet list, ordered by machine id, with the fleet's counts (within `prefix`, if given). The page is
 * one indexed query that joins the summaries' stored JSON (rendered when each changed), so that no object per machine
 * is built, cloned and serialized on the way out; the counts are the counters (or, for a prefix, one range aggregate).
 */
export function listPage(sql: Sql, query: ListQuery): ListPage {
  const where: string[] = ["machine_id > ?"];
  const bindings: Array<string | number> = [query.after ?? ""];
  if (query.prefix !== null) {
    where.push("machine_id >= ?", "machine_id < ?");
    bindings.push(query.prefix, query.prefix + PREFIX_END);
  }
  switch (query.status) {
    case "connected":
      where.push("connected = 1");
      break;
    case "disconnected":
      where.push("connected = 0");
      break;
    case "busy":
      where.push("busy = 1");
      break;
    case "stuck":
      where.push("stuck_at IS NOT NULL AND stuck_at <= ?");
      bindings.push(query.now);
      break;
    case null:
      break;
    default: {
      const unreachable: never = query.status;
      throw new Error(`unknown status ${String(unreachable)}`);
    }
  }
  const filter = where.join(" AND ");
  const page = sql
    .exec<{ machines: string; n: number; last: string | null }>(
      `SELECT '[' || IFNULL(group_concat(summary_json, ',' ORDER BY machine_id), '') || ']' AS machines, COUNT(*) AS n, MAX(machine_id) AS last
       FROM (SELECT machine_id, summary_json FROM machines WHERE ${filter} ORDER BY machine_id LIMIT ?)`,
      ...bindings,
      query.limit,
    )
    .one();
  // A next page exists when one more machine passes the filter after this page's last.
  const more =
    page.n === query.limit &&
    page.last !== null &&
    sql.exec(`SELECT 1 AS one FROM machines WHERE ${filter} LIMIT 1`, page.last, ...bindings.slice(1)).toArray().length > 0;
  return { machinesJson: page.n === 0 ? "[]" : page.machines, last: more ? page.last : null, counts: fleetCounts(sql, query.prefix, query.now) };
}

/** The fleet's counts: the counters and an index range for `stuck`; within a prefix, one range aggregate. */
export function fleetCounts(sql: Sql, prefix: string | null, now: number): FleetCounts {
  if (prefix === null) {
    const counts = sql.exec<{ total: number; connected: number; busy: number }>("SELECT total, connected, busy FROM fleet_counts WHERE id = 1").one();
    const stuck = sql.exec<{ n: number }>("SELECT COUNT(*) AS n FROM machines WHERE stuck_at IS NOT NULL AND stuck_at <= ?", now).one().n;
    return { total: counts.total, connected: counts.connected, disconnected: counts.total - counts.connected, busy: counts.busy, stuck };
  }
  const row = sql
    .exec<{ total: number; connected: number | null; busy: number | null; stuck: number | null }>(
      `SELECT COUNT(*) AS total, SUM(connected) AS connected, SUM(busy) AS busy, SUM(stuck_at IS NOT NULL AND stuck_at <= ?) AS stuck
       FROM machines WHERE machine_id >= ? AND machine_id < ?`,
      now,
      prefix,
      prefix + PREFIX_END,
    )
    .one();
  const connected = row.connected ?? 0;
  return { total: row.total, connected, disconnected: row.total - connected, busy: row.busy ?? 0, stuck: row.stuck ?? 0 };
}

/** A machine's summary as the fleet list shows it, from its report. */
function summaryOf(report: MachineReport): MachineSummary {
  const s = report.summary;
  return {
    machineId: report.machineId,
    runner: { connected: s.connected, draining: s.draining, version: s.runnerVersion, lastSeenAt: isoOrNull(s.lastSeenAt) },
    holders: s.holders,
    heldSince: isoOrNull(s.heldSince),
    waiting: s.waiting,
    abandoned: s.abandoned,
    updatedAt: iso(report.updatedAt),
  };
}

/** The summary of a machine that has not reported yet: nothing connected, held, waiting or abandoned. */
function emptySummaryJson(machineId: string, now: number): string {
  const summary: MachineSummary = {
    machineId,
    runner: { connected: false, draining: false, version: null, lastSeenAt: null },
    holders: [],
    heldSince: null,
    waiting: 0,
    abandoned: 0,
    updatedAt: iso(now),
  };
  return JSON.stringify(summary);
}

// ---------------------------------------------------------------------------------------------------
// the audit feed

/** An event written by the registry itself (a removal, an operator's): no machine sequence. */
export interface OwnEvent {
  machineId: string | null;
  ticket: null;
  action: "machine-removed" | "operator-added" | "operator-removed";
  actor: string;
  reason: string | null;
  at: number;
}

/** Keeps a machine's events, each once (by the machine's incarnation and sequence). */
function insertEvents(sql: Sql, machineId: string, incarnation: string, events: readonly ReportEvent[]): void {
  for (const event of events) {
    sql.exec(
      "INSERT OR IGNORE INTO audit (machine_id, source, seq, ticket, action, actor, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      machineId,
      incarnation,
      event.seq,
      event.ticket,
      event.action,
      event.actor,
      event.reason,
      event.at,
    );
  }
}

/** Records an event the registry decides itself. */
export function recordEvent(sql: Sql, event: OwnEvent): void {
  sql.exec(
    "INSERT INTO audit (machine_id, ticket, action, actor, reason, at) VALUES (?, NULL, ?, ?, ?, ?)",
    event.machineId,
    event.action,
    event.actor,
    event.reason,
    event.at,
  );
}

/** A page of the feed: newest first, after the cursor's position, no older than the retention. */
export interface FeedQuery {
  machineId: string | null;
  limit: number;
  /** Where the previous page ended. */
  before: { at: number; id: number } | null;
  /** Events at or before this moment are past retention. */
  cutoff: number;
}

type AuditRowStored = { id: number; machine_id: string | null; ticket: string | null; action: string; actor: string; reason: string | null; at: number };

/** One page of the feed, newest first (by time, then by arrival), and where it ended when more follow. */
export function feedPage(sql: Sql, query: FeedQuery): { events: FeedEvent[]; last: { at: number; id: number } | null } {
  const where: string[] = ["at > ?"];
  const bindings: Array<string | number> = [query.cutoff];
  if (query.machineId !== null) {
    where.push("machine_id = ?");
    bindings.push(query.machineId);
  }
  if (query.before) {
    where.push("(at < ? OR (at = ? AND id < ?))");
    bindings.push(query.before.at, query.before.at, query.before.id);
  }
  const rows = sql
    .exec<AuditRowStored>(`SELECT id, machine_id, ticket, action, actor, reason, at FROM audit WHERE ${where.join(" AND ")} ORDER BY at DESC, id DESC LIMIT ?`, ...bindings, query.limit + 1)
    .toArray();
  const page = rows.slice(0, query.limit);
  const last = rows.length > query.limit ? { at: page[page.length - 1]!.at, id: page[page.length - 1]!.id } : null;
  return {
    // The actions were written by this code, from the closed union.
    events: page.map((row) => ({ at: iso(row.at), machineId: row.machine_id, ticket: row.ticket, action: row.action as FeedEvent["action"], actor: row.actor, reason: row.reason })),
    last,
  };
}

/** Deletes at most `limit` events at or before `cutoff`; returns how many went. */
export function pruneEvents(sql: Sql, cutoff: number, limit: number): number {
  sql.exec("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at <= ? ORDER BY at LIMIT ?)", cutoff, limit);
  return sql.exec<{ n: number }>("SELECT changes() AS n").one().n;
}

// ---------------------------------------------------------------------------------------------------
// operators

/** Who an operator token belongs to. */
export interface OperatorIdentity {
  name: string;
  role: OperatorRole;
  /** Grows when the operator's token is replaced; a console session of an older generation has ended. */
  generation: number;
}

/** `lastUsedAt` moves at most this often, so that reading with an operator token costs no write per call. */
export const LAST_USED_GRANULARITY_MS = 60_000;

type OperatorRow = { name: string; role: OperatorRole; token_hash: string; generation: number; created_at: number; expires_at: number; last_used_at: number | null };

/**
 * Adds an operator, or gives an existing one a new token, role and expiry (its older token and console sessions
 * end), and records `operator-added`. Returns the operator as listed.
 */
export function addOperator(
  sql: Sql,
  input: { name: string; role: OperatorRole; tokenHash: string; expiresAt: number },
  actor: string,
  now: number,
): OperatorView {
  const existing = sql.exec<OperatorRow>("SELECT * FROM operators WHERE name = ?", input.name).toArray()[0];
  if (existing) {
    sql.exec(
      "UPDATE operators SET role = ?, token_hash = ?, generation = generation + 1, expires_at = ?, last_used_at = NULL WHERE name = ?",
      input.role,
      input.tokenHash,
      input.expiresAt,
      input.name,
    );
  } else {
    sql.exec(
      "INSERT INTO operators (name, role, token_hash, generation, created_at, expires_at, last_used_at) VALUES (?, ?, ?, 1, ?, ?, NULL)",
      input.name,
      input.role,
      input.tokenHash,
      now,
      input.expiresAt,
    );
  }
  const reason = `${input.name}: role ${input.role}, token expires ${iso(input.expiresAt)}${existing ? " (its previous token revoked)" : ""}`;
  recordEvent(sql, { machineId: null, ticket: null, action: "operator-added", actor, reason, at: now });
  return { name: input.name, role: input.role, createdAt: iso(existing?.created_at ?? now), expiresAt: iso(input.expiresAt), lastUsedAt: null };
}

/** Every operator, by name (never a token). */
export function listOperators(sql: Sql): OperatorView[] {
  return sql
    .exec<OperatorRow>("SELECT * FROM operators ORDER BY name")
    .toArray()
    .map((row) => ({ name: row.name, role: row.role, createdAt: iso(row.created_at), expiresAt: iso(row.expires_at), lastUsedAt: isoOrNull(row.last_used_at) }));
}

/** Revokes an operator at once and records `operator-removed`; false when no operator has that name. */
export function removeOperator(sql: Sql, name: string, actor: string, now: number): boolean {
  sql.exec("DELETE FROM operators WHERE name = ?", name);
  if (sql.exec<{ n: number }>("SELECT changes() AS n").one().n === 0) return false;
  recordEvent(sql, { machineId: null, ticket: null, action: "operator-removed", actor, reason: name, at: now });
  return true;
}

/**
 * The operator whose token has this hash, unless it expired (or there is none); notes its use, at most once a
 * minute. The lookup is by the hash of a random token, so its timing says nothing useful about any token.
 */
export function authenticateOperator(sql: Sql, tokenHash: string, now: number): OperatorIdentity | null {
  const row = sql.exec<OperatorRow>("SELECT * FROM operators WHERE token_hash = ?", tokenHash).toArray()[0];
  if (!row || row.expires_at <= now) return null;
  if (row.last_used_at === null || now - row.last_used_at >= LAST_USED_GRANULARITY_MS) {
    sql.exec("UPDATE operators SET last_used_at = ? WHERE name = ?", now, row.name);
  }
  return { name: row.name, role: row.role, generation: row.generation };
}

/** The generation of an operator's token, or null when it is gone or expired (its console sessions have ended). */
export function operatorGeneration(sql: Sql, name: string, now: number): number | null {
  const row = sql.exec<{ generation: number; expires_at: number }>("SELECT generation, expires_at FROM operators WHERE name = ?", name).toArray()[0];
  return row && row.expires_at > now ? row.generation : null;
}

// ---------------------------------------------------------------------------------------------------

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function isoOrNull(ms: number | null): string | null {
  return ms === null ? null : iso(ms);
}
