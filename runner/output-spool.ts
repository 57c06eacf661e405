/**
 * One script's output on its way to the control plane, apart from any transport.
 *
 * Every line gets the next sequence number (stdout, stderr and the runner's `debug` lines share one sequence,
 * in the order they were added). Lines are handed to an injected `send` callback in batches and kept until the
 * control plane acknowledges them, so a reconnect can send exactly the lines it is missing.
 */
import type { OutputLine } from "../shared/protocol.js";

/** A batch of consecutive lines: `sequence` is the number of the first one. */
export interface OutputBatch {
  sequence: number;
  lines: OutputLine[];
}

/** Hands a batch to the transport; returns false when it could not be sent (disconnected). */
export type SendBatch = (batch: OutputBatch) => boolean;

/** Limits of one batch, and when to send without waiting for the end of the current tick. */
export interface OutputSpoolOptions {
  /** Receives each batch. */
  send: SendBatch;
  /** A batch is closed once its text reaches this many characters. */
  maxBatchChars?: number;
  /** A batch is closed once it holds this many lines. */
  maxBatchLines?: number;
}

/** Default batch limits: 64 KiB of text or 5,000 lines. */
export const SPOOL_DEFAULTS = { maxBatchChars: 64 * 1024, maxBatchLines: 5_000 } as const;

/** Numbers, batches and keeps one script's output until it is acknowledged. */
export class OutputSpool {
  private readonly send: SendBatch;
  private readonly maxBatchChars: number;
  private readonly maxBatchLines: number;
  /** Unacknowledged lines; `lines[0]` has sequence `base`. */
  private lines: OutputLine[] = [];
  private base = 0;
  /** Lines below this sequence were handed to `send` (on this connection or an earlier one). */
  private sentUpTo = 0;
  /** Characters of text in the lines at and above `sentUpTo`. */
  private unsentChars = 0;
  private scheduled: NodeJS.Immediate | undefined;
  /** The transport refused a batch: stop trying on every new line until `resendFrom` (after a reconnect). */
  private blocked = false;
  private disposed = false;

  constructor(options: OutputSpoolOptions) {
    this.send = options.send;
    this.maxBatchChars = options.maxBatchChars ?? SPOOL_DEFAULTS.maxBatchChars;
    this.maxBatchLines = options.maxBatchLines ?? SPOOL_DEFAULTS.maxBatchLines;
  }

  /** How many lines were ever added (the next line's sequence; the `lineCount` of an exit). */
  get nextSequence(): number {
    return this.base + this.lines.length;
  }

  /** The sequence of the first line the control plane has not acknowledged. */
  get firstUnacknowledged(): number {
    return this.base;
  }

  /** True when every line was handed to `send` (an exit may follow). */
  get allSent(): boolean {
    return this.sentUpTo >= this.nextSequence;
  }

  /** Adds a line and returns its sequence; it is sent at the end of this tick, or at once when a batch is full. */
  append(source: OutputLine["source"], text: string, occurred: string = new Date().toISOString()): number {
    if (this.disposed) throw new Error("the output spool was disposed");
    const sequence = this.nextSequence;
    this.lines.push({ source, text, occurred });
    this.unsentChars += text.length;
    if (this.blocked) return sequence;
    if (this.nextSequence - this.sentUpTo >= this.maxBatchLines || this.unsentChars >= this.maxBatchChars) {
      this.flush();
    } else if (this.scheduled === undefined) {
      this.scheduled = setImmediate(() => {
        this.scheduled = undefined;
        this.flush();
      });
    }
    return sequence;
  }

  /** Sends every unsent line now, in batches; stops at the first batch the transport refuses. */
  flush(): void {
    this.cancelScheduled();
    this.blocked = false;
    while (!this.disposed && this.sentUpTo < this.nextSequence) {
      const batch = this.batchFrom(this.sentUpTo);
      if (!this.send(batch)) {
        this.blocked = true;
        return;
      }
      this.sentUpTo += batch.lines.length;
      for (const line of batch.lines) this.unsentChars -= line.text.length;
    }
  }

  /** Drops the lines below `nextSequence`: the control plane has stored them. */
  ack(nextSequence: number): void {
    const upTo = Math.min(Math.max(nextSequence, this.base), this.nextSequence);
    if (upTo > this.sentUpTo) {
      // Acknowledged without our sending them on this connection: they were sent on an earlier one.
      for (const line of this.lines.slice(this.sentUpTo - this.base, upTo - this.base)) this.unsentChars -= line.text.length;
      this.sentUpTo = upTo;
    }
    this.lines.splice(0, upTo - this.base);
    this.base = upTo;
  }

  /** After a reconnect: the control plane has everything below `nextSequence`; send the rest again. */
  resendFrom(nextSequence: number): void {
    this.ack(nextSequence);
    // Lines below `base` were acknowledged before and are gone; the control plane already has them.
    this.sentUpTo = this.base;
    this.unsentChars = this.lines.reduce((sum, line) => sum + line.text.length, 0);
    this.flush();
  }

  /** Stops sending and forgets every line. */
  dispose(): void {
    this.cancelScheduled();
    this.disposed = true;
    this.lines = [];
  }

  private batchFrom(sequence: number): OutputBatch {
    const lines: OutputLine[] = [];
    let chars = 0;
    for (let index = sequence - this.base; index < this.lines.length; index++) {
      const line = this.lines[index];
      if (line === undefined) break;
      lines.push(line);
      chars += line.text.length;
      if (lines.length >= this.maxBatchLines || chars >= this.maxBatchChars) break;
    }
    return { sequence, lines };
  }

  private cancelScheduled(): void {
    if (this.scheduled !== undefined) clearImmediate(this.scheduled);
    this.scheduled = undefined;
  }
}
