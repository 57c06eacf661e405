/**
 * A runner's run folders as a test sees them on disk: `<workDir>/runs/<run id>/` per dispatch, with `record.json`
 * naming its ticket and fence (see runner/run-folder.ts). Read directly, without the runner's own code.
 */
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

/** Every run folder in a runner's work dir that has a record, with the ticket and fence it names. */
export function runFolders(workDir: string): Array<{ dir: string; ticket: string; fence: number }> {
  let names: string[];
  try {
    names = readdirSync(join(workDir, "runs"));
  } catch {
    return [];
  }
  return names.flatMap((name) => {
    const dir = join(workDir, "runs", name);
    try {
      const record = JSON.parse(readFileSync(join(dir, "record.json"), "utf8")) as { ticket: string; fence: number };
      return [{ dir, ticket: record.ticket, fence: record.fence }];
    } catch {
      return [];
    }
  });
}

/** The run folders of one ticket (every dispatch of it that still has a folder). */
export function runFoldersOf(workDir: string, ticket: string): string[] {
  return runFolders(workDir)
    .filter((run) => run.ticket === ticket)
    .map((run) => run.dir);
}
