/**
 * Per-ticket workspaces on disk: `<workDir>/work/t-<ticket>/` is the script's working directory and holds the
 * request's files; the script itself is `<workDir>/scripts/t-<ticket>.sh` (`.ps1` for pwsh), outside the
 * working directory so a file in the request cannot replace it. The `t-` prefix keeps every name an ordinary
 * file name whatever the ticket rules allow: `.` and `..` would name folders, a leading `-` reads as an option.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { basename, join } from "node:path";
import type { ScriptPayload } from "../shared/api.js";
import { isTicket } from "../shared/ids.js";

/** Where one ticket's script runs. */
export interface Workspace {
  /** The script's working directory. */
  dir: string;
  /** The script file. */
  scriptPath: string;
}

/** Shell names as the protocol spells them. */
export type ShellName = ScriptPayload["shell"];

/** The script file's extension for a shell. */
function extensionFor(shell: ShellName): string {
  switch (shell) {
    case "bash":
    case "sh":
      return ".sh";
    case "pwsh":
      return ".ps1";
    default: {
      const unreachable: never = shell;
      throw new Error(`unknown shell ${String(unreachable)}`);
    }
  }
}

/** Creates and removes the workspaces under one work directory. */
export class Workspaces {
  /** The scripts folder was made: it is not made again on every dispatch. */
  private scriptsFolderMade = false;

  constructor(private readonly workDir: string) {}

  /** The paths of a ticket's workspace; throws for a string that is not a ticket. */
  paths(ticket: string, shell: ShellName): Workspace {
    const name = this.folderName(ticket);
    return { dir: join(this.workDir, "work", name), scriptPath: join(this.workDir, "scripts", `${name}${extensionFor(shell)}`) };
  }

  /**
   * Writes a fresh workspace for the ticket: the files decoded from base64 and the script file. The calls are
   * synchronous: each is a local system call of microseconds, where a trip through the thread pool would add a
   * fraction of a millisecond to every dispatch.
   */
  async create(ticket: string, payload: ScriptPayload): Promise<Workspace> {
    const workspace = this.paths(ticket, payload.shell);
    // Leftovers of an earlier run of the same ticket must not leak into this one. Its script file is overwritten
    // below; a script file for the other kind of shell is never read (and `remove` deletes it).
    rmSync(workspace.dir, { recursive: true, force: true });
    // 0o700: the files may hold secrets; only the runner's user may enter these folders.
    mkdirSync(workspace.dir, { recursive: true, mode: 0o700 });
    for (const file of payload.files) {
      // The schema already refuses paths; this keeps a file inside the workspace even if that ever changes.
      if (basename(file.name) !== file.name || file.name === "." || file.name === "..") {
        throw new Error(`The file name ${JSON.stringify(file.name)} is not a plain file name.`);
      }
      writeFileSync(join(workspace.dir, file.name), Buffer.from(file.contents, "base64"));
    }
    this.writeScript(workspace.scriptPath, payload.scriptBody);
    return workspace;
  }

  /** Writes a script file; the scripts folder is made the first time, and again should it have gone. */
  private writeScript(path: string, body: string): void {
    if (this.scriptsFolderMade) {
      try {
        writeFileSync(path, body, "utf8");
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      }
    }
    mkdirSync(join(this.workDir, "scripts"), { recursive: true, mode: 0o700 });
    this.scriptsFolderMade = true;
    writeFileSync(path, body, "utf8");
  }

  /** Removes a ticket's workspace and script file; removing what is not there is fine. */
  async remove(ticket: string): Promise<void> {
    // Independent paths: removed at once rather than one file-system round trip after another.
    await Promise.all(this.pathsOf(ticket).map((path) => rm(path, { recursive: true, force: true })));
  }

  /** Everything on disk that belongs to a ticket: its working directory and its script file for either extension. */
  private pathsOf(ticket: string): string[] {
    const name = this.folderName(ticket);
    return [join(this.workDir, "work", name), join(this.workDir, "scripts", `${name}.sh`), join(this.workDir, "scripts", `${name}.ps1`)];
  }

  private folderName(ticket: string): string {
    // Tickets come from the parsed protocol already; checking again keeps a bad one from naming another path.
    if (!isTicket(ticket)) throw new Error(`${JSON.stringify(ticket)} is not a valid ticket.`);
    return `t-${ticket}`;
  }
}
