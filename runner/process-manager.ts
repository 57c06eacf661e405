/**
 * OS processes only: spawn a script in its own process group (marked, and in its own cgroup where possible),
 * report its output chunks and how it ended, kill its whole tree (containment.ts finds every process of it), or
 * stop tracking it without killing it. A script starts in a shell spawned for it (the cold path) or, usually, in
 * one spawned ahead of time (warm-shell.ts); either way it becomes the same `ScriptProcess`. The primitives both
 * paths share are in spawn.ts. Nothing here knows about the protocol's transport or sequence numbers.
 */
import { access, stat } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { constants as osConstants } from "node:os";
import { delimiter, join } from "node:path";
import type { Readable } from "node:stream";
import type { Outcome } from "../shared/protocol.js";
import {
  ProcessTree,
  enterCgroupCommand,
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
import type { WarmShellPool } from "./warm-shell.js";

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
  /** Shells started ahead of time: a script that one of them can run exactly like the cold path execs into it. */
  warmShells?: WarmShellPool;
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
    shellPath,
    args: [...shellArguments(request.shell, request.scriptPath), ...request.arguments],
    inherited: inheritedEnvironment(base),
    cgroups: options.cgroups,
    beforeStart,
  };
  const warm = options.warmShells?.claim(launch);
  if (warm !== undefined) {
    try {
      beforeStart?.({ marker: warm.marker, cgroup: warm.cgroup?.path, pid: warm.pid, startTime: warm.startTime });
    } catch (error) {
      // It never ran anything of the script: end it (it was taken out of the pool).
      signalGroup(warm.pid, "SIGKILL");
      warm.cgroup?.release();
      return failed(`Could not record the run before starting it: ${describeError(error)}`);
    }
  }
  const shell = warm ?? (await startColdShell(launch));
  if (!shell.ok) return shell;
  const child = track(shell, onOutput, options);
  options.warmShells?.refillAfter(child, launch);
  return { ok: true, process: child };
}

/** The cold path: spawns the script's shell now, in a new cgroup it moves itself into before the script's first line. */
async function startColdShell(launch: Launch): Promise<ScriptShell | SpawnFailure> {
  const { request, shellPath, args } = launch;
  const execa = await loadExeca();
  const marker = newScriptMarker();
  const cgroup = launch.cgroups?.create(`s-${marker}`);
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

/** Tracks the script's shell as a `ScriptProcess`, then lets it run the script. */
function track(shell: ScriptShell, onOutput: OutputHandler, options: ProcessManagerOptions): ScriptProcess {
  const tree = new ProcessTree({
    leaderPid: shell.pid,
    marker: shell.marker,
    disableKill: options.disableKill,
    ...(shell.cgroup === undefined ? {} : { cgroup: shell.cgroup }),
    ...(options.containment === undefined ? {} : { options: options.containment }),
  });
  // The output listeners go on before the event loop turns again: execa resumes unread pipes on its next turn, and
  // a warm shell's pipes flow already, so nothing may be written to them before the listeners are there.
  const child = new ScriptProcess(shell.subprocess, shell.pid, tree, onOutput, options, shell.startTime);
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

/** A running script process: its pid, its end, and the ways to stop it or let it go. */
export class ScriptProcess {
  private readonly streams: Pipe[];
  private readonly exitSeen = deferred<void>();
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
  private readonly onExit = (code: number | null, signal: NodeJS.Signals | null) => this.handleExit(code, signal);

  constructor(
    private readonly subprocess: ShellSubprocess,
    /** The process id, which is also the id of its process group. */
    readonly pid: number,
    private readonly tree: ProcessTree,
    onOutput: OutputHandler,
    private readonly options: ProcessManagerOptions,
    startTime?: number,
  ) {
    this.startTime = startTime ?? readProcessStat(pid)?.startTime;
    this.streams = (["stdout", "stderr"] as const).map((name) => {
      const entry: Pipe = {
        name,
        stream: subprocess[name],
        closed: false,
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
            if (this.outputPaused) entry.stream.pause();
          },
        },
      };
      entry.stream.on("data", entry.listeners.data);
      entry.stream.on("close", entry.listeners.close);
      entry.stream.on("resume", entry.listeners.resume);
      // A pipe error ends that pipe; `close` follows and the outcome still comes from the exit.
      entry.stream.on("error", ignore);
      return entry;
    });
    subprocess.on("exit", this.onExit);
    // Spawn errors were handled before this object existed; later ones (a failed kill) change nothing.
    subprocess.on("error", ignore);
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
    for (const { stream, closed } of this.streams) if (!closed) stream.pause();
    this.stopDrainTimer();
  }

  /** Reads the pipes again after `pauseOutput`. */
  resumeOutput(): void {
    if (!this.outputPaused) return;
    this.outputPaused = false;
    if (this.reported || this.released) return;
    for (const { stream, closed } of this.streams) if (!closed) stream.resume();
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
   * Stops tracking the process without killing it: listeners and timers removed, a tree kill in progress ended,
   * unref'd. Its pipes stay open and are drained into nothing, so a process that writes again neither dies of
   * SIGPIPE nor blocks on a full pipe.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.releasing.abort();
    this.detach();
    this.subprocess.unref();
    this.exitSeen.resolve();
    this.tree.dispose();
    if (!this.reported) {
      this.reported = true;
      this.ended.resolve(undefined);
    }
  }

  private async runKillTree(graceMs: number): Promise<TreeKill> {
    const nothing: TreeKill = { signals: [], escaped: 0, survivors: [], aborted: false };
    if (this.options.disableKill || this.released) return nothing;
    // A zombie has exited too, even before Node reaps it and reports the exit.
    if (this.hasExited || isProcessGone(this.pid, this.startTime)) {
      const leftovers = this.tree.stop({ graceMs, includeGroup: false, abort: this.releasing.signal });
      leftovers.finally(() => this.tree.dispose()).catch(ignore);
      return { ...nothing, leftovers };
    }
    const result = await this.tree.stop({ graceMs, includeGroup: true, abort: this.releasing.signal });
    this.tree.dispose();
    return { signals: result.signals, escaped: result.escaped, survivors: result.survivors, aborted: result.aborted };
  }

  private handleExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exitOutcome !== undefined) return;
    this.exitOutcome = outcomeOfExit(code, signal);
    this.exitSeen.resolve();
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
    this.detach();
    this.tree.dispose();
    this.ended.resolve(this.exitOutcome);
  }

  /**
   * Removes our listeners and clears the timers. The pipes are not destroyed: a process still holding them (a
   * released script, a grandchild after the exit) would die of SIGPIPE on its next write. They are drained into
   * nothing instead until they close, holding no reference to this object, and unref'd so they keep no one alive.
   */
  private detach(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.drainTimer = undefined;
    for (const { stream, listeners } of this.streams) {
      stream.off("data", listeners.data);
      stream.off("close", listeners.close);
      stream.off("resume", listeners.resume);
      // With no `data` listener a flowing stream drops what it reads.
      stream.resume();
      unrefStream(stream);
    }
    this.subprocess.off("exit", this.onExit);
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

/** One of the process's output pipes and our listeners on it. */
interface Pipe {
  name: StreamName;
  stream: Readable;
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
