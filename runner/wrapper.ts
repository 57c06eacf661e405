/**
 * The wrapper: the small `/bin/sh` that runs a script as its child and outlives the runner, like containerd's shim
 * or podman's conmon. It owns the script's output and exit status, so that a new runner process can re-attach:
 *
 *   io/out, io/err  FIFOs the wrapper holds open read-write (fds 3 and 4): the script's stdout and stderr. A writer
 *                   never gets EPIPE, even with no reader; it blocks once the pipe's buffer (64 KiB) is full.
 *   io/out.<start>  the spool files (spool-tail.ts): a copier per stream, a background subshell of the wrapper, reads
 *                   the FIFO with `dd` (each read written at once) into generation files named by their first byte's
 *                   position, each at most `GENERATION_RECORDS` reads (32 MiB), marks each `.done` (budget taken) or
 *                   `.end` (EOF), and starts the next only once its start is written on `io/out.ctl`. The runner
 *                   reads the files and never takes a byte out of a pipe, so a runner killed at any moment loses
 *                   nothing; with no runner, the copier stops after a generation and the script blocks on its full
 *                   pipe (at most one generation per stream on disk).
 *   io/gate         a FIFO the wrapper holds open read-write (fd 5): after the script it waits there for a line.
 *   exit            the script's exit status, written by the wrapper once the script's shell has ended.
 *
 * Once the script's shell has ended, the wrapper writes `exit`, closes its write ends (so that each copier reads EOF
 * once no process of the script holds the FIFO either, and finishes its generation short: the stream's end), prints
 * the status on its own stdout (the pipe to the runner that started it, which hears of the end at once), and waits at
 * the gate: only when a runner has logged all of the output does it release the wrapper, which then exits with the
 * script's status, telling the copiers `end` as it goes. Every step after the script uses builtins only: the exit
 * path forks nothing.
 *
 * The wrapper's command line names it (`/bin/sh -s tendril-wrapper <work dir> <runner pid>-<start time>`), so that a
 * runner finds the wrappers of its work dir that no record names (the work dir or the run folder was removed). Its
 * copiers, forks of it, have the same command line but are not the leaders of their process group.
 */
import { closeSync, constants as fsConstants, openSync, readFileSync, readSync, readdirSync, readlinkSync, statSync, writeSync } from "node:fs";
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

/**
 * A spool generation: at most `GENERATION_RECORDS` reads of the FIFO of at most `GENERATION_READ_BYTES` each (32 MiB).
 * With no runner reading, a stream's copier stops after one, and the script then blocks. A script that writes a line
 * at a time makes generations of a few thousand lines, each one `dd` more.
 */
export const GENERATION_READ_BYTES = 8192;
export const GENERATION_RECORDS = 4096;

/** The two streams, by the names of their FIFOs and spool files. */
export type SpoolName = "out" | "err";

/** The control FIFO of stream `name`'s copier in `io`. */
export function controlFifo(io: string, name: SpoolName): string {
  return join(io, `${name}.ctl`);
}

/** Where one run's wrapper keeps its FIFOs and its exit status. */
export interface WrapperPaths {
  /** The FIFOs' folder. */
  io: string;
  stdout: string;
  stderr: string;
  gate: string;
  /** The copiers' control FIFOs. */
  stdoutControl: string;
  stderrControl: string;
  /** The exit status file. */
  exit: string;
}

/** The wrapper files of the run folder `runDir` (FIFOs in `io`, or in `io` given apart: a warm shell's slot). */
export function wrapperPaths(runDir: string, io: string = join(runDir, IO_FOLDER)): WrapperPaths {
  return {
    io,
    stdout: join(io, "out"),
    stderr: join(io, "err"),
    gate: join(io, "gate"),
    stdoutControl: controlFifo(io, "out"),
    stderrControl: controlFifo(io, "err"),
    exit: join(runDir, EXIT_FILE),
  };
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
 * The wrapper's first lines: join the cgroup (silently: once it is `ready` the runner checks, and moves it only if it
 * is not in), make the FIFOs in `io` (a folder the runner made), hold them open read-write (out 3, err 4, gate 5, the
 * control FIFOs 8 and 9), start a copier per stream, tell the copiers `end` when it exits, and say `ready` on stdout.
 * A failure ends the shell.
 *
 * A copier works in `io` itself (forked there, so its working folder follows a rename of the slot to the run's `io`,
 * even one that comes before the copier has run a line), reads the FIFO read-only and its control FIFO read-write,
 * and holds nothing else: it reads EOF once the script and the wrapper have closed their write ends. Its file names
 * are the ones `generationFile` (spool-tail.ts) reads. A generation is one `dd` of `records` reads at most; `dd`'s
 * count of reads tells whether it stopped at the budget (`.done`: then it waits for a start past the current one;
 * `drain`: read on into nothing; `end` or EOF: stop) or at EOF (`.end`, and the copier exits). Builtins only, but
 * for `dd` and `cat`.
 */
export function prologue(paths: Pick<WrapperPaths, "io">, procsFile?: string, records: number = GENERATION_RECORDS): string {
  const cgroup = procsFile === undefined ? "" : `{ echo $$ > ${quote(procsFile)}; } 2>/dev/null\n`;
  const copier =
    `c() { s=0; while :; do dd bs=${GENERATION_READ_BYTES} count=${records} status=noxfer >"$1.$s" 2>"$1.$s.stat" || exit 1; ` +
    `n=0; while read -r r _ x; do [ "$x" = in ] && n=$((\${r%+*} + \${r#*+})); done <"$1.$s.stat"; ` +
    `if [ "$n" -lt ${records} ]; then : >"$1.$s.end"; exit 0; fi; : >"$1.$s.done"; ` +
    `while :; do read -r w <&7 || exit 0; case $w in drain) exec cat >/dev/null;; end) exit 0;; ''|*[!0-9]*) ;; *) [ "$w" -gt "$s" ] && s=$w && break;; esac; done; done; }`;
  // Forked while the wrapper is in `io`: a copier's folder is that folder itself, whatever it is renamed to later.
  const start = (name: "out" | "err") => `(exec <${name} 7<>${name}.ctl >/dev/null 2>&1 3>&- 4>&- 5>&- 8>&- 9>&- && c ${name}) &`;
  return (
    `${cgroup}cd ${quote(paths.io)} && mkfifo -m 600 -- out err gate out.ctl err.ctl && exec 3<>out 4<>err 5<>gate 8<>out.ctl 9<>err.ctl || exit 1\n` +
    `${copier}\n${start("out")}\n${start("err")}\ncd / || exit 1\n` +
    `trap 'echo end >&8; echo end >&9' EXIT\necho ready\n`
  );
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
 * status: `exit` first, then (its write ends closed) stdout; waits at the gate; exits with it.
 */
export function runCommand(run: WrapperRun, paths: WrapperPaths): string {
  const script = `${run.argv.map(quote).join(" ")} </dev/null 3>&- 4>&- 5<&- 8>&- 9>&-`;
  const body = [...run.steps, script].join(" && ");
  return (
    `{ ${body}; } >&3 2>&4; s=$?; trap '' PIPE; echo "$s" >${quote(paths.exit)}; ` +
    `exec 3>&- 4>&-; echo "$s" 2>/dev/null; read -r _ <&5; exit "$s"\n`
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
  return writeLine(path, "");
}

/**
 * Tells a copier, on its control FIFO (which it holds open), a generation start it may go on with, `drain` (read on
 * into nothing, for a script nobody follows any more) or `end`. False when no copier holds it (ENXIO) or it is gone.
 */
export function tellCopier(control: string, line: string): boolean {
  return writeLine(control, line);
}

/** Writes one line into a FIFO some process holds open, without waiting; false when none does or it is gone. */
function writeLine(fifo: string, line: string): boolean {
  let fd: number;
  try {
    fd = openSync(fifo, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
  } catch {
    return false;
  }
  try {
    writeSync(fd, `${line}\n`);
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

/**
 * Lets a wrapper go for good (its script was abandoned, or nobody will follow it again): its copiers read on into
 * nothing, so that the script neither blocks nor fills the disk, and its gate is released, so that it exits once its
 * script has ended instead of waiting for a runner that will never come. Best effort; false when no wrapper holds the gate.
 */
export function letWrapperGo(fifos: { gate?: string; stdoutControl?: string; stderrControl?: string }): boolean {
  for (const control of [fifos.stdoutControl, fifos.stderrControl]) if (control !== undefined) tellCopier(control, "drain");
  return fifos.gate !== undefined && releaseGate(fifos.gate);
}

/**
 * Lets go of a wrapper known only by its pid (an abandoned script whose run folder this runner does not know, named
 * in a welcome's watch list), as `letWrapperGo`. Its FIFOs are reached through `/proc/<pid>/fd` (opening one of those
 * opens the FIFO anew; which fds hold them depends on where the shell is, as dash moves fds while it runs a command).
 * False when the pid names no wrapper (or another process, by start time). Best effort.
 */
export function letWrapperGoByPid(pid: number, startTime: number | undefined): boolean {
  const argv = readCommandLine(pid);
  if (argv === undefined || parseWrapperCommandLine(argv) === undefined) return false;
  if (startTime !== undefined && readProcessStat(pid)?.startTime !== startTime) return false;
  const fifos = wrapperFifos(pid);
  return letWrapperGo({ gate: fifos.gate, stdoutControl: fifos["out.ctl"], stderrControl: fifos["err.ctl"] });
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

/** The FIFOs a wrapper holds open to the end: its gate and its copiers' control FIFOs. */
type HeldFifo = "gate" | "out.ctl" | "err.ctl";

/** The `/proc/<pid>/fd` links of a wrapper's FIFOs, by name (which fds hold them depends on where the shell is). */
function wrapperFifos(pid: number): Partial<Record<HeldFifo, string>> {
  const fifos: Partial<Record<HeldFifo, string>> = {};
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return fifos;
  }
  for (const fd of fds) {
    const link = `/proc/${pid}/fd/${fd}`;
    try {
      const match = /\/io\/(gate|out\.ctl|err\.ctl)( \(deleted\))?$/.exec(readlinkSync(link));
      const name = match?.[1] as HeldFifo | undefined;
      if (name !== undefined && fifos[name] === undefined && statSync(link).isFIFO()) fifos[name] = link;
    } catch {
      // Closed meanwhile.
    }
  }
  return fifos;
}
