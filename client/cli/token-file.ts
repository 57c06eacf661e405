/** The runner token's sources for `tendril runner`: a file only its owner can read, the environment, or (warned) a flag. */
import { open } from "node:fs/promises";

/** Where `tendril runner` found its token. */
export type RunnerTokenSource = "file" | "flag" | "environment";

/** Flags and environment that may hold the runner token. */
export interface RunnerTokenInputs {
  /** `--token-file`. */
  tokenFile?: string | undefined;
  /** `--token` (visible in `ps`). */
  token?: string | undefined;
  /** `TENDRIL_RUNNER_TOKEN`, when set and not blank. */
  environment?: string | undefined;
}

/** The warning `--token` prints: the token sits in the process's command line, which every local user can read. */
export const TOKEN_FLAG_WARNING =
  "warning: --token puts the runner token on this process's command line, which every user on this machine can read " +
  "(ps, /proc/<pid>/cmdline); use --token-file FILE (mode 600) or the TENDRIL_RUNNER_TOKEN environment variable instead";

/** Finds the runner token: `--token-file`, else `--token`, else the environment; undefined when none is given. */
export async function resolveRunnerToken(inputs: RunnerTokenInputs): Promise<{ token: string; source: RunnerTokenSource } | undefined> {
  if (inputs.tokenFile !== undefined && inputs.token !== undefined) {
    throw new Error("give the runner token once: --token-file or --token, not both");
  }
  if (inputs.tokenFile !== undefined) return { token: await readTokenFile(inputs.tokenFile), source: "file" };
  if (inputs.token !== undefined) {
    if (inputs.token.trim() === "") throw new Error("--token is empty; pass the token from `tendril register <machine>`, or use --token-file");
    return { token: inputs.token.trim(), source: "flag" };
  }
  if (inputs.environment !== undefined) return { token: inputs.environment, source: "environment" };
  return undefined;
}

/**
 * Reads a runner token file. Refused when its group or other users may read it (as ssh refuses a private key
 * that others can read): the token lets whoever holds it act as this machine's runner.
 */
export async function readTokenFile(path: string): Promise<string> {
  let handle;
  try {
    handle = await open(path, "r");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new Error(`runner token file ${path} does not exist; write the output of \`tendril register <machine>\` into it`);
    if (code === "EACCES") throw new Error(`cannot read the runner token file ${path}: permission denied for this user`);
    throw new Error(`cannot read the runner token file ${path}: ${(error as Error).message}`);
  }
  try {
    // The mode of the file actually opened (fstat), so that a file swapped after the check cannot slip through.
    const stat = await handle.stat();
    if (!stat.isFile()) throw new Error(`runner token file ${path} is not a regular file`);
    const readers = [stat.mode & 0o040 ? "its group" : undefined, stat.mode & 0o004 ? "other users" : undefined].filter(Boolean);
    if (readers.length > 0) {
      const mode = (stat.mode & 0o777).toString(8).padStart(4, "0");
      throw new Error(
        `runner token file ${path} is readable by ${readers.join(" and ")} (mode ${mode}); ` +
          `make it readable by its owner only: chmod 600 ${path}`,
      );
    }
    const token = (await handle.readFile("utf8")).trim();
    if (token === "") throw new Error(`runner token file ${path} is empty; write the output of \`tendril register <machine>\` into it`);
    if (/\s/.test(token)) throw new Error(`runner token file ${path} must hold only the token (one line, no spaces)`);
    return token;
  } finally {
    await handle.close();
  }
}
