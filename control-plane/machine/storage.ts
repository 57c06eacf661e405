/**
 * The machine object's SQLite storage: schema migrations (versioned by a meta row) and every query.
 * Timestamps are epoch milliseconds; the API layer turns them into ISO strings.
 */
import type { CompletionReason } from "../../shared/exit-codes.js";
import type { LogLine, LogSource } from "../../shared/api.js";
import type { ActiveScript } from "./core/machine-core.js";

/** Ordered migrations; entry i moves the schema from version i to i+1. */
const MIGRATIONS: string[][] = [
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
];

/** Payloads are split into parts so that no row passes SQLite's 2 MB limit. */
const PAYLOAD_PART_CHARS = 512 * 1024;
/** Log chunks are cut at about this many characters of JSON for the same reason. */
const LOG_CHUNK_CHARS = 256 * 1024;
/** A single line whose JSON is longer than this is cut (rows stay under 2 MB). */
const MAX_LINE_CHARS = 1024 * 1024;

/** True when the schema exists, i.e. the machine was registered. */
export function isInitialized(sql: SqlStorage): boolean {
  return sql.exec("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'").toArray().length > 0;
}

// Durable Objects refuse `PRAGMA user_version` (SQLITE_AUTH), so the schema version is a meta row.
function schemaVersion(sql: SqlStorage): number {
  if (!isInitialized(sql)) return 0;
  return Number(getMeta(sql, "schema_version") ?? "0");
}

/** Brings the schema to the newest version; safe to call on every start. */
export function migrate(sql: SqlStorage): void {
  let version = schemaVersion(sql);
  while (version < MIGRATIONS.length) {
    for (const statement of MIGRATIONS[version]!) sql.exec(statement);
    version += 1;
    setMeta(sql, "schema_version", String(version));
  }
}

/** Reads a meta value. */
export function getMeta(sql: SqlStorage, key: string): string | null {
  const rows = sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key).toArray();
  return rows[0]?.value ?? null;
}

/** Writes a meta value. */
export function setMeta(sql: SqlStorage, key: string, value: string): void {
  sql.exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value);
}

/** Deletes a meta value. */
export function deleteMeta(sql: SqlStorage, key: string): void {
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
};

/** One script row, or null. */
export function getScript(sql: SqlStorage, ticket: string): ScriptRow | null {
  return sql.exec<ScriptRow>("SELECT * FROM scripts WHERE ticket = ?", ticket).toArray()[0] ?? null;
}

/** Every script that is not complete, as the core's state. */
export function loadActiveScripts(sql: SqlStorage): ActiveScript[] {
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
      mutexDeadline: row.mutex_deadline,
      fence: row.fence,
      runnerId: row.runner_id,
      startedAt: row.started_at,
      cancelRequested: row.cancel_requested === 1,
      abandonDeadline: row.abandon_deadline,
    }));
}

/** The newest scripts for the machine view. */
export function listScripts(sql: SqlStorage, limit: number): ScriptRow[] {
  return sql.exec<ScriptRow>("SELECT * FROM scripts ORDER BY created_at DESC, queue_seq DESC LIMIT ?", limit).toArray();
}

/** Inserts a new script with its payload. */
export function insertScript(sql: SqlStorage, script: ActiveScript, requestHash: string, payloadJson: string): void {
  sql.exec(
    `INSERT INTO scripts (ticket, request_hash, state, isolation, mutex_name, task_id, created_at, queue_seq, granted, mutex_deadline)
     VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, 0, ?)`,
    script.ticket,
    requestHash,
    script.mode === "exclusive" ? "full" : "none",
    script.mutexName,
    script.taskId,
    script.createdAt,
    script.queueSeq,
    script.mutexDeadline,
  );
  for (let part = 0, at = 0; at < payloadJson.length || part === 0; part += 1, at += PAYLOAD_PART_CHARS) {
    sql.exec("INSERT INTO payload_parts (ticket, part, data) VALUES (?, ?, ?)", script.ticket, part, payloadJson.slice(at, at + PAYLOAD_PART_CHARS));
  }
}

/** The stored payload JSON of a script. */
export function getPayloadJson(sql: SqlStorage, ticket: string): string | null {
  const parts = sql.exec<{ data: string }>("SELECT data FROM payload_parts WHERE ticket = ? ORDER BY part", ticket).toArray();
  return parts.length ? parts.map((p) => p.data).join("") : null;
}

/** Marks a script as holding its mutex. */
export function markGranted(sql: SqlStorage, ticket: string): void {
  sql.exec("UPDATE scripts SET granted = 1, mutex_deadline = NULL WHERE ticket = ?", ticket);
}

/** Marks a script as dispatched under a fencing token. */
export function markDispatched(sql: SqlStorage, ticket: string, fence: number, runnerId: string, startedAt: number): void {
  sql.exec(
    "UPDATE scripts SET state = 'running', fence = ?, runner_id = ?, started_at = ?, pid = NULL, runner_next = 0 WHERE ticket = ?",
    fence,
    runnerId,
    startedAt,
    ticket,
  );
}

/** Records a cancel request and the abandon deadline it set. */
export function markCancelRequested(sql: SqlStorage, ticket: string, abandonDeadline: number | null): void {
  sql.exec("UPDATE scripts SET cancel_requested = 1, abandon_deadline = ? WHERE ticket = ?", abandonDeadline, ticket);
}

/** An abandoned process that may still be running. */
export type AbandonedRow = { ticket: string; fence: number; pid: number | null; abandoned_at: number };

/** Lists an abandoned dispatch, with the pid the runner reported for it (if any). */
export function insertAbandoned(sql: SqlStorage, ticket: string, fence: number, at: number): void {
  sql.exec(
    "INSERT OR IGNORE INTO abandoned (ticket, fence, pid, abandoned_at) SELECT ticket, fence, pid, ? FROM scripts WHERE ticket = ? AND fence = ?",
    at,
    ticket,
    fence,
  );
}

/** Every abandoned process that may still be running, oldest first. */
export function listAbandoned(sql: SqlStorage): AbandonedRow[] {
  return sql.exec<AbandonedRow>("SELECT ticket, fence, pid, abandoned_at FROM abandoned ORDER BY abandoned_at, ticket").toArray();
}

/** Fills in the pid of an abandoned dispatch whose `started` report arrived after the abandon. */
export function setAbandonedPid(sql: SqlStorage, ticket: string, fence: number, pid: number): void {
  sql.exec("UPDATE abandoned SET pid = ? WHERE ticket = ? AND fence = ? AND pid IS NULL", pid, ticket, fence);
}

/** Removes an abandoned process once the runner reported that it exited. */
export function deleteAbandoned(sql: SqlStorage, ticket: string, fence: number): void {
  sql.exec("DELETE FROM abandoned WHERE ticket = ? AND fence = ?", ticket, fence);
}

/** Records the process id the runner reported. */
export function setPid(sql: SqlStorage, ticket: string, fence: number, pid: number): void {
  sql.exec("UPDATE scripts SET pid = ? WHERE ticket = ? AND fence = ?", pid, ticket, fence);
}

/** Marks a script complete and drops its payload (it will never run again). */
export function markCompleted(sql: SqlStorage, ticket: string, exitCode: number, reason: CompletionReason, at: number): void {
  sql.exec(
    "UPDATE scripts SET state = 'complete', granted = 0, mutex_deadline = NULL, abandon_deadline = NULL, completed_at = ?, exit_code = ?, reason = ? WHERE ticket = ?",
    at,
    exitCode,
    JSON.stringify(reason),
    ticket,
  );
  sql.exec("DELETE FROM payload_parts WHERE ticket = ?", ticket);
}

/** Marks a script's stored output as cut at the output cap. */
export function markOutputTruncated(sql: SqlStorage, ticket: string): void {
  sql.exec("UPDATE scripts SET output_truncated = 1 WHERE ticket = ?", ticket);
}

/** When the oldest completed script falls out of retention, or null when none is complete. */
export function oldestCompletion(sql: SqlStorage): number | null {
  const row = sql.exec<{ at: number | null }>("SELECT MIN(completed_at) AS at FROM scripts WHERE state = 'complete'").one();
  return row.at;
}

/** Completed scripts that finished at or before `cutoff`, oldest first, at most `limit`. */
export function expiredScripts(sql: SqlStorage, cutoff: number, limit: number): string[] {
  return sql
    .exec<{ ticket: string }>("SELECT ticket FROM scripts WHERE state = 'complete' AND completed_at <= ? ORDER BY completed_at LIMIT ?", cutoff, limit)
    .toArray()
    .map((row) => row.ticket);
}

/** Deletes a script and everything stored for it. */
export function deleteScript(sql: SqlStorage, ticket: string): void {
  sql.exec("DELETE FROM scripts WHERE ticket = ?", ticket);
  sql.exec("DELETE FROM payload_parts WHERE ticket = ?", ticket);
  sql.exec("DELETE FROM log_chunks WHERE ticket = ?", ticket);
}

/** A line to append, before it gets its log sequence. */
export interface NewLogLine {
  source: LogSource;
  text: string;
  occurred: string;
}

type StoredLine = [LogSource, string, string];

/**
 * Appends lines to a script's log, numbering them from the script's `log_next`, and advances
 * `runner_next` by `runnerLines` (how many of them came from the runner). Returns the new `log_next`.
 */
export function appendLogs(sql: SqlStorage, ticket: string, lines: NewLogLine[], runnerLines: number): number {
  let bytes = 0;
  for (const line of lines) bytes += line.text.length;
  const row = sql.exec<{ log_next: number }>("SELECT log_next FROM scripts WHERE ticket = ?", ticket).toArray()[0];
  if (!row) return 0;
  let next = row.log_next;
  let chunk: StoredLine[] = [];
  let chunkChars = 0;
  let chunkFirst = next;
  const flush = () => {
    if (!chunk.length) return;
    sql.exec(
      "INSERT INTO log_chunks (ticket, first_seq, last_seq, lines) VALUES (?, ?, ?, ?)",
      ticket,
      chunkFirst,
      chunkFirst + chunk.length - 1,
      JSON.stringify(chunk),
    );
    chunkFirst += chunk.length;
    chunk = [];
    chunkChars = 0;
  };
  for (const line of lines) {
    const text = line.text.length > MAX_LINE_CHARS ? `${line.text.slice(0, MAX_LINE_CHARS)} [line cut at ${MAX_LINE_CHARS} characters]` : line.text;
    const cost = text.length * 2 + line.occurred.length + 16; // worst-case JSON escaping stays well under 2 MB
    if (chunkChars + cost > LOG_CHUNK_CHARS) flush();
    chunk.push([line.source, text, line.occurred]);
    chunkChars += cost;
    next += 1;
  }
  flush();
  sql.exec(
    "UPDATE scripts SET log_next = ?, runner_next = runner_next + ?, log_bytes = log_bytes + ? WHERE ticket = ?",
    next,
    runnerLines,
    bytes,
    ticket,
  );
  return next;
}

/** The longest block stored as it is: its row stays under SQLite's 2 MB limit whatever its characters. */
export const MAX_BLOCK_CHARS = 512 * 1024;

/**
 * Appends a block of the runner's lines to a script's log as one row (the caller keeps it under
 * `MAX_BLOCK_CHARS`, and every line in it under `MAX_LINE_CHARS`), and advances `runner_next` by its count.
 * Returns the new `log_next`.
 */
export function appendBlock(sql: SqlStorage, ticket: string, block: { source: LogSource; occurred: string; count: number; text: string }): number {
  const row = sql.exec<{ log_next: number }>("SELECT log_next FROM scripts WHERE ticket = ?", ticket).toArray()[0];
  if (!row) return 0;
  const first = row.log_next;
  const next = first + block.count;
  sql.exec(
    "INSERT INTO log_chunks (ticket, first_seq, last_seq, lines, block_source, block_occurred, block_text) VALUES (?, ?, ?, '', ?, ?, ?)",
    ticket,
    first,
    next - 1,
    block.source,
    block.occurred,
    block.text,
  );
  // A block holds `count - 1` newlines between its lines; they are not output.
  sql.exec(
    "UPDATE scripts SET log_next = ?, runner_next = runner_next + ?, log_bytes = log_bytes + ? WHERE ticket = ?",
    next,
    block.count,
    block.text.length - (block.count - 1),
    ticket,
  );
  return next;
}

/** Reads log lines from `fromSequence`, at most `limit` lines and about `maxBytes` of text. */
export function readLogs(sql: SqlStorage, ticket: string, fromSequence: number, limit: number, maxBytes: number): LogLine[] {
  const out: LogLine[] = [];
  let bytes = 0;
  const cursor = sql.exec<{ first_seq: number; lines: string; block_source: LogSource | null; block_occurred: string | null; block_text: string | null }>(
    "SELECT first_seq, lines, block_source, block_occurred, block_text FROM log_chunks WHERE ticket = ? AND last_seq >= ? ORDER BY first_seq",
    ticket,
    fromSequence,
  );
  for (const chunk of cursor) {
    const lines: StoredLine[] =
      chunk.block_text === null
        ? (JSON.parse(chunk.lines) as StoredLine[])
        : chunk.block_text.split("\n").map((text) => [chunk.block_source!, text, chunk.block_occurred!]);
    for (let i = Math.max(0, fromSequence - chunk.first_seq); i < lines.length; i += 1) {
      const [source, text, occurred] = lines[i]!;
      // Always return at least one line so that a caller can make progress past a huge line.
      if (out.length >= limit || (out.length > 0 && bytes + text.length > maxBytes)) return out;
      out.push({ sequence: chunk.first_seq + i, source, text, occurred });
      bytes += text.length;
    }
  }
  return out;
}
