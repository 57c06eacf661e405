/** Spawning a script the way the runner does, for the process-manager and warm-shell tests. */
import type { ScriptPayload } from "../../shared/api.js";
import { spawnScript, type OutputHandler, type ProcessManagerOptions, type SpawnResult } from "../../runner/process-manager.js";
import type { Workspaces } from "../../runner/workspace.js";

/** Writes the ticket's workspace and spawns its script there (or in `cwd`), handing its output to `onOutput`. */
export async function spawnInWorkspace(
  workspaces: Workspaces,
  ticket: string,
  script: ScriptPayload,
  options: ProcessManagerOptions,
  onOutput: OutputHandler,
  cwd?: string,
): Promise<SpawnResult> {
  const workspace = await workspaces.create(ticket, script);
  return spawnScript(
    {
      ticket,
      shell: script.shell,
      scriptPath: workspace.scriptPath,
      cwd: cwd ?? workspace.dir,
      arguments: script.arguments,
      environment: script.environment,
    },
    onOutput,
    options,
  );
}
