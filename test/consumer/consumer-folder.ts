/**
 * A consumer's project folder for tests: a temporary folder that installs this repository the way its README says
 * (`npm install <path of the clone>`, which links it like any `file:` dependency: no network), plus the commands a
 * test runs there, each in a process group of its own and stopped by PID at its deadline.
 */
import { cp, mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ROOT, pidsWithEnvironment, removeDir, startProcess, tempDir } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

/** What a command printed and how it ended. */
export interface CommandResult {
  code: number | null;
  stdout: string;
  output: string;
}

/** A consumer's project folder. */
export interface ConsumerFolder {
  dir: string;
  /** Runs `command args` in the folder; kills its whole group if it is still running after `timeoutMs`. */
  run(command: string, args: string[], options?: { env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<CommandResult>;
  /** Removes the folder. */
  remove(): Promise<void>;
}

/**
 * A new folder with `template`'s files (if any) in which `npm install --offline <repository>` has run; with
 * `typescript`, the project's pinned TypeScript and Node types are linked in as the consumer's own dev tools (what
 * `npm install --save-dev typescript @types/node` would give it, without the registry).
 */
export async function consumerFolder(name: string, { template, typescript = false }: { template?: string; typescript?: boolean } = {}): Promise<ConsumerFolder> {
  const dir = await tempDir(name);
  const folder: ConsumerFolder = {
    dir,
    run: (command, args, options = {}) => runIn(dir, command, args, options),
    remove: () => removeDir(dir),
  };
  try {
    if (template) await cp(template, dir, { recursive: true });
    else await writeFile(join(dir, "package.json"), JSON.stringify({ name: `tendril-${name}`, private: true }, null, 2));
    const installed = await folder.run("npm", ["install", "--offline", "--no-audit", "--no-fund", ROOT], { timeoutMs: 120_000 });
    if (installed.code !== 0) throw new Error(`npm install ${ROOT} failed:\n${installed.output}`);
    if (typescript) {
      await mkdir(join(dir, "node_modules", "@types"), { recursive: true });
      await symlink(join(ROOT, "node_modules", "typescript"), join(dir, "node_modules", "typescript"));
      await symlink(join(ROOT, "node_modules", "@types", "node"), join(dir, "node_modules", "@types", "node"));
      await symlink(join("..", "typescript", "bin", "tsc"), join(dir, "node_modules", ".bin", "tsc"));
    }
    return folder;
  } catch (error) {
    await folder.remove();
    throw error;
  }
}

/** The project's pinned TypeScript compiler, run with this Node. */
export const TSC = join(ROOT, "node_modules", "typescript", "bin", "tsc");

async function runIn(cwd: string, command: string, args: string[], { env = {}, timeoutMs = 60_000 }: { env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<CommandResult> {
  // npm's update check, and the project folder an outer `npm test` names, have no business in the consumer's commands.
  const clean: NodeJS.ProcessEnv = { npm_config_update_notifier: "false", npm_config_local_prefix: undefined, ...env };
  const child = startProcess(command, args, clean, cwd);
  let ended: { code: number | null } | undefined;
  void child.exited.then((exit) => (ended = exit));
  try {
    await waitFor(() => ended !== undefined, { timeoutMs, intervalMs: 50, what: `${command} ${args.join(" ")} to finish` });
  } catch (error) {
    await child.stop(1_000);
    throw new Error(`${String(error)}\n${child.output()}`);
  }
  return { code: ended?.code ?? null, stdout: child.stdout(), output: child.output() };
}

/** Waits until no process carries `name=value` in its environment (every child of a command inherits what it was given). */
export async function expectNoProcessWith(name: string, value: string, timeoutMs = 15_000): Promise<void> {
  await waitFor(() => pidsWithEnvironment(name, value).length === 0, { timeoutMs, what: `every process with ${name}=${value} to be gone` });
}
