/**
 * Reading a wrapped script's output from its spool files (wrapper.ts): a copier of the wrapper's writes each stream
 * into generation files named by the position of their first byte (`out.0`, `out.14995456`, ...), each at most
 * `GENERATION_RECORDS` reads of the pipe (32 MiB), and marks each one `out.<start>.done` (it took its budget: the next
 * one starts once allowed) or `out.<start>.end` (the stream's end). A generation is allowed by writing its start on
 * the stream's control FIFO (`out.ctl`). The runner never takes a byte out of a pipe: what it read but had not logged
 * when it died is still in a file, and the next runner process reads on from the position its output log names. A
 * generation is deleted, and the next one allowed, once every byte of it was delivered (and so logged); with no
 * runner, the copier stops after one generation and the script blocks on its full pipe, so that at most one
 * generation waits on disk per stream.
 *
 * A `SpoolTail` is a Readable of one stream from a position: it reads the generation files as they grow (told by an
 * inotify watch of the folder, or by polling where no watch can be had), ends at a generation marked `end`, and
 * counts what its `data` listeners were handed.
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, readdirSync, unlinkSync, watch, type FSWatcher } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { controlFifo, tellCopier, type SpoolName } from "./wrapper.js";

/** Most bytes read into one chunk: what one read of a pipe gives at most, so that the spool sees the chunks it always saw. */
const CHUNK_BYTES = 64 * 1024;

/** Chunks read in one go before the event loop gets a turn. */
const CHUNKS_PER_TURN = 16;

/** How often a tail looks at its files when the folder cannot be watched. */
const POLL_MS = 25;

/**
 * The files of the generation of stream `name` in `io` that starts at byte `start`, as the copier names them (its
 * shell text is `prologue` in wrapper.ts).
 */
export function generationFile(io: string, name: SpoolName, start: number): { data: string; done: string; end: string; stat: string } {
  const data = join(io, `${name}.${start}`);
  return { data, done: `${data}.done`, end: `${data}.end`, stat: `${data}.stat` };
}

/** One stream of a wrapped script, read from its spool files from a position on. */
export class SpoolTail extends Readable {
  /** Where the current generation starts. */
  private start: number;
  /** Where the next read starts in the current generation's file. */
  private offset: number;
  private fd: number | undefined;
  /** Bytes handed to `data` listeners, counted from the stream's first byte. */
  private delivered: number;
  /** Generations read whole whose bytes were not all handed over yet, oldest first. */
  private readonly finished: Array<{ start: number; end: number }> = [];
  private waiting = false;
  private ended = false;
  /** A pump put off to the next turn of the event loop. */
  private later: NodeJS.Immediate | undefined;
  private watcher: FSWatcher | undefined;
  private poll: NodeJS.Timeout | undefined;

  constructor(
    private readonly io: string,
    readonly spool: SpoolName,
    from: number,
  ) {
    super({ highWaterMark: CHUNK_BYTES });
    this.delivered = from;
    this.start = this.settleAt(from);
    this.offset = from - this.start;
    try {
      this.watcher = watch(io, (_event, file) => {
        if (file === null || file.startsWith(`${spool}.`)) this.poke();
      });
      this.watcher.on("error", () => this.startPolling());
    } catch {
      this.startPolling();
    }
  }

  /** True once the stream's end was read. */
  get atEnd(): boolean {
    return this.ended;
  }

  /** Asked for more: read in a later turn (read here, a stream that always has data would never leave Node's read loop). */
  override _read(): void {
    this.waiting = false;
    this.pumpLater();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.later !== undefined) clearImmediate(this.later);
    this.later = undefined;
    this.stopWatching();
    this.closeFile();
    callback(error);
  }

  /** Counts what the listeners were handed (they log it before they return); frees each generation handed over whole. */
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    const listened = super.emit(event, ...args);
    if (event === "data") {
      this.delivered += (args[0] as Buffer).length;
      this.release();
    }
    return listened;
  }

  /**
   * The start of the generation that holds byte `from` (the newest that starts at or before it). Older ones were
   * handed over whole by an earlier reader that died before deleting them: deleted now. With none, the copier waits
   * for the generation starting at `from` (an earlier reader died before allowing it): allowed now (the copier ignores
   * a start it is past).
   */
  private settleAt(from: number): number {
    // A stream read from its start: the first generation starts there, and none before it can be left.
    if (from === 0) return 0;
    const starts = this.generationStarts().filter((start) => start <= from);
    const start = starts.length === 0 ? from : Math.max(...starts);
    for (const older of starts) if (older < start) this.remove(older);
    if (starts.length === 0) tellCopier(controlFifo(this.io, this.spool), String(from));
    return start;
  }

  /** The starts of the generation files there are. */
  private generationStarts(): number[] {
    const pattern = new RegExp(`^${this.spool}\\.(\\d+)$`);
    const starts: number[] = [];
    try {
      for (const name of readdirSync(this.io)) {
        const match = pattern.exec(name);
        if (match !== null) starts.push(Number(match[1]));
      }
    } catch {
      // No folder: nothing there.
    }
    return starts;
  }

  /** Deletes each generation read and handed over whole, and allows the copier the next. */
  private release(): void {
    while (this.finished.length > 0 && this.delivered >= this.finished[0]!.end) {
      const { start, end } = this.finished.shift()!;
      tellCopier(controlFifo(this.io, this.spool), String(end));
      this.remove(start);
    }
  }

  /**
   * Reads what is there, until the consumer has enough or the files have no more for now; after `CHUNKS_PER_TURN`
   * chunks it goes on in a later turn of the event loop, so that a fast writer cannot keep the runner from its other work.
   */
  private pump(): void {
    for (let chunks = 0; !this.destroyed && !this.ended; ) {
      if (chunks === CHUNKS_PER_TURN) return this.pumpLater();
      const file = generationFile(this.io, this.spool, this.start);
      if (this.fd === undefined) {
        try {
          this.fd = openSync(file.data, "r");
        } catch {
          // Not started yet: the copier starts it once allowed.
          return this.wait();
        }
      }
      const available = fstatSync(this.fd).size - this.offset;
      if (available > 0) {
        const chunk = Buffer.allocUnsafe(Math.min(available, CHUNK_BYTES));
        const read = readSync(this.fd, chunk, 0, chunk.length, this.offset);
        this.offset += read;
        chunks += 1;
        if (!this.push(read === chunk.length ? chunk : chunk.subarray(0, read))) return;
        continue;
      }
      const ending = existsSync(file.end);
      if (!ending && !existsSync(file.done)) return this.wait();
      // Marked finished: every byte is in the file now, and some may have come after the size was looked at.
      if (fstatSync(this.fd).size > this.offset) continue;
      this.closeFile();
      if (ending) {
        this.ended = true;
        this.stopWatching();
        this.push(null);
        return;
      }
      const end = this.start + this.offset;
      this.finished.push({ start: this.start, end });
      this.start = end;
      this.offset = 0;
      this.release();
    }
  }

  private pumpLater(): void {
    this.later ??= setImmediate(() => {
      this.later = undefined;
      this.pump();
    });
  }

  private wait(): void {
    this.waiting = true;
  }

  /** The folder changed: a tail that found nothing more reads again (once, however many changes came in one turn). */
  private poke(): void {
    if (!this.waiting || this.destroyed) return;
    this.waiting = false;
    this.pumpLater();
  }

  private startPolling(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.poll !== undefined || this.destroyed) return;
    this.poll = setInterval(() => this.poke(), POLL_MS);
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.poll !== undefined) clearInterval(this.poll);
    this.poll = undefined;
  }

  private closeFile(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }

  private remove(start: number): void {
    const file = generationFile(this.io, this.spool, start);
    for (const path of [file.data, file.done, file.stat]) {
      try {
        unlinkSync(path);
      } catch {
        // Gone already.
      }
    }
  }
}
