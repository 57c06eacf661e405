/** Spawning a script the way the runner does, for the process-manager and warm-shell tests. */
import type { ScriptPayload } from "../../shared/api.js";
import { spawnScript, type OutputHandler, type ProcessManagerOptions, type SpawnResult } from "../../runner/process-manager.js";
import type { Run, RunFolders } from "../../runner/run-folder.js";

let nextFence = 1;

/** Makes a run folder for the ticket and spawns its script there (or in `cwd`), handing its output to `onOutput`. */
export async function spawnInRun(
  runs: RunFolders,
  ticket: string,
  script: ScriptPayload,
  options: ProcessManagerOptions,
  onOutput: OutputHandler,
  cwd?: string,
): Promise<{ result: SpawnResult; run: Run }> {
  const run = runs.create(ticket, nextFence++, script);
  const result = await spawnScript(
    {
      ticket,
      shell: script.shell,
      scriptPath: run.scriptPath,
      runDir: run.dir,
      cwd: cwd ?? run.cwd,
      arguments: script.arguments,
      environment: script.environment,
    },
    onOutput,
    options,
  );
  return { result, run };
}
