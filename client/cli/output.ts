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

/** An error as one line, with the API's code and HTTP status when it has them. */
export function describeError(error: unknown): string {
  if (error instanceof TendrilApiError) return `${oneLine(error.message)} (${error.code}, HTTP ${error.status})`;
  if (error instanceof Error) return oneLine(error.message);
  return oneLine(String(error));
}

/** `error: <one line>` on stderr. */
export function printError(error: unknown): void {
  process.stderr.write(`error: ${describeError(error)}\n`);
}

/** Joins a multi-line text into one line. */
export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim();
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
