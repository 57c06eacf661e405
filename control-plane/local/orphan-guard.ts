/**
 * Children that must not outlive the process that started them, however it ends. A child is left running when its
 * parent is killed with SIGKILL or crashes: workerd (Miniflare's child) keeps the port and the state, and the local
 * runner of `tendril start` keeps serving a machine whose next runner is about to start. For each such child a small
 * shell, in a process group of its own, holds the read end of a pipe from this process. When the pipe closes without
 * a word (this process is gone), the shell signals the child, if that pid still names the same process (its start
 * time), and removes a folder when asked to. Linux only: without /proc nothing is guarded.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { Socket } from "node:net";
import { readProcessStat } from "../../runner/containment.js";
import { quote } from "../../runner/wrapper.js";

/** A running guard. */
export interface OrphanGuard {
  /** Ends the guard without touching the child; resolves once it is gone. */
  stop(): Promise<void>;
}

/** What a guard does once this process is gone. */
export interface OrphanGuardOptions {
  /** The signal the child gets: KILL, or TERM to let it stop by itself. */
  signal: "KILL" | "TERM";
  /** A folder removed after the signal (the child's scratch folder). */
  remove?: string;
}

/** Makes `pid` (a child of this process) get `options.signal` once this process is gone; undefined when it cannot. */
export function guardOrphan(pid: number, options: OrphanGuardOptions): OrphanGuard | undefined {
  const startTime = readProcessStat(pid)?.startTime;
  if (startTime === undefined) return undefined;
  const remove = options.remove === undefined ? "" : `; rm -rf -- ${quote(options.remove)}`;
  const script =
    `read -r _ && exit 0; read -r s </proc/${pid}/stat 2>/dev/null || exit 0; set -- \${s##*) }; ` +
    `[ "\${20}" = "${startTime}" ] && kill -${options.signal} ${pid}${remove}`;
  let guard: ChildProcess;
  try {
    // A process group of its own: a terminal's Ctrl-C reaches this process, which stops the child itself.
    guard = spawn("/bin/sh", ["-c", script], { stdio: ["pipe", "ignore", "ignore"], detached: true });
  } catch {
    return undefined;
  }
  guard.on("error", () => undefined);
  guard.stdin?.on("error", () => undefined);
  // It keeps nothing alive: the pipe is only closed, by this process's end.
  guard.unref();
  if (guard.stdin instanceof Socket) guard.stdin.unref();
  return { stop: () => stopGuard(guard) };
}

/** A line on its pipe lets the guard exit without touching the child; resolves once it is gone. */
function stopGuard(guard: ChildProcess): Promise<void> {
  if (guard.exitCode !== null || guard.signalCode !== null) return Promise.resolve();
  const gone = new Promise<void>((resolveGone) => guard.once("exit", () => resolveGone()));
  guard.ref();
  guard.stdin?.end("stop\n");
  return gone;
}
