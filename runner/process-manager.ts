/**
 * OS processes only: spawn a script in its own process group (marked, and in its own cgroup where possible),
 * report its output chunks and how it ended, kill its whole tree (containment.ts finds every process of it), or
 * stop tracking it without killing it. A script usually runs under a wrapper (wrapper.ts), its parent, which outlives
 * the runner: one started ahead of time (warm-shell.ts) or started for it; a script a wrapper could not start exactly
 * as a direct spawn would is spawned directly. Whichever way, and for a script a later runner process re-attached to
 * (reattach.ts), it becomes the same `ScriptProcess`, over the `ScriptIO` that says where its output comes from and
 * how its end is told. The primitives the paths share are in spawn.ts. Nothing here knows about the protocol's
 * transport or sequence numbers.
 */
import { access, stat } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { constants as osConstants } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import type { Readable } from "node:stream";
import type { Outcome } from "../shared/protocol.js";
import {
  ProcessTree,
  enterCgroupCommand,
  isLiveStat,
  isProcessGone,
  newScriptMarker,
  readProcessStat,
  signalGroup,
  type CgroupTree,
  type ContainmentOptions,
  type ProcessIdentity,
  type StopResult,
} from "./containment.js";
import {
  ignore,
  inheritedEnvironment,
  joinCgroup,
  loadExeca,
  scriptEnvironment,
  startProcess,
  type BeforeStart,
  type Launch,
  type ScriptShell,
  type ShellName,
  type ShellSubprocess,
  type SpawnRequest,
} from "./spawn.js";
import { slotsFolderOf } from "./run-folder.js";
import { trace } from "./trace.js";
import { startColdWrapper, wrappable, type WarmShellPool } from "./warm-shell.js";
import type { WrapperStatus } from "./wrapper-status.js";
import { SpoolTail } from "./spool-tail.js";
import { controlFifo, readExitFile, releaseGate, tellCopier, type WrapperPaths } from "./wrapper.js";

export type { SpawnRequest } from "./spawn.js";

/** The two output streams of a process. */
export type StreamName = "stdout" | "stderr";

/** The outcome of a process that never ran. */
export type FailedOutcome = Extract<Outcome, { kind: "failed" }>;

/** How processes are handled. */
export interface ProcessManagerOptions {
  /** After the process exited, how long to wait for its pipes to close before reporting the outcome. */
  pipeDrainMs: number;
  /** UNSAFE: every kill becomes a no-op. */
  disableKill: boolean;
  /** The environment scripts inherit (secrets removed) and the PATH the shell is looked up on; default `process.env`. */
  baseEnvironment?: NodeJS.ProcessEnv;
  /** Where each script gets its own cgroup; without it, processes that left the group are found by marker only. */
  cgroups?: CgroupTree;
  /** Timings of a tree kill; default `CONTAINMENT_DEFAULTS`. */
  containment?: ContainmentOptions;
  /** Wrappers started ahead of time: a script that one of them can run takes one instead of starting its own. */
  warmShells?: WarmShellPool;
  /** The runner's work dir (wrappers are named for it); default: two folders above the run folder. */
  workDir?: string;
}

/** Receives a process's output as it arrives. */
export type OutputHandler = (stream: StreamName, chunk: Buffer) => void;

/** A spawn either produced a process, or a `failed` outcome with a sentence saying why. */
export type SpawnResult = { ok: true; process: ScriptProcess } | { ok: false; outcome: FailedOutcome };

/**
 * Spawns a script in its own process group; output goes to `onOutput` until the process ends or is released.
 * `beforeStart` hears who the process will be before it can run the script (see `BeforeStart`).
 */
export async function spawnScript(
  request: SpawnRequest,
  onOutput: OutputHandler,
  options: ProcessManagerOptions,
  beforeStart?: BeforeStart,
): Promise<SpawnResult> {
  // Node's own error for these would quote the offending value, and environment values may be secrets.
  const unfit = unspawnableInput(request);
  if (unfit !== undefined) return failed(unfit);
  const base = options.baseEnvironment ?? process.env;
  const shellPath = await findExecutable(request.shell, base.PATH);
  if (shellPath === undefined) {
    return failed(`The shell "${request.shell}" was not found on this machine's PATH.`);
  }
  const launch: Launch = {
    request,
    workDir: options.workDir ?? resolve(request.runDir, "..", ".."),
    // Beside the run folders, on their filesystem: a claimed slot is renamed into one.
    slotsDir: slotsFolderOf(dirname(request.runDir)),
    shellPath,
    args: [...shellArguments(request.shell, request.scriptPath), ...request.arguments],
    inherited: inheritedEnvironment(base),
    cgroups: options.cgroups,
    beforeStart,
  };
  let shell: ScriptShell | SpawnFailure;
  if (wrappable(launch)) {
    // A ready shell at once; else one still starting, if there is one (waited for on this path only).
    const warm = options.warmShells?.claim(launch) ?? (await options.warmShells?.claimStarting(launch));
    if (warm !== undefined) {
      try {
        beforeStart?.({ marker: warm.marker, cgroup: warm.cgroup?.path, pid: warm.pid, startTime: warm.startTime, wrapped: true });
      } catch (error) {
        // It never ran anything of the script: end it (it was taken out of the pool).
        dropShell(warm);
        return failed(`Could not record the run before starting it: ${describeError(error)}`);
      }
      shell = warm;
    } else {
      const cold = await startColdWrapper(launch, beforeStart);
      shell = typeof cold === "string" ? failed(cold) : cold;
    }
  } else {
    shell = await startDirect(launch);
  }
  if (!shell.ok) return shell;
  const child = track(request.ticket, shell, onOutput, options);
  options.warmShells?.refillAfter(child, launch);
  return { ok: true, process: child };
}

/** Ends a shell that will never run its script: its process group (its copiers included) and its cgroup. */
function dropShell(shell: ScriptShell): void {
  signalGroup(shell.pid, "SIGKILL");
  shell.cgroup?.release();
}

/**
 * A direct start, for a script no wrapper could start exactly as this does (see `wrappable`): spawns the script's
 * shell now, with pipes to the runner, in a new cgroup it moves itself into before the script's first line. Such a
 * script cannot be re-attached to: a runner restart stops it (the record has no `reattach`).
 */
async function startDirect(launch: Launch): Promise<ScriptShell | SpawnFailure> {
  const { request, shellPath, args } = launch;
  const execa = await loadExeca();
  const marker = newScriptMarker();
  const cgroup = await launch.cgroups?.create(`s-${marker}`);
  try {
    launch.beforeStart?.({ marker, cgroup: cgroup?.path });
  } catch (error) {
    cgroup?.release();
    return failed(`Could not record the run before starting it: ${describeError(error)}`);
  }
  const command = (cgroup && enterCgroupCommand(cgroup.procsFile, shellPath, args)) ?? { file: shellPath, args };
  const env = scriptEnvironment(launch.inherited, request.environment, request.ticket, marker);
  let subprocess: ShellSubprocess;
  try {
    subprocess = startProcess(execa, command.file, command.args, request.cwd, env, "ignore");
  } catch (error) {
    cgroup?.release();
    return failed(`Could not start ${request.shell} (${shellPath}): ${describeError(error)}`);
  }
  // With `reject: false` the promise resolves even on failure; nothing here needs its result.
  subprocess.catch(ignore);
  // Node sets the pid synchronously exactly when the spawn succeeded (exec errors are reported by uv_spawn itself).
  if (subprocess.pid === undefined) {
    cgroup?.release();
    const problem = await spawnError(subprocess);
    return failed(`Could not start ${request.shell} (${shellPath}) in ${request.cwd}: ${describeError(problem)}`);
  }
  // Also from here: it tells whether the move worked (the shell's own attempt stays silent).
  return { ok: true, subprocess, pid: subprocess.pid, marker, cgroup: joinCgroup(cgroup, subprocess.pid) };
}

/** Tracks the script's shell (or wrapper) as a `ScriptProcess`, then lets it run the script. */
function track(ticket: string, shell: ScriptShell, onOutput: OutputHandler, options: ProcessManagerOptions): ScriptProcess {
  const tree = new ProcessTree({
    leaderPid: shell.pid,
    marker: shell.marker,
    disableKill: options.disableKill,
    ...(shell.cgroup === undefined ? {} : { cgroup: shell.cgroup }),
    ...(options.containment === undefined ? {} : { options: options.containment }),
  });
  const io = shell.wrapper === undefined ? new DirectIO(shell.subprocess) : new WrapperIO(shell.subprocess, shell.wrapper);
  // The output listeners go on before the event loop turns again: execa resumes unread pipes on its next turn, and
  // a wrapper runs the script once told (just below), so nothing may be written before the listeners are there.
  const child = new ScriptProcess(io, shell.pid, tree, onOutput, options, shell.startTime);
  trace(ticket, "exec");
  shell.run?.();
  return child;
}

/** Why the OS cannot take the request's environment or arguments, in words that never repeat a value. */
export function unspawnableInput(request: Pick<SpawnRequest, "environment" | "arguments">): string | undefined {
  for (const [name, value] of Object.entries(request.environment)) {
    if (name === "" || name.includes("=") || name.includes("\0")) {
      return `The environment variable name ${JSON.stringify(name.slice(0, 64))} is not valid: it must be non-empty, without "=" or NUL.`;
    }
    if (value.includes("\0")) return `The value of the environment variable ${JSON.stringify(name.slice(0, 64))} contains a NUL character, which no process environment can hold.`;
  }
  const index = request.arguments.findIndex((argument) => argument.includes("\0"));
  if (index !== -1) return `Argument ${index + 1} contains a NUL character, which no process argument can hold.`;
  return undefined;
}

type SpawnFailure = Extract<SpawnResult, { ok: false }>;

function failed(message: string): SpawnFailure {
  return { ok: false, outcome: { kind: "failed", message } };
}

/** The shell's arguments before the script's own. */
function shellArguments(shell: ShellName, scriptPath: string): string[] {
  switch (shell) {
    case "bash":
    case "sh":
      return [scriptPath];
    case "pwsh":
      return ["-NoLogo", "-NoProfile", "-NonInteractive", "-File", scriptPath];
    default: {
      const unreachable: never = shell;
      throw new Error(`unknown shell ${String(unreachable)}`);
    }
  }
}

/** The error of a spawn that failed: Node's `error` event, or execa's result when it failed before spawning. */
async function spawnError(subprocess: ShellSubprocess): Promise<unknown> {
  const fromEvent = new Promise<unknown>((resolve) => subprocess.once("error", resolve));
  const fromResult = subprocess.then((result) => result.cause ?? result.message);
  return Promise.race([fromEvent, fromResult]);
}

/** Finds an executable file named `name` on a PATH value, like the shell would. */
export async function findExecutable(name: string, pathValue: string | undefined): Promise<string | undefined> {
  // Looking a shell up walks PATH with several file-system calls; every dispatch needs it, so answers
  // are kept for a few seconds (a shell installed or removed meanwhile is seen soon after).
  const key = `${name}\0${pathValue ?? ""}`;
  const cached = executableCache.get(key);
  if (cached && cached.until > Date.now()) return cached.path;
  const path = await searchPath(name, pathValue);
  executableCache.set(key, { path, until: Date.now() + EXECUTABLE_CACHE_MS });
  return path;
}

/** How long a PATH lookup is reused. */
const EXECUTABLE_CACHE_MS = 5_000;
const executableCache = new Map<string, { path: string | undefined; until: number }>();

async function searchPath(name: string, pathValue: string | undefined): Promise<string | undefined> {
  for (const dir of (pathValue ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      await access(candidate, fsConstants.X_OK);
      if ((await stat(candidate)).isFile()) return candidate;
    } catch {
      // Not here; try the next directory.
    }
  }
  return undefined;
}

/** The outcome Node reports for an exit: a code, or the signal that ended it. */
export function outcomeOfExit(code: number | null, signal: NodeJS.Signals | null): Outcome {
  if (signal !== null) {
    const number = osConstants.signals[signal];
    return { kind: "signaled", signal, number };
  }
  if (code !== null) return { kind: "exited", code };
  return { kind: "failed", message: "The process ended without an exit code or a signal." };
}

type Deferred<T> = { promise: Promise<T>; resolve: (value: T) => void };

function deferred<T>(): Deferred<T> {
  let resolve: (value: T) => void = () => undefined;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** What a tree kill did. */
export interface TreeKill {
  /** The signals sent while the script still ran: none when it had exited by itself (its own exit code stands). */
  signals: string[];
  /** How many processes that had left the process group were signalled too. */
  escaped: number;
  /** Processes still alive at the end: they survived every SIGKILL round, or (`aborted`) were let go. */
  survivors: ProcessIdentity[];
  /** The kill was ended early because the process was released (abandoned): its survivors were let go, not failed to die. */
  aborted: boolean;
  /** When the script had exited by itself: the kill of what it left behind, still under way. */
  leftovers?: Promise<StopResult>;
}

/** How a `ScriptProcess` lets go of its streams and its watch: see `ScriptIO.stop`. */
export type LetGo = "ended" | "released" | "handed-off";

/**
 * Where a script's output comes from and how its own end is told, for each way a script runs: spawned directly
 * (pipes, the exit event), under a wrapper this runner started (FIFOs, the wrapper's status line, its exit event), or
 * under a wrapper a later runner process re-attached to (reattach.ts: FIFOs, the exit status file, polling).
 */
export interface ScriptIO {
  /** Opens the output streams. A stream at its end already is undefined. */
  open(): Array<{ name: StreamName; stream: Readable | undefined }>;
  /** Starts watching for the script's own end; `ended` is called once at most (maybe at once). */
  watch(ended: (outcome: Outcome) => void): void;
  /** True once the script's own end is certain, even before `watch` reported it (its exit status file exists). */
  hasEnded(): boolean;
  /** The runner holds the script's whole output and its outcome: its wrapper may exit now. Resolves once it has. */
  settle(): Promise<void>;
  /**
   * Stops watching, for good. `ended` (reported) and `released` (abandoned): the streams are drained into nothing
   * (a process still writing neither blocks nor dies), and a released script's wrapper may exit at its end;
   * `handed-off` (the runner stops): the streams are closed and the wrapper waits for a later runner process.
   */
  stop(how: LetGo): void;
}

/** A running script process: its pid, its end, and the ways to stop it or let it go. */
export class ScriptProcess {
  private streams: Pipe[] = [];
  private readonly ended = deferred<Outcome | undefined>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Aborts a tree kill in progress when the process is released. */
  private readonly releasing = new AbortController();
  private exitOutcome: Outcome | undefined;
  private killing: Promise<TreeKill> | undefined;
  private released = false;
  private reported = false;
  /** True while the runner asked for the pipes not to be read (its output is not acknowledged fast enough). */
  private outputPaused = false;
  /** After the exit: the wait for the pipes to close, which only runs while they are being read. */
  private drainTimer: NodeJS.Timeout | undefined;
  /** When the process started (clock ticks after boot); with the pid it names this process for good. */
  readonly startTime: number | undefined;

  constructor(
    private readonly io: ScriptIO,
    /** The process id (the wrapper's, for a wrapped script), which is also the id of its process group. */
    readonly pid: number,
    private readonly tree: ProcessTree,
    onOutput: OutputHandler,
    private readonly options: Pick<ProcessManagerOptions, "pipeDrainMs" | "disableKill">,
    startTime?: number,
  ) {
    this.startTime = startTime ?? readProcessStat(pid)?.startTime;
    const opened = io.open();
    this.streams = opened.map(({ name, stream }) => {
      const entry: Pipe = {
        name,
        stream,
        closed: stream === undefined,
        listeners: {
          data: (chunk) => onOutput(name, typeof chunk === "string" ? Buffer.from(chunk) : chunk),
          close: () => {
            entry.closed = true;
            this.maybeReport();
          },
          // Node resumes a child's stdio streams by itself once the child exits (child_process `flushStdio`,
          // so that unread output cannot keep them open); while paused, that would read on regardless. `resume`
          // is emitted before the stream flows again, so pausing here keeps every chunk where it is.
          resume: () => {
            if (this.outputPaused) entry.stream?.pause();
          },
        },
      };
      if (stream !== undefined) {
        // Asked for while the first chunks were handed over.
        if (this.outputPaused) stream.pause();
        stream.on("data", entry.listeners.data);
        stream.on("close", entry.listeners.close);
        stream.on("resume", entry.listeners.resume);
        // A pipe error ends that pipe; `close` follows and the outcome still comes from the exit.
        stream.on("error", ignore);
      }
      return entry;
    });
    io.watch((outcome) => this.handleExit(outcome));
  }

  /** The value of `TENDRIL_SCRIPT_MARKER` in this script's environment. */
  get marker(): string {
    return this.tree.marker;
  }

  /** True once the process itself has exited (its pipes may still be draining). */
  get hasExited(): boolean {
    return this.exitOutcome !== undefined;
  }

  /** Resolves with how the process ended, after its output was delivered; with `undefined` when released first. */
  wait(): Promise<Outcome | undefined> {
    return this.ended.promise;
  }

  /** True while the pipes are not read (`pauseOutput`). */
  get isOutputPaused(): boolean {
    return this.outputPaused;
  }

  /**
   * Stops reading the pipes: the kernel's buffer between the process and the runner fills and the process blocks
   * on its next write, which is the backpressure a pipe gives for free. Nothing is lost, and the exit is not reported while output waits
   * unread: the wait for the pipes to close after the exit (`pipeDrainMs`) counts only time spent reading.
   */
  pauseOutput(): void {
    if (this.outputPaused || this.reported || this.released) return;
    this.outputPaused = true;
    for (const { stream, closed } of this.streams) if (!closed) stream?.pause();
    this.stopDrainTimer();
  }

  /** Reads the pipes again after `pauseOutput`. */
  resumeOutput(): void {
    if (!this.outputPaused) return;
    this.outputPaused = false;
    if (this.reported || this.released) return;
    for (const { stream, closed } of this.streams) if (!closed) stream?.resume();
    if (this.exitOutcome !== undefined) this.startDrainTimer();
  }

  /**
   * Stops the whole tree: SIGTERM to the process group and to every process that left it, SIGKILL to whatever
   * is left after `graceMs`, until none is left (containment.ts). Resolves once no process of the script
   * survives (or it gave up). When the process had already exited, nothing counts as sent and what it left
   * behind is killed in the background (`leftovers`). Runs once; later calls get the same answer.
   */
  killTree(graceMs: number): Promise<TreeKill> {
    this.killing ??= this.runKillTree(graceMs);
    return this.killing;
  }

  /**
   * Best-effort SIGKILL to the whole tree without waiting; returns the signals sent to the process group at once
   * (the sweep for processes that left it goes on in the background).
   */
  killNow(): string[] {
    if (this.options.disableKill) return [];
    // After the exit the group id may one day belong to someone else: the marker and the cgroup still find leftovers.
    const group = !this.hasExited && !this.reported && !this.released;
    const sent = group && signalGroup(this.pid, "SIGKILL") ? ["SIGKILL"] : [];
    this.tree.killNow(group).catch(ignore);
    return sent;
  }

  /**
   * Stops tracking the process without killing it: listeners and timers removed, a tree kill in progress ended.
   * Released (abandoned), its output is drained into nothing (it neither dies of SIGPIPE nor blocks on a full pipe);
   * handed off (`handOff`: the runner stops), its FIFOs are closed and its wrapper waits for a later runner process.
   */
  release(handOff = false): void {
    if (this.released) return;
    this.released = true;
    this.releasing.abort();
    this.detach(handOff ? "handed-off" : "released");
    this.tree.dispose();
    if (!this.reported) {
      this.reported = true;
      this.ended.resolve(undefined);
    }
  }

  /**
   * The runner holds the script's whole output and its outcome (after `wait` resolved): its wrapper may exit now.
   * Once it has, the script's cgroup goes too (if nothing else is left in it).
   */
  settle(): void {
    this.io
      .settle()
      .then(() => this.tree.dispose())
      .catch(ignore);
  }

  private async runKillTree(graceMs: number): Promise<TreeKill> {
    const nothing: TreeKill = { signals: [], escaped: 0, survivors: [], aborted: false };
    if (this.options.disableKill || this.released) return nothing;
    // A re-attached script whose wrapper went without its status may still run: what is left is stopped in full.
    const unknownEnd = this.exitOutcome?.kind === "lost";
    // A zombie has exited too, even before Node reaps it and reports the exit; a wrapper's script has ended once the
    // wrapper wrote its status (the wrapper itself waits for the runner, and is spared).
    if (this.io.hasEnded() || (!unknownEnd && (this.hasExited || isProcessGone(this.pid, this.startTime)))) {
      const spare = this.startTime === undefined ? undefined : { pid: this.pid, startTime: this.startTime };
      const leftovers = this.tree.stop({ graceMs, includeGroup: false, abort: this.releasing.signal, ...(spare === undefined ? {} : { spare }) });
      leftovers.finally(() => this.tree.dispose()).catch(ignore);
      return { ...nothing, leftovers };
    }
    // The group keeps the leader's id while any member lives; only another process holding that pid now would make it someone else's.
    const stat = readProcessStat(this.pid);
    const includeGroup = !isLiveStat(stat) || this.startTime === undefined || stat.startTime === this.startTime;
    const result = await this.tree.stop({ graceMs, includeGroup, abort: this.releasing.signal });
    this.tree.dispose();
    return { signals: result.signals, escaped: result.escaped, survivors: result.survivors, aborted: result.aborted };
  }

  private handleExit(outcome: Outcome): void {
    if (this.exitOutcome !== undefined) return;
    this.exitOutcome = outcome;
    if (this.maybeReport()) return;
    if (!this.outputPaused) this.startDrainTimer();
  }

  /** A grandchild may hold the pipes open forever: after the exit, wait for them only so long (while reading). */
  private startDrainTimer(): void {
    if (this.drainTimer !== undefined || this.reported || this.released) return;
    this.drainTimer = this.startTimer(this.options.pipeDrainMs, () => {
      this.drainTimer = undefined;
      this.report();
    });
  }

  private stopDrainTimer(): void {
    if (this.drainTimer === undefined) return;
    clearTimeout(this.drainTimer);
    this.timers.delete(this.drainTimer);
    this.drainTimer = undefined;
  }

  /** Reports the outcome when the process exited and both pipes closed; true when it did. */
  private maybeReport(): boolean {
    if (this.exitOutcome === undefined || this.streams.some((entry) => !entry.closed)) return false;
    this.report();
    return true;
  }

  private report(): void {
    if (this.reported || this.released || this.exitOutcome === undefined) return;
    this.reported = true;
    this.detach("ended");
    this.tree.dispose();
    this.ended.resolve(this.exitOutcome);
  }

  /**
   * Removes our listeners and clears the timers, then lets the IO let go of its streams (see `ScriptIO.stop`). A
   * stream is not destroyed unless handed off: a process still holding it (a released script, a grandchild after the
   * exit) must neither die of SIGPIPE nor block.
   */
  private detach(how: LetGo): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.drainTimer = undefined;
    for (const { stream, listeners } of this.streams) {
      stream?.off("data", listeners.data);
      stream?.off("close", listeners.close);
      stream?.off("resume", listeners.resume);
    }
    this.io.stop(how);
  }

  private startTimer(ms: number, callback: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      callback();
    }, ms);
    this.timers.add(timer);
    return timer;
  }
}

/** A script spawned directly: its shell's pipes and its exit event. */
class DirectIO implements ScriptIO {
  private readonly onExit = (code: number | null, signal: NodeJS.Signals | null) => this.ended?.(outcomeOfExit(code, signal));
  private ended: ((outcome: Outcome) => void) | undefined;

  constructor(private readonly subprocess: ShellSubprocess) {
    // Spawn errors were handled before this object existed; later ones (a failed kill) change nothing.
    subprocess.on("error", ignore);
  }

  open(): Array<{ name: StreamName; stream: Readable | undefined }> {
    return [
      { name: "stdout", stream: this.subprocess.stdout ?? undefined },
      { name: "stderr", stream: this.subprocess.stderr ?? undefined },
    ];
  }

  watch(ended: (outcome: Outcome) => void): void {
    this.ended = ended;
    this.subprocess.on("exit", this.onExit);
  }

  hasEnded(): boolean {
    return false;
  }

  async settle(): Promise<void> {
    // Nothing waits for the runner.
  }

  stop(): void {
    this.subprocess.off("exit", this.onExit);
    this.subprocess.unref();
    // With no `data` listener a flowing stream drops what it reads; unref'd, it keeps no one alive.
    drainStreams([this.subprocess.stdout, this.subprocess.stderr]);
  }
}

/** A script under a wrapper this runner started: its spool files, the wrapper's status line and its exit event. */
class WrapperIO implements ScriptIO {
  private tails: SpoolTail[] = [];
  private ended: ((outcome: Outcome) => void) | undefined;
  private readonly onExit = (code: number | null, signal: NodeJS.Signals | null) => {
    // The wrapper exits after its status line, once released; it dies before it only when killed (a cancel). Its
    // status file may have been written before the line was read.
    const written = readExitFile(this.wrapper.paths.exit);
    this.end(written === undefined ? outcomeOfExit(code, signal) : { kind: "exited", code: written });
  };

  constructor(
    private readonly subprocess: ShellSubprocess,
    private readonly wrapper: { paths: WrapperPaths; status: WrapperStatus },
  ) {
    subprocess.on("error", ignore);
  }

  open(): Array<{ name: StreamName; stream: Readable | undefined }> {
    const opened = openSpool(this.wrapper.paths, { stdout: 0, stderr: 0 });
    this.tails = opened.flatMap(({ stream }) => (stream === undefined ? [] : [stream]));
    return opened;
  }

  watch(ended: (outcome: Outcome) => void): void {
    this.ended = ended;
    this.wrapper.status.onStatus((code) => this.end({ kind: "exited", code }));
    this.subprocess.on("exit", this.onExit);
  }

  hasEnded(): boolean {
    return readExitFile(this.wrapper.paths.exit) !== undefined;
  }

  settle(): Promise<void> {
    const { subprocess } = this;
    const gone = new Promise<void>((resolve) => {
      if (subprocess.exitCode !== null || subprocess.signalCode !== null) resolve();
      else subprocess.once("exit", () => resolve());
    });
    if (!releaseGate(this.wrapper.paths.gate)) return Promise.resolve();
    return gone;
  }

  stop(how: LetGo): void {
    this.ended = undefined;
    this.subprocess.off("exit", this.onExit);
    this.subprocess.unref();
    this.wrapper.status.stop(how === "handed-off");
    letSpoolGo(this.tails, this.wrapper.paths, how);
  }

  private end(outcome: Outcome): void {
    const ended = this.ended;
    this.ended = undefined;
    ended?.(outcome);
  }
}

/** Opens a wrapped script's streams from its spool files at the positions given (a stream without one is at its end already). */
export function openSpool(
  paths: Pick<WrapperPaths, "io">,
  from: Partial<Record<StreamName, number>>,
): Array<{ name: StreamName; stream: SpoolTail | undefined }> {
  return (["stdout", "stderr"] as const).map((name) => {
    const position = from[name];
    return { name, stream: position === undefined ? undefined : new SpoolTail(paths.io, name === "stdout" ? "out" : "err", position) };
  });
}

/**
 * Stops reading a wrapped script's spool. Handed off, the copiers wait for the next runner process; otherwise
 * (`ended`, `released`) the wrapper is let go: its copiers read on into nothing (a process still writing neither
 * blocks nor fills the disk), and a released script's wrapper may exit at its end.
 */
export function letSpoolGo(tails: readonly SpoolTail[], paths: Pick<WrapperPaths, "io" | "gate">, how: LetGo): void {
  for (const tail of tails) {
    // A copier past its stream's end is told `end` by the wrapper as it exits.
    if (how !== "handed-off" && !tail.atEnd) tellCopier(controlFifo(paths.io, tail.spool), "drain");
    tail.destroy();
  }
  if (how === "released") releaseGate(paths.gate);
}

/** Streams nobody listens to any more: drained into nothing (a flowing stream without `data` listener drops what it reads), unref'd. */
function drainStreams(streams: ReadonlyArray<Readable | null | undefined>): void {
  for (const stream of streams) {
    if (stream === null || stream === undefined) continue;
    stream.on("error", ignore);
    stream.resume();
    unrefStream(stream);
  }
}

/** One of the process's output pipes and our listeners on it. */
interface Pipe {
  name: StreamName;
  /** Undefined when it was at its end already when opened. */
  stream: Readable | undefined;
  closed: boolean;
  listeners: StreamListeners;
}

interface StreamListeners {
  data: (chunk: Buffer | string) => void;
  close: () => void;
  resume: () => void;
}

/** A pipe to a child is a socket: unref'd, it keeps the runner's event loop alive no more. */
function unrefStream(stream: Readable): void {
  const candidate: unknown = stream;
  if (typeof candidate === "object" && candidate !== null && "unref" in candidate && typeof candidate.unref === "function") {
    candidate.unref();
  }
}

function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
