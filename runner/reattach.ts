/**
 * Re-attaching: a new runner process takes over a script that an earlier one started under a wrapper (wrapper.ts)
 * and that is still running, or that ended while no runner was there. What it needs is in the run folder: the record
 * names the wrapper (pid and start time) and its files, the output log holds every event the old runner read (so the
 * lines get the same numbers again) and how far it read each stream, the spool files hold everything from there on
 * (the old runner may have read more than it logged: that is read again), and the exit status file the script's
 * end. Not being the wrapper's parent, the new runner learns of the end by looking: the exit status file appears, or
 * the wrapper is gone (killed, so without a status: the result is unknown). See `findReattachable` for when a run can
 * be re-attached to; any other run follows the floor rule (predecessor.ts).
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { Outcome } from "../shared/protocol.js";
import { ProcessTree, cgroupAt, isLiveStat, isProcessGone, readProcessStat, type CgroupTree, type ContainmentOptions } from "./containment.js";
import { OutputLog, loggedPositions, type LoggedOutput } from "./output-log.js";
import { ScriptProcess, letSpoolGo, openSpool, type LetGo, type OutputHandler, type ScriptIO, type StreamName } from "./process-manager.js";
import type { Run, RunRecord } from "./run-folder.js";
import type { SpoolTail } from "./spool-tail.js";
import { letWrapperGo, readExitFile, releaseGate, wrapperPaths, type WrapperPaths } from "./wrapper.js";

/**
 * The outcome a re-attached script's end reports when its wrapper went without writing the exit status (it was
 * killed): nothing is known of the script's own end. The script's state machine stops what is left and reports `lost`.
 */
export const UNKNOWN_END: Outcome = { kind: "lost", signals: [], survivors: [] };

/** Defaults: how often a re-attached script's wrapper and exit status file are looked at. */
export const REATTACH_DEFAULTS = { pollMs: 100 } as const;

/** A run that can be re-attached to, with what was found of it. */
export interface ReattachableRun {
  paths: WrapperPaths;
  /** The output log, read: the lines are rebuilt from it. */
  logged: LoggedOutput;
  /** The wrapper: the script's parent, and the leader of its process group. */
  wrapper: { pid: number; startTime: number | undefined };
  /** The process group may be signalled by the wrapper's id (no other process holds that pid now). */
  group: boolean;
  /** The name of the log in the run folder. */
  logName: string;
}

/**
 * Whether a predecessor's run (its owner gone, same boot) can be re-attached to: its record names a wrapper and its
 * files, the output log reads back, its control FIFOs are there while a stream is still open, and the wrapper still
 * runs or the script's end is known (an exit status file, or an outcome in the log). Otherwise a sentence says why not.
 */
export function findReattachable(run: Run, record: RunRecord): ReattachableRun | string {
  const files = record.reattach;
  if (files === undefined) return "it does not run in a wrapper";
  if (files.spool === undefined) return "its wrapper, started by an earlier version, keeps no spool files";
  if (record.abandoned === true || record.exit !== undefined) return "it has ended";
  if (record.process === undefined) return "its record names no wrapper process";
  const logged = OutputLog.read(run.dir, files.log);
  if (typeof logged === "string") return `its output log cannot be read: ${logged}`;
  const paths = wrapperPaths(run.dir, join(run.dir, files.io));
  paths.exit = join(run.dir, files.exit);
  const { pid, startTime } = record.process;
  const stat = readProcessStat(pid);
  const alive = isLiveStat(stat) && (startTime === undefined || stat.startTime === startTime);
  const ended = logged.events.some((event) => event.type === "outcome") || readExitFile(paths.exit) !== undefined;
  if (!alive && !ended) return "its wrapper is gone without leaving the script's exit status";
  const open = (["stdout", "stderr"] as const).filter((stream) => !endedInLog(logged, stream));
  for (const stream of open) {
    const control = stream === "stdout" ? paths.stdoutControl : paths.stderrControl;
    if (!isFifo(control)) return `its FIFO ${control} is missing`;
  }
  return { paths, logged, wrapper: { pid, startTime }, group: alive || !isLiveStat(stat), logName: files.log };
}

/** The process of a re-attached script, read and watched as if this runner had started it. */
export function reattachedProcess(
  found: ReattachableRun,
  record: RunRecord,
  onOutput: OutputHandler,
  options: { pipeDrainMs: number; disableKill: boolean; pollMs: number; cgroups: CgroupTree | undefined; containment?: ContainmentOptions },
): ScriptProcess {
  const cgroup = cgroupAt(record.cgroup, options.cgroups);
  const tree = new ProcessTree({
    leaderPid: found.group ? found.wrapper.pid : undefined,
    marker: record.marker,
    disableKill: options.disableKill,
    ...(cgroup === undefined ? {} : { cgroup }),
    ...(options.containment === undefined ? {} : { options: options.containment }),
  });
  const skip = { stdout: endedInLog(found.logged, "stdout"), stderr: endedInLog(found.logged, "stderr") };
  const io = new ReattachedIO(found, skip, options.pollMs);
  return new ScriptProcess(io, found.wrapper.pid, tree, onOutput, options, found.wrapper.startTime);
}

/** A re-attached script: its spool read on from where its log ends, its end seen in the exit status file or in its wrapper's going. */
class ReattachedIO implements ScriptIO {
  private tails: SpoolTail[] = [];
  private timer: NodeJS.Timeout | undefined;
  private ended: ((outcome: Outcome) => void) | undefined;

  constructor(
    private readonly found: ReattachableRun,
    /** Streams whose end the log holds already: not opened. */
    private readonly skip: Record<StreamName, boolean>,
    private readonly pollMs: number,
  ) {}

  open(): Array<{ name: StreamName; stream: Readable | undefined }> {
    const logged = loggedPositions(this.found.logged);
    const from = { stdout: this.skip.stdout ? undefined : logged.stdout, stderr: this.skip.stderr ? undefined : logged.stderr };
    const opened = openSpool(this.found.paths, from);
    this.tails = opened.flatMap(({ stream }) => (stream === undefined ? [] : [stream]));
    return opened;
  }

  watch(ended: (outcome: Outcome) => void): void {
    this.ended = ended;
    this.look();
    // Still running: looked at again and again until its end.
    if (this.ended !== undefined) {
      this.timer = setInterval(() => this.look(), this.pollMs);
      this.timer.unref();
    }
  }

  hasEnded(): boolean {
    return readExitFile(this.found.paths.exit) !== undefined;
  }

  async settle(): Promise<void> {
    if (!releaseGate(this.found.paths.gate)) return;
    // Not its parent: it is looked at until it is gone (it exits at once), for a while at most.
    for (let look = 0; look < 50 && !isProcessGone(this.found.wrapper.pid, this.found.wrapper.startTime); look++) {
      await new Promise((resolve) => setTimeout(resolve, this.pollMs).unref());
    }
  }

  stop(how: LetGo): void {
    this.stopLooking();
    letSpoolGo(this.tails, this.found.paths, how);
  }

  /** The script's end: its exit status file; or the wrapper gone without one (looked at again: it may have just been written). */
  private look(): void {
    const status = readExitFile(this.found.paths.exit);
    if (status !== undefined) return this.end({ kind: "exited", code: status });
    if (!isProcessGone(this.found.wrapper.pid, this.found.wrapper.startTime)) return;
    const late = readExitFile(this.found.paths.exit);
    this.end(late === undefined ? UNKNOWN_END : { kind: "exited", code: late });
  }

  private end(outcome: Outcome): void {
    const ended = this.ended;
    this.stopLooking();
    ended?.(outcome);
  }

  private stopLooking(): void {
    this.ended = undefined;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/**
 * Lets a wrapper that nobody will re-attach to go (an abandoned run a new runner found): its copiers read on into
 * nothing, and it may exit once its script has ended. Best effort.
 */
export function letRunGo(run: Run, record: RunRecord): void {
  const files = record.reattach;
  if (files === undefined) return;
  letWrapperGo(wrapperPaths(run.dir, join(run.dir, files.io)));
}

/** True when the log holds the end of `stream`. */
function endedInLog(logged: LoggedOutput, stream: StreamName): boolean {
  return logged.checkpoint.ended[stream] || logged.events.some((event) => event.type === "end" && event.stream === stream);
}

function isFifo(path: string): boolean {
  try {
    return statSync(path).isFIFO();
  } catch {
    return false;
  }
}
