/**
 * OS processes only: spawn a script in its own process group, report its output chunks and how it ended,
 * kill its whole tree, or stop tracking it without killing it. Nothing here knows about the protocol's
 * transport or sequence numbers.
 */
import { access, stat } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { constants as osConstants } from "node:os";
import { delimiter, join } from "node:path";
import type { Readable } from "node:stream";
import { execa } from "execa";
import type { Outcome } from "../shared/protocol.js";
import type { ShellName } from "./workspace.js";

/** Variables of the runner's own environment that never reach a script: they are the runner's secrets. */
export const SECRET_ENVIRONMENT_NAMES: readonly string[] = ["TENDRIL_RUNNER_TOKEN", "TENDRIL_SERVER_TOKEN"];

/** The two output streams of a process. */
export type StreamName = "stdout" | "stderr";

/** The outcome of a process that never ran. */
export type FailedOutcome = Extract<Outcome, { kind: "failed" }>;

/** What to run. */
export interface SpawnRequest {
  /** Exported to the script as `TENDRIL_TICKET`. */
  ticket: string;
  shell: ShellName;
  /** The script file, passed to the shell. */
  scriptPath: string;
  /** The working directory. */
  cwd: string;
  /** Passed to the script after its path. */
  arguments: readonly string[];
  /** Added to (and overriding) the runner's environment. */
  environment: Readonly<Record<string, string>>;
}

/** How processes are handled. */
export interface ProcessManagerOptions {
  /** After the process exited, how long to wait for its pipes to close before reporting the outcome. */
  pipeDrainMs: number;
  /** UNSAFE: every kill becomes a no-op. */
  disableKill: boolean;
  /** The environment scripts inherit (secrets removed) and the PATH the shell is looked up on; default `process.env`. */
  baseEnvironment?: NodeJS.ProcessEnv;
}

/** Receives a process's output as it arrives. */
export type OutputHandler = (stream: StreamName, chunk: Buffer) => void;

/** A spawn either produced a process, or a `failed` outcome with a sentence saying why. */
export type SpawnResult = { ok: true; process: ScriptProcess } | { ok: false; outcome: FailedOutcome };

/** Spawns a script in its own process group; output goes to `onOutput` until the process ends or is released. */
export async function spawnScript(request: SpawnRequest, onOutput: OutputHandler, options: ProcessManagerOptions): Promise<SpawnResult> {
  const base = options.baseEnvironment ?? process.env;
  const shellPath = await findExecutable(request.shell, base.PATH);
  if (shellPath === undefined) {
    return failed(`The shell "${request.shell}" was not found on this machine's PATH.`);
  }
  let subprocess: ReturnType<typeof startProcess>;
  try {
    subprocess = startProcess(shellPath, request, scriptEnvironment(base, request.environment, request.ticket));
  } catch (error) {
    return failed(`Could not start ${request.shell} (${shellPath}): ${describeError(error)}`);
  }
  // With `reject: false` the promise resolves even on failure; nothing here needs its result.
  subprocess.catch(() => undefined);
  // Node sets the pid synchronously exactly when the spawn succeeded (exec errors are reported by uv_spawn itself).
  if (subprocess.pid === undefined) {
    const problem = await spawnError(subprocess);
    return failed(`Could not start ${request.shell} (${shellPath}) in ${request.cwd}: ${describeError(problem)}`);
  }
  // Attach the output listeners in this same tick: execa resumes unread pipes on the next one.
  return { ok: true, process: new ScriptProcess(subprocess, subprocess.pid, onOutput, options) };
}

function failed(message: string): SpawnResult {
  return { ok: false, outcome: { kind: "failed", message } };
}

function startProcess(shellPath: string, request: SpawnRequest, env: Record<string, string>) {
  return execa(shellPath, [...shellArguments(request.shell, request.scriptPath), ...request.arguments], {
    cwd: request.cwd,
    env,
    extendEnv: false,
    // Its own process group, so the whole tree can be signalled at once (and our Ctrl-C does not reach it).
    detached: true,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    buffer: false,
    reject: false,
    shell: false,
    // Running scripts outlive the runner; a new runner reports them lost (-46) instead.
    cleanup: false,
    windowsHide: true,
  });
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
async function spawnError(subprocess: ReturnType<typeof startProcess>): Promise<unknown> {
  const fromEvent = new Promise<unknown>((resolve) => subprocess.once("error", resolve));
  const fromResult = subprocess.then((result) => result.cause ?? result.message);
  return Promise.race([fromEvent, fromResult]);
}

/** The runner's environment minus its secrets, plus the request's variables, plus `TENDRIL_TICKET`. */
export function scriptEnvironment(
  base: NodeJS.ProcessEnv,
  requested: Readonly<Record<string, string>>,
  ticket: string,
): Record<string, string> {
  // No prototype: a variable named `__proto__` is then an ordinary key.
  const env: Record<string, string> = Object.create(null);
  for (const [name, value] of Object.entries(base)) {
    if (value !== undefined && !SECRET_ENVIRONMENT_NAMES.includes(name)) env[name] = value;
  }
  for (const [name, value] of Object.entries(requested)) env[name] = value;
  env.TENDRIL_TICKET = ticket;
  return env;
}

/** Finds an executable file named `name` on a PATH value, like the shell would. */
export async function findExecutable(name: string, pathValue: string | undefined): Promise<string | undefined> {
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

/** Sends a signal to a whole process group; false when the group is already gone (ESRCH). */
export function signalGroup(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch (error) {
    if (errorCode(error) === "ESRCH") return false;
    throw error;
  }
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

/** A running script process: its pid, its end, and the ways to stop it or let it go. */
export class ScriptProcess {
  private readonly streams: Pipe[];
  private readonly exitSeen = deferred<void>();
  private readonly ended = deferred<Outcome | undefined>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private exitOutcome: Outcome | undefined;
  private killing: Promise<string[]> | undefined;
  private released = false;
  private reported = false;
  private readonly onExit = (code: number | null, signal: NodeJS.Signals | null) => this.handleExit(code, signal);
  private readonly onError = () => {
    // Spawn errors were handled before this object existed; later ones (a failed kill) change nothing.
  };

  constructor(
    private readonly subprocess: ReturnType<typeof startProcess>,
    /** The process id, which is also the id of its process group. */
    readonly pid: number,
    onOutput: OutputHandler,
    private readonly options: ProcessManagerOptions,
  ) {
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
          error: () => {
            // A pipe error ends that pipe; `close` follows and the outcome still comes from the exit.
          },
        },
      };
      entry.stream.on("data", entry.listeners.data);
      entry.stream.on("close", entry.listeners.close);
      entry.stream.on("error", entry.listeners.error);
      return entry;
    });
    subprocess.on("exit", this.onExit);
    subprocess.on("error", this.onError);
  }

  /** True once the process itself has exited (its pipes may still be draining). */
  get hasExited(): boolean {
    return this.exitOutcome !== undefined;
  }

  /** Resolves with how the process ended, after its output was delivered; with `undefined` when released first. */
  wait(): Promise<Outcome | undefined> {
    return this.ended.promise;
  }

  /**
   * SIGTERM to the process group, then SIGKILL to the group if the process has not exited after `graceMs`.
   * Resolves with the signals actually sent (none when it had exited, or kills are disabled). Runs once;
   * later calls get the same answer.
   */
  killTree(graceMs: number): Promise<string[]> {
    this.killing ??= this.runKillTree(graceMs);
    return this.killing;
  }

  /** Best-effort SIGKILL to the process group without waiting; returns the signals sent. */
  killNow(): string[] {
    // After the outcome was reported the group id may belong to someone else one day: leave it alone.
    if (this.options.disableKill || this.released || this.reported) return [];
    return signalGroup(this.pid, "SIGKILL") ? ["SIGKILL"] : [];
  }

  /** Stops tracking the process without killing it: listeners removed, pipes destroyed, timers cleared, unref'd. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.detach();
    this.subprocess.unref();
    this.exitSeen.resolve();
    if (!this.reported) {
      this.reported = true;
      this.ended.resolve(undefined);
    }
  }

  private async runKillTree(graceMs: number): Promise<string[]> {
    if (this.options.disableKill || this.hasExited || this.released) return [];
    const sent: string[] = [];
    if (!signalGroup(this.pid, "SIGTERM")) return sent;
    sent.push("SIGTERM");
    const exited = await this.waitForExit(graceMs);
    if (exited || this.released) return sent;
    if (signalGroup(this.pid, "SIGKILL")) sent.push("SIGKILL");
    return sent;
  }

  /** True when the process exits within `ms`. */
  private async waitForExit(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = this.startTimer(ms, resolve);
    });
    await Promise.race([this.exitSeen.promise, timeout]);
    if (timer !== undefined) this.stopTimer(timer);
    return this.hasExited;
  }

  private handleExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exitOutcome !== undefined) return;
    this.exitOutcome = outcomeOfExit(code, signal);
    this.exitSeen.resolve();
    if (this.maybeReport()) return;
    // A grandchild may hold the pipes open forever: wait for them only so long.
    this.startTimer(this.options.pipeDrainMs, () => this.report());
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
    this.ended.resolve(this.exitOutcome);
  }

  /** Removes our listeners, destroys the pipes and clears the timers. */
  private detach(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const { stream, listeners } of this.streams) {
      stream.off("data", listeners.data);
      stream.off("close", listeners.close);
      // Keep swallowing errors: destroying a pipe can still emit one.
      stream.destroy();
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

  private stopTimer(timer: NodeJS.Timeout): void {
    clearTimeout(timer);
    this.timers.delete(timer);
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
  error: () => void;
}

function errorCode(error: unknown): string | undefined {
  if (typeof error === "object" && error !== null && "code" in error && typeof error.code === "string") return error.code;
  return undefined;
}

function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
