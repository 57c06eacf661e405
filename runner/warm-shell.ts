/**
 * Wrapper shells (wrapper.ts): the `/bin/sh` each script runs under, as its parent, so that the script outlives the
 * runner and a new runner process can re-attach to it. Usually one is started before it is needed (warm), so that a
 * script starts without forking the runner: a fork of the large Node process blocks its event loop for milliseconds.
 *
 * A warm wrapper is what the cold path would start, minus the script: its own process group and session, the
 * inherited environment with a marker of its own, a cgroup of its own (joined at once), its FIFOs made in a slot folder
 * and held open; it says `ready` and waits, reading its stdin. A claim renames its slot to the run's `io` folder (open
 * FIFOs stay valid) and writes it one line (enter the workspace, export the request's variables, run the script's shell
 * in the foreground, record its status; see `runCommand`), so the script's process group, marker and cgroup are the
 * wrapper's. Without a waiting wrapper (or one that is starting and soon ready), one is started for the script (the
 * cold path). A script that a shell could not start exactly as a direct spawn would (a variable a shell cannot pass
 * on, a workspace it cannot enter) is spawned directly instead (process-manager.ts), and cannot be re-attached to. A
 * waiting wrapper whose runner died reads EOF and exits.
 */
import { accessSync, constants as fsConstants, existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { Socket } from "node:net";
import { join } from "node:path";
import type { Writable } from "node:stream";
import { SCRIPT_MARKER_VARIABLE, isProcessGone, newScriptMarker, ownStartTime, readProcessStat, signalGroup, type CgroupTree, type ScriptCgroup } from "./containment.js";
import { makeSlot } from "./run-folder.js";
import {
  ignore,
  joinCgroup,
  loadExeca,
  scriptEnvironment,
  startProcess,
  type BeforeStart,
  type Ending,
  type Execa,
  type Launch,
  type ScriptShell,
  type ShellSubprocess,
} from "./spawn.js";
import { WrapperStatus } from "./wrapper-status.js";
import { WRAPPER_SHELL, prologue, quote, runCommand, wrapperArguments, wrapperPaths, type WrapperRun } from "./wrapper.js";

/** How long a retired shell's cgroup may take to empty once the shell has exited. */
const RETIRE_EMPTY_MS = 2_000;

/** How a pool behaves. */
export interface WarmShellOptions {
  /** How many shells wait at most; default 2 (a script that starts while another just started finds one too). */
  size?: number;
  /** How long a script that still runs holds back the refill after it started; default 50 ms. */
  refillDelayMs?: number;
  /**
   * How long a script waits at most for a shell that is starting when none is ready; default 100 ms. It is usually
   * ready within milliseconds; past this, something holds it up, and the script starts a wrapper of its own.
   */
  startingWaitMs?: number;
}

/** What a wrapper is started with; a warm one can run a script only when the script's are the same. */
interface Recipe {
  inherited: Readonly<Record<string, string>>;
  cgroups: CgroupTree | undefined;
  workDir: string;
  slotsDir: string;
}

/** One wrapper shell, from its start until a script claims it (or it is retired). */
interface Wrapper {
  recipe: Recipe;
  subprocess: ShellSubprocess;
  stdin: Writable;
  status: WrapperStatus;
  pid: number;
  /** With the pid, names this process for good. */
  startTime: number | undefined;
  marker: string;
  cgroup: ScriptCgroup | undefined;
  /** The folder its FIFOs are in: a slot (warm, until claimed) or the run's `io` folder. */
  io: string;
  /** `io` is a slot of its own, removed with it unless a script claims it. */
  slot: boolean;
  /** Resolves true once it is ready, false if it exited first. */
  ready: Promise<boolean>;
  exited: boolean;
  /** Resolves once it has exited while not claimed. */
  gone: Promise<void>;
  /** Its `exit` listener until it is claimed. */
  onExit: () => void;
}

/**
 * Wrapper shells that wait for the next script. Created without any process: `refillAfter`, called after each script
 * started (the first one always cold), starts them, so an idle runner that never ran a script has none.
 */
export class WarmShellPool {
  private readonly size: number;
  private readonly refillDelayMs: number;
  private readonly startingWaitMs: number;
  private readonly idle: Wrapper[] = [];
  /** What the latest script started with: the next shells are warmed with it. */
  private recipe: Recipe | undefined;
  /** Scripts that started and have neither exited nor run for `refillDelayMs`: no refill meanwhile. */
  private starting = 0;
  private refilling = false;
  /** Set when a shell could not be started: the pool stops trying, and every script takes the cold path. */
  private broken = false;
  private disposal: Promise<void> | undefined;

  constructor(options: WarmShellOptions = {}) {
    this.size = options.size ?? 2;
    this.refillDelayMs = options.refillDelayMs ?? 50;
    this.startingWaitMs = options.startingWaitMs ?? 100;
  }

  /** The pids of the shells that are ready for a script now. */
  get idlePids(): number[] {
    return this.idle.filter((shell) => shell.status.ready).map((shell) => shell.pid);
  }

  /**
   * A ready wrapper that will run `launch` exactly as a cold one would, taken out of the pool, its FIFOs moved into the
   * run folder; undefined when there is none (the caller then starts one). `launch` must be `wrappable`. Call `run`
   * on the result once its FIFOs are read.
   */
  claim(launch: Launch): ScriptShell | undefined {
    if (this.idle.length === 0) return undefined;
    this.retireStale(launch);
    const shell = this.idle.find((candidate) => candidate.status.ready && isLive(candidate));
    if (shell === undefined) return undefined;
    const paths = wrapperPaths(launch.request.runDir);
    try {
      // One rename moves the three FIFOs; the wrapper's fds and ours stay valid.
      renameSync(shell.io, paths.io);
    } catch {
      void this.retire(shell);
      return undefined;
    }
    this.idle.splice(this.idle.indexOf(shell), 1);
    shell.io = paths.io;
    shell.slot = false;
    return handOver(shell, launch);
  }

  /**
   * For a script `claim` found no ready wrapper for: waits for one that is starting (a refill under way), a while at
   * most, and claims it; it is further along than a cold start, which forks the runner, would be. Undefined when none
   * is starting or it was not ready in time.
   */
  async claimStarting(launch: Launch): Promise<ScriptShell | undefined> {
    // `claim` retired the shells warmed for anything else: one still starting is one this script can take.
    const starting = this.idle.find((candidate) => !candidate.status.ready && isLive(candidate));
    if (starting === undefined) return undefined;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.startingWaitMs)));
    await Promise.race([starting.ready, late]);
    clearTimeout(timer);
    return this.claim(launch);
  }

  /**
   * Refills the pool, with `launch`'s environment and cgroups, after `script` started (warm or cold): once it has
   * exited, or after `refillDelayMs` if it still runs. A refill forks the runner, which stalls its event loop for
   * milliseconds: done while a script is starting, it would delay that script; done right after the exit, it
   * happens while the control plane is busy storing the exit, before it dispatches the next script.
   */
  refillAfter(script: Ending, launch: Launch): void {
    if (this.disposal !== undefined) return;
    this.recipe = recipeOf(launch);
    this.starting += 1;
    let settled = false;
    const settle = (refillIn: number) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      this.starting -= 1;
      if (refillIn === 0) this.refillNow();
      else setTimeout(() => this.refillNow(), refillIn).unref();
    };
    const timer = setTimeout(() => settle(0), this.refillDelayMs);
    timer.unref();
    // After the exit is reported (the runner sends it in the continuation of the same `wait()`), while the control
    // plane stores it. A script released (abandoned) no longer holds refills back, but the next script is usually
    // dispatched at that very moment: the refill waits a while, and for that script if it started meanwhile.
    void script.wait().then((outcome) => {
      if (outcome === undefined) settle(this.refillDelayMs);
      else setImmediate(() => settle(0));
    });
  }

  private refillNow(): void {
    this.refill().catch(() => (this.broken = true));
  }

  /** Kills every waiting shell (its whole process group), resolves once they are gone; no shell is started after. */
  dispose(): Promise<void> {
    this.disposal ??= Promise.all([...this.idle].map((shell) => this.retire(shell))).then(ignore);
    return this.disposal;
  }

  private async refill(): Promise<void> {
    if (this.refilling || !this.needsShell()) return;
    this.refilling = true;
    try {
      const execa = await loadExeca();
      while (this.recipe !== undefined && this.needsShell()) {
        const shell = await this.warmUp(execa, this.recipe);
        if (shell === undefined) {
          this.broken = true;
          return;
        }
        this.idle.push(shell);
        // One at a time: a shell that cannot make its FIFOs breaks the pool instead of being started again and again.
        if (!(await shell.ready)) {
          this.broken = true;
          void this.retire(shell);
          return;
        }
      }
    } finally {
      this.refilling = false;
    }
  }

  private needsShell(): boolean {
    return (
      this.disposal === undefined &&
      !this.broken &&
      this.starting === 0 &&
      this.idle.length < this.size &&
      this.recipe !== undefined &&
      Object.keys(this.recipe.inherited).every(isExportable)
    );
  }

  /** Starts one wrapper that waits with `recipe`'s environment (and a marker of its own) in a slot and a cgroup of its own. */
  private async warmUp(execa: Execa, recipe: Recipe): Promise<Wrapper | undefined> {
    const marker = newScriptMarker();
    const cgroup = await recipe.cgroups?.create(`s-${marker}`);
    // Disposed while the cgroup was being made: no shell is started after that.
    if (this.disposal !== undefined) {
      cgroup?.release();
      return undefined;
    }
    let slot: string;
    try {
      slot = makeSlot(recipe.slotsDir);
    } catch {
      cgroup?.release();
      return undefined;
    }
    const shell = startWrapper(execa, recipe, { marker, cgroup }, slot, true);
    if (shell === undefined) {
      rmSync(slot, { recursive: true, force: true });
      return undefined;
    }
    shell.onExit = () => {
      shell.exited = true;
      this.remove(shell);
      releaseWrapper(shell);
    };
    shell.subprocess.once("exit", shell.onExit);
    // A waiting shell does not keep the runner alive; it is referenced again when a script claims it.
    setReferenced(shell.subprocess, false);
    return shell;
  }

  /** Kills the waiting shells warmed with another environment, cgroup tree, work dir or slots folder: the refill replaces them. */
  private retireStale(launch: Launch): void {
    for (const shell of [...this.idle]) {
      const { cgroups, workDir, slotsDir, inherited } = shell.recipe;
      const same = cgroups === launch.cgroups && workDir === launch.workDir && slotsDir === launch.slotsDir && sameEnvironment(inherited, launch.inherited);
      if (!same) void this.retire(shell);
    }
  }

  /** Kills a waiting shell by its process group; resolves once it is gone (its cgroup, slot and read ends released). */
  private retire(shell: Wrapper): Promise<void> {
    this.remove(shell);
    if (!shell.exited) {
      // Referenced again until its exit is seen: a runner that waits for it while stopping has nothing else to keep
      // its event loop alive, and Node would exit (code 13) with the shell's cgroup still there.
      shell.subprocess.ref();
      signalGroup(shell.pid, "SIGKILL");
    }
    // Its copiers, killed with it, can outlive its exit by a moment on a busy machine: a runner that stops waits for
    // its cgroup to empty, else it would leave the cgroup behind as one that still holds processes.
    return shell.gone.then(() => shell.cgroup?.emptied(RETIRE_EMPTY_MS));
  }

  private remove(shell: Wrapper): void {
    const index = this.idle.indexOf(shell);
    if (index !== -1) this.idle.splice(index, 1);
  }
}

/** True when `launch` can run in a wrapper exactly as a direct spawn would run it (see `wrapperRun`). */
export function wrappable(launch: Launch): boolean {
  if (!Object.keys(launch.request.environment).every(isExportable) || !Object.keys(launch.inherited).every(isExportable)) return false;
  // A direct spawn reports a workspace it cannot enter (or a shell gone since it was found) as a failure; a wrapper
  // would only fail with an exit code.
  if (!canStart(launch) || !existsSync(WRAPPER_SHELL)) return false;
  // Past this size the wrapper's exec of the script's shell could fail with E2BIG, which a direct spawn reports as a failure.
  const env = scriptEnvironment(launch.inherited, launch.request.environment, launch.request.ticket, "0".repeat(32));
  return execSize(launch.shellPath, [launch.shellPath, ...launch.args], env) <= EXEC_ROOM;
}

/**
 * The cold path: starts a wrapper for `launch` now, with its FIFOs in the run's `io` folder, tells `beforeStart` who it
 * is, and waits until it is ready. A string says why it could not start.
 */
export async function startColdWrapper(launch: Launch, beforeStart: BeforeStart | undefined): Promise<ScriptShell | string> {
  const execa = await loadExeca();
  const paths = wrapperPaths(launch.request.runDir);
  try {
    mkdirSync(paths.io, { mode: 0o700 });
  } catch (error) {
    return `Could not make the folder ${paths.io}: ${describeError(error)}`;
  }
  const marker = newScriptMarker();
  const shell = startWrapper(execa, recipeOf(launch), { marker, cgroup: await launch.cgroups?.create(`s-${marker}`) }, paths.io, false);
  if (shell === undefined) return `Could not start ${WRAPPER_SHELL} to run the script.`;
  shell.onExit = () => {
    shell.exited = true;
    releaseWrapper(shell);
  };
  shell.subprocess.once("exit", shell.onExit);
  try {
    beforeStart?.({ marker: shell.marker, cgroup: shell.cgroup?.path, pid: shell.pid, startTime: shell.startTime, wrapped: true });
  } catch (error) {
    signalGroup(shell.pid, "SIGKILL");
    return `Could not record the run before starting it: ${describeError(error)}`;
  }
  if (!(await shell.ready)) {
    signalGroup(shell.pid, "SIGKILL");
    const said = shell.status.complaints;
    return `Could not start ${WRAPPER_SHELL} to run the script${said === "" ? "" : `: ${said}`}.`;
  }
  return handOver(shell, launch);
}

function recipeOf(launch: Launch): Recipe {
  return { inherited: launch.inherited, cgroups: launch.cgroups, workDir: launch.workDir, slotsDir: launch.slotsDir };
}

/**
 * Starts a wrapper with `recipe`'s environment and its marker, to join its new cgroup (released here if it cannot
 * start), making its FIFOs in `io`; its `ready` resolves once it said so. Undefined when it cannot start.
 */
function startWrapper(execa: Execa, recipe: Recipe, own: { marker: string; cgroup: ScriptCgroup | undefined }, io: string, slot: boolean): Wrapper | undefined {
  const { marker, cgroup: created } = own;
  const env: Record<string, string> = Object.create(null);
  for (const [name, value] of Object.entries(recipe.inherited)) env[name] = value;
  env[SCRIPT_MARKER_VARIABLE] = marker;
  let subprocess: ShellSubprocess;
  try {
    // In `/`, so that a waiting shell keeps no other folder busy; named for its work dir and this runner process.
    subprocess = startProcess(execa, WRAPPER_SHELL, wrapperArguments(recipe.workDir, { pid: process.pid, startTime: ownStartTime() }), "/", env, "pipe");
  } catch {
    created?.release();
    return undefined;
  }
  subprocess.catch(ignore);
  subprocess.on("error", ignore);
  const { pid, stdin, stdout, stderr } = subprocess;
  if (pid === undefined || stdin === null || stdout === null || stderr === null) {
    created?.release();
    return undefined;
  }
  // A shell that died before its command arrived makes the write fail; its exit tells the rest.
  stdin.on("error", ignore);
  const paths = wrapperPaths(io, io);
  // The shell moves itself in (silently), before it says `ready`; the runner moves it only if it did not (below).
  stdin.write(prologue(paths, created?.procsFile));
  let resolveGone: () => void = ignore;
  const gone = new Promise<void>((resolve) => (resolveGone = resolve));
  let resolveReady: (ready: boolean) => void = ignore;
  const ready = new Promise<boolean>((resolve) => (resolveReady = resolve));
  const shell: Wrapper = {
    recipe,
    subprocess,
    stdin,
    status: new WrapperStatus(stdout, stderr),
    pid,
    startTime: readProcessStat(pid)?.startTime,
    marker,
    cgroup: created,
    io,
    slot,
    ready,
    exited: false,
    gone,
    onExit: ignore,
  };
  subprocess.once("exit", () => {
    resolveReady(false);
    resolveGone();
  });
  shell.status.onReady(() => {
    // Moving a process in blocks the caller for milliseconds (the kernel waits for every CPU to quiesce): the wrapper
    // did it itself, so the runner's event loop only checks, and moves it only when the wrapper could not.
    if (shell.cgroup !== undefined && !shell.cgroup.holds(pid)) shell.cgroup = joinCgroup(shell.cgroup, pid);
    resolveReady(true);
  });
  return shell;
}

/** What a wrapper that will never run a script leaves: its cgroup, its slot. */
function releaseWrapper(shell: Wrapper): void {
  shell.cgroup?.release();
  if (shell.slot) rmSync(shell.io, { recursive: true, force: true });
  shell.status.stop(true);
}

/** Makes a ready wrapper the script's: no longer watched as idle, referenced like any script, and told what to run. */
function handOver(shell: Wrapper, launch: Launch): ScriptShell {
  shell.subprocess.off("exit", shell.onExit);
  setReferenced(shell.subprocess, true);
  const paths = wrapperPaths(launch.request.runDir);
  const env = scriptEnvironment(launch.inherited, launch.request.environment, launch.request.ticket, shell.marker);
  const command = runCommand(wrapperRun(launch, env), paths);
  return {
    ok: true,
    subprocess: shell.subprocess,
    pid: shell.pid,
    marker: shell.marker,
    cgroup: shell.cgroup,
    startTime: shell.startTime,
    wrapper: { paths, status: shell.status },
    // Ending stdin too: should the command fail to parse after all, the shell reads EOF and exits rather than wait.
    run: () => shell.stdin.end(command),
  };
}

function isLive(shell: Wrapper): boolean {
  // The exit event comes a turn of the event loop after the death: a zombie is gone too.
  return !shell.exited && !isProcessGone(shell.pid, shell.startTime);
}

/** A shell identifier. */
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Names a shell gives a value or a meaning of its own, so that passed through a shell they would not reach the script
 * as a direct spawn passes them. dash (/bin/sh here) resets IFS, OPTIND and PPID at startup and refuses to assign an
 * OPTIND that is not a number; bash (/bin/sh elsewhere) also computes LINENO, RANDOM, SECONDS and the like afresh
 * on every read, keeps EUID, UID, PPID, SHELLOPTS, BASHOPTS and its BASH_* variables read-only, and takes its options
 * from SHELLOPTS. PATH, HOME, CDPATH, ENV and PS1/PS2/PS4 are safe: the command execs an absolute path, holds no
 * unquoted word, enters an absolute folder, and a non-interactive shell without xtrace reads none of the others.
 * PWD and OLDPWD are safe too: the command sets back what `cd` changed (`CD_VARIABLES`).
 */
const SHELL_VARIABLES = new Set([
  "IFS",
  "OPTIND",
  "PPID",
  "LINENO",
  "RANDOM",
  "SRANDOM",
  "SECONDS",
  "EPOCHSECONDS",
  "EPOCHREALTIME",
  "HISTCMD",
  "BASHPID",
  "EUID",
  "UID",
  "GROUPS",
  "FUNCNAME",
  "DIRSTACK",
  "PIPESTATUS",
  "SHELLOPTS",
  "BASHOPTS",
]);

/**
 * True when a shell passes the variable on exactly as set: only those can be in a wrapper's environment (the shell
 * drops a name that is not an identifier) or be exported by its command.
 */
function isExportable(name: string): boolean {
  return IDENTIFIER.test(name) && !SHELL_VARIABLES.has(name) && !name.startsWith("BASH_");
}

/** What `cd` changes in the shell's environment; the command sets both back to a direct spawn's values. */
const CD_VARIABLES = ["PWD", "OLDPWD"] as const;

/**
 * What a wrapper runs for `launch`: enter the workspace, export what a direct spawn's environment `env` holds beyond
 * the wrapper's own (the request's variables and `TENDRIL_TICKET`; the marker is the wrapper's already), set back what
 * `cd` changed, then the script's shell. Every word is single-quoted, so every byte arrives as it is.
 */
function wrapperRun(launch: Launch, env: Readonly<Record<string, string>>): WrapperRun {
  const names = new Set([...Object.keys(launch.request.environment), "TENDRIL_TICKET", ...CD_VARIABLES]);
  names.delete(SCRIPT_MARKER_VARIABLE);
  const exported: string[] = [];
  for (const name of names) {
    const value = env[name];
    if (value !== undefined) exported.push(`${name}=${quote(value)}`);
  }
  const unset = CD_VARIABLES.filter((name) => env[name] === undefined);
  const steps = [`cd -- ${quote(launch.request.cwd)}`, `export ${exported.join(" ")}`];
  if (unset.length > 0) steps.push(`unset ${unset.join(" ")}`);
  return { steps, argv: [launch.shellPath, ...launch.args] };
}

function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Room for the strings of an exec that Linux grants whatever the stack limit (32 pages, pointers included). */
const EXEC_ROOM = 128 * 1024;

/** Bytes an exec of `file` with `argv` and `env` takes: the kernel copies the file name, every string with its NUL, and a pointer to each. */
function execSize(file: string, argv: readonly string[], env: Readonly<Record<string, string>>): number {
  let size = Buffer.byteLength(file) + 1;
  for (const text of argv) size += Buffer.byteLength(text) + 1 + 8;
  for (const [name, value] of Object.entries(env)) size += Buffer.byteLength(name) + Buffer.byteLength(value) + 2 + 8;
  return size;
}

function sameEnvironment(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const names = Object.keys(a);
  return names.length === Object.keys(b).length && names.every((name) => b[name] === a[name]);
}

/**
 * True when the working directory can be entered and the script's shell executed, as a spawn needs. Synchronous:
 * three local system calls take microseconds, where trips through the thread pool would delay every dispatch.
 */
function canStart(launch: Launch): boolean {
  const { cwd } = launch.request;
  try {
    accessSync(cwd, fsConstants.X_OK);
    accessSync(launch.shellPath, fsConstants.X_OK);
    return statSync(cwd).isDirectory();
  } catch {
    return false;
  }
}

/** Refs or unrefs a shell process and its pipes (sockets), which each keep the event loop alive while referenced. */
function setReferenced(subprocess: ShellSubprocess, referenced: boolean): void {
  for (const stream of [subprocess.stdin, subprocess.stdout, subprocess.stderr]) {
    if (!(stream instanceof Socket)) continue;
    if (referenced) stream.ref();
    else stream.unref();
  }
  if (referenced) subprocess.ref();
  else subprocess.unref();
}
