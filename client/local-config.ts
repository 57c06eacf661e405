/**
 * The local settings file `.tendril/local.json` that `npm start` writes, and the one rule for finding the
 * control plane's URL and server token: a flag beats an environment variable beats that file.
 */
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";

/** The folder, relative to the working directory, that holds Tendril's local state. */
export const LOCAL_DIR = ".tendril";
/** The settings file inside `LOCAL_DIR`. */
export const LOCAL_CONFIG_FILE = "local.json";

const LocalConfig = z.object({
  /** The control plane's base URL, e.g. http://127.0.0.1:8787. */
  url: z.url({ protocol: /^https?$/ }),
  /** The server token the control plane was started with. */
  serverToken: z.string().min(1),
});
/** What `.tendril/local.json` holds. */
export type LocalConfig = z.infer<typeof LocalConfig>;

/** Where the control plane is and how to authenticate, once resolved. */
export interface ServerSettings {
  url: string;
  serverToken: string;
}

/** Inputs of `resolveServerSettings`, in precedence order. */
export interface ResolveServerSettingsOptions {
  /** `--url`, when given. */
  flagUrl?: string | undefined;
  /** `--server-token`, when given. */
  flagToken?: string | undefined;
  /** The environment to read `TENDRIL_URL` and `TENDRIL_SERVER_TOKEN` from. */
  env: Record<string, string | undefined>;
  /** The folder whose `.tendril/local.json` is the last resort. */
  cwd: string;
}

/** The path of the settings file for a working directory. */
export function localConfigPath(cwd: string): string {
  return join(cwd, LOCAL_DIR, LOCAL_CONFIG_FILE);
}

/** Reads `.tendril/local.json` in `cwd`; undefined when there is none, an Error naming the file when it is unreadable. */
export async function readLocalConfig(cwd: string): Promise<LocalConfig | undefined> {
  const path = localConfigPath(cwd);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if (isErrnoException(error) && error.code === "ENOENT") return undefined;
    throw new Error(`cannot read ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`${path} is not valid JSON; delete it and run \`npm start\` again`);
  }
  const parsed = LocalConfig.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? issue.path.join(".") : "the file";
    throw new Error(`${path} is not a Tendril settings file (${where}: ${issue?.message ?? "invalid"})`);
  }
  return parsed.data;
}

/** Writes `.tendril/local.json` in `cwd` (folder created, file readable only by its owner, replaced atomically). */
export async function writeLocalConfig(cwd: string, config: LocalConfig): Promise<void> {
  const dir = join(cwd, LOCAL_DIR);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // The folder holds a secret and persisted state; keep it out of version control even when the
  // project around it has no ignore rule for it. `wx` leaves an existing file alone.
  await writeFile(join(dir, ".gitignore"), "*\n", { flag: "wx" }).catch((error: unknown) => {
    if (!(isErrnoException(error) && error.code === "EEXIST")) throw error;
  });
  const path = localConfigPath(cwd);
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(LocalConfig.parse(config), null, 2)}\n`, { mode: 0o600 });
  // `mode` only applies when the file is created; a leftover temporary file could have kept a wider one.
  await chmod(temporary, 0o600);
  await rename(temporary, path);
}

/**
 * Finds the control plane's URL and server token. Both come from one place: the flags when either flag is given,
 * else the environment when either variable is set, else `.tendril/local.json`. Never one from each: a `--url`
 * for another control plane must not be sent the local token (or an exported token meant for somewhere else).
 */
export async function resolveServerSettings(options: ResolveServerSettingsOptions): Promise<ServerSettings> {
  const flagUrl = nonEmpty(options.flagUrl);
  const flagToken = nonEmpty(options.flagToken);
  if (flagUrl !== undefined || flagToken !== undefined) {
    return bothFrom("the flags", flagUrl, flagToken, "--url", "--server-token");
  }
  const envUrl = nonEmpty(options.env.TENDRIL_URL);
  const envToken = nonEmpty(options.env.TENDRIL_SERVER_TOKEN);
  if (envUrl !== undefined || envToken !== undefined) {
    return bothFrom("the environment", envUrl, envToken, "TENDRIL_URL", "TENDRIL_SERVER_TOKEN");
  }
  const file = await readLocalConfig(options.cwd);
  if (file === undefined) {
    throw new Error(
      "no control plane configured: pass --url and --server-token, set TENDRIL_URL/TENDRIL_SERVER_TOKEN, or run `npm start` in this folder",
    );
  }
  return file;
}

/** Both settings from one source, or an error naming the one that is missing there. */
function bothFrom(source: string, url: string | undefined, serverToken: string | undefined, urlName: string, tokenName: string): ServerSettings {
  if (url !== undefined && serverToken !== undefined) return { url, serverToken };
  const [given, missing] = url === undefined ? [tokenName, urlName] : [urlName, tokenName];
  throw new Error(
    `${given} is set but ${missing} is not: the URL and the token must come from the same place (${source}), so that no token is sent to a control plane it was not meant for; set ${missing} too`,
  );
}

/** An empty flag or variable (`TENDRIL_URL=`) means "not set", not "the empty URL". */
function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

function isErrnoException(error: unknown): error is NodeJS.ErrnoException {
  return error instanceof Error && "code" in error;
}
