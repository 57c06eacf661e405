/**
 * Script logs in SQLite: each row of `log_chunks` holds consecutive lines of one script, either as JSON
 * (`lines`: `[source, text, occurred]` triples) or as one block of the runner's (`block_text`: lines of one
 * source and one moment joined with "\n"). Rows stay under SQLite's 2 MB limit; a page is read with one range
 * scan of the primary key, starting at the row that holds the first wanted line.
 */
import type { LogLine, LogSource } from "../../shared/api.js";
import { blockLines, type OutputLine } from "../../shared/protocol.js";
import type { LogPiece } from "./core/output.js";
import { jsonPrefixLength, jsonStringLength } from "./core/text-size.js";
import type { Sql } from "../sql.js";

/** The longest block stored as it is: whatever its characters, its row stays under SQLite's 2 MB limit. */
export const MAX_BLOCK_CHARS = 512 * 1024;
/** Lines stored as JSON are grouped into rows of about this many bytes. */
const LOG_CHUNK_BYTES = 256 * 1024;
/**
 * A line whose JSON is longer than this is cut, so that its row stays under 2 MB and a status page with it
 * stays under 4 MiB. A runner cuts lines at 1 MiB, so only lines heavy with characters JSON escapes get cut.
 */
const MAX_LINE_JSON_BYTES = 1536 * 1024;

type StoredLine = [LogSource, string, string];

/** Stores `pieces` as consecutive lines of a script's log from sequence `first`; returns the next sequence. */
export function appendPieces(sql: Sql, ticket: string, first: number, pieces: readonly LogPiece[]): number {
  let sequence = first;
  for (const piece of pieces) {
    if (piece.kind === "block" && piece.block.text.length <= MAX_BLOCK_CHARS) {
      const { block } = piece;
      sql.exec(
        "INSERT INTO log_chunks (ticket, first_seq, last_seq, lines, block_source, block_occurred, block_text) VALUES (?, ?, ?, '', ?, ?, ?)",
        ticket,
        sequence,
        sequence + block.count - 1,
        block.source,
        block.occurred,
        block.text,
      );
      sequence += block.count;
    } else {
      // Too long for one row (or lines one by one already): rows of JSON lines.
      sequence = appendLines(sql, ticket, sequence, piece.kind === "lines" ? piece.lines : blockLines([piece.block]));
    }
  }
  return sequence;
}

/** Stores lines as rows of JSON from sequence `first`; returns the next sequence. */
export function appendLines(sql: Sql, ticket: string, first: number, lines: readonly OutputLine[]): number {
  let chunk: StoredLine[] = [];
  let chunkBytes = 0;
  let chunkFirst = first;
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
    chunkBytes = 0;
  };
  for (const line of lines) {
    const text = cutLine(line.text);
    const bytes = jsonStringLength(text) + jsonStringLength(line.occurred) + line.source.length + 6;
    if (chunkBytes + bytes > LOG_CHUNK_BYTES) flush();
    chunk.push([line.source, text, line.occurred]);
    chunkBytes += bytes;
  }
  flush();
  return chunkFirst;
}

/** A line short enough for its row, with a note where it was cut. */
function cutLine(text: string): string {
  if (text.length * 6 + 2 <= MAX_LINE_JSON_BYTES || jsonStringLength(text) <= MAX_LINE_JSON_BYTES) return text;
  const at = jsonPrefixLength(text, MAX_LINE_JSON_BYTES - 64);
  return `${text.slice(0, at)} [line cut at ${at} characters]`;
}

/** Bytes one line takes as an entry of a status page's `logs` array (its JSON, with the comma after it). */
export function logEntryBytes(line: LogLine): number {
  // {"sequence":N,"source":"…","text":"…","occurred":"…"},
  return 44 + String(line.sequence).length + jsonStringLength(line.source) + jsonStringLength(line.text) + jsonStringLength(line.occurred);
}

type ChunkRow = { first_seq: number; lines: string; block_source: LogSource | null; block_occurred: string | null; block_text: string | null };

/**
 * The page query: the row holding `fromSequence` is found through the primary key (ticket, first_seq), and
 * the page is read from there in key order, so reading a page costs the same wherever it starts in the log.
 * Each row holds at least one line, so `limit` rows always suffice for `limit` lines.
 */
const PAGE_QUERY = `SELECT first_seq, lines, block_source, block_occurred, block_text FROM log_chunks
  WHERE ticket = ? AND first_seq >= IFNULL((SELECT first_seq FROM log_chunks WHERE ticket = ? AND first_seq <= ? ORDER BY first_seq DESC LIMIT 1), 0)
  ORDER BY first_seq LIMIT ?`;

/**
 * Reads log lines from `fromSequence`: at most `limit` lines whose entries in a status page's JSON take at
 * most `maxBytes` (but always at least one line, so that a reader makes progress past a long one).
 */
export function readLogs(sql: Sql, ticket: string, fromSequence: number, limit: number, maxBytes: number): LogLine[] {
  const out: LogLine[] = [];
  let bytes = 0;
  for (const chunk of sql.exec<ChunkRow>(PAGE_QUERY, ticket, ticket, fromSequence, limit)) {
    const lines: StoredLine[] =
      chunk.block_text === null
        ? (JSON.parse(chunk.lines) as StoredLine[])
        : chunk.block_text.split("\n").map((text) => [chunk.block_source!, text, chunk.block_occurred!]);
    for (let i = Math.max(0, fromSequence - chunk.first_seq); i < lines.length; i += 1) {
      const [source, text, occurred] = lines[i]!;
      const line: LogLine = { sequence: chunk.first_seq + i, source, text, occurred };
      const size = logEntryBytes(line);
      if (out.length >= limit || (out.length > 0 && bytes + size > maxBytes)) return out;
      out.push(line);
      bytes += size;
    }
  }
  return out;
}

/** Deletes every line of a script's log. */
export function deleteLogs(sql: Sql, ticket: string): void {
  sql.exec("DELETE FROM log_chunks WHERE ticket = ?", ticket);
}
