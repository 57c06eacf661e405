/**
 * One script's output on its way to the control plane, apart from any transport.
 *
 * Every line gets the next sequence number (stdout, stderr and the runner's `debug` lines share one sequence,
 * in the order they were added). Lines are held in blocks (the lines of one pipe read, as its bytes) and handed
 * to an injected `send` callback in batches of whole blocks, and kept until the control plane acknowledges
 * them, so a reconnect can send exactly the lines it is missing (an acknowledgement inside a block splits it).
 *
 * Memory stays bounded by two limits, both counted in estimated frame bytes (a block's bytes plus
 * `LINE_OVERHEAD_BYTES`; the bytes hold a `\n` between lines, so a flood of empty lines counts too):
 * - **held**: every unacknowledged line. Above `maxUnackedBytes` the spool calls `pressure(true)` (the runner
 *   stops reading the process's pipes, so the process blocks on its next write); once acknowledgements bring it
 *   to half of that, `pressure(false)`.
 * - **in flight**: lines sent and not yet acknowledged. At most `maxInFlightBytes` go out ahead of the
 *   acknowledgements, also when a reconnect resends a backlog; the rest follows as acknowledgements come back.
 *
 * A block's bytes are copied into pages (`PAGE_BYTES`) that every spool of the runner shares and reuses: a block is
 * mostly a view of the buffer a pipe or spool file was read into, and holding the view until the acknowledgement
 * would keep that whole buffer alive past V8's young generation, which frees it only in a full collection (during
 * 100 MB of output, tens of megabytes of dead read buffers). Copied, the read buffer dies young, and the pages are
 * written again once every block in them was acknowledged. A batch's bytes are valid until they are acknowledged:
 * a transport that keeps them longer copies them.
 */
import { splitByteBlock, type ByteBlock } from "../shared/protocol.js";

/** A batch of consecutive lines, in blocks: `sequence` is the number of the first line. */
export interface OutputBatch {
  sequence: number;
  blocks: ByteBlock[];
}

/** Hands a batch to the transport; returns false when it cannot take it now (disconnected, or its buffer is full). */
export type SendBatch = (batch: OutputBatch) => boolean;

/** Limits of one batch, of what is held and in flight, and where pressure is reported. */
export interface OutputSpoolOptions {
  /** Receives each batch. */
  send: SendBatch;
  /** A batch holds at most this many bytes of output (a single larger block goes alone). */
  maxBatchChars?: number;
  /** A batch holds at most this many lines (a longer block is split when it is added). */
  maxBatchLines?: number;
  /** High-water mark of unacknowledged output (estimated bytes): above it, `pressure(true)`; at half, `pressure(false)`. */
  maxUnackedBytes?: number;
  /** At most this much output (estimated bytes) is sent ahead of the acknowledgements; default half of `maxUnackedBytes`. */
  maxInFlightBytes?: number;
  /** Told when reading should stop (true: too much is unacknowledged) and when it may go on again (false). */
  pressure?: (paused: boolean) => void;
}

/** Default limits: batches of 960 KiB of output (a frame stays near 1 MiB) or 50,000 lines; 8 MiB held before the process is made to wait. */
export const SPOOL_DEFAULTS = { maxBatchChars: 960 * 1024, maxBatchLines: 50_000, maxUnackedBytes: 8 * 1024 * 1024 } as const;

/** The size of a page of held output bytes. */
export const PAGE_BYTES = 256 * 1024;

/** Blocks up to this size are copied into a page; a larger one (pieces of an over-long line, made apart) is held as it came. */
const PAGED_BLOCK_BYTES = 64 * 1024;

/** Free pages kept for the next blocks (the default `maxUnackedBytes`); a page freed beyond them is left to the collector. */
const KEPT_FREE_PAGES = 32;

/** A page of output bytes: filled from the start, written again once no block in it is held and it is no spool's current page. */
class Page {
  readonly bytes = Buffer.allocUnsafeSlow(PAGE_BYTES);
  used = 0;
  /** Blocks held in it, plus one while a spool fills it. */
  holders = 0;
}

const freePages: Page[] = [];

function takePage(): Page {
  const page = freePages.pop() ?? new Page();
  page.used = 0;
  page.holders = 1;
  return page;
}

function releasePage(page: Page): void {
  page.holders -= 1;
  if (page.holders === 0 && freePages.length < KEPT_FREE_PAGES) freePages.push(page);
}

/** What a block costs beyond its bytes: its source, timestamp and count in a frame's header (and its object here). */
export const LINE_OVERHEAD_BYTES = 64;

/** The estimated size of a block: what it takes in a frame, roughly what it takes in memory. */
export function blockBytes(block: ByteBlock): number {
  return block.bytes.length + LINE_OVERHEAD_BYTES;
}

/** Where one spool stands; numbers for logs, tests and the runner's stats. */
export interface SpoolStats {
  /** Estimated bytes of every unacknowledged line. */
  heldBytes: number;
  /** The most `heldBytes` ever was. */
  peakHeldBytes: number;
  /** How many lines are unacknowledged. */
  heldLines: number;
  /** Estimated bytes sent and not yet acknowledged. */
  inFlightBytes: number;
  /** True while the spool asks for reading to stop. */
  paused: boolean;
  /** The next line's sequence (how many lines were ever added). */
  nextSequence: number;
  /** The first unacknowledged line's sequence. */
  firstUnacknowledged: number;
}

/** Below this many spent blocks the array is not compacted (compaction is amortised over many acks). */
const COMPACT_AFTER = 1024;

/** Numbers, batches and keeps one script's output until it is acknowledged. */
export class OutputSpool {
  private readonly send: SendBatch;
  private readonly maxBatchChars: number;
  private readonly maxBatchLines: number;
  private readonly maxUnackedBytes: number;
  private readonly maxInFlightBytes: number;
  private readonly pressure: (paused: boolean) => void;
  /** Unacknowledged blocks from `blocks[head]`, whose first line has sequence `base`; the entries before `head` are spent. */
  private blocks: ByteBlock[] = [];
  /** The page of each block in `blocks` (undefined: held as it came, or already released). */
  private pages: Array<Page | undefined> = [];
  /** The page new blocks are copied into. */
  private page: Page | undefined;
  private head = 0;
  private base = 0;
  /** The sequence the next line gets. */
  private next = 0;
  /** Lines below this sequence were handed to `send` (on this connection or an earlier one); always a block's first line. */
  private sentUpTo = 0;
  /** The index in `blocks` of the block that starts at `sentUpTo`. */
  private sentIndex = 0;
  /** Estimated bytes of the blocks from `head`. */
  private held = 0;
  private peakHeld = 0;
  /** Estimated bytes of the blocks from `base` up to `sentUpTo`. */
  private inFlight = 0;
  private scheduled: NodeJS.Immediate | undefined;
  /** The transport refused a batch: stop trying on every new line until the next `flush` or `resendFrom`. */
  private blocked = false;
  private paused = false;
  private disposed = false;

  constructor(options: OutputSpoolOptions) {
    this.send = options.send;
    this.maxBatchChars = options.maxBatchChars ?? SPOOL_DEFAULTS.maxBatchChars;
    this.maxBatchLines = options.maxBatchLines ?? SPOOL_DEFAULTS.maxBatchLines;
    this.maxUnackedBytes = options.maxUnackedBytes ?? SPOOL_DEFAULTS.maxUnackedBytes;
    this.maxInFlightBytes = options.maxInFlightBytes ?? Math.max(1, Math.floor(this.maxUnackedBytes / 2));
    this.pressure = options.pressure ?? (() => undefined);
  }

  /** How many lines were ever added (the next line's sequence; the `lineCount` of an exit). */
  get nextSequence(): number {
    return this.next;
  }

  /** The sequence of the first line the control plane has not acknowledged. */
  get firstUnacknowledged(): number {
    return this.base;
  }

  /** True when every line was handed to `send` (an exit may follow). */
  get allSent(): boolean {
    return this.sentUpTo >= this.next;
  }

  /** True while too much is unacknowledged and reading should wait. */
  get isPaused(): boolean {
    return this.paused;
  }

  /** Where the spool stands. */
  get stats(): SpoolStats {
    return {
      heldBytes: this.held,
      peakHeldBytes: this.peakHeld,
      heldLines: this.next - this.base,
      inFlightBytes: this.inFlight,
      paused: this.paused,
      nextSequence: this.next,
      firstUnacknowledged: this.base,
    };
  }

  /** Adds one line and returns its sequence; it is sent at the end of this tick, or at once when a batch is full. */
  append(source: ByteBlock["source"], text: string, occurred: string = new Date().toISOString()): number {
    return this.appendBlock({ source, occurred, count: 1, bytes: Buffer.from(text, "utf8") });
  }

  /**
   * Adds a block of `count` lines (their bytes joined with `\n`) and returns the sequence of its first line;
   * like `append`, it is sent at the end of this tick or at once when a batch is full.
   */
  appendBlock(block: ByteBlock): number {
    if (this.disposed) throw new Error("the output spool was disposed");
    const sequence = this.next;
    const page = this.pageFor(block.bytes.length);
    let rest = block;
    if (page !== undefined) {
      page.bytes.set(block.bytes, page.used);
      rest = { ...block, bytes: page.bytes.subarray(page.used, page.used + block.bytes.length) };
      page.used += block.bytes.length;
    }
    // A batch holds whole blocks: none may be longer than a batch.
    while (rest.count > this.maxBatchLines) {
      const [first, after] = splitByteBlock(rest, this.maxBatchLines);
      this.hold(first, page);
      rest = after;
    }
    this.hold(rest, page);
    if (this.blocked) return sequence;
    if (this.next - this.sentUpTo >= this.maxBatchLines || this.held - this.inFlight >= this.maxBatchChars) {
      this.flush();
    } else if (this.scheduled === undefined) {
      this.scheduled = setImmediate(() => {
        this.scheduled = undefined;
        this.flush();
      });
    }
    return sequence;
  }

  /**
   * Sends unsent lines now, in batches, while the in-flight limit allows; stops at the first batch the
   * transport refuses. Call it again when the transport can take more.
   */
  flush(): void {
    this.cancelScheduled();
    this.blocked = false;
    while (!this.disposed && this.sentUpTo < this.next && this.inFlight < this.maxInFlightBytes) {
      const { batch, lines, bytes } = this.nextBatch();
      if (!this.send(batch)) {
        this.blocked = true;
        return;
      }
      this.sentUpTo += lines;
      this.sentIndex += batch.blocks.length;
      this.inFlight += bytes;
    }
  }

  /**
   * Numbers the lines from `sequence` on instead of 0: for a script whose earlier lines another runner process sent
   * (the control plane has them up to there). Only before the first line.
   */
  startAt(sequence: number): void {
    if (this.next !== 0 || this.disposed) throw new Error("a spool starts at a sequence only before its first line");
    this.base = this.next = this.sentUpTo = sequence;
  }

  /** Drops the lines below `nextSequence` (the control plane has stored them) and sends what that makes room for. */
  ack(nextSequence: number): void {
    if (this.disposed) return;
    this.drop(nextSequence);
    if (!this.blocked && !this.allSent) this.flush();
  }

  /** After a reconnect: the control plane has everything below `nextSequence`; send the rest again, window by window. */
  resendFrom(nextSequence: number): void {
    if (this.disposed) return;
    this.drop(nextSequence);
    // Lines below `base` were acknowledged before and are gone; the control plane already has them.
    this.sentUpTo = this.base;
    this.sentIndex = this.head;
    this.inFlight = 0;
    this.flush();
  }

  /** Stops sending and forgets every line; a pause it asked for ends. */
  dispose(): void {
    this.cancelScheduled();
    this.disposed = true;
    for (let index = this.head; index < this.pages.length; index++) this.releaseBlockPage(index);
    this.releaseCurrentPage();
    this.blocks = [];
    this.pages = [];
    this.head = 0;
    this.sentIndex = 0;
    this.held = 0;
    this.inFlight = 0;
    if (this.paused) this.setPaused(false);
  }

  /** The page a block of `bytes` bytes is copied into (a new one when the current one has no room); undefined: not paged. */
  private pageFor(bytes: number): Page | undefined {
    if (bytes === 0 || bytes > PAGED_BLOCK_BYTES) return undefined;
    if (this.page !== undefined && PAGE_BYTES - this.page.used >= bytes) return this.page;
    this.releaseCurrentPage();
    return (this.page = takePage());
  }

  private releaseCurrentPage(): void {
    if (this.page !== undefined) releasePage(this.page);
    this.page = undefined;
  }

  private releaseBlockPage(index: number): void {
    const page = this.pages[index];
    if (page === undefined) return;
    this.pages[index] = undefined;
    releasePage(page);
  }

  private hold(block: ByteBlock, page: Page | undefined): void {
    this.blocks.push(block);
    this.pages.push(page);
    if (page !== undefined) page.holders += 1;
    this.next += block.count;
    this.held += blockBytes(block);
    if (this.held > this.peakHeld) this.peakHeld = this.held;
    if (!this.paused && this.held > this.maxUnackedBytes) this.setPaused(true);
  }

  /** Forgets the lines below `nextSequence` (clamped to what exists) and ends a pause once enough is gone. */
  private drop(nextSequence: number): void {
    const upTo = Math.min(Math.max(nextSequence, this.base), this.next);
    let freed = 0;
    while (this.base < upTo) {
      const block = this.blocks[this.head]!;
      const lines = upTo - this.base;
      if (lines < block.count) {
        // Acknowledged up to a line inside this block: keep the rest of it.
        const [, rest] = splitByteBlock(block, lines);
        freed += blockBytes(block) - blockBytes(rest);
        this.blocks[this.head] = rest;
        this.base = upTo;
        break;
      }
      freed += blockBytes(block);
      this.releaseBlockPage(this.head);
      this.head += 1;
      this.base += block.count;
    }
    this.held -= freed;
    if (upTo >= this.sentUpTo) {
      // Acknowledged without our sending them on this connection: they were sent on an earlier one.
      this.sentUpTo = upTo;
      this.sentIndex = this.head;
      this.inFlight = 0;
    } else {
      this.inFlight -= freed;
    }
    if (this.head >= COMPACT_AFTER && this.head * 2 >= this.blocks.length) {
      this.blocks = this.blocks.slice(this.head);
      this.pages = this.pages.slice(this.head);
      this.sentIndex -= this.head;
      this.head = 0;
    }
    // Nothing held: a spool that waits for more output holds no page meanwhile.
    if (this.head === this.blocks.length) this.releaseCurrentPage();
    if (this.paused && this.held <= this.maxUnackedBytes / 2) this.setPaused(false);
  }

  private setPaused(paused: boolean): void {
    this.paused = paused;
    this.pressure(paused);
  }

  /** The next batch of whole blocks from `sentUpTo`. */
  private nextBatch(): { batch: OutputBatch; lines: number; bytes: number } {
    const blocks: ByteBlock[] = [];
    let lines = 0;
    let chars = 0;
    let bytes = 0;
    for (let index = this.sentIndex; index < this.blocks.length; index++) {
      const block = this.blocks[index]!;
      // A batch stays within both limits; only a single block larger than a batch goes alone.
      if (blocks.length > 0 && (lines + block.count > this.maxBatchLines || chars + block.bytes.length > this.maxBatchChars)) break;
      blocks.push(block);
      lines += block.count;
      chars += block.bytes.length;
      bytes += blockBytes(block);
      if (lines >= this.maxBatchLines || chars >= this.maxBatchChars) break;
    }
    return { batch: { sequence: this.sentUpTo, blocks }, lines, bytes };
  }

  private cancelScheduled(): void {
    if (this.scheduled !== undefined) clearImmediate(this.scheduled);
    this.scheduled = undefined;
  }
}
