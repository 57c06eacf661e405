/**
 * Turns the chunks of one output stream into lines.
 *
 * - Lines end at `\n`; one `\r` before it (or before the end of the stream) is dropped, so CRLF output reads
 *   the same as LF output. A `\r` anywhere else (progress bars) stays in the text.
 * - Bytes are decoded as UTF-8, so a character split across chunks is never broken (a cut piece of an over-long
 *   line carries the bytes of a character it ends inside of over to the next piece, as a StringDecoder would);
 *   invalid bytes become U+FFFD.
 * - A line longer than `MAX_LINE_BYTES` is cut into pieces of at most that many bytes (each piece becomes its
 *   own line; a cut never falls inside a character, so a piece can be up to 3 bytes shorter). This bounds the memory
 *   one endless line can take and keeps every line well inside one protocol frame. Shorter lines are never
 *   split or merged.
 * - `end()` returns the last line when the stream did not end with `\n`.
 * - `snapshot()` tells everything it holds, and `LineSplitter.restore` makes a splitter that goes on from there
 *   exactly (a run's output log starts each segment with it, see output-log.ts).
 */

/** The longest line, in UTF-8 bytes, before it is cut into pieces. */
export const MAX_LINE_BYTES = 1024 * 1024;

const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;

/** True for a UTF-8 continuation byte (10xxxxxx). */
const isContinuation = (byte: number | undefined): boolean => byte !== undefined && (byte & 0xc0) === 0x80;

/** What a splitter holds between two chunks: enough to make another one that goes on exactly from there. */
export interface SplitterState {
  /** Bytes of the current line not yet decoded. */
  pending: Buffer;
  /** The start of a character that the last emitted piece of an over-long line ended inside of. */
  carry: Buffer;
  /** A piece of the current over-long line was emitted. */
  started: boolean;
}

const EMPTY = Buffer.alloc(0);

/** Splits one stream's chunks into lines; one instance per stream. */
export class LineSplitter {
  /** Bytes of the current line not yet decoded. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** The bytes of an unfinished character at the end of the last emitted piece (at most 3). */
  private carry: Buffer = EMPTY;
  /** True once a piece of the current over-long line was emitted. */
  private started = false;

  constructor(private readonly maxLineBytes: number = MAX_LINE_BYTES) {
    if (!Number.isInteger(maxLineBytes) || maxLineBytes < 4) throw new RangeError("maxLineBytes must be an integer >= 4");
  }

  /** A splitter that goes on exactly where the one that gave `state` stood. */
  static restore(state: SplitterState, maxLineBytes: number = MAX_LINE_BYTES): LineSplitter {
    const splitter = new LineSplitter(maxLineBytes);
    if (state.pending.length > 0) splitter.pending = [Buffer.from(state.pending)];
    splitter.pendingBytes = state.pending.length;
    splitter.carry = Buffer.from(state.carry);
    splitter.started = state.started;
    return splitter;
  }

  /** Everything this splitter holds now (copies). */
  snapshot(): SplitterState {
    return { pending: Buffer.concat(this.pending, this.pendingBytes), carry: Buffer.from(this.carry), started: this.started };
  }

  /** Bytes of the unfinished current line held here: never more than `maxLineBytes` + 1. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  /** Adds a chunk and returns the lines it completed, in order. */
  push(chunk: Buffer | string): string[] {
    const bytes = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const end = bytes.indexOf(NEWLINE, start);
      if (end === -1) {
        this.append(bytes.subarray(start), lines);
        return lines;
      }
      this.append(bytes.subarray(start, end), lines);
      lines.push(...this.finishLine());
      start = end + 1;
    }
  }

  /**
   * Like `push`, but returns the completed lines as blocks of UTF-8 bytes (lines joined with `\n`) with their
   * counts: the line this splitter held, ended by the chunk's first newline; the lines up to its last newline,
   * passed on as the bytes they are (a view of the chunk, no string per line); and pieces of an over-long line.
   * Decoding the blocks gives exactly the lines `push` gives.
   */
  pushBlocks(chunk: Buffer): LineBlock[] {
    const first = chunk.indexOf(NEWLINE);
    if (first === -1) return encodeLines(this.push(chunk));
    const blocks = encodeLines(this.push(chunk.subarray(0, first + 1)));
    const last = chunk.lastIndexOf(NEWLINE);
    if (last > first) {
      const middle = chunk.subarray(first + 1, last);
      // Nothing to cut and no `\r` to drop: these are whole lines, and nothing is carried between them.
      if (middle.length <= this.maxLineBytes && middle.indexOf(CARRIAGE_RETURN) === -1) blocks.push({ bytes: middle, count: countLines(middle) });
      else blocks.push(...encodeLines(this.push(chunk.subarray(first + 1, last + 1))));
    }
    blocks.push(...encodeLines(this.push(chunk.subarray(last + 1))));
    return blocks;
  }

  /** Ends the stream and returns the unterminated last line, if any. */
  end(): string[] {
    if (this.pendingBytes === 0 && !this.started) return [];
    return this.finishLine();
  }

  private append(bytes: Buffer, lines: string[]): void {
    if (bytes.length === 0) return;
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    // Keep one byte beyond the limit: it may be the `\r` of a CRLF that is not part of the line.
    while (this.pendingBytes > this.maxLineBytes + 1) lines.push(this.cutPiece());
  }

  /** Decodes the first (at most `maxLineBytes`) pending bytes as one piece of an over-long line. */
  private cutPiece(): string {
    const all = Buffer.concat(this.pending, this.pendingBytes);
    const cut = this.cutPoint(all);
    const piece = all.subarray(0, cut);
    const rest = all.subarray(cut);
    this.pending = [rest];
    this.pendingBytes = rest.length;
    this.started = true;
    return this.decode(piece, false);
  }

  /** Where to cut an over-long line: at the limit, moved back to the start of the character it would split. */
  private cutPoint(bytes: Buffer): number {
    let cut = this.maxLineBytes;
    // UTF-8 continuation bytes are 10xxxxxx; a character has at most three of them.
    while (cut > this.maxLineBytes - 3 && isContinuation(bytes[cut])) cut--;
    // Not valid UTF-8 here anyway: cut at the limit (the unfinished character is carried over to the next piece).
    return isContinuation(bytes[cut]) ? this.maxLineBytes : cut;
  }

  private finishLine(): string[] {
    let all = Buffer.concat(this.pending, this.pendingBytes);
    if (all.length > 0 && all[all.length - 1] === CARRIAGE_RETURN) all = all.subarray(0, all.length - 1);
    const lines: string[] = [];
    if (all.length > this.maxLineBytes) {
      const cut = this.cutPoint(all);
      lines.push(this.decode(all.subarray(0, cut), false));
      all = all.subarray(cut);
    }
    lines.push(this.decode(all, true));
    this.pending = [];
    this.pendingBytes = 0;
    this.started = false;
    return lines;
  }

  /**
   * Decodes the carried bytes and `bytes`; unless `final`, the bytes of a character they end inside of are carried to
   * the next call instead (the same rule as Node's StringDecoder, kept here so that a snapshot can hold it).
   */
  private decode(bytes: Buffer, final: boolean): string {
    const all = this.carry.length === 0 ? bytes : Buffer.concat([this.carry, bytes]);
    if (final) {
      this.carry = EMPTY;
      return all.toString("utf8");
    }
    const keep = unfinishedCharacter(all);
    this.carry = keep === 0 ? EMPTY : Buffer.from(all.subarray(all.length - keep));
    return all.toString("utf8", 0, all.length - keep);
  }
}

/**
 * How many bytes at the end of `bytes` start a character that is not complete yet: a lead byte and fewer continuation
 * bytes than it announces (0 when the end is complete, or not valid UTF-8 anyway, which decodes as it is).
 */
function unfinishedCharacter(bytes: Buffer): number {
  let held = 0;
  for (let at = bytes.length - 1; at >= 0 && held < 4; at--) {
    const byte = bytes[at]!;
    held += 1;
    if (isContinuation(byte)) continue;
    const needed = (byte & 0xe0) === 0xc0 ? 2 : (byte & 0xf0) === 0xe0 ? 3 : (byte & 0xf8) === 0xf0 ? 4 : 0;
    return needed > held ? held : 0;
  }
  return 0;
}

/** Lines as UTF-8 bytes joined with `\n`, and how many there are. */
export interface LineBlock {
  bytes: Buffer;
  count: number;
}

/** Lines as one block, or none. */
function encodeLines(lines: string[]): LineBlock[] {
  return lines.length === 0 ? [] : [{ bytes: Buffer.from(lines.join("\n"), "utf8"), count: lines.length }];
}

/** How many lines a block of whole lines holds: one more than its newlines. */
function countLines(bytes: Buffer): number {
  let count = 1;
  for (let at = bytes.indexOf(NEWLINE); at !== -1; at = bytes.indexOf(NEWLINE, at + 1)) count += 1;
  return count;
}
