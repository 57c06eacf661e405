/**
 * The wrapper: the small `/bin/sh` that runs a script as its child and outlives the runner, like containerd's shim
 * or podman's conmon. It owns the script's output and exit status, so that a new runner process can re-attach:
 *
 *   io/out, io/err  FIFOs the wrapper holds open read-write (fds 3 and 4): the script's stdout and stderr. A writer
 *                   never gets EPIPE, even with no runner reading; it blocks once the pipe's buffer (64 KiB) is full.
 *   io/gate         a FIFO the wrapper holds open read-write (fd 5): after the script it waits there for a line.
 *   exit            the script's exit status, written by the wrapper once the script's shell has ended.
 *
 * A runner reads the FIFOs as sockets (libuv pipe handles: epoll, pause and resume, no thread pool). Once the
 * script's shell has ended, the wrapper writes `exit`, keeps each FIFO open for reading only (so that what the
 * runner has not read yet stays in the pipe, while the runner still sees EOF once no writer is left), prints the
 * status on its own stdout (the pipe to the runner that started it, which hears of the end at once), and waits at the
 * gate: only when a runner has logged all of the output does it release the wrapper, which then exits with the
 * script's status. Every step after the script uses builtins only: the exit path forks nothing.
 *
 * The wrapper's command line names it (`/bin/sh -s tendril-wrapper <work dir> <runner pid>-<start time>`), so that a
 * runner finds the wrappers of its work dir that no record names (the work dir or the run folder was removed).
 */
import { closeSync, constants as fsConstants, openSync, readFileSync, readSync, readdirSync, readlinkSync, statSync, writeSync } from "node:fs";
import { Socket } from "node:net";
import { join } from "node:path";
import { readCommandLine, readProcessStat } from "./containment.js";

/** The shell every wrapper runs in. */
export const WRAPPER_SHELL = "/bin/sh";

/** The word after `-s` in a wrapper's command line. */
export const WRAPPER_TAG = "tendril-wrapper";

/** The folder of a run's FIFOs, inside its run folder. */
export const IO_FOLDER = "io";
/** The file the wrapper writes the script's exit status to, inside the run folder. */
export const EXIT_FILE = "exit";

/** Where one run's wrapper keeps its FIFOs and its exit status. */
export interface WrapperPaths {
  /** The FIFOs' folder. */
  io: string;
  stdout: string;
  stderr: string;
  gate: string;
  /** The exit status file. */
  exit: string;
}

/** The wrapper files of the run folder `runDir` (FIFOs in `io`, or in `io` given apart: a warm shell's slot). */
export function wrapperPaths(runDir: string, io: string = join(runDir, IO_FOLDER)): WrapperPaths {
  return { io, stdout: join(io, "out"), stderr: join(io, "err"), gate: join(io, "gate"), exit: join(runDir, EXIT_FILE) };
}

/** The arguments a wrapper is started with: its tag, the work dir it belongs to, and its runner (pid and start time). */
export function wrapperArguments(workDir: string, runner: { pid: number; startTime: number }): string[] {
  return ["-s", WRAPPER_TAG, workDir, `${runner.pid}-${runner.startTime}`];
}

/** What a wrapper's command line (the NUL-separated `/proc/<pid>/cmdline`) says; undefined when it is no wrapper. */
export function parseWrapperCommandLine(argv: readonly string[]): { workDir: string; runner: { pid: number; startTime: number } } | undefined {
  if (argv.length !== 5 || argv[0] !== WRAPPER_SHELL || argv[1] !== "-s" || argv[2] !== WRAPPER_TAG) return undefined;
  const match = /^(\d+)-(\d+)$/.exec(argv[4]!);
  if (match === null) return undefined;
  return { workDir: argv[3]!, runner: { pid: Number(match[1]), startTime: Number(match[2]) } };
}

/**
 * The wrapper's first lines: join the cgroup (silently, as the runner moves it too), make the FIFOs in `io` (a folder
 * the runner made), hold them open read-write on fds 3, 4 and 5, and say `ready` on stdout. A failure ends the shell.
 */
export function prologue(paths: Pick<WrapperPaths, "stdout" | "stderr" | "gate">, procsFile?: string): string {
  const cgroup = procsFile === undefined ? "" : `{ echo $$ > ${quote(procsFile)}; } 2>/dev/null\n`;
  const { stdout, stderr, gate } = paths;
  return `${cgroup}mkfifo -m 600 -- ${quote(stdout)} ${quote(stderr)} ${quote(gate)} && exec 3<>${quote(stdout)} 4<>${quote(stderr)} 5<>${quote(gate)} && echo ready || exit 1\n`;
}

/** What the wrapper runs: the steps that prepare the script's shell (enter its folder, export), and its argv. */
export interface WrapperRun {
  /** Shell commands joined with `&&` before the script's shell (already quoted). */
  steps: string[];
  /** The script's shell and its arguments (quoted here). */
  argv: readonly string[];
}

/**
 * The line that runs the script in the foreground (a background job would ignore SIGINT and SIGQUIT), with stdin from
 * /dev/null and output into the FIFOs (the steps' own errors, such as a failed `cd`, land there too), then records its
 * status: `exit` first, then stdout; waits at the gate; exits with it.
 */
export function runCommand(run: WrapperRun, paths: WrapperPaths): string {
  const script = `${run.argv.map(quote).join(" ")} </dev/null 3>&- 4>&- 5<&-`;
  const body = [...run.steps, script].join(" && ");
  return (
    `{ ${body}; } >&3 2>&4; s=$?; trap '' PIPE; echo "$s" >${quote(paths.exit)}; ` +
    `exec 6<${quote(paths.stdout)} 7<${quote(paths.stderr)} 3>&- 4>&-; echo "$s" 2>/dev/null; read -r _ <&5; exit "$s"\n`
  );
}

/** Single-quotes a word: inside single quotes, only the quote itself needs care. */
export function quote(word: string): string {
  return `'${word.replaceAll("'", "'\\''")}'`;
}

/** A status line the wrapper printed (`ready`, or the script's exit status); undefined for anything else. */
export function parseStatusLine(line: string): "ready" | number | undefined {
  if (line === "ready") return "ready";
  return /^\d{1,3}$/.test(line) && Number(line) <= 255 ? Number(line) : undefined;
}

/** The exit status a wrapper wrote; undefined while there is none (or it cannot be read). */
export function readExitFile(path: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
  const status = parseStatusLine(text.trim());
  return typeof status === "number" ? status : undefined;
}

/**
 * Lets the wrapper exit once it reaches the gate (at once if it waits there already): one line into the gate FIFO,
 * which the wrapper holds open. False when no wrapper holds it any more (ENXIO) or it is gone.
 */
export function releaseGate(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
  } catch {
    return false;
  }
  try {
    writeSync(fd, "\n");
    return true;
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}

/** Opens a FIFO's read end without waiting for a writer; throws when it cannot (no such FIFO). */
export function openFifoReader(path: string): number {
  return openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
}

/** Most bytes `readFifo` reads synchronously before handing the FIFO to a socket: more than any pipe holds. */
const PROBE_LIMIT = 2 * 1024 * 1024;

/**
 * Reads a FIFO from an fd opened with `openFifoReader`: first synchronously, what the pipe holds (to `onChunk`), then,
 * unless that reached EOF, through a socket that reads on (paused until resumed when `paused`). The first read matters
 * for a FIFO whose writers had all gone before it was opened: Linux then never reports the hang-up to epoll, but a read
 * says EOF. Writers never come back (nothing opens the FIFO for writing again), so a read that finds the pipe empty
 * with a writer left means that writer was there at the open, and epoll will report its going. Returns the socket, or
 * undefined when the FIFO is at EOF already (the fd is then closed).
 */
export function readFifo(fd: number, onChunk: (chunk: Buffer) => void): Socket | undefined {
  const buffer = Buffer.allocUnsafe(64 * 1024);
  let total = 0;
  for (;;) {
    let read: number;
    try {
      read = readSync(fd, buffer, 0, buffer.length, null);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EAGAIN") break;
      closeSync(fd);
      throw error;
    }
    if (read === 0) {
      closeSync(fd);
      return undefined;
    }
    onChunk(Buffer.from(buffer.subarray(0, read)));
    total += read;
    // A writer that keeps writing was there at the open: the socket sees its end.
    if (total >= PROBE_LIMIT) break;
  }
  return new Socket({ fd, readable: true, writable: false });
}

/**
 * Lets go of a wrapper known only by its pid (an abandoned script whose run folder this runner does not know, named
 * in a welcome's watch list): its output is drained into nothing while this runner runs, and its gate released, so
 * that it exits once its script has ended instead of waiting for a runner that will never come. Its FIFOs are reached
 * through `/proc/<pid>/fd` (opening one of those opens the FIFO anew; which fds hold them depends on where the shell
 * is, as dash moves fds while it runs a command). False when the pid names no wrapper (or another process, by start
 * time). Best effort.
 */
export function letWrapperGoByPid(pid: number, startTime: number | undefined, drain: (socket: Socket) => void): boolean {
  const argv = readCommandLine(pid);
  if (argv === undefined || parseWrapperCommandLine(argv) === undefined) return false;
  if (startTime !== undefined && readProcessStat(pid)?.startTime !== startTime) return false;
  const fifos = wrapperFifos(pid);
  for (const name of ["out", "err"] as const) {
    const link = fifos[name];
    if (link === undefined) continue;
    try {
      const socket = readFifo(openFifoReader(link), () => undefined);
      if (socket !== undefined) drain(socket);
    } catch {
      // Gone meanwhile.
    }
  }
  return fifos.gate !== undefined && releaseGate(fifos.gate);
}

/**
 * True when a wrapper (by pid) was let go on purpose: its script was abandoned, and a line waits in its gate for the
 * moment the script ends. Looked at by taking the line out and putting it back (the wrapper may take it meanwhile:
 * then it exits anyway).
 */
export function wasLetGo(pid: number): boolean {
  const gate = wrapperFifos(pid).gate;
  if (gate === undefined) return false;
  let fd: number;
  try {
    fd = openFifoReader(gate);
  } catch {
    return false;
  }
  let waiting = false;
  try {
    waiting = readSync(fd, Buffer.alloc(1), 0, 1, null) === 1;
  } catch {
    // Empty (EAGAIN): nobody let it go.
  } finally {
    closeSync(fd);
  }
  if (waiting) releaseGate(gate);
  return waiting;
}

/** The `/proc/<pid>/fd` links of a wrapper's FIFOs, by name (which fds hold them depends on where the shell is). */
function wrapperFifos(pid: number): { out?: string; err?: string; gate?: string } {
  const fifos: { out?: string; err?: string; gate?: string } = {};
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return fifos;
  }
  for (const fd of fds) {
    const link = `/proc/${pid}/fd/${fd}`;
    try {
      const match = /\/io\/(out|err|gate)( \(deleted\))?$/.exec(readlinkSync(link));
      const name = match?.[1] as "out" | "err" | "gate" | undefined;
      if (name !== undefined && fifos[name] === undefined && statSync(link).isFIFO()) fifos[name] = link;
    } catch {
      // Closed meanwhile.
    }
  }
  return fifos;
}
