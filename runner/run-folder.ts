/**
 * Run folders. Every dispatch gets a folder of its own, `<runtime dir>/runs/<run id>/`, never reused (the id is the
 * fence plus random bits, as fences start over when a machine is registered again):
 *
 *   record.json   who the run's processes are (`RunRecord`), so that a later runner process can find them
 *   script.sh     the script (`script.ps1` for pwsh), outside the working directory: a request's file cannot replace it
 *   io/           the wrapper's FIFOs and spool files (see wrapper.ts), for a script run in a wrapper
 *   exit          the script's exit status, written by its wrapper
 *   output.*.log  the output log (output-log.ts): what the runner read, written ahead
 *
 * and a working directory, `<work dir>/runs/<run id>/work/`, holding the request's files. The runtime dir is the work
 * dir unless the runner is given one of its own (`--runtime-dir`): then a run's own files, a score of small files
 * made and removed for every script, can live on a tmpfs such as `/run`, and only the workspace on disk. A tmpfs is
 * emptied by a reboot, which ends every process of a run anyway; a workspace whose run folder is gone is removed.
 *
 * Warm wrappers make their FIFOs in a slot folder of their own, `<runtime dir>/slots/<runner pid>-<start time>-<random>/`,
 * renamed to a run's `io/` when a script claims the wrapper (open FIFOs stay valid across a rename).
 *
 * Every file is new in a new folder, and the script and the record are written under a temporary name and renamed
 * into place: nothing a process may be reading is ever rewritten, so a shell that reads its script as it goes
 * (bash does) can never read another run's. The calls are synchronous: each is a local system call of
 * microseconds, where a trip through the thread pool would add a fraction of a millisecond to every dispatch.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { z } from "zod";
import type { ScriptPayload } from "../shared/api.js";
import { Ticket } from "../shared/ids.js";
import { BootId, Outcome } from "../shared/protocol.js";
import { isProcessGone, ownStartTime } from "./containment.js";
import type { ScriptIdentity, ShellName } from "./spawn.js";
import { EXIT_FILE, IO_FOLDER } from "./wrapper.js";

/** The record's file name in a run folder. */
export const RECORD_FILE = "record.json";
/** The working directory's name in a run folder. */
const WORKING_DIRECTORY = "work";
/** The output log's name in a run folder (its segments are `output.000001.log`, ...). */
export const LOG_NAME = "output";
/** The folder of warm wrappers' slots in a work dir. */
export const SLOTS_FOLDER = "slots";

/** A file name inside a run folder, as a record names it. */
const FileName = z.string().regex(/^[a-z][a-z0-9-]{0,31}$/);

const Pid = z.int().min(1);
const StartTime = z.int().min(0);

/**
 * What a run folder's `record.json` says. Written before the script's process exists (marker and cgroup are known
 * by then, and for a wrapper its pid), again once its pid and start time are, and when the runner lets go of it or
 * the control plane acknowledged its end. A runner process that finds a record of a predecessor finds the run's
 * processes by pid and start time, by process group, by marker and by cgroup; where the record says `reattach`, it
 * re-attaches to the script instead of stopping it.
 *
 * The version stays 1: `reattach` is an addition that a runner which cannot re-attach ignores (readers ignore fields
 * they do not know), so such a runner, started on this work dir after a newer one, still stops the run (the floor
 * rule) instead of taking an unreadable record for a run that never started.
 */
export const RunRecord = z.object({
  version: z.literal(1),
  /** The run folder's name. */
  runId: z.string().min(1),
  ticket: Ticket,
  fence: Pid,
  /** ISO time the folder was made. */
  createdAt: z.string(),
  /** The runner process that started it: a run whose owner still lives is not a predecessor's. */
  owner: z.object({ runnerId: z.string().min(1), pid: Pid, startTime: StartTime.optional() }),
  /** The boot the run's processes belong to; a record of another boot names no live process. */
  bootId: BootId.optional(),
  shell: z.enum(["bash", "sh", "pwsh"]),
  /** `TENDRIL_SCRIPT_MARKER` of every process of the run. */
  marker: z.string().regex(/^[0-9a-f]{32}$/),
  /** The run's cgroup folder, when it got one. */
  cgroup: z.string().startsWith("/").optional(),
  /** The script's shell (or its wrapper), once spawned: its pid is also its process group's id. */
  process: z.object({ pid: Pid, startTime: StartTime.optional() }).optional(),
  /**
   * The script runs in a wrapper (its `process`, the script's parent): the names, in the run folder, of the wrapper's
   * FIFOs folder, its exit status file and the output log. A later runner process re-attaches with them.
   */
  reattach: z
    .object({
      io: FileName,
      exit: FileName,
      log: FileName,
      /** The format of the wrapper's spool files (spool-tail.ts); absent in records of runners whose wrappers kept none. */
      spool: z.literal(1).optional(),
    })
    .optional(),
  /** The control plane abandoned it: a later runner leaves its processes alone. */
  abandoned: z.boolean().optional(),
  /** How it ended, once the control plane acknowledged that (ISO time `at`): nothing is left to report. */
  exit: z.object({ outcome: Outcome, at: z.string() }).optional(),
});
/** A run's record. */
export type RunRecord = z.infer<typeof RunRecord>;

/** The runner process that owns a run. */
export type RunOwner = RunRecord["owner"];

/** One run folder this runner knows of. */
export interface Run {
  /** The folder's name, also `record.runId` once a record exists. */
  readonly id: string;
  readonly ticket: string;
  readonly fence: number;
  readonly dir: string;
  /** The working directory. */
  readonly cwd: string;
  /** The script file. */
  readonly scriptPath: string;
  /** Undefined until the record is first written (before any process of it exists). */
  record: RunRecord | undefined;
  /** Why its folder must stay (a process of it runs, or is watched); it may go once none is left. */
  readonly holds: Set<string>;
  /** Remove the folder once nothing holds it: the control plane deleted the script, or a predecessor left it. */
  removeWhenIdle: boolean;
  removed: boolean;
}

/** A run folder an earlier runner process left: its record, or none (it never got as far as a process). */
export interface FoundRun {
  run: Run;
  record: RunRecord | undefined;
}

/** The script file's name for a shell. */
function scriptFileFor(shell: ShellName): string {
  switch (shell) {
    case "bash":
    case "sh":
      return "script.sh";
    case "pwsh":
      return "script.ps1";
    default: {
      const unreachable: never = shell;
      throw new Error(`unknown shell ${String(unreachable)}`);
    }
  }
}

/** The file in a runtime dir of its own that names the work dir it serves. */
export const WORK_DIR_FILE = "work-dir";

/** Creates, records, finds and removes the run folders of one work directory. */
export class RunFolders {
  /** `<runtime dir>/runs`: the run folders. */
  readonly root: string;
  /** `<work dir>/runs`: the working directories' folders (the run folders themselves when the two dirs are one). */
  readonly workspaces: string;
  private readonly runs = new Map<string, Run>();

  constructor(
    private readonly workDir: string,
    /** Hears what could not be done to a run folder (removing it, updating its record); nothing else depends on it. */
    private readonly onError: (run: Run, doing: string, error: unknown) => void = () => undefined,
    /** Where the runs' own files go; default the work dir. */
    private readonly runtimeDir: string = workDir,
  ) {
    this.root = join(runtimeDir, "runs");
    this.workspaces = join(workDir, "runs");
  }

  /** The run files and the workspaces are in folders apart. */
  private get split(): boolean {
    return this.root !== this.workspaces;
  }

  /**
   * Makes the runs folders (0o700: the files may hold secrets; only the runner's user may enter). A runtime dir of
   * its own serves one work dir: it is marked with it, and refused to another (two runners would take each other's
   * runs for a predecessor's).
   */
  prepare(): void {
    if (!this.split) {
      mkdirSync(this.root, { recursive: true, mode: 0o700 });
      return;
    }
    const marker = join(this.runtimeDir, WORK_DIR_FILE);
    const workDir = resolve(this.workDir);
    let named: string | undefined;
    try {
      named = readFileSync(marker, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    }
    if (named !== undefined && named !== workDir) {
      throw new Error(
        `The runtime dir ${resolve(this.runtimeDir)} belongs to the work dir ${named}, not ${workDir}: give each work dir a runtime dir of its own.`,
      );
    }
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    mkdirSync(this.workspaces, { recursive: true, mode: 0o700 });
    if (named === undefined) writeAtomically(marker, workDir);
  }

  /** `<runtime dir>/slots`, where warm wrappers make their FIFOs before a script claims them. */
  get slotsDir(): string {
    return slotsFolderOf(this.root);
  }

  /**
   * Removes the slot folders of runner processes that are gone (their waiting wrappers read EOF and exited), also
   * those a runner without a runtime dir of its own left in the work dir.
   */
  pruneSlots(): void {
    const folders = this.split ? [this.slotsDir, slotsFolderOf(this.workspaces)] : [this.slotsDir];
    for (const folder of folders) {
      for (const name of listFolder(folder)) {
        const match = /^(\d+)-(\d+)-[0-9a-f]+$/.exec(name);
        if (match === null || !isProcessGone(Number(match[1]), Number(match[2]))) continue;
        rmSync(join(folder, name), { recursive: true, force: true });
      }
    }
  }

  /** The run of a dispatch. */
  find(ticket: string, fence: number): Run | undefined {
    for (const run of this.runs.values()) if (run.ticket === ticket && run.fence === fence && !run.removed) return run;
    return undefined;
  }

  /** Makes a new run folder for a dispatch, with the request's files decoded and the script file; no record yet. */
  create(ticket: string, fence: number, payload: ScriptPayload): Run {
    const run = this.makeFolder(ticket, fence, payload.shell);
    // Recursive: the work dir's runs folder may have been removed while the runner ran.
    if (this.split) mkdirSync(dirname(run.cwd), { recursive: true, mode: 0o700 });
    mkdirSync(run.cwd, { mode: 0o700 });
    for (const file of payload.files) {
      // The schema already refuses paths; this keeps a file inside the folder even if that ever changes.
      if (basename(file.name) !== file.name || file.name === "." || file.name === "..") {
        throw new Error(`The file name ${JSON.stringify(file.name)} is not a plain file name.`);
      }
      writeFileSync(join(run.cwd, file.name), Buffer.from(file.contents, "base64"));
    }
    writeAtomically(run.scriptPath, payload.scriptBody);
    return run;
  }

  /** Writes the run's record (temporary file, then rename: a reader sees the old record or the new one). */
  write(run: Run, record: RunRecord): void {
    writeAtomically(join(run.dir, RECORD_FILE), JSON.stringify(record));
    run.record = record;
  }

  /**
   * Rewrites the record with `change`; a run without a record (it never started a process) has nothing to update. A
   * failure is reported, not thrown: the record is what a later runner reads, the run goes on without it.
   */
  update(run: Run, change: Partial<RunRecord>): void {
    if (run.record === undefined || run.removed) return;
    try {
      this.write(run, { ...run.record, ...change });
    } catch (error) {
      this.onError(run, "update the record of", error);
    }
  }

  /**
   * Reads the run folders this runner does not know yet and adopts those `take` accepts (by their record; a folder
   * without a valid record never had a process), to be removed once nothing holds them. Each is held as `found`.
   * With a runtime dir of its own, the work dir's runs folder is read too: a folder there with a record is a whole
   * run folder (a runner without a runtime dir of its own made it), one without is a workspace whose run folder is
   * gone, adopted without a record.
   */
  adoptLeftovers(take: (record: RunRecord | undefined) => boolean): FoundRun[] {
    const names = listFolder(this.root);
    const found: FoundRun[] = [];
    const adopt = (name: string, dir: string, cwd: string) => {
      const record = readRecord(dir);
      if (!take(record)) return;
      const run: Run = {
        id: name,
        ticket: record?.ticket ?? "",
        fence: record?.fence ?? 0,
        dir,
        cwd,
        scriptPath: join(dir, scriptFileFor(record?.shell ?? "bash")),
        record,
        holds: new Set(["found"]),
        removeWhenIdle: true,
        removed: false,
      };
      this.runs.set(name, run);
      found.push({ run, record });
    };
    for (const name of names) {
      if (!this.runs.has(name)) adopt(name, join(this.root, name), this.workingDirectory(name));
    }
    if (this.split) {
      const own = new Set(names);
      for (const name of listFolder(this.workspaces)) {
        if (own.has(name) || this.runs.has(name)) continue;
        const dir = join(this.workspaces, name);
        adopt(name, dir, join(dir, WORKING_DIRECTORY));
      }
    }
    return found;
  }

  /** Makes a run adopted from a predecessor this runner's own: its folder stays until the control plane deletes the script. */
  keep(run: Run): void {
    run.removeWhenIdle = false;
  }

  /** Keeps the run's folder for `reason` (a process of it runs). */
  hold(run: Run, reason: string): void {
    if (!run.removed) run.holds.add(reason);
  }

  /** Drops one reason to keep the folder; removes it when it was the last and removal is due. */
  let(run: Run, reason: string): void {
    run.holds.delete(reason);
    this.removeIfIdle(run);
  }

  /** The control plane deleted the ticket's script: its runs go now, or once no process of theirs runs. */
  requestDelete(ticket: string): void {
    for (const run of this.runs.values()) {
      if (run.ticket !== ticket) continue;
      run.removeWhenIdle = true;
      this.removeIfIdle(run);
    }
  }

  private removeIfIdle(run: Run): void {
    if (run.removed || !run.removeWhenIdle || run.holds.size > 0) return;
    run.removed = true;
    this.runs.delete(run.id);
    for (const dir of new Set([run.dir, dirname(run.cwd)])) {
      rm(dir, { recursive: true, force: true }).catch((error: unknown) => this.onError(run, "delete", error));
    }
  }

  /** The working directory of the run `id`. */
  private workingDirectory(id: string): string {
    return join(this.workspaces, id, WORKING_DIRECTORY);
  }

  private makeFolder(ticket: string, fence: number, shell: ShellName): Run {
    for (;;) {
      // Random bits: fences start over after a machine is registered again, and a folder must never be reused.
      const id = `${fence}-${randomBytes(6).toString("hex")}`;
      const dir = join(this.root, id);
      try {
        mkdirSync(dir, { mode: 0o700 });
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "EEXIST") continue;
        if (code !== "ENOENT") throw error;
        // The runs folder went away while the runner ran: make it again.
        this.prepare();
        mkdirSync(dir, { mode: 0o700 });
      }
      const run: Run = {
        id,
        ticket,
        fence,
        dir,
        cwd: this.workingDirectory(id),
        scriptPath: join(dir, scriptFileFor(shell)),
        record: undefined,
        holds: new Set(),
        removeWhenIdle: false,
        removed: false,
      };
      this.runs.set(id, run);
      return run;
    }
  }
}

/** The `reattach` part of a record: the names wrapper.ts and the output log use. */
export const REATTACH_FILES: NonNullable<RunRecord["reattach"]> = { io: IO_FOLDER, exit: EXIT_FILE, log: LOG_NAME, spool: 1 };

/** The slots folder beside the runs folder `runsRoot`. */
export function slotsFolderOf(runsRoot: string): string {
  return join(runsRoot, "..", SLOTS_FOLDER);
}

/** A new slot folder for a warm wrapper in `slotsDir`, named for this runner process (made with its parent if need be). */
export function makeSlot(slotsDir: string): string {
  const path = join(slotsDir, `${process.pid}-${ownStartTime()}-${randomBytes(6).toString("hex")}`);
  mkdirSync(slotsDir, { recursive: true, mode: 0o700 });
  mkdirSync(path, { mode: 0o700 });
  return path;
}

/** The first record of a run: who its process will be (`identity`), written before it can run anything. */
export function newRunRecord(run: Run, shell: ShellName, owner: RunOwner, bootId: string | undefined, identity: ScriptIdentity): RunRecord {
  const { marker, cgroup, pid, startTime } = identity;
  return {
    version: 1,
    runId: run.id,
    ticket: run.ticket,
    fence: run.fence,
    createdAt: new Date().toISOString(),
    owner,
    ...(bootId === undefined ? {} : { bootId }),
    shell,
    marker,
    ...(cgroup === undefined ? {} : { cgroup }),
    ...(pid === undefined ? {} : { process: { pid, ...(startTime === undefined ? {} : { startTime }) } }),
    ...(identity.wrapped === true ? { reattach: REATTACH_FILES } : {}),
  };
}

/** A run folder's record; undefined when it has none or it cannot be read. */
export function readRecord(dir: string): RunRecord | undefined {
  try {
    const parsed = RunRecord.safeParse(JSON.parse(readFileSync(join(dir, RECORD_FILE), "utf8")));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** The names in a folder; none when it cannot be read. */
function listFolder(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Writes a new file under a temporary name and renames it into place. */
function writeAtomically(path: string, contents: string): void {
  const temporary = `${path}.tmp`;
  writeFileSync(temporary, contents, { encoding: "utf8", mode: 0o600 });
  renameSync(temporary, path);
}
