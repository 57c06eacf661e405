/**
 * Output planning: what an `output` frame from the runner adds to a script's log. De-duplication of resent
 * lines, gap detection, and the per-script output cap with its one truncation line are decided here, purely;
 * storage then writes the planned pieces as they are.
 */
import { blockLines, outputLineCount, splitBlock, type OutputBlock, type OutputLine } from "../../../shared/protocol.js";
import { utf8Length } from "./text-size.js";

/** Where a script's log stands. */
export interface OutputPosition {
  /** The sequence the next stored line gets (runner lines and control-plane lines share it). */
  logNext: number;
  /** The runner's sequence of the next line the current dispatch has not delivered yet. */
  runnerNext: number;
  /** UTF-8 bytes of the runner's output stored so far; the output cap counts these. */
  logBytes: number;
  /** The cap was reached: later output is counted (so the runner can forget it) but not stored. */
  truncated: boolean;
}

/** Consecutive lines to store, as they arrived: one block (one row), or lines one by one. */
export type LogPiece = { kind: "block"; block: OutputBlock } | { kind: "lines"; lines: OutputLine[] };

/** An `output` frame as the core sees it. */
export interface OutputFrame {
  /** The runner's sequence of the frame's first line. */
  sequence: number;
  lines?: OutputLine[] | undefined;
  blocks?: OutputBlock[] | undefined;
}

/** What a frame does to the log. */
export type OutputPlan =
  /** The frame starts past the next expected line: lines are missing (a protocol violation). */
  | { kind: "gap"; expected: number }
  /**
   * Store `pieces` from sequence `first` (none when every line is a duplicate or past the cap); the log then
   * stands at `position`, and every line below `position.runnerNext` may be acknowledged.
   */
  | { kind: "append"; first: number; pieces: LogPiece[]; position: OutputPosition };

/** The line that marks where the output cap cut a script's output. */
export function truncationLine(maxOutputBytes: number): string {
  return `Output truncated: this script wrote more than ${maxOutputBytes} bytes; later output is not stored.`;
}

/**
 * Plans one output frame against the log's position. Lines the log already has (a resend after a reconnect
 * may repeat some, even from inside a block) are skipped; a block is kept whole when it fits under the cap;
 * the line that would cross the cap is replaced by one truncation line, and nothing after it is stored.
 */
export function planOutput(at: OutputPosition, frame: OutputFrame, maxOutputBytes: number): OutputPlan {
  if (frame.sequence > at.runnerNext) return { kind: "gap", expected: at.runnerNext };
  let skip = at.runnerNext - frame.sequence;
  const fresh = Math.max(0, outputLineCount(frame) - skip);
  const pieces: LogPiece[] = [];
  let { logNext, logBytes, truncated } = at;

  const keepLines = (lines: OutputLine[]) => {
    const kept: OutputLine[] = [];
    for (const line of lines) {
      if (truncated) break;
      const size = utf8Length(line.text);
      if (logBytes + size > maxOutputBytes) {
        truncated = true;
        kept.push({ source: "debug", text: truncationLine(maxOutputBytes), occurred: line.occurred });
      } else {
        kept.push(line);
        logBytes += size;
      }
      logNext += 1;
    }
    if (kept.length === 0) return;
    const last = pieces[pieces.length - 1];
    if (last?.kind === "lines") last.lines.push(...kept);
    else pieces.push({ kind: "lines", lines: kept });
  };

  if (frame.lines) {
    keepLines(frame.lines.slice(skip));
  } else {
    for (const whole of frame.blocks ?? []) {
      if (truncated) break;
      if (skip >= whole.count) {
        skip -= whole.count;
        continue;
      }
      const block = skip > 0 ? splitBlock(whole, skip)[1] : whole;
      skip = 0;
      // A block holds `count - 1` newlines between its lines; they are not output. Counting needs no encoding.
      const size = utf8Length(block.text) - (block.count - 1);
      if (logBytes + size <= maxOutputBytes) {
        pieces.push({ kind: "block", block });
        logBytes += size;
        logNext += block.count;
      } else {
        keepLines(blockLines([block]));
      }
    }
  }
  return { kind: "append", first: at.logNext, pieces, position: { logNext, runnerNext: at.runnerNext + fresh, logBytes, truncated } };
}
