/**
 * The child processes of `startTendril`: each in a process group of its own, stopped by PID (the whole group, so
 * workerd goes with the control plane), and never left behind — `stop()` ends them, and so does this process's exit
 * (SIGKILL, the only thing an `exit` handler can do). Every child carries an environment variable naming its
 * instance; scripts inherit it from their runner, so the processes of scripts (which the runner starts in groups
 * of their own, and which a stopping runner leaves to its successor) are found and stopped too (Linux, /proc).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";

/** The environment variable every process of one `startTendril` instance (and every script it runs) carries. */
export const INSTANCE_VARIABLE = "TENDRIL_TESTING_INSTANCE";

/** Most output kept per child, for error messages. */
const OUTPUT_LIMIT = 256 * 1024;

/** A child process leading a process group of its own. */
export interface GroupProcess {
  /** Its pid, which is also its process group's id. */
  pid: number;
  /** What it printed so far on stdout (the last 256 KiB). */
  stdout(): string;
  /** What it printed so far on stdout and stderr, interleaved (the last 256 KiB). */
  output(): string;
  /** Its exit code, or null while it runs (or when a signal ended it). */
  exitCode(): number | null;
  /** True once it has exited. */
  exited(): boolean;
}

/** Everything one instance must stop, for its `stop()` and for the exit handler. */
export class ProcessSet {
  private readonly groups = new Map<number, ChildProcess>();
  private readonly dirs = new Set<string>();
  private stopped = false;

  /** `instance` is the value of `INSTANCE_VARIABLE` in the environment of every child. */
  constructor(readonly instance: string) {
    live.add(this);
  }

  /** Starts `command args` in a process group of its own, with the instance's variable in its environment. */
  start(command: string, args: string[], env: NodeJS.ProcessEnv): GroupProcess {
    if (this.stopped) throw new Error("this Tendril instance has been stopped");
    const child = spawn(command, args, {
      env: { ...env, [INSTANCE_VARIABLE]: this.instance },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    if (child.pid === undefined) throw new Error(`could not start ${command}`);
    this.groups.set(child.pid, child);
    let all = "";
    let out = "";
    const keep = (text: string) => (text.length > OUTPUT_LIMIT ? text.slice(-OUTPUT_LIMIT) : text);
    child.stdout!.on("data", (chunk: Buffer) => {
      out = keep(out + chunk.toString());
      all = keep(all + chunk.toString());
    });
    child.stderr!.on("data", (chunk: Buffer) => {
      all = keep(all + chunk.toString());
    });
    child.on("error", () => undefined);
    // Neither the children nor their pipes keep this process alive: a test process that forgets `stop()` still
    // exits, and its exit handler stops them.
    child.unref();
    for (const stream of [child.stdout, child.stderr]) (stream as unknown as { unref?: () => void } | null)?.unref?.();
    return {
      pid: child.pid,
      stdout: () => out,
      output: () => all,
      exitCode: () => child.exitCode,
      exited: () => child.exitCode !== null || child.signalCode !== null,
    };
  }

  /** Removes `dir` (recursively) when the instance stops. */
  ownDir(dir: string): void {
    this.dirs.add(dir);
  }

  /**
   * Stops one group: SIGTERM to the whole group, SIGKILL after `graceMs` if some of it is still there; resolves
   * once none of it is left (or `waitMs` has passed).
   */
  async stopGroup(pid: number, graceMs: number): Promise<void> {
    signalGroup(pid, "SIGTERM");
    if (!(await waitUntil(() => !groupAlive(pid), graceMs))) {
      signalGroup(pid, "SIGKILL");
      await waitUntil(() => !groupAlive(pid), 5_000);
    }
    this.groups.delete(pid);
  }

  /** Stops every group (gracefully, then by force), then every process of a script, then removes the folders. */
  async stopAll(graceMs: number): Promise<void> {
    if (this.stopped) return;
    await Promise.all([...this.groups.keys()].map((pid) => this.stopGroup(pid, graceMs)));
    // What a stopping runner left running (its scripts, and what they started) carries the instance's variable.
    for (let round = 0; round < 50; round++) {
      if (killInstance(this.instance) === 0) break;
      await delay(20);
    }
    this.removeDirs();
    this.stopped = true;
    live.delete(this);
  }

  /** What the exit handler does: SIGKILL to every group and every process of the instance, and the folders removed. */
  killNow(): void {
    for (const pid of this.groups.keys()) signalGroup(pid, "SIGKILL");
    // Once more after a moment, for what was forked while the first round looked: an exit handler cannot wait for
    // events, so it pauses synchronously.
    for (let round = 0; round < KILL_NOW_ROUNDS && killInstance(this.instance) > 0; round++) pauseSync(KILL_NOW_PAUSE_MS);
    this.removeDirs();
  }

  private removeDirs(): void {
    for (const dir of this.dirs) {
      try {
        rmSync(dir, { recursive: true, force: true });
      } catch {
        // A folder still in use is left; it is in the system's temporary folder.
      }
    }
    this.dirs.clear();
  }
}

/** The instances still running; the exit handler stops them. */
const live = new Set<ProcessSet>();

process.once("exit", () => {
  for (const set of live) set.killNow();
});

/** Sends a signal to a whole process group; a group that is gone is fine. */
function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: gone already.
  }
}

function killPid(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // Gone already, or not ours.
  }
}

/** True while some process of the group exists (signal 0 only checks). */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Rounds of `killInstance` the exit handler makes at most, and its pause between them. */
const KILL_NOW_ROUNDS = 5;
const KILL_NOW_PAUSE_MS = 10;

/**
 * SIGKILLs every live process of the instance, and the whole process group of each that leads one (a script's
 * wrapper does): a child it forks while this looks is in its group, so the group's signal reaches that child too.
 * Returns how many processes it found.
 */
function killInstance(instance: string): number {
  const found = pidsOfInstance(instance);
  for (const { pid, leader } of found) {
    if (leader) signalGroup(pid, "SIGKILL");
    killPid(pid);
  }
  return found.length;
}

/** Blocks this thread for `ms`. */
function pauseSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Live processes (other than this one) whose environment holds `INSTANCE_VARIABLE=<instance>`, and whether each leads
 * its process group; none where /proc is missing.
 */
function pidsOfInstance(instance: string): Array<{ pid: number; leader: boolean }> {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return [];
  }
  const wanted = `${INSTANCE_VARIABLE}=${instance}`;
  const pids: Array<{ pid: number; leader: boolean }> = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // After the command's closing parenthesis: state, ppid, pgrp, ...
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (fields[0] === "Z" || fields[0] === "X") continue; // a zombie is already dead; its parent reaps it
      if (readFileSync(`/proc/${entry}/environ`).toString("utf8").split("\0").includes(wanted)) pids.push({ pid: Number(entry), leader: Number(fields[2]) === Number(entry) });
    } catch {
      // Gone meanwhile, or another user's.
    }
  }
  return pids;
}

/** Polls `check` every 20 ms until it holds or `timeoutMs` passes; resolves with whether it held. */
export async function waitUntil(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (check()) return true;
    if (Date.now() > deadline) return false;
    await delay(20);
  }
}
