/**
 * Containment: finding and killing every process of one script, including the ones that left its process
 * group (`setsid`, double forks, daemons). Cancel kills the process tree here. Three nets, used together:
 *
 * - the process group the script's shell leads (`process.kill(-pgid)` reaches every member at once);
 * - a per-dispatch marker, `TENDRIL_SCRIPT_MARKER=<128-bit hex>`, in the environment of every process the script
 *   starts: a sweep of `/proc/<pid>/environ` finds the processes that left the group but kept the environment;
 * - a per-script cgroup v2, where the machine lets the runner create one: it catches even a process that cleared
 *   its environment and left the group (`cgroup.kill` reaches every member at once).
 *
 * A stop is done only when none of the three finds a live process (a zombie counts as gone: it holds no
 * resources and cannot be killed any further). Everything here is Linux-only, like the rest of the runner.
 */
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, rmdirSync, statSync, writeFileSync } from "node:fs";
import { mkdir, rmdir } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative } from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";

/** The environment variable that marks every process of one script. */
export const SCRIPT_MARKER_VARIABLE = "TENDRIL_SCRIPT_MARKER";

/** Timings of a stop; `CONTAINMENT_DEFAULTS` holds the values the runner uses. */
export interface ContainmentOptions {
  /** While waiting for the tree to die, how often to look at the processes it had. */
  pollMs: number;
  /** After each SIGKILL round, how long to wait for the tree to vanish before signalling again. */
  killRoundMs: number;
  /** SIGKILL rounds before giving up (a process in uninterruptible sleep cannot die at once). */
  killRounds: number;
}

/** The timings the runner uses. */
export const CONTAINMENT_DEFAULTS: ContainmentOptions = { pollMs: 50, killRoundMs: 1_000, killRounds: 5 };

/** A fresh marker for one dispatch: 128 random bits as 32 lowercase hex digits. */
export function newScriptMarker(): string {
  return randomBytes(16).toString("hex");
}

const NUL = 0;

/** True when a raw `/proc/<pid>/environ` (NUL-separated `name=value` entries) holds exactly `entry`. */
export function environHasEntry(environ: Buffer, entry: Buffer): boolean {
  let start = 0;
  while (start < environ.length) {
    let end = environ.indexOf(NUL, start);
    if (end === -1) end = environ.length;
    if (end - start === entry.length && environ.compare(entry, 0, entry.length, start, end) === 0) return true;
    start = end + 1;
  }
  return false;
}

/** What `/proc/<pid>/stat` says about a process. */
export interface ProcessStat {
  /** One letter: R, S, D, Z (zombie), X (dead), T, ... */
  state: string;
  /** The process group id. */
  pgrp: number;
  /** Clock ticks after boot when the process started; with the pid it names one process for good. */
  startTime: number;
}

/** Reads `/proc/<pid>/stat`; undefined when there is no such process. */
export function readProcessStat(pid: number): ProcessStat | undefined {
  const bytes = readProcFile(`/proc/${pid}/stat`);
  return bytes === undefined ? undefined : parseProcessStat(bytes.toString("utf8"));
}

/** Shared by every /proc read: the files are small and read synchronously, one at a time. */
const scratch = Buffer.alloc(64 * 1024);

/**
 * Reads a whole /proc file; undefined when it cannot be read (gone, or not ours). Plain open/read/close:
 * `readFile` costs several times as much per file, and a sweep reads two files of every process.
 */
function readProcFile(path: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return undefined;
  }
  try {
    // A larger file (a huge environment) gets a buffer of its own, so the shared one stays small.
    let buffer = scratch;
    let length = 0;
    for (;;) {
      if (length === buffer.length) {
        const bigger = Buffer.alloc(buffer.length * 2);
        buffer.copy(bigger);
        buffer = bigger;
      }
      const read = readSync(fd, buffer, length, buffer.length - length, null);
      if (read === 0) break;
      length += read;
    }
    return Buffer.from(buffer.subarray(0, length));
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** A process's parent (field 4 of `/proc/<pid>/stat`); undefined when there is no such process. */
export function readParentPid(pid: number): number | undefined {
  const fields = statFields(readProcFile(`/proc/${pid}/stat`)?.toString("utf8") ?? "");
  const parent = Number(fields?.[1]);
  return Number.isInteger(parent) ? parent : undefined;
}

/** Parses the text of `/proc/<pid>/stat`; undefined when it is not one. */
export function parseProcessStat(text: string): ProcessStat | undefined {
  const fields = statFields(text);
  if (fields === undefined) return undefined;
  const state = fields[0];
  const pgrp = Number(fields[2]);
  const startTime = Number(fields[19]);
  if (state === undefined || state === "" || !Number.isInteger(pgrp) || !Number.isFinite(startTime)) return undefined;
  return { state, pgrp, startTime };
}

/** The fields of a `/proc/<pid>/stat` text from the third (the state) on; undefined when it is not one. */
function statFields(text: string): string[] | undefined {
  // The command name sits in parentheses and may itself contain spaces and parentheses: split after the last one.
  const close = text.lastIndexOf(")");
  return close === -1 ? undefined : text.slice(close + 2).split(" ");
}

/** True when the stat names a process that still runs (not a zombie, not dead). */
export function isLiveStat(stat: ProcessStat | undefined): stat is ProcessStat {
  return stat !== undefined && stat.state !== "Z" && stat.state !== "X";
}

/**
 * True when `pid` no longer names the process meant: gone, a zombie, (given `startTime`) reused since, or (given
 * `bootId`) of another boot than this one.
 */
export function isProcessGone(pid: number, startTime?: number, bootId?: string): boolean {
  if (bootId !== undefined && currentBootId() !== undefined && bootId !== currentBootId()) return true;
  const stat = readProcessStat(pid);
  if (!isLiveStat(stat)) return true;
  return startTime !== undefined && stat.startTime !== startTime;
}

/** One process, named for good by its pid and start time (clock ticks after boot). */
export interface ProcessIdentity {
  pid: number;
  startTime: number;
}

let bootId: string | null | undefined;

/** This boot's id (`/proc/sys/kernel/random/boot_id`), read once; undefined where there is none. */
export function currentBootId(): string | undefined {
  if (bootId === undefined) {
    try {
      bootId = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim() || null;
    } catch {
      bootId = null;
    }
  }
  return bootId ?? undefined;
}

let startTimeOfThisProcess: number | undefined;

/** This process's own start time (clock ticks after boot), read once; with its pid it names this runner process for good. */
export function ownStartTime(): number {
  startTimeOfThisProcess ??= readProcessStat(process.pid)?.startTime ?? 0;
  return startTimeOfThisProcess;
}

/**
 * Best-effort SIGKILL of a process known by pid and start time, and of its process group: the process only when the
 * pid still names it; the group too when no other process holds the pid now (a group's id stays taken while any
 * member lives, so the group of that id is still its group).
 */
export function killProcessAndGroup(pid: number, startTime: number | undefined): void {
  const stat = readProcessStat(pid);
  const reused = isLiveStat(stat) && startTime !== undefined && stat.startTime !== startTime;
  if (reused) return;
  signalGroup(pid, "SIGKILL");
  if (isLiveStat(stat)) signalPid(pid, "SIGKILL");
}

/** The value of the first `name=` entry of a raw `/proc/<pid>/environ`; undefined when there is none. */
export function environValue(environ: Buffer, name: string): string | undefined {
  const prefix = Buffer.from(`${name}=`, "utf8");
  let start = 0;
  while (start < environ.length) {
    let end = environ.indexOf(NUL, start);
    if (end === -1) end = environ.length;
    if (end - start >= prefix.length && environ.compare(prefix, 0, prefix.length, start, start + prefix.length) === 0) {
      return environ.toString("utf8", start + prefix.length, end);
    }
    start = end + 1;
  }
  return undefined;
}

/**
 * One sweep of /proc for many scripts at once: which of `markers` some live process carries, and which process groups
 * of `groups` still have a live member. Synchronous: a runner does it once, when it starts.
 */
export function sweepLive(markers: ReadonlySet<string>, groups: ReadonlySet<number>): { markers: Set<string>; groups: Set<number> } {
  const found = { markers: new Set<string>(), groups: new Set<number>() };
  if (markers.size === 0 && groups.size === 0) return found;
  for (const pid of listPids()) {
    const stat = readProcessStat(pid);
    if (!isLiveStat(stat)) continue;
    if (groups.has(stat.pgrp)) found.groups.add(stat.pgrp);
    if (markers.size === 0) continue;
    const environ = readProcFile(`/proc/${pid}/environ`);
    const marker = environ === undefined ? undefined : environValue(environ, SCRIPT_MARKER_VARIABLE);
    if (marker !== undefined && markers.has(marker)) found.markers.add(marker);
  }
  return found;
}

function markerEntry(marker: string): Buffer {
  return Buffer.from(`${SCRIPT_MARKER_VARIABLE}=${marker}`, "utf8");
}

/** Every pid in /proc except the runner's own. */
export function allPids(): number[] {
  return listPids();
}

/** A process's command line (`/proc/<pid>/cmdline`, its arguments); undefined when it cannot be read. */
export function readCommandLine(pid: number): string[] | undefined {
  const bytes = readProcFile(`/proc/${pid}/cmdline`);
  if (bytes === undefined || bytes.length === 0) return undefined;
  const text = bytes.toString("utf8");
  return (text.endsWith("\0") ? text.slice(0, -1) : text).split("\0");
}

/** The value of `TENDRIL_SCRIPT_MARKER` in a process's environment; undefined when none (or not ours to read). */
export function processMarker(pid: number): string | undefined {
  const environ = readProcFile(`/proc/${pid}/environ`);
  return environ === undefined ? undefined : environValue(environ, SCRIPT_MARKER_VARIABLE);
}

function listPids(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid !== process.pid) pids.push(pid);
  }
  return pids;
}

function hasEnvironEntry(pid: number, entry: Buffer): boolean {
  // Unreadable: vanished meanwhile, or another user's process (which we could not signal either).
  const environ = readProcFile(`/proc/${pid}/environ`);
  return environ !== undefined && environHasEntry(environ, entry);
}

/** How many processes a sweep looks at before letting the event loop run (heartbeats, other scripts' output). */
const SWEEP_SLICE = 256;

// ---------------------------------------------------------------------------------------------------
// cgroup v2

/**
 * Where the runner's per-script cgroups go; `CgroupTree.detect` finds out whether there can be any. Under the base
 * folder (`.../tendril`), each runner process has a folder of its own, `r-<pid>-<start time>`, and its scripts'
 * cgroups go in there (`s-<marker>`): a later runner tells by the name whether the folder's owner still lives, and
 * prunes the empty cgroups of dead owners. A cgroup that still holds a process is never removed (the kernel refuses
 * anyway): it may be a script that a later runner takes over.
 */
export class CgroupTree {
  /** Script cgroups that still held processes when their script was done; removed once they are empty. */
  private readonly lingering = new Set<string>();
  /** Script cgroups this tree made and has not removed yet. */
  private readonly created = new Set<string>();
  private failure: string | undefined;
  /** Cgroups being made or removed in the thread pool: a runner that stops waits for them before it tidies up. */
  private readonly inFlight = new Set<Promise<unknown>>();
  /** While lingering cgroups are tried again after a release, and how many more times. */
  private retrying: NodeJS.Timeout | undefined;
  private retriesLeft = 0;
  /** This runner process's folder under the base, made at its first script. */
  readonly own: string;

  private constructor(
    /** The folder the runners' folders are created in (a cgroup itself). */
    readonly base: string,
    private readonly onFailure: (reason: string) => void,
  ) {
    this.own = join(base, runnerFolderName(process.pid, ownStartTime()));
  }

  /**
   * Finds a writable cgroup v2 folder for script cgroups: a `tendril` child of the runner's own cgroup, else a
   * `tendril` folder at the top of the hierarchy, and prunes what dead runners left there. Returns the reason
   * instead when there is none. `onFailure` hears, once, why placing a script in a cgroup failed later (every
   * later script then goes without one).
   */
  static detect(onFailure: (reason: string) => void, paths: CgroupPaths = SYSTEM_CGROUP_PATHS): CgroupTree | string {
    let mount: { mountPoint: string; root: string } | undefined;
    let own: string | undefined;
    try {
      mount = findCgroup2Mount(readFileSync(paths.mountinfo, "utf8"));
      own = ownCgroupPath(readFileSync(paths.selfCgroup, "utf8"));
    } catch (error) {
      return `cannot read the process's cgroup (${describe(error)})`;
    }
    if (mount === undefined) return "no cgroup v2 hierarchy is mounted";
    if (!existsSync(join(mount.mountPoint, "cgroup.controllers"))) return `${mount.mountPoint} is not a cgroup v2 hierarchy`;
    const candidates: string[] = [];
    if (own !== undefined) {
      const inside = relative(mount.root, own);
      if (!inside.startsWith("..") && !isAbsolute(inside)) candidates.push(join(mount.mountPoint, inside, "tendril"));
    }
    candidates.push(join(mount.mountPoint, "tendril"));
    const problems: string[] = [];
    for (const base of [...new Set(candidates)]) {
      try {
        mkdirSync(base, { recursive: true });
        // A real cgroup folder gets its interface files from the kernel; a plain folder does not.
        if (!existsSync(join(base, "cgroup.procs"))) throw new Error(`${base} is not a cgroup`);
        const tree = new CgroupTree(base, onFailure);
        tree.prune();
        return tree;
      } catch (error) {
        problems.push(`${base}: ${describe(error)}`);
      }
    }
    return `cannot create a cgroup for scripts (${problems.join("; ")})`;
  }

  /**
   * Creates the cgroup `name` for a script (or a warm shell), in this runner's folder; undefined (reported once) when
   * that fails. In the thread pool: making one waits for the kernel's cgroup lock, which a process being moved into
   * another cgroup holds for milliseconds, and the event loop has scripts to start meanwhile.
   */
  async create(name: string): Promise<ScriptCgroup | undefined> {
    if (this.failure !== undefined) return undefined;
    this.tidy();
    const path = join(this.own, name);
    const making = (async () => {
      try {
        await mkdir(path);
      } catch (error) {
        // The runner's folder is made with its first script (and again should it have been removed since).
        if (errorCode(error) !== "ENOENT") throw error;
        await mkdir(this.own, { recursive: true });
        await mkdir(path);
      }
    })();
    try {
      await this.track(making);
      return this.made(path);
    } catch (error) {
      return this.notMade(path, error);
    }
  }

  /** Resolves (or rejects) as `operation` does; until then a stopping runner waits for it (`removeEmptySettled`). */
  private track<T>(operation: Promise<T>): Promise<T> {
    this.inFlight.add(operation);
    const settled = () => this.inFlight.delete(operation);
    operation.then(settled, settled);
    return operation;
  }

  private made(path: string): ScriptCgroup {
    this.created.add(path);
    return new ScriptCgroup(path, this);
  }

  private notMade(path: string, error: unknown): undefined {
    this.fail(`cannot create the cgroup ${path} (${describe(error)})`);
    return undefined;
  }

  /** A script cgroup named in a run's record (maybe another runner's); undefined when the path is not one of ours. */
  existing(path: string): ScriptCgroup | undefined {
    return isScriptCgroupPath(this.base, path) ? new ScriptCgroup(path, this) : undefined;
  }

  /**
   * Removes a script's cgroup now if it is empty, else once it is: tried again for a while (a wrapper's copiers leave
   * a moment after the wrapper, and the kernel may refuse a cgroup for a moment after its last process went), then at
   * the next `tidy`.
   */
  release(path: string): void {
    // In the thread pool: a cgroup's removal waits for the kernel's cgroup lock, which a process being moved into
    // another cgroup holds for milliseconds, and the event loop has scripts to start meanwhile.
    void this.track(
      rmdir(path).then(
        () => this.removed(path),
        (error: unknown) => (errorCode(error) === "ENOENT" ? this.removed(path) : this.linger(path)),
      ),
    );
  }

  private linger(path: string): void {
    this.lingering.add(path);
    this.retriesLeft = RELEASE_TRIES;
    if (this.retrying !== undefined) return;
    this.retrying = setInterval(() => {
      this.tidy();
      if (this.lingering.size > 0 && --this.retriesLeft > 0) return;
      clearInterval(this.retrying);
      this.retrying = undefined;
    }, RELEASE_RETRY_MS);
    this.retrying.unref();
  }

  /** Removes an empty script cgroup, and then its runner's folder if that is a dead runner's and now empty; false when it is not empty. */
  private remove(path: string): boolean {
    if (!tryRemove(path)) return false;
    this.removed(path);
    return true;
  }

  /** Forgets a removed script cgroup, and removes its runner's folder if that is a dead runner's and now empty. */
  private removed(path: string): void {
    this.created.delete(path);
    this.lingering.delete(path);
    const folder = dirname(path);
    if (folder !== this.own && dirname(folder) === this.base && isDeadRunnerFolder(basename(folder))) tryRemove(folder);
  }

  /** Stops using cgroups for later scripts, and says why once. */
  fail(reason: string): void {
    if (this.failure !== undefined) return;
    this.failure = reason;
    this.onFailure(reason);
  }

  /** Removes the script cgroups that have emptied since their script was done. */
  tidy(): void {
    for (const path of [...this.lingering]) this.remove(path);
  }

  /**
   * Removes every empty cgroup this tree made, then this runner's folder if it is empty (for a runner that stops);
   * cgroups that still hold processes stay for the next runner. Creating a cgroup later makes the folder again.
   */
  removeEmpty(): void {
    for (const path of [...this.created, ...this.lingering]) this.remove(path);
    tryRemove(this.own);
  }

  /**
   * `removeEmpty`, tried again for a while (`tries` times, `delayMs` apart) while a cgroup it made holds no process
   * any more but is still there: the kernel may refuse to remove a cgroup (EBUSY) for a moment after its last process
   * was killed and reaped. A cgroup that holds a process stays at once.
   */
  async removeEmptySettled(tries = 25, delayMs = 20): Promise<void> {
    // A cgroup still being made would be missed, and one being removed may be tried again here.
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    for (let attempt = 0; ; attempt += 1) {
      this.removeEmpty();
      const left = [...this.created, ...this.lingering].filter((path) => existsSync(path) && new ScriptCgroup(path, undefined).pids().length === 0);
      if (left.length === 0 || attempt >= tries) return;
      await delay(delayMs);
    }
  }

  /**
   * Removes what dead runner processes left: the empty script cgroups in their folders, then the folders once
   * empty; and empty script cgroups of the older layout (directly under the base) that are more than a minute old
   * (a recent one may be an older runner's, just made).
   */
  prune(): void {
    const cutoff = Date.now() - 60_000;
    for (const entry of readdirSync(this.base, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      const path = join(this.base, entry.name);
      try {
        if (isDeadRunnerFolder(entry.name)) {
          for (const child of readdirSync(path, { withFileTypes: true })) {
            if (child.isDirectory() && child.name.startsWith("s-")) tryRemove(join(path, child.name));
          }
          tryRemove(path);
        } else if (entry.name.startsWith("s-") && statSync(path).mtimeMs < cutoff) {
          tryRemove(path);
        }
      } catch {
        // Removed by someone else meanwhile.
      }
    }
  }
}

/** The name of a runner process's folder of script cgroups. */
function runnerFolderName(pid: number, startTime: number): string {
  return `r-${pid}-${startTime}`;
}

/** True for a runner folder (`r-<pid>-<start time>`) whose runner process is gone. */
function isDeadRunnerFolder(name: string): boolean {
  const match = /^r-(\d+)-(\d+)$/.exec(name);
  if (match === null) return false;
  return isProcessGone(Number(match[1]), Number(match[2]));
}

/** A script cgroup's name: `s-<marker>`. */
const SCRIPT_CGROUP_NAME = /^s-[0-9a-f]{32}$/;

/** True when `path` is a script cgroup (`s-<marker>`) inside a runner folder of `base`, or of the older layout. */
function isScriptCgroupPath(base: string, path: string): boolean {
  if (!isAbsolute(path) || !SCRIPT_CGROUP_NAME.test(basename(path))) return false;
  const parent = dirname(path);
  return parent === base || (dirname(parent) === base && /^r-\d+-\d+$/.test(basename(parent)));
}

/** Files that tell where the cgroup v2 hierarchy is and where this process sits in it. */
export interface CgroupPaths {
  /** `/proc/self/mountinfo`. */
  mountinfo: string;
  /** `/proc/self/cgroup`. */
  selfCgroup: string;
}

/** The real files. */
export const SYSTEM_CGROUP_PATHS: CgroupPaths = { mountinfo: "/proc/self/mountinfo", selfCgroup: "/proc/self/cgroup" };

/** The first cgroup2 mount in a mountinfo text (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid systems). */
export function findCgroup2Mount(mountinfo: string): { mountPoint: string; root: string } | undefined {
  for (const line of mountinfo.split("\n")) {
    // `id parent major:minor root mountPoint options [optional...] - fstype source superOptions`
    const [before, after] = line.split(" - ");
    if (before === undefined || after === undefined || after.split(" ")[0] !== "cgroup2") continue;
    const fields = before.split(" ");
    const root = fields[3];
    const mountPoint = fields[4];
    if (root !== undefined && mountPoint !== undefined) return { root: unescapeMountPath(root), mountPoint: unescapeMountPath(mountPoint) };
  }
  return undefined;
}

/** The cgroup v2 path (`0::/path`) in a `/proc/<pid>/cgroup` text. */
export function ownCgroupPath(text: string): string | undefined {
  const line = text.split("\n").find((candidate) => candidate.startsWith("0::"));
  return line === undefined ? undefined : line.slice(3);
}

/** mountinfo escapes space, tab, newline and backslash as octal (`\040`). */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

function tryRemove(path: string): boolean {
  try {
    rmdirSync(path);
    return true;
  } catch (error) {
    return errorCode(error) === "ENOENT";
  }
}

/** One script's cgroup. */
export class ScriptCgroup {
  constructor(
    /** The cgroup's folder. */
    readonly path: string,
    private readonly tree: CgroupTree | undefined,
  ) {}

  /** A script cgroup a record names, where this runner has no cgroup tree of its own: found, killed, removed alone. */
  static detached(path: string): ScriptCgroup | undefined {
    if (!isAbsolute(path) || !SCRIPT_CGROUP_NAME.test(basename(path))) return undefined;
    return new ScriptCgroup(path, undefined);
  }

  /** The file a pid is written to, to move that process in. */
  get procsFile(): string {
    return join(this.path, "cgroup.procs");
  }

  /**
   * True when `pid` is in this cgroup now (its `/proc/<pid>/cgroup` names it): reading that is microseconds, where a
   * write to `cgroup.procs` waits for the kernel to quiesce every CPU, milliseconds on a busy machine.
   */
  holds(pid: number): boolean {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/cgroup`, "utf8");
    } catch {
      return false;
    }
    // The name ends in the script's random marker: no other cgroup has it.
    return ownCgroupPath(text)?.endsWith(`/${basename(this.path)}`) === true;
  }

  /**
   * Moves `pid` into the cgroup (harmless when it moved itself in already, see `enterCgroupCommand`); on failure
   * the cgroup is given up, later scripts go without one, and the marker sweep is all that is left.
   */
  adopt(pid: number): boolean {
    try {
      writeFileSync(this.procsFile, `${pid}\n`);
      return true;
    } catch (error) {
      this.tree?.fail(`cannot move a script into the cgroup ${this.path} (${describe(error)})`);
      this.release();
      return false;
    }
  }

  /** The live pids in the cgroup (zombies are not listed by the kernel). */
  pids(): number[] {
    try {
      return readFileSync(join(this.path, "cgroup.procs"), "utf8")
        .split("\n")
        .filter((line) => line !== "")
        .map(Number)
        .filter((pid) => pid !== process.pid);
    } catch {
      return [];
    }
  }

  /** Resolves once the cgroup holds no live process, or after `timeoutMs`: a process SIGKILLed a moment ago is still listed. */
  async emptied(timeoutMs: number, pollMs = 10): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.pids().length > 0 && Date.now() < deadline) await delay(pollMs);
  }

  /** SIGKILLs every process in the cgroup at once (`cgroup.kill`, Linux 5.14+); false when the kernel lacks it. */
  killAll(): boolean {
    try {
      writeFileSync(join(this.path, "cgroup.kill"), "1");
      return true;
    } catch {
      return false;
    }
  }

  /** Removes the cgroup once it is empty (without a tree: now, if it is). */
  release(): void {
    if (this.tree === undefined) tryRemove(this.path);
    else this.tree.release(this.path);
  }
}

/** How often, and how many times, lingering cgroups are tried again after a release. */
const RELEASE_RETRY_MS = 20;
const RELEASE_TRIES = 50;

/** The shell that moves a process into a cgroup before it becomes the script's shell. */
const ENTER_CGROUP_SHELL = "/bin/sh";

/**
 * The command that first writes its own pid into `procsFile`, then execs `file` with `args` (same pid, same
 * process group). Writing the pid from the runner after the spawn races with the script's first fork: a child
 * forked before the move stays outside. Undefined when there is no `/bin/sh` to do it.
 */
export function enterCgroupCommand(procsFile: string, file: string, args: readonly string[]): { file: string; args: string[] } | undefined {
  if (!existsSync(ENTER_CGROUP_SHELL)) return undefined;
  // A failed write changes nothing: the runner moves the pid in as well, and notices a failure there.
  const script = '{ echo $$ > "$1"; } 2>/dev/null; shift; exec "$@"';
  return { file: ENTER_CGROUP_SHELL, args: ["-c", script, "tendril-enter-cgroup", procsFile, file, ...args] };
}

// ---------------------------------------------------------------------------------------------------
// one script's process tree

/** What a stop did. */
export interface StopResult {
  /** The signals sent, each named once, in order: none when no process of the tree was left to signal. */
  signals: NodeJS.Signals[];
  /** How many processes outside the process group (found by marker or cgroup) were signalled. */
  escaped: number;
  /**
   * Processes still alive at the end: they survived the last SIGKILL round, or (`aborted`) the stop was ended
   * before it was done with them. Empty when the whole tree is gone.
   */
  survivors: ProcessIdentity[];
  /** The stop was ended early (`StopRequest.abort`): the survivors were let go, not failed to die. */
  aborted: boolean;
}

/** Everything that identifies one script's processes. */
export interface ProcessTreeSettings {
  /** The script's shell: its pid is also the id of the process group. Unknown for a run whose record lacks it. */
  leaderPid: number | undefined;
  /** The value of `TENDRIL_SCRIPT_MARKER` in the script's environment. */
  marker: string;
  /** The script's cgroup, when it got one. */
  cgroup?: ScriptCgroup;
  /** UNSAFE: every kill becomes a no-op. */
  disableKill: boolean;
  /** Timings; default `CONTAINMENT_DEFAULTS`. */
  options?: ContainmentOptions;
}

/** How to stop a tree. */
export interface StopRequest {
  /** How long the tree gets to exit after SIGTERM before SIGKILL. */
  graceMs: number;
  /**
   * Also signal the process group by its id. Only while the leader has not been reaped: afterwards the id could,
   * one day, name somebody else's group; the marker and the cgroup still find the members.
   */
  includeGroup: boolean;
  /** Ends the stop early (no more signals); the result then lists what was sent so far. */
  abort?: AbortSignal;
  /** A process of the tree that is not to be signalled: a wrapper that waits for the runner after its script ended. */
  spare?: ProcessIdentity;
}

/** A live process of the tree, and whether it is in the process group. */
interface Member {
  pid: number;
  startTime: number;
  inGroup: boolean;
}

/** One script's process tree: finds its live processes and kills all of them. */
export class ProcessTree {
  private readonly options: ContainmentOptions;
  private readonly entry: Buffer;

  constructor(private readonly settings: ProcessTreeSettings) {
    this.options = settings.options ?? CONTAINMENT_DEFAULTS;
    this.entry = markerEntry(settings.marker);
  }

  /** The script's marker. */
  get marker(): string {
    return this.settings.marker;
  }

  /** Every live process of the tree now: in the process group (when asked), in the cgroup, or carrying the marker. */
  async live(includeGroup: boolean): Promise<ProcessIdentity[]> {
    return (await this.members(includeGroup)).map(({ pid, startTime }) => ({ pid, startTime }));
  }

  /** Every live process of the tree: in the process group (when asked), in the cgroup, or carrying the marker; never `spare`. */
  private async members(includeGroup: boolean, spare?: ProcessIdentity): Promise<Member[]> {
    const inCgroup = new Set(this.settings.cgroup?.pids() ?? []);
    const found: Member[] = [];
    const pids = listPids();
    for (let index = 0; index < pids.length; index++) {
      if (index > 0 && index % SWEEP_SLICE === 0) await yieldToEventLoop();
      const pid = pids[index]!;
      const stat = readProcessStat(pid);
      if (!isLiveStat(stat) || (spare !== undefined && spare.pid === pid && spare.startTime === stat.startTime)) continue;
      const inGroup = includeGroup && this.settings.leaderPid !== undefined && stat.pgrp === this.settings.leaderPid;
      if (inGroup || inCgroup.has(pid) || hasEnvironEntry(pid, this.entry)) found.push({ pid, startTime: stat.startTime, inGroup });
    }
    return found;
  }

  /**
   * SIGTERM to every process of the tree; SIGKILL to whatever is left after `graceMs`, repeated (up to
   * `killRounds` times) until none is left. A process that turns up while waiting (forked meanwhile, or missed
   * while it was between two execs) gets the signal of the round it turned up in. Resolves once no process of
   * the tree survives, or it gave up.
   */
  async stop(request: StopRequest): Promise<StopResult> {
    const result: StopResult = { signals: [], escaped: 0, survivors: [], aborted: false };
    if (this.settings.disableKill) return result;
    const escaped = new Set<number>();
    const found = await this.members(request.includeGroup, request.spare);
    if (found.length === 0) return result;
    result.signals.push("SIGTERM");
    let alive = await this.round("SIGTERM", found, request, escaped, request.graceMs);
    for (let round = 0; alive.length > 0 && round < this.options.killRounds && !request.abort?.aborted; round++) {
      // A fresh sweep: the last round may have stopped looking while some it knew were still alive.
      const current = await this.members(request.includeGroup, request.spare);
      if (current.length === 0) {
        alive = current;
        break;
      }
      if (!result.signals.includes("SIGKILL")) result.signals.push("SIGKILL");
      alive = await this.round("SIGKILL", current, request, escaped, this.options.killRoundMs);
    }
    result.escaped = escaped.size;
    result.survivors = alive.map(({ pid, startTime }) => ({ pid, startTime }));
    result.aborted = alive.length > 0 && request.abort?.aborted === true;
    return result;
  }

  /** Best-effort SIGKILL of every process of the tree, without waiting for anything to die. */
  async killNow(includeGroup: boolean): Promise<void> {
    if (this.settings.disableKill) return;
    // The group and the cgroup at once, before the slower sweep of /proc.
    if (includeGroup && this.settings.leaderPid !== undefined) signalGroup(this.settings.leaderPid, "SIGKILL");
    this.settings.cgroup?.killAll();
    this.signal("SIGKILL", await this.members(includeGroup), new Set());
  }

  /** Removes the script's cgroup now, or once it is empty. */
  dispose(): void {
    this.settings.cgroup?.release();
  }

  /**
   * One round: signals the members, then waits up to `ms` for the tree to be gone. Only the known pids are
   * polled, so a long grace costs little; once they are gone a full sweep looks for any other. Resolves with
   * the members still alive (empty when the tree is gone).
   */
  private async round(signal: NodeJS.Signals, members: Member[], request: StopRequest, escaped: Set<number>, ms: number): Promise<Member[]> {
    const deadline = Date.now() + ms;
    const seen = new Set(members.map(memberKey));
    this.signal(signal, members, escaped);
    let alive = members;
    for (;;) {
      alive = alive.filter((member) => !isProcessGone(member.pid, member.startTime));
      if (alive.length === 0) {
        alive = await this.members(request.includeGroup, request.spare);
        if (alive.length === 0) return alive;
        const newcomers = alive.filter((member) => !seen.has(memberKey(member)));
        for (const member of newcomers) seen.add(memberKey(member));
        this.signal(signal, newcomers, escaped);
      }
      if (Date.now() >= deadline || request.abort?.aborted) return alive;
      await delay(Math.min(this.options.pollMs, Math.max(0, deadline - Date.now())));
    }
  }

  /** Sends a signal to the given members: the group as a whole, the others one by one. */
  private signal(signal: NodeJS.Signals, members: Member[], escaped: Set<number>): void {
    if (members.length === 0) return;
    // The group as a whole: it also reaches members forked since the sweep.
    if (this.settings.leaderPid !== undefined && members.some((member) => member.inGroup)) signalGroup(this.settings.leaderPid, signal);
    if (signal === "SIGKILL") this.settings.cgroup?.killAll();
    for (const member of members) {
      if (member.inGroup) continue;
      escaped.add(member.pid);
      signalPid(member.pid, signal);
    }
  }
}

/** The script cgroup at `path` (named in a run's record), through `tree` when this runner has one; undefined when it is not one. */
export function cgroupAt(path: string | undefined, tree: CgroupTree | undefined): ScriptCgroup | undefined {
  if (path === undefined) return undefined;
  // Outside this runner's tree (its cgroup moved since), it is still found, killed and removed on its own.
  return tree?.existing(path) ?? ScriptCgroup.detached(path);
}

/**
 * Best-effort SIGKILL of an abandoned process, without waiting: by pid and start time and its process group (see
 * `killProcessAndGroup`), and, when its run's marker and cgroup are known, every process that carries the one or
 * sits in the other. Nothing of another boot is touched: its pid and group would name someone else's.
 */
export async function killAbandoned(
  process: { pid: number; startTime?: number | undefined; bootId?: string | undefined },
  run: { marker: string; cgroup: ScriptCgroup | undefined } | undefined,
): Promise<void> {
  if (process.bootId !== undefined && currentBootId() !== undefined && process.bootId !== currentBootId()) return;
  killProcessAndGroup(process.pid, process.startTime);
  if (run === undefined) return;
  const tree = new ProcessTree({ leaderPid: undefined, marker: run.marker, disableKill: false, ...(run.cgroup === undefined ? {} : { cgroup: run.cgroup }) });
  await tree.killNow(false);
}

function memberKey(member: Member): string {
  return `${member.pid}:${member.startTime}`;
}

/** Sends a signal to a whole process group; false when the group is already gone (ESRCH). */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  return signalPid(-pgid, signal);
}

/** Sends a signal to one process (a negative id: a group); false when it is gone or not ours to signal. */
function signalPid(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch (error) {
    const code = errorCode(error);
    // ESRCH: already gone. EPERM: another user's process; it shows up as a survivor if it stays.
    if (code === "ESRCH" || code === "EPERM") return false;
    throw error;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function errorCode(error: unknown): string | undefined {
  if (typeof error === "object" && error !== null && "code" in error && typeof error.code === "string") return error.code;
  return undefined;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
