/**
 * Real child processes for tests: each is started in its own process group and stopped by PID (the
 * whole group, so workerd children go too), and the test can check that nothing is left. Also the
 * process helpers every test folder shares: what /proc says about a pid, stopping by pid, temporary folders.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, readdirSync, readlinkSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { assertDistBuilt } from "./dist.js";
import { waitFor } from "./wait.js";

/** The project folder. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The `tendril` command's entry file. */
export const TENDRIL_BIN = join(ROOT, "bin", "tendril.js");

// ---------------------------------------------------------------------------------------------------
// processes as /proc shows them

/** Every pid for which `matches` holds; a process that is gone meanwhile (or not ours to read) does not match. */
function pidsWhere(matches: (pid: number) => boolean): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (matches(Number(entry))) pids.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

/** A process's command name, state, parent and process group, from /proc/<pid>/stat (the name may hold spaces and parentheses). */
function stat(pid: number): { command: string; state: string; ppid: number; pgid: number } {
  const text = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { command: text.slice(text.indexOf("(") + 1, text.lastIndexOf(")")), state: fields[0]!, ppid: Number(fields[1]), pgid: Number(fields[2]) };
}

/** True when a process with this pid exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const { state } = stat(pid);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** The process group of a process. */
export function processGroupOf(pid: number): number {
  return stat(pid).pgid;
}

/** The parent of a process; undefined once it is gone. */
export function parentOf(pid: number): number | undefined {
  try {
    return stat(pid).ppid;
  } catch {
    return undefined;
  }
}

/** Every live pid whose process group is `pgid`. */
export function pidsInGroup(pgid: number): number[] {
  return pidsWhere((pid) => {
    const { state, pgid: group } = stat(pid);
    return group === pgid && state !== "Z";
  });
}

/** Every live pid in process group `pgid` whose command name is `name`. */
export function pidsInGroupNamed(pgid: number, name: string): number[] {
  return pidsWhere((pid) => {
    const { command, state, pgid: group } = stat(pid);
    return command === name && group === pgid && state !== "Z";
  });
}

/** The script wrappers (`/bin/sh -s tendril-wrapper ...`) whose parent is `parent`: a runner's warm and cold shells. */
export function wrappersStartedBy(parent: number): number[] {
  return pidsWhere((pid) => stat(pid).ppid === parent && readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("/bin/sh\0-s\0tendril-wrapper\0"));
}

/** Every live pid whose working directory is inside `dir` (scripts run in their workspace). */
export function pidsWorkingIn(dir: string): number[] {
  return pidsWhere((pid) => {
    const cwd = readlinkSync(`/proc/${pid}/cwd`);
    return (cwd === dir || cwd.startsWith(`${dir}/`)) && isAlive(pid);
  });
}

/** Every live pid but this one whose environment holds exactly `name=value` (the test's own view, independent of the runner). */
export function pidsWithEnvironment(name: string, value: string): number[] {
  const wanted = `${name}=${value}`;
  return pidsWhere(
    (pid) => pid !== process.pid && readFileSync(`/proc/${pid}/environ`).toString("utf8").split("\0").includes(wanted) && isAlive(pid),
  );
}

/**
 * True while the process sleeps in the kernel writing to its full output (its reader does not read). Node gives
 * a child's stdio "pipes" as Unix socket pairs, where a blocked writer waits in `sock_alloc_send_pskb`; a real
 * pipe's writer waits in `pipe_write` (`anon_pipe_write` on newer kernels).
 */
export function isBlockedOnWrite(pid: number): boolean {
  try {
    return /pipe_write|sock_alloc_send|unix_stream_sendmsg/.test(readFileSync(`/proc/${pid}/wchan`, "utf8"));
  } catch {
    return false;
  }
}

/** Bytes the process has written so far (`wchar` of /proc/<pid>/io). */
export function bytesWritten(pid: number): number {
  const match = /^wchar:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, "utf8"));
  if (match === null) throw new Error(`no wchar in /proc/${pid}/io`);
  return Number(match[1]);
}

/** Waits for a pid file a script writes (`echo $$ > file`), and returns the pid. */
export async function pidFrom(file: string): Promise<number> {
  return waitFor(() => (existsSync(file) ? Number(readFileSync(file, "utf8").trim()) || undefined : undefined), {
    what: `pid file ${file}`,
  });
}

// ---------------------------------------------------------------------------------------------------
// stopping processes by pid

/** Sends a signal to a whole process group; a group that is gone is fine. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
  }
}

/** SIGKILLs a process group; a group that is gone (or cannot be signalled) is fine. */
export function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** SIGKILLs one process; a process that is gone (or cannot be signalled) is fine. */
export function killPid(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** SIGKILLs a script a test left running: its process group (it leads one of its own) and the process itself. */
export function killScript(pid: number): void {
  signalGroup(pid, "SIGKILL");
  killPid(pid);
}

// ---------------------------------------------------------------------------------------------------
// temporary folders

/** A new empty folder `tendril-<name>-XXXXXX` in the system's temporary folder. */
export function tempDir(name: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `tendril-${name}-`));
}

/** Removes a folder and everything in it; a folder that is gone is fine. */
export function removeDir(dir: string): Promise<void> {
  return rm(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------------
// child processes

/** A child process in its own group, with its output collected. */
export interface TestProcess {
  pid: number;
  child: ChildProcess;
  /** Everything printed so far (stdout and stderr interleaved). */
  output(): string;
  stdout(): string;
  /** Resolves with the exit code (or signal) once the process exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Stops the whole group: SIGTERM, then SIGKILL after `graceMs`; waits until no process of the group is left. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts `node bin/tendril.js ...args` (or another command) in its own process group. */
export function startProcess(command: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT): TestProcess {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, CLOUDFLARE_CF_FETCH_ENABLED: "false", WRANGLER_SEND_METRICS: "false", ...env },
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let all = "";
  let out = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    all += chunk.toString();
    out += chunk.toString();
  });
  child.stderr!.on("data", (chunk: Buffer) => {
    all += chunk.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }));
  });
  const pid = child.pid!;
  return {
    pid,
    child,
    output: () => all,
    stdout: () => out,
    exited,
    async stop(graceMs = 5_000) {
      signalGroup(pid, "SIGTERM");
      try {
        await waitFor(() => pidsInGroup(pid).length === 0, { timeoutMs: graceMs, what: `process group ${pid} to exit` });
      } catch {
        signalGroup(pid, "SIGKILL");
        await waitFor(() => pidsInGroup(pid).length === 0, { timeoutMs: 5_000, what: `process group ${pid} to die` });
      }
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 2_000))]);
    },
  };
}

/** Starts the `tendril` command with the given arguments (built from the current sources by the global setup). */
export function startTendril(args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT): TestProcess {
  assertDistBuilt({ withWorker: args[0] === "control-plane" || args[0] === "start" });
  return startProcess(process.execPath, [TENDRIL_BIN, ...args], env, cwd);
}
