/**
 * Warm shells: `/bin/sh` processes started before they are needed, so that a script usually starts by exec'ing
 * into one instead of forking the runner. A fork of the large Node process blocks its event loop for milliseconds,
 * and the cold path pays it on the dispatch's critical path (then a second exec, when the cgroup wrapper runs).
 *
 * A warm shell is what the cold path would spawn, minus the script: its own process group and session, piped
 * output, the inherited environment with a marker of its own, a cgroup of its own (joined at once); it waits
 * reading its stdin. A claim writes it one line (enter the workspace, export the request's variables, exec the
 * script's shell) and ends its stdin, so the script is then the same process, pid and marker included. Whatever a
 * shell could not reproduce exactly takes the cold path. A shell whose runner died reads EOF and exits.
 */
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { Socket } from "node:net";
import type { Writable } from "node:stream";
import { SCRIPT_MARKER_VARIABLE, isProcessGone, newScriptMarker, readProcessStat, signalGroup, type CgroupTree, type ScriptCgroup } from "./containment.js";
import {
  ignore,
  joinCgroup,
  loadExeca,
  scriptEnvironment,
  startProcess,
  type Ending,
  type Execa,
  type Launch,
  type ScriptShell,
  type ShellSubprocess,
} from "./spawn.js";

/** The shell that waits; it execs the script's own shell when claimed. */
const WARM_SHELL = "/bin/sh";

/** How a pool behaves. */
export interface WarmShellOptions {
  /** How many shells wait at most; default 2 (a script that starts while another just started finds one too). */
  size?: number;
  /** How long a script that still runs holds back the refill after it started; default 50 ms. */
  refillDelayMs?: number;
}

/** The environment and cgroup tree a shell is warmed with; a script can use it only when its own are the same. */
interface Recipe {
  inherited: Readonly<Record<string, string>>;
  cgroups: CgroupTree | undefined;
}

/** One waiting shell. */
interface WarmShell {
  recipe: Recipe;
  subprocess: ShellSubprocess;
  stdin: Writable;
  pid: number;
  /** With the pid, names this process for good. */
  startTime: number | undefined;
  marker: string;
  cgroup: ScriptCgroup | undefined;
  exited: boolean;
  /** Resolves once it has exited while idle. */
  gone: Promise<void>;
  /** Its `exit` listener while it waits; removed when it is claimed. */
  onExit: () => void;
}

/**
 * Shells that wait for the next script. Created without any process: `refillAfter`, called after each script
 * started (the first one always cold), starts them, so an idle runner that never ran a script has none.
 */
export class WarmShellPool {
  private readonly size: number;
  private readonly refillDelayMs: number;
  private readonly idle: WarmShell[] = [];
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
  }

  /** The pids of the shells waiting now. */
  get idlePids(): number[] {
    return this.idle.map((shell) => shell.pid);
  }

  /**
   * A waiting shell that will run `launch` exactly as the cold path would, taken out of the pool; undefined when
   * there is none (the caller then takes the cold path). Call `run` on the result once its pipes are listened to.
   */
  claim(launch: Launch): ScriptShell | undefined {
    if (this.idle.length === 0 || !Object.keys(launch.request.environment).every(isExportable)) return undefined;
    // The cold path reports a workspace it cannot enter (or a shell gone since it was found) as a failure; in a warm
    // shell, `cd` or `exec` would only fail with an exit code.
    if (!canStart(launch)) return undefined;
    this.retireStale(launch);
    const shell = this.idle.find(isLive);
    if (shell === undefined) return undefined;
    const env = scriptEnvironment(launch.inherited, launch.request.environment, launch.request.ticket, shell.marker);
    // Past this size the exec could fail with E2BIG, which the cold path reports as a failure and a shell would not.
    if (execSize(launch.shellPath, [launch.shellPath, ...launch.args], env) > EXEC_ROOM) return undefined;
    this.idle.splice(this.idle.indexOf(shell), 1);
    return handOver(shell, warmCommand(launch, env));
  }

  /**
   * Refills the pool, with `launch`'s environment and cgroups, after `script` started (warm or cold): once it has
   * exited, or after `refillDelayMs` if it still runs. A refill forks the runner, which stalls its event loop for
   * milliseconds: done while a script is starting, it would delay that script; done right after the exit, it
   * happens while the control plane is busy storing the exit, before it dispatches the next script.
   */
  refillAfter(script: Ending, launch: Launch): void {
    if (this.disposal !== undefined) return;
    this.recipe = { inherited: launch.inherited, cgroups: launch.cgroups };
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
        const shell = this.warmUp(execa, this.recipe);
        if (shell === undefined) {
          this.broken = true;
          return;
        }
        this.idle.push(shell);
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

  /** Starts one shell that waits with `recipe`'s environment (and a marker of its own) in a cgroup of its own. */
  private warmUp(execa: Execa, recipe: Recipe): WarmShell | undefined {
    const marker = newScriptMarker();
    const env: Record<string, string> = Object.create(null);
    for (const [name, value] of Object.entries(recipe.inherited)) env[name] = value;
    env[SCRIPT_MARKER_VARIABLE] = marker;
    const created = recipe.cgroups?.create(`s-${marker}`);
    let subprocess: ShellSubprocess;
    try {
      // In `/`, so that a waiting shell keeps no other folder busy.
      subprocess = startProcess(execa, WARM_SHELL, ["-s"], "/", env, "pipe");
    } catch {
      created?.release();
      return undefined;
    }
    subprocess.catch(ignore);
    subprocess.on("error", ignore);
    const { pid, stdin } = subprocess;
    if (pid === undefined || stdin === null) {
      created?.release();
      return undefined;
    }
    // A shell that died before its command arrived makes the write fail; its exit tells the rest.
    stdin.on("error", ignore);
    // Like the cold path's wrapper, the shell moves itself in (silently), and the runner moves it too.
    if (created !== undefined) stdin.write(`{ echo $$ > ${quote(created.procsFile)}; } 2>/dev/null\n`);
    const cgroup = joinCgroup(created, pid);
    let resolveGone: () => void = ignore;
    const gone = new Promise<void>((resolve) => (resolveGone = resolve));
    const shell: WarmShell = {
      recipe,
      subprocess,
      stdin,
      pid,
      startTime: readProcessStat(pid)?.startTime,
      marker,
      cgroup,
      exited: false,
      gone,
      onExit: () => {
        shell.exited = true;
        this.remove(shell);
        shell.cgroup?.release();
        resolveGone();
      },
    };
    subprocess.once("exit", shell.onExit);
    // A waiting shell does not keep the runner alive; it is referenced again when a script claims it.
    setReferenced(subprocess, false);
    return shell;
  }

  /** Kills the waiting shells warmed with another environment or cgroup tree: the refill replaces them. */
  private retireStale(launch: Launch): void {
    for (const shell of [...this.idle]) {
      if (shell.recipe.cgroups !== launch.cgroups || !sameEnvironment(shell.recipe.inherited, launch.inherited)) void this.retire(shell);
    }
  }

  /** Kills a waiting shell by its process group; resolves once it is gone (its cgroup released). */
  private retire(shell: WarmShell): Promise<void> {
    this.remove(shell);
    if (!shell.exited) {
      // Referenced again until its exit is seen: a runner that waits for it while stopping has nothing else to keep
      // its event loop alive, and Node would exit (code 13) with the shell's cgroup still there.
      shell.subprocess.ref();
      signalGroup(shell.pid, "SIGKILL");
    }
    return shell.gone;
  }

  private remove(shell: WarmShell): void {
    const index = this.idle.indexOf(shell);
    if (index !== -1) this.idle.splice(index, 1);
  }
}

/** Makes a claimed shell the script's: no longer watched as idle, referenced like any script, and told what to run. */
function handOver(shell: WarmShell, command: string): ScriptShell {
  shell.subprocess.off("exit", shell.onExit);
  setReferenced(shell.subprocess, true);
  return {
    ok: true,
    subprocess: shell.subprocess,
    pid: shell.pid,
    marker: shell.marker,
    cgroup: shell.cgroup,
    startTime: shell.startTime,
    // Ending stdin too: should `cd` or `exec` fail after all, the shell reads EOF and exits rather than wait.
    run: () => shell.stdin.end(command),
  };
}

function isLive(shell: WarmShell): boolean {
  // The exit event comes a turn of the event loop after the death: a zombie is gone too.
  return !shell.exited && !isProcessGone(shell.pid, shell.startTime);
}

/** A shell identifier. */
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Names a shell gives a value or a meaning of its own, so that passed through a shell they would not reach the script
 * as the cold path passes them. dash (/bin/sh here) resets IFS, OPTIND and PPID at startup and refuses to assign an
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
 * True when a shell passes the variable on exactly as set: only those can be in a warm shell's environment (the
 * shell drops a name that is not an identifier) or be exported by its command.
 */
function isExportable(name: string): boolean {
  return IDENTIFIER.test(name) && !SHELL_VARIABLES.has(name) && !name.startsWith("BASH_");
}

/** What `cd` changes in the shell's environment; the command sets both back to the cold path's values. */
const CD_VARIABLES = ["PWD", "OLDPWD"] as const;

/**
 * The line that makes a warm shell the script: enter the workspace, export what the cold path's environment `env`
 * holds beyond the shell's own (the request's variables and `TENDRIL_TICKET`; the marker is the shell's already),
 * set back what `cd` changed, and exec the script's shell with stdin from /dev/null, as the cold path's "ignore"
 * gives it. Every word is single-quoted, so every byte arrives as it is.
 */
function warmCommand(launch: Launch, env: Readonly<Record<string, string>>): string {
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
  steps.push(`exec ${[launch.shellPath, ...launch.args].map(quote).join(" ")} </dev/null`);
  return `${steps.join(" && ")}\n`;
}

/** Single-quotes a word: inside single quotes, only the quote itself needs care. */
function quote(word: string): string {
  return `'${word.replaceAll("'", "'\\''")}'`;
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
