/**
 * The spawn primitives both ways of starting a script share (a shell spawned for it in process-manager.ts, or one
 * spawned ahead of time in warm-shell.ts): starting a shell process in its own group, the environment a script
 * gets, and what describes one start. Nothing here tracks a process once it runs.
 */
import type { ScriptPayload } from "../shared/api.js";
import type { Outcome } from "../shared/protocol.js";
import { SCRIPT_MARKER_VARIABLE, type CgroupTree, type ScriptCgroup } from "./containment.js";
import type { WrapperStatus } from "./wrapper-status.js";
import type { WrapperPaths } from "./wrapper.js";

/** Shell names as the protocol spells them. */
export type ShellName = ScriptPayload["shell"];

/** Variables of the runner's own environment that never reach a script: they are the runner's secrets. */
export const SECRET_ENVIRONMENT_NAMES: readonly string[] = ["TENDRIL_RUNNER_TOKEN", "TENDRIL_SERVER_TOKEN"];

/** What to run. */
export interface SpawnRequest {
  /** Exported to the script as `TENDRIL_TICKET`. */
  ticket: string;
  shell: ShellName;
  /** The script file, passed to the shell. */
  scriptPath: string;
  /** The run folder: a wrapper keeps its FIFOs and the exit status there. */
  runDir: string;
  /** The working directory. */
  cwd: string;
  /** Passed to the script after its path. */
  arguments: readonly string[];
  /** Added to (and overriding) the runner's environment. */
  environment: Readonly<Record<string, string>>;
}

/** What names a script's processes before (or, for a warm shell, as) it starts: a successor runner finds them by it. */
export interface ScriptIdentity {
  /** The value of `TENDRIL_SCRIPT_MARKER` in its environment. */
  marker: string;
  /** Its cgroup's folder, when it gets one. */
  cgroup: string | undefined;
  /** Its pid and start time, when the process exists already (a wrapper). */
  pid?: number;
  startTime?: number | undefined;
  /** It is a wrapper (wrapper.ts): a later runner process can re-attach to the script. */
  wrapped?: boolean;
}

/**
 * Told who the script's process will be, before it exists (or, for a warm shell, before it runs the script), so
 * that a record of it is on disk before anything can run; a throw fails the start.
 */
export type BeforeStart = (identity: ScriptIdentity) => void;

/** What starting one script takes, worked out once for whichever path starts it. */
export interface Launch {
  request: SpawnRequest;
  /** The runner's work dir: wrappers are named for it. */
  workDir: string;
  /** Where warm wrappers make their slots (beside the run folders: a claimed slot is renamed into one). */
  slotsDir: string;
  /** The script's shell, found on the base environment's PATH. */
  shellPath: string;
  /** The shell's arguments: the script and the script's own arguments. */
  args: string[];
  /** The base environment without the runner's secrets (`inheritedEnvironment`). */
  inherited: Readonly<Record<string, string>>;
  cgroups: CgroupTree | undefined;
  beforeStart: BeforeStart | undefined;
}

/** The process that becomes the script: a shell spawned for it, or a warm one. */
export interface ScriptShell {
  ok: true;
  subprocess: ShellSubprocess;
  /** Its pid, which is also the id of its process group. */
  pid: number;
  /** The value of `TENDRIL_SCRIPT_MARKER` in its environment. */
  marker: string;
  /** Its cgroup, already holding it; undefined when it has none. */
  cgroup: ScriptCgroup | undefined;
  /** When it started (clock ticks after boot), when already known. */
  startTime?: number | undefined;
  /** A wrapper (wrapper.ts): its files and its status lines. */
  wrapper?: { paths: WrapperPaths; status: WrapperStatus };
  /** Makes it run the script, once our listeners are on its pipes; a shell spawned for the script runs it already. */
  run?: () => void;
}

/** Something that ends: a script process, as the warm-shell pool waits for it before refilling. */
export interface Ending {
  /** Resolves with how it ended, or undefined when it was released first. */
  wait(): Promise<Outcome | undefined>;
}

/** Moves `pid` into `cgroup`; the cgroup when that worked, undefined when there is none or it failed. */
export function joinCgroup(cgroup: ScriptCgroup | undefined, pid: number): ScriptCgroup | undefined {
  return cgroup !== undefined && cgroup.adopt(pid) ? cgroup : undefined;
}

/** execa's function. */
export type Execa = typeof import("execa").execa;
let execaModule: Promise<typeof import("execa")> | undefined;

/** execa is loaded at the first spawn: an idle runner never needs it, and stays smaller without it. */
export async function loadExeca(): Promise<Execa> {
  execaModule ??= import("execa");
  return (await execaModule).execa;
}

/** A shell process as execa started it. */
export type ShellSubprocess = ReturnType<typeof startProcess>;

/** Spawns a script's shell; `stdin` is "pipe" only for a warm shell, which reads the command to run from it. */
export function startProcess(execa: Execa, file: string, args: string[], cwd: string, env: Record<string, string>, stdin: "ignore" | "pipe") {
  return execa(file, args, {
    cwd,
    env,
    extendEnv: false,
    // Its own process group, so the whole tree can be signalled at once (and our Ctrl-C does not reach it).
    detached: true,
    stdin,
    stdout: "pipe",
    stderr: "pipe",
    buffer: false,
    reject: false,
    shell: false,
    // Running scripts outlive the runner; a new runner finds them by their run's record.
    cleanup: false,
    windowsHide: true,
  });
}

/** The runner's environment minus its secrets: what every script inherits. */
export function inheritedEnvironment(base: NodeJS.ProcessEnv): Record<string, string> {
  // No prototype: a variable named `__proto__` is then an ordinary key.
  const env: Record<string, string> = Object.create(null);
  for (const [name, value] of Object.entries(base)) {
    if (value !== undefined && !SECRET_ENVIRONMENT_NAMES.includes(name)) env[name] = value;
  }
  return env;
}

/** The inherited environment plus the request's variables, `TENDRIL_TICKET` and the marker. */
export function scriptEnvironment(
  inherited: Readonly<Record<string, string>>,
  requested: Readonly<Record<string, string>>,
  ticket: string,
  marker: string,
): Record<string, string> {
  const env: Record<string, string> = Object.create(null);
  for (const [name, value] of Object.entries(inherited)) env[name] = value;
  for (const [name, value] of Object.entries(requested)) env[name] = value;
  env.TENDRIL_TICKET = ticket;
  // Last, so a request cannot choose it: the marker is how cancel finds processes that left the group.
  env[SCRIPT_MARKER_VARIABLE] = marker;
  return env;
}

/** Swallows an event or a rejection; module-level so that a listener left behind retains nothing. */
export function ignore(): void {
  // Nothing to do.
}
