/**
 * What earlier runner processes left in the work dir. A runner that starts reads every run folder's record. A run
 * whose script runs under a wrapper that still lives, or whose end its wrapper recorded, is re-attached to
 * (reattach.ts). For any other, it looks for the run's processes, by pid and start time, process group, cgroup and
 * marker (one sweep of /proc for all of them): a run none of whose processes lives (another boot, or nothing found) is
 * removed at once; one the control plane abandoned is only watched (its processes were let go on purpose), so that its
 * folder goes once they are gone; any other is an orphan: this runner cannot re-attach to it (the floor rule), lists it
 * in its `hello`, and the control plane decides: `continue` (the script still counts as running there) has it stopped
 * as a cancel would and reported lost, `cancel` and `forget` have it stopped and dropped (see script-state.ts).
 * A run whose owner (a runner process, by pid and start time) still lives is another runner's, and is left alone.
 *
 * Wrappers of this work dir that no record names (the run folder or the whole work dir was removed, or its record
 * cannot be read) are found by their command line (`strayWrappers`) and stopped before the runner says hello.
 */
import { readlinkSync } from "node:fs";
import { basename, dirname } from "node:path";
import {
  ProcessTree,
  allPids,
  cgroupAt,
  currentBootId,
  isLiveStat,
  isProcessGone,
  ownStartTime,
  processMarker,
  readCommandLine,
  readProcessStat,
  sweepLive,
  type CgroupTree,
  type ContainmentOptions,
  type ProcessIdentity,
  type ScriptCgroup,
} from "./containment.js";
import type { TreeKill } from "./process-manager.js";
import { findReattachable, type ReattachableRun } from "./reattach.js";
import { SLOTS_FOLDER, type Run, type RunFolders, type RunOwner, type RunRecord } from "./run-folder.js";
import { parseWrapperCommandLine, wasLetGo } from "./wrapper.js";

/** Runner processes of this process that have not stopped, by runner id (several may run in one process). */
const liveRunners = new Set<string>();

/** Counts a runner of this process as alive: its runs are not a predecessor's. */
export function registerLiveRunner(runnerId: string): void {
  liveRunners.add(runnerId);
}

/** Counts a runner of this process as stopped: a later runner treats its runs as a predecessor's. */
export function unregisterLiveRunner(runnerId: string): void {
  liveRunners.delete(runnerId);
}

/** The owner this runner writes into its records. */
export function ownerFor(runnerId: string): RunOwner {
  return { runnerId, pid: process.pid, startTime: ownStartTime() };
}

/** True while the runner that owns a run still runs. */
function ownerAlive(owner: RunOwner): boolean {
  if (owner.pid === process.pid && owner.startTime === ownStartTime()) return liveRunners.has(owner.runnerId);
  return !isProcessGone(owner.pid, owner.startTime);
}

/** A predecessor's run whose processes still live (or, re-attachable, whose end was recorded). */
export type InheritedRun =
  | {
      run: Run;
      record: RunRecord;
      /** `orphan`: the control plane decides what becomes of it; `leftover`: abandoned, only watched until gone. */
      kind: "orphan" | "leftover";
      /** Its processes: stopped (an orphan), killed when asked, released. */
      handle: OrphanRun;
    }
  | {
      run: Run;
      record: RunRecord;
      /** Its script runs under a wrapper this runner re-attaches to. */
      kind: "reattach";
      found: ReattachableRun;
    };

/** What `inheritRuns` found: the runs, and the markers every readable record names (a wrapper of another marker is a stray). */
export interface Inheritance {
  inherited: InheritedRun[];
  markers: Set<string>;
}

/** How inherited runs are looked at and stopped. */
export interface InheritOptions {
  cgroups: CgroupTree | undefined;
  disableKill: boolean;
  containment?: ContainmentOptions;
  /** Hears why a run whose record names a wrapper cannot be re-attached to (it follows the floor rule). */
  onNotReattachable?: (run: Run, record: RunRecord, reason: string) => void;
}

/**
 * Adopts the run folders earlier runner processes left: removes those with no live process and returns the others
 * (each held by `runs` until let go). Runs of a live runner are not touched, but their markers are listed.
 */
export function inheritRuns(runs: RunFolders, options: InheritOptions): Inheritance {
  const markers = new Set<string>();
  const found = runs.adoptLeftovers((record) => {
    if (record !== undefined) markers.add(record.marker);
    return record === undefined || !ownerAlive(record.owner);
  });
  const bootId = currentBootId();
  const inherited: InheritedRun[] = [];
  const candidates: Array<{ run: Run; record: RunRecord; cgroup: ScriptCgroup | undefined; leaderAlive: boolean; group: boolean; inCgroup: boolean }> = [];
  for (const { run, record } of found) {
    if (record === undefined || (record.bootId !== undefined && bootId !== undefined && record.bootId !== bootId)) {
      runs.let(run, "found");
      continue;
    }
    if (record.reattach !== undefined && record.abandoned !== true && record.exit === undefined) {
      const reattachable = findReattachable(run, record);
      if (typeof reattachable !== "string") {
        inherited.push({ run, record, kind: "reattach", found: reattachable });
        continue;
      }
      options.onNotReattachable?.(run, record, reattachable);
    }
    const pid = record.process?.pid;
    const stat = pid === undefined ? undefined : readProcessStat(pid);
    const leaderAlive = isLiveStat(stat) && (record.process?.startTime === undefined || stat.startTime === record.process.startTime);
    // The group's id stays taken while any member lives: unless another process holds the pid now, a group of
    // that id is the script's.
    const group = pid !== undefined && (leaderAlive || !isLiveStat(stat));
    const cgroup = cgroupAt(record.cgroup, options.cgroups);
    candidates.push({ run, record, cgroup, leaderAlive, group, inCgroup: (cgroup?.pids().length ?? 0) > 0 });
  }
  // Only runs not found alive already need the sweep.
  const undecided = candidates.filter((candidate) => !candidate.leaderAlive && !candidate.inCgroup);
  const live = sweepLive(
    new Set(undecided.map((candidate) => candidate.record.marker)),
    new Set(undecided.filter((candidate) => candidate.group).map((candidate) => candidate.record.process!.pid)),
  );
  for (const { run, record, cgroup, leaderAlive, group, inCgroup } of candidates) {
    const pid = record.process?.pid;
    const alive =
      leaderAlive ||
      inCgroup ||
      live.markers.has(record.marker) ||
      (group && pid !== undefined && live.groups.has(pid));
    if (!alive) {
      cgroup?.release();
      runs.let(run, "found");
      continue;
    }
    const tree = new ProcessTree({
      leaderPid: group ? pid : undefined,
      marker: record.marker,
      disableKill: options.disableKill,
      ...(cgroup === undefined ? {} : { cgroup }),
      ...(options.containment === undefined ? {} : { options: options.containment }),
    });
    const handle = new OrphanRun(tree, record.process?.pid, record.process?.startTime, group, options.disableKill);
    const kind = record.abandoned === true ? "leftover" : "orphan";
    inherited.push({ run, record, kind, handle });
  }
  return { inherited, markers };
}

/** A wrapper of this work dir that no record names. */
export interface StrayWrapper {
  pid: number;
  startTime: number;
  marker: string | undefined;
  /**
   * A warm shell that never got a script: its copiers still work in a slot folder (a claim renames the slot into a
   * run folder before it sends the script). It reads EOF and exits once its runner is gone; stopping it stops nothing
   * of a script.
   */
  waiting: boolean;
}

/**
 * The wrappers of `workDir` whose runner process is gone and whose marker no record names (`markers`): their run
 * folder, or the whole work dir, was removed, or their record cannot be read. Nobody can report on them; the floor
 * rule has them stopped before this runner says hello, so that no script of theirs runs beside a later one unseen.
 */
export function strayWrappers(workDir: string, markers: ReadonlySet<string>): StrayWrapper[] {
  const leaders: Array<{ pid: number; startTime: number }> = [];
  /** A copier of each wrapper, by the wrapper's pid (its process group). */
  const copiers = new Map<number, number>();
  for (const pid of allPids()) {
    const argv = readCommandLine(pid);
    const wrapper = argv === undefined ? undefined : parseWrapperCommandLine(argv);
    if (wrapper === undefined || wrapper.workDir !== workDir) continue;
    const owner = wrapper.runner;
    if (owner.pid === process.pid ? owner.startTime === ownStartTime() : !isProcessGone(owner.pid, owner.startTime)) continue;
    const stat = readProcessStat(pid);
    if (!isLiveStat(stat)) continue;
    // A wrapper leads its process group; its copiers, forks with the same command line, do not.
    if (stat.pgrp === pid) leaders.push({ pid, startTime: stat.startTime });
    else copiers.set(stat.pgrp, pid);
  }
  const strays: StrayWrapper[] = [];
  for (const { pid, startTime } of leaders) {
    const marker = processMarker(pid);
    if (marker !== undefined && markers.has(marker)) continue;
    // An abandoned script's wrapper was let go on purpose: it is left alone, as its record would have had it.
    if (wasLetGo(pid)) continue;
    const copier = copiers.get(pid);
    strays.push({ pid, startTime, marker, waiting: copier !== undefined && worksInSlot(copier) });
  }
  return strays;
}

/** Whether a copier's working folder (its wrapper's FIFOs) is a slot: the folder, removed or not, is in `slots`. */
function worksInSlot(copier: number): boolean {
  try {
    const folder = readlinkSync(`/proc/${copier}/cwd`).replace(/ \(deleted\)$/, "");
    return basename(dirname(folder)) === SLOTS_FOLDER;
  } catch {
    return false;
  }
}

/** Stops a stray wrapper's tree as a cancel would (its process group, and its marker's processes); resolves with what survived. */
export async function stopStray(stray: StrayWrapper, options: InheritOptions, graceMs: number): Promise<TreeKill> {
  const tree = new ProcessTree({
    leaderPid: stray.pid,
    marker: stray.marker ?? "0".repeat(32),
    disableKill: options.disableKill,
    ...(options.containment === undefined ? {} : { options: options.containment }),
  });
  const result = await tree.stop({ graceMs, includeGroup: true });
  return { signals: result.signals, escaped: result.escaped, survivors: result.survivors, aborted: result.aborted };
}

/**
 * The processes of a predecessor's run, without pipes or an exit status of ours: they can be stopped (as a cancel
 * would), killed at once, or let go. Shaped like a `ScriptProcess` where the runner treats both alike.
 */
export class OrphanRun {
  private readonly releasing = new AbortController();
  private killing: Promise<TreeKill> | undefined;

  constructor(
    private readonly tree: ProcessTree,
    /** The script's shell, when the record names it (the runner died before writing it otherwise). */
    readonly pid: number | undefined,
    readonly startTime: number | undefined,
    /** Its process group may be signalled by its id (see `inheritRuns`). */
    private readonly includeGroup: boolean,
    private readonly disableKill: boolean,
  ) {}

  /** The run's live processes now. */
  live(): Promise<ProcessIdentity[]> {
    return this.tree.live(this.includeGroup);
  }

  /** SIGTERM to every process of the run, SIGKILL after `graceMs` (runs once); with kill disabled, only lists them. */
  killTree(graceMs: number): Promise<TreeKill> {
    this.killing ??= this.stop(graceMs);
    return this.killing;
  }

  /** Best-effort SIGKILL of every process of the run, without waiting. */
  killNow(): string[] {
    if (this.disableKill) return [];
    this.tree.killNow(this.includeGroup).catch(() => undefined);
    return ["SIGKILL"];
  }

  /** Ends a stop in progress: no more signals. */
  release(): void {
    this.releasing.abort();
  }

  private async stop(graceMs: number): Promise<TreeKill> {
    if (this.disableKill) return { signals: [], escaped: 0, survivors: await this.live(), aborted: false };
    const result = await this.tree.stop({ graceMs, includeGroup: this.includeGroup, abort: this.releasing.signal });
    // Its cgroup goes now, or once the survivors are gone.
    this.tree.dispose();
    return { signals: result.signals, escaped: result.escaped, survivors: result.survivors, aborted: result.aborted };
  }
}
