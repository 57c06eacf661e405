/**
 * Abandoned processes the control plane still wants to hear about. The runner no longer tracks their output or
 * exit, but it watches each `{ticket, fence, pid}` until the pid is gone and then reports `abandoned_exit`. A
 * report that could not be sent (no connection) is sent again after the next welcome; one that went out on an
 * open socket is done (the control plane treats duplicates as harmless). The set lives as long as the runner
 * process, across reconnects.
 */
import { isProcessGone } from "./containment.js";

/** One abandoned process, as the protocol names it. */
export interface WatchedProcess {
  ticket: string;
  fence: number;
  pid: number;
}

/** What the watch needs. */
export interface AbandonedWatchOptions {
  /** How often to look at the watched pids. */
  pollMs: number;
  /** Sends `abandoned_exit`; false when it cannot go now (not connected). */
  report(process: WatchedProcess): boolean;
  /** Hears, once per entry, that its process is gone (before the report is attempted). */
  gone?(process: WatchedProcess): void;
  /** Whether a process is gone; default: `/proc/<pid>/stat` is missing, a zombie, or (given `startTime`) another process. */
  isGone?(pid: number, startTime: number | undefined): boolean;
}

/** Default poll interval. */
export const WATCH_DEFAULTS = { pollMs: 500 } as const;

interface Entry {
  process: WatchedProcess;
  /** When the runner spawned the process itself it knows its start time, which guards against pid reuse. */
  startTime: number | undefined;
  /** The process is gone; the report has not gone out yet. */
  gone: boolean;
}

/** Watches abandoned processes and reports each one's end. */
export class AbandonedWatch {
  private readonly entries = new Map<string, Entry>();
  private readonly isGone: (pid: number, startTime: number | undefined) => boolean;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly options: AbandonedWatchOptions) {
    this.isGone = options.isGone ?? isProcessGone;
  }

  /** How many processes are watched or wait for their report to go out. */
  get size(): number {
    return this.entries.size;
  }

  /** True while a watched process of this ticket may still run. */
  isWatching(ticket: string): boolean {
    for (const entry of this.entries.values()) if (entry.process.ticket === ticket && !entry.gone) return true;
    return false;
  }

  /** Watches a process (again: a known one keeps its state); one that is already gone is reported at once. */
  add(process: WatchedProcess, startTime?: number): void {
    if (this.stopped) return;
    const key = keyOf(process);
    if (this.entries.has(key)) return;
    const entry: Entry = { process: { ticket: process.ticket, fence: process.fence, pid: process.pid }, startTime, gone: false };
    this.entries.set(key, entry);
    this.checkEntry(key, entry);
    this.schedule();
  }

  /** Sends every report that is still due (after a welcome), then looks at every watched process. */
  flush(): void {
    this.check();
  }

  /** One look at every entry: reports the processes that are gone. */
  check(): void {
    for (const [key, entry] of [...this.entries]) this.checkEntry(key, entry);
    this.schedule();
  }

  /** Stops watching everything (the runner stopped). */
  stop(): void {
    this.stopped = true;
    this.entries.clear();
    this.schedule();
  }

  private checkEntry(key: string, entry: Entry): void {
    if (!entry.gone) {
      if (!this.isGone(entry.process.pid, entry.startTime)) return;
      entry.gone = true;
      this.options.gone?.(entry.process);
    }
    if (this.options.report(entry.process)) this.entries.delete(key);
  }

  /** Polls only while some process is still watched; the timer never keeps the runner alive on its own. */
  private schedule(): void {
    const watching = [...this.entries.values()].some((entry) => !entry.gone);
    if (watching && this.timer === undefined) {
      this.timer = setInterval(() => this.check(), this.options.pollMs);
      this.timer.unref();
    } else if (!watching && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}

function keyOf(process: WatchedProcess): string {
  return `${process.fence}:${process.pid}:${process.ticket}`;
}
