/**
 * `tendril runner install`: the runner as a systemd service (docs/runners.md). Copies the one-file runner, writes the
 * unit and the environment file (runner-service.ts makes their text), then enables and starts the unit — or, where
 * systemd is not running or `--root` points elsewhere, says how to start it. `--print` only shows the files.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, chown, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { userInfo } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { CLI_EXIT } from "../exit-codes.js";
import { INSTALL_PATHS, checkServiceSettings, envFileText, parseEnvFileText, unitFileText, type ServiceSettings } from "../runner-service.js";
import { readTokenFile } from "../token-file.js";

/** Flags of `tendril runner install`. */
export interface RunnerInstallFlags {
  url?: string;
  machine?: string;
  /** The runner token's file (mode 600); without it, the token of an existing environment file for the same machine is kept. */
  tokenFile?: string;
  workDir?: string;
  /** The user the runner runs as; `root` only when said explicitly. */
  user?: string;
  /** The Node.js binary the unit runs (default: the one running this command). */
  node?: string;
  /** Write under this folder, start nothing. */
  root?: string;
  /** Show the files, write nothing. */
  print?: boolean;
}

/** What the program that carries `install` knows and the flags do not. */
export interface RunnerInstallContext {
  /** Finds the one-file runner to copy (throws, saying what to do, when there is none). */
  runnerFile(): string;
  /** The version of that runner, for messages. */
  version: string;
}

/** One file of the service: where it goes (without `--root`), its mode, and what it holds. */
interface ServiceFile {
  path: string;
  mode: number;
  contents(): Promise<Buffer>;
  /** How `--print` shows it. */
  shown: string;
}

/** The placeholder token `--print` uses when no token was given (it never prints a real one). */
const PRINT_ONLY_TOKEN = "print-only";

/** `tendril runner install`: writes the service's files (or prints them) and starts it where systemd runs. */
export async function installRunner(flags: RunnerInstallFlags, context: RunnerInstallContext): Promise<number> {
  if (flags.url === undefined || flags.machine === undefined) {
    throw new Error("runner install needs --url and --machine (and --token-file, holding the token from `tendril register <machine>`)");
  }
  const root = flags.root === undefined ? undefined : resolve(flags.root);
  const onDisk = (path: string) => (root === undefined ? path : join(root, path));
  const user = flags.user ?? defaultUser();
  const workDir = flags.workDir ?? INSTALL_PATHS.defaultWorkDir;
  if (!isAbsolute(workDir)) throw new Error(`--work-dir ${JSON.stringify(workDir)} must be an absolute path, e.g. ${INSTALL_PATHS.defaultWorkDir}`);
  const token = await findToken(flags, flags.machine, onDisk(INSTALL_PATHS.envFile));
  const settings: ServiceSettings = { url: flags.url.replace(/\/+$/, ""), machineId: flags.machine, token, workDir, user, node: flags.node ?? process.execPath };
  const problems = checkServiceSettings(settings);
  if (problems.length > 0) throw new Error(`cannot install the runner: ${problems.join("; ")}`);
  const source = context.runnerFile();
  const files: ServiceFile[] = [
    {
      path: INSTALL_PATHS.runnerFile,
      mode: 0o755,
      contents: () => readFile(source),
      shown: `(the one-file runner ${context.version}, copied from ${source})\n`,
    },
    { path: INSTALL_PATHS.unitFile, mode: 0o644, contents: async () => Buffer.from(unitFileText(settings)), shown: unitFileText(settings) },
    { path: INSTALL_PATHS.envFile, mode: 0o600, contents: async () => Buffer.from(envFileText(settings)), shown: envFileText(settings, { redactToken: true }) },
  ];

  if (flags.print) {
    for (const file of files) {
      process.stdout.write(`# ${onDisk(file.path)} (mode ${file.mode.toString(8).padStart(4, "0")})\n${file.shown}\n`);
    }
    return CLI_EXIT.ok;
  }
  if (root === undefined) checkCanInstallHere(settings);

  for (const file of files) await writeAtomically(onDisk(file.path), await file.contents(), file.mode);
  if (root === undefined && !isInside(INSTALL_PATHS.stateDir, workDir)) await prepareWorkDir(workDir, user);
  const written = files.map((file) => `  ${onDisk(file.path)}`).join("\n");
  process.stdout.write(`Installed the Tendril runner ${context.version} for machine ${settings.machineId}, running as ${user}:\n${written}\n`);

  if (root !== undefined) {
    process.stdout.write(
      `Nothing was started (--root). To enable it in that system image: systemctl --root ${root} enable ${INSTALL_PATHS.unitName}\n`,
    );
    return CLI_EXIT.ok;
  }
  if (!systemdIsRunning()) {
    process.stdout.write(howToStartWithoutSystemd(settings));
    return CLI_EXIT.ok;
  }
  // restart, not start: installing again is how a runner is upgraded, and the new runner re-attaches to the scripts
  // the old one leaves running (KillMode=process).
  for (const args of [["daemon-reload"], ["enable", INSTALL_PATHS.unitName], ["restart", INSTALL_PATHS.unitName]]) systemctl(args);
  process.stdout.write(
    `Enabled and started ${INSTALL_PATHS.unitName}.\n` +
      `  status: systemctl status tendril-runner\n  logs:   journalctl -u tendril-runner -f\n` +
      `  the machine in the control plane: tendril machine show ${settings.machineId}\n`,
  );
  return CLI_EXIT.ok;
}

/** Finds the one-file runner beside the built command line (dist/tendril-runner.mjs). */
export function bundledRunnerFile(): string {
  // Bundled, this code is in dist/cli.js or in dist/chunks/; the one-file runner is dist/tendril-runner.mjs.
  for (const relative of ["./tendril-runner.mjs", "../tendril-runner.mjs"]) {
    const candidate = fileURLToPath(new URL(relative, import.meta.url));
    if (existsSync(candidate)) return candidate;
  }
  throw new Error("the one-file runner dist/tendril-runner.mjs is missing: build it with `npm run build` in the tendril package");
}

/** Without `--user`: the user running this command, unless that is root (a root runner must be asked for by name). */
function defaultUser(): string {
  const name = userInfo().username;
  if (process.getuid?.() !== 0 && name !== "root") return name;
  throw new Error(
    "refusing to install a runner that runs scripts as root without being told so: pass --user <name>, a dedicated " +
      "unprivileged user (create one with: useradd --system --home-dir /var/lib/tendril --shell /usr/sbin/nologin tendril), " +
      "or --user root if the scripts must run as root",
  );
}

/** The token: from `--token-file`, else kept from an existing environment file of the same machine; `--print` needs none. */
async function findToken(flags: RunnerInstallFlags, machineId: string, envFile: string): Promise<string> {
  if (flags.tokenFile !== undefined) return readTokenFile(flags.tokenFile);
  const existing = existsSync(envFile) ? parseEnvFileText(await readFile(envFile, "utf8")) : {};
  if (existing.TENDRIL_MACHINE === machineId && existing.TENDRIL_RUNNER_TOKEN) {
    if (!flags.print) process.stderr.write(`keeping the runner token of ${envFile}\n`);
    return existing.TENDRIL_RUNNER_TOKEN;
  }
  if (flags.print) return PRINT_ONLY_TOKEN;
  const other = existing.TENDRIL_MACHINE === undefined ? "" : ` (${envFile} holds the token of machine ${existing.TENDRIL_MACHINE})`;
  throw new Error(`runner install needs --token-file: a file of mode 600 holding the token from \`tendril register ${machineId}\`${other}`);
}

/** What an install onto this very system needs: root, an existing user, a Node.js that user can run. */
function checkCanInstallHere(settings: ServiceSettings): void {
  if (process.getuid?.() !== 0) {
    throw new Error(
      "installing the runner service writes /etc/systemd/system and /etc/tendril: run it as root (sudo), or pass --print to see the files or --root DIR to write them elsewhere",
    );
  }
  if (settings.user !== "root") {
    try {
      execFileSync("id", ["-u", settings.user], { stdio: "ignore" });
    } catch {
      throw new Error(
        `there is no user ${settings.user} on this machine: create it first (useradd --system --home-dir ${INSTALL_PATHS.stateDir} --shell /usr/sbin/nologin ${settings.user})`,
      );
    }
    if (/^\/(root|home)\//.test(settings.node)) {
      process.stderr.write(
        `warning: the service runs ${settings.node}, inside a home folder that ${settings.user} may not be allowed to enter; ` +
          "install Node.js 20+ system-wide (e.g. /usr/bin/node) and pass --node if the service does not start\n",
      );
    }
  }
  if (!existsSync(settings.node)) throw new Error(`--node ${settings.node} does not exist`);
}

/** A work dir outside the state folder (which systemd makes) is made here, for the runner's user only. */
async function prepareWorkDir(workDir: string, user: string): Promise<void> {
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  const id = (flag: string) => Number(execFileSync("id", [flag, user], { encoding: "utf8" }).trim());
  await chown(workDir, id("-u"), id("-g"));
}

/** Writes `contents` to `path` with `mode` (folders made 0755 as needed), replacing any earlier file in one step. */
async function writeAtomically(path: string, contents: Buffer, mode: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o755 });
  const temporary = `${path}.${process.pid}.tmp`;
  try {
    // Created with its final mode, so that the token is never readable by others, not even for a moment.
    await writeFile(temporary, contents, { mode });
    await chmod(temporary, mode); // `mode` is filtered by the umask, and a leftover temporary file keeps its own
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

/** True when `path` is `folder` or inside it. */
function isInside(folder: string, path: string): boolean {
  const normal = resolve(path);
  return normal === folder || normal.startsWith(`${folder}/`);
}

/** systemd is running as the init system (what `sd_booted()` checks). */
function systemdIsRunning(): boolean {
  return existsSync("/run/systemd/system");
}

function systemctl(args: string[]): void {
  try {
    execFileSync("systemctl", args, { stdio: ["ignore", "inherit", "pipe"] });
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`systemctl ${args.join(" ")} failed${stderr ? `: ${stderr}` : ""}; see journalctl -u tendril-runner`);
  }
}

/** The message for a machine whose PID 1 is not systemd: the files are there; how to start the runner. */
function howToStartWithoutSystemd(settings: ServiceSettings): string {
  let init = "not systemd";
  try {
    init = readFileSync("/proc/1/comm", "utf8").trim();
  } catch {
    // Unknown: the message says "not systemd".
  }
  const run = `${settings.node} ${INSTALL_PATHS.runnerFile}`;
  const asUser = settings.user === "root" ? `exec ${run}` : `exec runuser -u ${settings.user} -- ${run}`;
  return (
    `systemd is not running on this machine (PID 1 is ${init}), so nothing was started.\n` +
    `Where systemd runs:  systemctl daemon-reload && systemctl enable --now tendril-runner\n` +
    `Without systemd, start it as the unit would (as root, in the background of your choice):\n` +
    `  install -d -m 0700 -o ${settings.user} ${INSTALL_PATHS.stateDir} && cd ${INSTALL_PATHS.stateDir} && \\\n` +
    `  sh -c 'set -a; . ${INSTALL_PATHS.envFile}; set +a; ${asUser}'\n`
  );
}
