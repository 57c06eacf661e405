/**
 * The machine object's SQLite storage: schema migrations (versioned by a meta row), the queries, and the one
 * writer of the core's changes. Logs live in `logs.ts`. Timestamps are epoch milliseconds; the API layer turns
 * them into ISO strings. Nothing here imports the platform: it works on any `Sql` (workerd's, or a test's).
 */
import { exitCodeFor } from "../../shared/exit-codes.js";
import type { ProcessRef } from "../../shared/protocol.js";
import type { AbandonedProcess, ActiveScript, Change } from "./core/machine-core.js";
import { appendLines, appendPieces, deleteLogs } from "./logs.js";
import type { Sql } from "../sql.js";

/** Ordered migrations; entry i moves the schema from version i to i+1 (`migrate` runs them). */
export const MIGRATIONS: readonly (readonly string[])[] = [
  [
    `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
    `CREATE TABLE scripts (
       ticket TEXT PRIMARY KEY,
       request_hash TEXT NOT NULL,
       state TEXT NOT NULL,
       isolation TEXT NOT NULL,
       mutex_name TEXT NOT NULL,
       task_id TEXT,
       created_at INTEGER NOT NULL,
       queue_seq INTEGER NOT NULL,
       granted INTEGER NOT NULL DEFAULT 0,
       mutex_deadline INTEGER,
       fence INTEGER,
       runner_id TEXT,
       pid INTEGER,
       started_at INTEGER,
       completed_at INTEGER,
       exit_code INTEGER,
       reason TEXT,
       log_next INTEGER NOT NULL DEFAULT 0,
       runner_next INTEGER NOT NULL DEFAULT 0
     )`,
    `CREATE INDEX scripts_by_age ON scripts (created_at DESC, queue_seq DESC)`,
    `CREATE INDEX scripts_active ON scripts (state) WHERE state <> 'complete'`,
    `CREATE TABLE payload_parts (ticket TEXT NOT NULL, part INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (ticket, part))`,
    `CREATE TABLE log_chunks (
       ticket TEXT NOT NULL,
       first_seq INTEGER NOT NULL,
       last_seq INTEGER NOT NULL,
       lines TEXT NOT NULL,
       PRIMARY KEY (ticket, first_seq)
     )`,
  ],
  [
    `ALTER TABLE scripts ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE scripts ADD COLUMN abandon_deadline INTEGER`,
    // Abandoned dispatches whose process may still run; kept apart from scripts so that deleting the
    // script does not hide a process that is still alive on the machine.
    `CREATE TABLE abandoned (
       ticket TEXT NOT NULL,
       fence INTEGER NOT NULL,
       pid INTEGER,
       abandoned_at INTEGER NOT NULL,
       PRIMARY KEY (ticket, fence)
     )`,
  ],
  [
    `ALTER TABLE scripts ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE scripts ADD COLUMN output_truncated INTEGER NOT NULL DEFAULT 0`,
    `CREATE INDEX scripts_completed ON scripts (completed_at) WHERE state = 'complete'`,
  ],
  [
    // A chunk is either lines as JSON (`lines`), or one block of the runner's: lines of one source and one
    // moment, joined with "\n" in `block_text` (then `lines` is empty).
    `ALTER TABLE log_chunks ADD COLUMN block_source TEXT`,
    `ALTER TABLE log_chunks ADD COLUMN block_occurred TEXT`,
    `ALTER TABLE log_chunks ADD COLUMN block_text TEXT`,
  ],
  [
    // The process of the current dispatch is named for good by its start time and boot, not its pid alone.
    `ALTER TABLE scripts ADD COLUMN start_time INTEGER`,
    `ALTER TABLE scripts ADD COLUMN boot_id TEXT`,
    // One row per process that may still run (a lost script can leave several). pid 0: not reported yet.
    // kill_requested: an abandon asked for a kill while no runner was connected; the next welcome carries it.
    `CREATE TABLE abandoned_v5 (
       ticket TEXT NOT NULL,
       fence INTEGER NOT NULL,
       pid INTEGER NOT NULL,
       start_time INTEGER,
       boot_id TEXT,
       abandoned_at INTEGER NOT NULL,
       kill_requested INTEGER NOT NULL DEFAULT 0,
       PRIMARY KEY (ticket, fence, pid)
     )`,
    `INSERT INTO abandoned_v5 (ticket, fence, pid, abandoned_at) SELECT ticket, fence, IFNULL(pid, 0), abandoned_at FROM abandoned`,
    `DROP TABLE abandoned`,
    `ALTER TABLE abandoned_v5 RENAME TO abandoned`,
  ],
  [
    // When a holder got its mutex (the fleet list's heldSince), and the run timeout.
    `ALTER TABLE scripts ADD COLUMN granted_at INTEGER`,
    `ALTER TABLE scripts ADD COLUMN run_timeout_ms INTEGER NOT NULL DEFAULT 0`,
    `ALTER TABLE scripts ADD COLUMN run_timed_out INTEGER NOT NULL DEFAULT 0`,
    // The audit trail. seq numbers the machine's events (never reused: the counter is in meta). An event stays
    // until the registry has it (pushed); a deleted script's events that were not pushed yet stay detached.
    `CREATE TABLE audit (
       seq INTEGER PRIMARY KEY,
       ticket TEXT,
       action TEXT NOT NULL,
       actor TEXT NOT NULL,
       reason TEXT,
       at INTEGER NOT NULL,
       pushed INTEGER NOT NULL DEFAULT 0,
       detached INTEGER NOT NULL DEFAULT 0
     )`,
    `CREATE INDEX audit_by_ticket ON audit (ticket, seq) WHERE detached = 0`,
    `CREATE INDEX audit_unpushed ON audit (seq) WHERE pushed = 0`,
    // This machine's life (a removed machine registered again is a new one), for the fleet feed's de-duplication.
    `INSERT OR IGNORE INTO meta (key, value) VALUES ('incarnation', lower(hex(randomblob(16))))`,
  ],
  [
    // How many runner restarts a script lived through (each new runner process that re-attached to it).
    `ALTER TABLE scripts ADD COLUMN runner_restarts INTEGER NOT NULL DEFAULT 0`,
  ],
];

/** The pid of an abandoned entry whose process was not reported yet. */
const UNKNOWN_PID = 0;

/** True when the schema exists, i.e. the machine was registered. */
export function isInitialized(sql: Sql): boolean {
  return sql.exec("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'").toArray().length > 0;
}

// Durable Objects refuse `PRAGMA user_version` (SQLITE_AUTH), so the schema version is a meta row.
function schemaVersion(sql: Sql): number {
  if (!isInitialized(sql)) return 0;
  return Number(getMeta(sql, "schema_version") ?? "0");
}

/** Brings the schema to the newest version; safe to call on every start (run it in one transaction). */
export function migrate(sql: Sql): void {
  let version = schemaVersion(sql);
  while (version < MIGRATIONS.length) {
    for (const statement of MIGRATIONS[version]!) sql.exec(statement);
    version += 1;
    setMeta(sql, "schema_version", String(version));
  }
}

/** Reads a meta value. */
export function getMeta(sql: Sql, key: string): string | null {
  const rows = sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key).toArray();
  return rows[0]?.value ?? null;
}

/** Writes a meta value. */
export function setMeta(sql: Sql, key: string, value: string): void {
  sql.exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value);
}

/** Deletes a meta value. */
export function deleteMeta(sql: Sql, key: string): void {
  sql.exec("DELETE FROM meta WHERE key = ?", key);
}

/** A stored script row, as the API needs it. */
export type ScriptRow = {
  ticket: string;
  request_hash: string;
  state: "pending" | "running" | "complete";
  isolation: "full" | "none";
  mutex_name: string;
  task_id: string | null;
  created_at: number;
  queue_seq: number;
  granted: number;
  mutex_deadline: number | null;
  fence: number | null;
  runner_id: string | null;
  pid: number | null;
  started_at: number | null;
  completed_at: number | null;
  exit_code: number | null;
  reason: string | null;
  log_next: number;
  runner_next: number;
  cancel_requested: number;
  abandon_deadline: number | null;
  log_bytes: number;
  output_truncated: number;
  start_time: number | null;
  boot_id: string | null;
  granted_at: number | null;
  run_timeout_ms: number;
  run_timed_out: number;
  runner_restarts: number;
};

/** One script row, or null. */
export function getScript(sql: Sql, ticket: string): ScriptRow | null {
  return sql.exec<ScriptRow>("SELECT * FROM scripts WHERE ticket = ?", ticket).toArray()[0] ?? null;
}

/** Every script that is not complete, as the core's state. */
export function loadActiveScripts(sql: Sql): ActiveScript[] {
  return sql
    .exec<ScriptRow>("SELECT * FROM scripts WHERE state <> 'complete'")
    .toArray()
    .map((row) => ({
      ticket: row.ticket,
      state: row.state === "running" ? "running" : "pending",
      mode: row.isolation === "full" ? "exclusive" : "shared",
      mutexName: row.mutex_name,
      taskId: row.task_id,
      createdAt: row.created_at,
      queueSeq: row.queue_seq,
      granted: row.granted === 1,
      // Granted before the grant time was kept: its start (or arrival) stands in for it.
      grantedAt: row.granted === 1 ? (row.granted_at ?? row.started_at ?? row.created_at) : null,
      mutexDeadline: row.mutex_deadline,
      fence: row.fence,
      runnerId: row.runner_id,
      startedAt: row.started_at,
      cancelRequested: row.cancel_requested === 1,
      abandonDeadline: row.abandon_deadline,
      runTimeoutMs: row.run_timeout_ms,
      runTimedOut: row.run_timed_out === 1,
      output: { logNext: row.log_next, runnerNext: row.runner_next, logBytes: row.log_bytes, truncated: row.output_truncated === 1 },
      process: row.pid === null ? null : processRef(row.pid, row.start_time, row.boot_id),
      runnerRestarts: row.runner_restarts,
    }));
}

function processRef(pid: number, startTime: number | null, bootId: string | null): ProcessRef {
  return { pid, ...(startTime === null ? {} : { startTime }), ...(bootId === null ? {} : { bootId }) };
}

/** The newest scripts for the machine view. */
export function listScripts(sql: Sql, limit: number): ScriptRow[] {
  return sql.exec<ScriptRow>("SELECT * FROM scripts ORDER BY created_at DESC, queue_seq DESC LIMIT ?", limit).toArray();
}

/** Payloads are split into parts so that no row passes SQLite's 2 MB limit. */
const PAYLOAD_PART_CHARS = 512 * 1024;

/** The stored payload JSON of a script. */
export function getPayloadJson(sql: Sql, ticket: string): string | null {
  const parts = sql.exec<{ data: string }>("SELECT data FROM payload_parts WHERE ticket = ? ORDER BY part", ticket).toArray();
  return parts.length ? parts.map((p) => p.data).join("") : null;
}

/** An abandoned process that may still be running, as stored. */
export type AbandonedRow = {
  ticket: string;
  fence: number;
  pid: number;
  start_time: number | null;
  boot_id: string | null;
  abandoned_at: number;
  kill_requested: number;
};

/** Every abandoned process that may still be running, oldest first. */
export function listAbandoned(sql: Sql): AbandonedRow[] {
  return sql.exec<AbandonedRow>("SELECT * FROM abandoned ORDER BY abandoned_at, ticket, fence, pid").toArray();
}

/** The abandoned processes as the core sees them. */
export function abandonedProcesses(rows: readonly AbandonedRow[]): AbandonedProcess[] {
  return rows.map((row) => ({
    ticket: row.ticket,
    fence: row.fence,
    process: row.pid === UNKNOWN_PID ? null : processRef(row.pid, row.start_time, row.boot_id),
    killRequested: row.kill_requested === 1,
  }));
}

/** How many abandoned processes may still run, and when the oldest was abandoned. */
export function abandonedStats(sql: Sql): { count: number; oldest: number | null } {
  const row = sql.exec<{ n: number; oldest: number | null }>("SELECT COUNT(*) AS n, MIN(abandoned_at) AS oldest FROM abandoned").one();
  return { count: row.n, oldest: row.oldest };
}

/** One audit event as stored. */
export type AuditRow = { seq: number; ticket: string | null; action: string; actor: string; reason: string | null; at: number };

/** A script's audit events, oldest first. */
export function scriptEvents(sql: Sql, ticket: string): AuditRow[] {
  return sql.exec<AuditRow>("SELECT seq, ticket, action, actor, reason, at FROM audit WHERE ticket = ? AND detached = 0 ORDER BY seq", ticket).toArray();
}

/** Events the registry does not have yet, oldest first, at most `limit`. */
export function unpushedEvents(sql: Sql, limit: number): AuditRow[] {
  return sql.exec<AuditRow>("SELECT seq, ticket, action, actor, reason, at FROM audit WHERE pushed = 0 ORDER BY seq LIMIT ?", limit).toArray();
}

/**
 * The registry has every event up to `seq`: they are marked pushed, and those nothing here shows any more (a deleted
 * script's, the machine's own administrative ones) are deleted.
 */
export function markEventsPushed(sql: Sql, seq: number): void {
  sql.exec("UPDATE audit SET pushed = 1 WHERE pushed = 0 AND seq <= ?", seq);
  sql.exec("DELETE FROM audit WHERE seq <= ? AND (detached = 1 OR ticket IS NULL)", seq);
}

/** When the oldest completed script finished, or null when none is complete. */
export function oldestCompletion(sql: Sql): number | null {
  const row = sql.exec<{ at: number | null }>("SELECT MIN(completed_at) AS at FROM scripts WHERE state = 'complete'").one();
  return row.at;
}

/** Completed scripts that finished at or before `cutoff`, oldest first, at most `limit`, with their stored bytes. */
export function expiredScripts(sql: Sql, cutoff: number, limit: number): Array<{ ticket: string; logBytes: number }> {
  return sql
    .exec<{ ticket: string; log_bytes: number }>(
      "SELECT ticket, log_bytes FROM scripts WHERE state = 'complete' AND completed_at <= ? ORDER BY completed_at LIMIT ?",
      cutoff,
      limit,
    )
    .toArray()
    .map((row) => ({ ticket: row.ticket, logBytes: row.log_bytes }));
}

/** Deletes a script and everything stored for it. */
export function deleteScript(sql: Sql, ticket: string): void {
  sql.exec("DELETE FROM scripts WHERE ticket = ?", ticket);
  sql.exec("DELETE FROM payload_parts WHERE ticket = ?", ticket);
  deleteLogs(sql, ticket);
  // Its events go with it, but those the registry does not have yet stay (detached) until it does.
  sql.exec("DELETE FROM audit WHERE ticket = ? AND pushed = 1", ticket);
  sql.exec("UPDATE audit SET detached = 1 WHERE ticket = ? AND detached = 0", ticket);
}

/** The counters the core keeps between events. */
export interface Counters {
  nextFence: number;
  nextQueueSeq: number;
  nextAuditSeq: number;
}

/** Reads the counters (all 1 for a new machine). */
export function readCounters(sql: Sql): Counters {
  return {
    nextFence: Number(getMeta(sql, "next_fence") ?? "1"),
    nextQueueSeq: Number(getMeta(sql, "next_queue_seq") ?? "1"),
    nextAuditSeq: Number(getMeta(sql, "next_audit_seq") ?? "1"),
  };
}

/** Writes the counters that differ from `written` (what storage holds). */
export function writeCounters(sql: Sql, counters: Counters, written: Counters): void {
  if (counters.nextFence !== written.nextFence) setMeta(sql, "next_fence", String(counters.nextFence));
  if (counters.nextQueueSeq !== written.nextQueueSeq) setMeta(sql, "next_queue_seq", String(counters.nextQueueSeq));
  if (counters.nextAuditSeq !== written.nextAuditSeq) setMeta(sql, "next_audit_seq", String(counters.nextAuditSeq));
}

/** What an `insert` change needs besides the script: its identity hash and its payload. */
export interface NewScriptRow {
  requestHash: string;
  payloadJson: string;
}

/**
 * Writes one change of the core. The caller runs every change of a decision in one transaction. `insert` is the
 * row of a new script whose hash and payload came with the request.
 */
export function writeChange(sql: Sql, change: Change, insert?: NewScriptRow): void {
  switch (change.type) {
    case "insert": {
      if (!insert) throw new Error("insert without a payload");
      const script = change.script;
      sql.exec(
        `INSERT INTO scripts (ticket, request_hash, state, isolation, mutex_name, task_id, created_at, queue_seq, granted, mutex_deadline, run_timeout_ms)
         VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, 0, ?, ?)`,
        script.ticket,
        insert.requestHash,
        script.mode === "exclusive" ? "full" : "none",
        script.mutexName,
        script.taskId,
        script.createdAt,
        script.queueSeq,
        script.mutexDeadline,
        script.runTimeoutMs,
      );
      const json = insert.payloadJson;
      for (let part = 0, at = 0; at < json.length || part === 0; part += 1, at += PAYLOAD_PART_CHARS) {
        sql.exec("INSERT INTO payload_parts (ticket, part, data) VALUES (?, ?, ?)", script.ticket, part, json.slice(at, at + PAYLOAD_PART_CHARS));
      }
      return;
    }
    case "granted":
      sql.exec("UPDATE scripts SET granted = 1, granted_at = ?, mutex_deadline = NULL WHERE ticket = ?", change.at, change.ticket);
      return;
    case "dispatched":
      sql.exec(
        "UPDATE scripts SET state = 'running', fence = ?, runner_id = ?, started_at = ?, pid = NULL, start_time = NULL, boot_id = NULL, runner_next = 0 WHERE ticket = ?",
        change.fence,
        change.runnerId,
        change.startedAt,
        change.ticket,
      );
      return;
    case "completed":
      sql.exec(
        "UPDATE scripts SET state = 'complete', granted = 0, mutex_deadline = NULL, abandon_deadline = NULL, completed_at = ?, exit_code = ?, reason = ? WHERE ticket = ?",
        change.at,
        exitCodeFor(change.reason),
        JSON.stringify(change.reason),
        change.ticket,
      );
      // It will never run again.
      sql.exec("DELETE FROM payload_parts WHERE ticket = ?", change.ticket);
      return;
    case "cancel_requested":
      sql.exec("UPDATE scripts SET cancel_requested = 1, abandon_deadline = ? WHERE ticket = ?", change.abandonDeadline, change.ticket);
      return;
    case "run_timed_out":
      sql.exec("UPDATE scripts SET run_timed_out = 1 WHERE ticket = ?", change.ticket);
      return;
    case "reattached":
      sql.exec("UPDATE scripts SET runner_id = ?, runner_restarts = ? WHERE ticket = ?", change.runnerId, change.runnerRestarts, change.ticket);
      return;
    case "audit":
      sql.exec(
        "INSERT INTO audit (seq, ticket, action, actor, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
        change.seq,
        change.ticket,
        change.action,
        change.actor,
        change.reason,
        change.at,
      );
      return;
    case "abandoned": {
      const processes: Array<ProcessRef | null> = change.processes.length ? change.processes : [null];
      for (const process of processes) {
        sql.exec(
          "INSERT OR IGNORE INTO abandoned (ticket, fence, pid, start_time, boot_id, abandoned_at, kill_requested) VALUES (?, ?, ?, ?, ?, ?, ?)",
          change.ticket,
          change.fence,
          process?.pid ?? UNKNOWN_PID,
          process?.startTime ?? null,
          process?.bootId ?? null,
          change.at,
          change.killRequested ? 1 : 0,
        );
      }
      return;
    }
    case "log":
      appendLines(sql, change.ticket, change.sequence, [{ source: "debug", text: change.text, occurred: new Date(change.at).toISOString() }]);
      sql.exec("UPDATE scripts SET log_next = ? WHERE ticket = ?", change.sequence + 1, change.ticket);
      return;
    case "append": {
      appendPieces(sql, change.ticket, change.first, change.pieces);
      const at = change.position;
      sql.exec(
        "UPDATE scripts SET log_next = ?, runner_next = ?, log_bytes = ?, output_truncated = ? WHERE ticket = ?",
        at.logNext,
        at.runnerNext,
        at.logBytes,
        at.truncated ? 1 : 0,
        change.ticket,
      );
      return;
    }
    case "process":
      sql.exec(
        "UPDATE scripts SET pid = ?, start_time = ?, boot_id = ? WHERE ticket = ? AND fence = ?",
        change.process.pid,
        change.process.startTime ?? null,
        change.process.bootId ?? null,
        change.ticket,
        change.fence,
      );
      return;
    case "abandoned_process":
      // OR REPLACE: should the process be listed already, the entry without a pid merges into it.
      sql.exec(
        "UPDATE OR REPLACE abandoned SET pid = ?, start_time = ?, boot_id = ? WHERE ticket = ? AND fence = ? AND pid = ?",
        change.process.pid,
        change.process.startTime ?? null,
        change.process.bootId ?? null,
        change.ticket,
        change.fence,
        UNKNOWN_PID,
      );
      return;
    case "abandoned_exit":
      // An entry still without a pid is that same dispatch's process, reported before its pid was known here.
      sql.exec("DELETE FROM abandoned WHERE ticket = ? AND fence = ? AND pid IN (?, ?)", change.ticket, change.fence, change.pid, UNKNOWN_PID);
      return;
    case "kill_delivered":
      if (change.pid === null) sql.exec("UPDATE abandoned SET kill_requested = 0 WHERE ticket = ? AND fence = ?", change.ticket, change.fence);
      else sql.exec("UPDATE abandoned SET kill_requested = 0 WHERE ticket = ? AND fence = ? AND pid = ?", change.ticket, change.fence, change.pid);
      return;
    default: {
      const unreachable: never = change;
      throw new Error(`unhandled change ${JSON.stringify(unreachable)}`);
    }
  }
}
