/**
 * Abandoned processes the control plane still wants to hear about. The runner no longer tracks their output or
 * exit, but it watches each `{ticket, fence, pid}` until the process is gone and then reports `abandoned_exit`. A
 * process is gone when its pid names no live process, a process with another start time, or (by its boot id) a
 * process of an earlier boot. A report that could not be sent (no connection) is sent again after the next
 * welcome; one that went out on an open socket is done (the control plane treats duplicates as harmless). The set
 * lives as long as the runner process, across reconnects. An entry added with `report: false` is only watched
 * (the runner keeps a folder while it runs), never reported. `AbandonedProcesses` is the runner's use of it.
 */
import { cgroupAt, isProcessGone, killAbandoned, type CgroupTree } from "./containment.js";
import type { Logger } from "./options.js";
import type { RunFolders } from "./run-folder.js";
import { letWrapperGoByPid } from "./wrapper.js";

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
  /**
   * Whether a process is gone; default: `/proc/<pid>/stat` is missing, a zombie, (given `startTime`) another
   * process, or (given `bootId`) of another boot.
   */
  isGone?(pid: number, startTime: number | undefined, bootId: string | undefined): boolean;
}

/** Default poll interval. */
export const WATCH_DEFAULTS = { pollMs: 500 } as const;

/** What names a watched process beyond its pid, where known. */
export interface ProcessNames {
  /** Its start time (clock ticks after boot): guards against pid reuse. */
  startTime?: number | undefined;
  /** The boot it belongs to: a process of another boot is gone. */
  bootId?: string | undefined;
}

interface Entry {
  process: WatchedProcess;
  names: ProcessNames;
  /** False: watched for the runner's own sake; its end is not reported. */
  report: boolean;
  /** The process is gone; the report has not gone out yet. */
  gone: boolean;
}

/** Watches abandoned processes and reports each one's end. */
export class AbandonedWatch {
  private readonly entries = new Map<string, Entry>();
  private readonly isGone: (pid: number, startTime: number | undefined, bootId: string | undefined) => boolean;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly options: AbandonedWatchOptions) {
    this.isGone = options.isGone ?? isProcessGone;
  }

  /** How many processes are watched or wait for their report to go out. */
  get size(): number {
    return this.entries.size;
  }

  /** True when the process is watched already (or its report waits). */
  knows(process: WatchedProcess): boolean {
    return this.entries.has(keyOf(process));
  }

  /**
   * Watches a process (again: a known one keeps its state, and becomes reported if this one is); one that is
   * already gone is reported at once.
   */
  add(process: WatchedProcess, names: ProcessNames = {}, report = true): void {
    if (this.stopped) return;
    const key = keyOf(process);
    const known = this.entries.get(key);
    if (known !== undefined) {
      if (report && !known.report) {
        known.report = true;
        this.checkEntry(key, known);
      }
      return;
    }
    const entry: Entry = { process: { ticket: process.ticket, fence: process.fence, pid: process.pid }, names, report, gone: false };
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
      if (!this.isGone(entry.process.pid, entry.names.startTime, entry.names.bootId)) return;
      entry.gone = true;
      this.options.gone?.(entry.process);
    }
    if (!entry.report || this.options.report(entry.process)) this.entries.delete(key);
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

/** What `AbandonedProcesses` needs from the runner. */
export interface AbandonedProcessesOptions {
  /** How often to look at the watched processes. */
  pollMs: number;
  /** Sends `abandoned_exit`; false when it cannot go now. */
  report(process: WatchedProcess): boolean;
  /** The runner's run folders: a run's folder stays while a process of it is watched, and its record finds its processes. */
  runs: RunFolders;
  cgroups: CgroupTree | undefined;
  /** UNSAFE: kills are refused (and said so). */
  disableKill: boolean;
  logger: Logger;
}

/**
 * The runner's abandoned processes: watched (each keeps its run's folder until it is gone) and reported, and killed
 * when an abandon asked for that while no runner was connected (by pid and start time, its process group, and by the
 * marker and cgroup of its run where this runner has the run's record).
 */
export class AbandonedProcesses {
  private readonly watch: AbandonedWatch;

  constructor(private readonly options: AbandonedProcessesOptions) {
    this.watch = new AbandonedWatch({ pollMs: options.pollMs, report: options.report, gone: (process) => this.gone(process) });
  }

  /** Watches a process of a dispatch (reported when gone unless `report` is false); its run's folder stays meanwhile. */
  add(process: WatchedProcess, names: ProcessNames, report = true): void {
    const run = this.options.runs.find(process.ticket, process.fence);
    // Held first: a process that is gone already lets go at once.
    if (run !== undefined) this.options.runs.hold(run, `watch:${process.pid}`);
    this.watch.add(process, names, report);
  }

  /**
   * A welcome's watch list: kills what it asks to, lets a script's wrapper this runner did not know go (it would wait
   * for a runner forever once its script ended), watches every entry, and sends the reports still due.
   */
  welcome(entries: ReadonlyArray<WatchedProcess & ProcessNames & { kill?: boolean | undefined }>): void {
    for (const entry of entries) {
      const process = { ticket: entry.ticket, fence: entry.fence, pid: entry.pid };
      if (entry.kill === true) this.kill(entry);
      else if (!this.watch.knows(process) && !isProcessGone(entry.pid, entry.startTime, entry.bootId)) {
        letWrapperGoByPid(entry.pid, entry.startTime);
      }
      this.add(process, { startTime: entry.startTime, bootId: entry.bootId });
    }
    this.watch.flush();
  }

  /** Stops watching (the runner stopped). */
  stop(): void {
    this.watch.stop();
  }

  private kill(entry: WatchedProcess & ProcessNames): void {
    const { logger } = this.options;
    const name = `${entry.ticket} (fence ${entry.fence})`;
    if (this.options.disableKill) {
      logger.warn(`Not killing the abandoned process ${entry.pid} of ${name}: process kill is disabled on this runner (UNSAFE).`);
      return;
    }
    logger.info(`Killing the abandoned process ${entry.pid} of ${name}, as its abandon asked while no runner was connected.`);
    const record = this.options.runs.find(entry.ticket, entry.fence)?.record;
    const run = record === undefined ? undefined : { marker: record.marker, cgroup: cgroupAt(record.cgroup, this.options.cgroups) };
    killAbandoned(entry, run).catch((error: unknown) => logger.error(`Could not kill the processes of ${name}: ${describe(error)}`));
  }

  private gone(process: WatchedProcess): void {
    this.options.logger.info(`The abandoned process ${process.pid} of ${process.ticket} (fence ${process.fence}) is gone.`);
    const run = this.options.runs.find(process.ticket, process.fence);
    if (run !== undefined) this.options.runs.let(run, `watch:${process.pid}`);
    this.options.cgroups?.tidy();
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
