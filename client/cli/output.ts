/** How the command line writes: script output, Tendril's own notes, errors, tables, and a flushed exit. */
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import type { LogLine } from "../../shared/api.js";
import { TendrilApiError } from "../errors.js";

/** stdout lines to stdout, stderr lines to stderr, Tendril's own debug lines to stderr, dimmed. */
export function printLogLine(line: LogLine): void {
  switch (line.source) {
    case "stdout":
      process.stdout.write(`${line.text}\n`);
      return;
    case "stderr":
      process.stderr.write(`${line.text}\n`);
      return;
    case "debug":
      printDebug(line.text);
      return;
    default: {
      const unreachable: never = line.source;
      process.stderr.write(`${String(unreachable)}\n`);
    }
  }
}

/** One of Tendril's own notes on stderr, `[tendril]`-prefixed and dimmed on a colour terminal. */
export function printDebug(text: string): void {
  const useColor = process.stderr.isTTY && process.env.NO_COLOR === undefined;
  const line = `[tendril] ${text}`;
  process.stderr.write(useColor ? `\x1b[2m${line}\x1b[22m\n` : `${line}\n`);
}

/** An error as one line, with the API's code and HTTP status when it has them, and what to do about a refused token. */
export function describeError(error: unknown): string {
  if (error instanceof TendrilApiError) {
    const hint = TOKEN_HINTS[error.code];
    return `${oneLine(error.message)} (${error.code}, HTTP ${error.status})${hint ? `: ${hint}` : ""}`;
  }
  if (error instanceof Error) return oneLine(error.message);
  return oneLine(String(error));
}

/** What a person can do when the control plane refuses the token (the server's message says what was refused). */
const TOKEN_HINTS: Record<string, string> = {
  unauthorized:
    "check --server-token (or TENDRIL_SERVER_TOKEN): it must be the control plane's server token or an operator token that is not revoked or expired",
  forbidden:
    "the token is an operator token, and its role may not do this: a viewer only reads; an operator also cancels and abandons (without --requested-by); everything else needs the server token",
};

/** `error: <one line>` on stderr. */
export function printError(error: unknown): void {
  process.stderr.write(`error: ${describeError(error)}\n`);
}

/** Joins a multi-line text into one line. */
export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim();
}

/** An ISO time for a table: `2026-12-02 10:15:30` (UTC; the tables say so in their header); `-` for none. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "-";
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(iso);
  return match ? `${match[1]} ${match[2]}` : iso;
}

/** How long ago `iso` was, for people: `45s`, `12m`, `3h`, `2d` (empty when it cannot tell). */
export function formatAge(iso: string | null | undefined, now = Date.now()): string {
  const at = iso ? Date.parse(iso) : NaN;
  if (Number.isNaN(at)) return "";
  const seconds = Math.max(0, Math.round((now - at) / 1000));
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7_200) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172_800) return `${Math.round(seconds / 3_600)}h`;
  return `${Math.round(seconds / 86_400)}d`;
}

/** Left-aligned columns separated by two spaces, the last column unpadded. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length)));
  const format = (row: string[]) =>
    row
      .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join("  ")
      .trimEnd();
  return `${[header, ...rows].map(format).join("\n")}\n`;
}

/** Copies a child's output line by line with a prefix. */
export function prefixLines(source: Readable | null, target: Writable, prefix: string): void {
  if (!source) return;
  const lines = createInterface({ input: source, crlfDelay: Infinity });
  lines.on("line", (line) => target.write(`${prefix}${line}\n`));
}

/** Flushes stdout and stderr (bounded, in case a reader stalls), then exits. */
export async function flushAndExit(code: number): Promise<never> {
  const flush = (stream: Writable) =>
    new Promise<void>((resolveFlush) => {
      const timer = setTimeout(resolveFlush, 1_000);
      stream.write("", () => {
        clearTimeout(timer);
        resolveFlush();
      });
    });
  await Promise.all([flush(process.stdout), flush(process.stderr)]);
  process.exit(code);
}
