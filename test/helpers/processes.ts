/**
 * Real child processes for tests: each is started in its own process group and stopped by PID (the
 * whole group, so workerd children go too), and the test can check that nothing is left.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { waitFor } from "./wait.js";

/** The project folder. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The `tendril` command's entry file. */
export const TENDRIL_BIN = join(ROOT, "bin", "tendril.js");

/** True when a process with this pid exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** Every live pid whose process group is `pgid`. */
export function pidsInGroup(pgid: number): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[2]) === pgid && fields[0] !== "Z") pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** Every live pid whose working directory is inside `dir` (scripts run in their workspace). */
export function pidsWorkingIn(dir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cwd = readlinkSync(`/proc/${entry}/cwd`);
      if ((cwd === dir || cwd.startsWith(`${dir}/`)) && isAlive(Number(entry))) pids.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

/** Sends a signal to a whole process group; a group that is gone is fine. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
  }
}

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

/** Starts the `tendril` command with the given arguments. */
export function startTendril(args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT): TestProcess {
  return startProcess(process.execPath, [TENDRIL_BIN, ...args], env, cwd);
}
