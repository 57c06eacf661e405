/**
 * The files `tendril runner install` writes for a systemd service, as text: the unit and the environment file. Pure
 * (no file system), so that what is installed can be read and tested on its own; docs/runners.md explains each setting.
 */
import { isMachineId } from "../../shared/ids.js";

/** Where a runner service's files go (under `--root` when given). */
export const INSTALL_PATHS = {
  /** The folder of the one-file runner. */
  runnerDir: "/usr/local/lib/tendril",
  /** The one-file runner the unit runs. */
  runnerFile: "/usr/local/lib/tendril/tendril-runner.mjs",
  /** The unit. */
  unitFile: "/etc/systemd/system/tendril-runner.service",
  /** The unit's name, for systemctl. */
  unitName: "tendril-runner.service",
  /** The environment file: the runner's settings and its token (mode 0600, read by systemd as root). */
  envFile: "/etc/tendril/runner.env",
  /** The service's state folder (systemd's `StateDirectory=tendril`), also its working directory. */
  stateDir: "/var/lib/tendril",
  /** The work dir when `--work-dir` is not given: inside the state folder. */
  defaultWorkDir: "/var/lib/tendril/work",
} as const;

/** What the service is made of. */
export interface ServiceSettings {
  /** The control plane's base URL. */
  url: string;
  machineId: string;
  /** The machine's runner token. */
  token: string;
  /** Absolute path of the runner's work dir. */
  workDir: string;
  /** The user the runner and its scripts run as. */
  user: string;
  /** Absolute path of the Node.js binary the unit runs. */
  node: string;
}

// Every value below ends up in the unit or the environment file unquoted, and the environment file is also meant to
// be sourced by sh (docs/runners.md, "Without systemd"), so each is kept to characters that mean the same to both.
const SAFE_URL = /^https?:\/\/(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?(?:\/[A-Za-z0-9._~%/-]*)?$/;
const SAFE_PATH = /^\/[A-Za-z0-9._+/-]*$/;
const SAFE_USER = /^[A-Za-z_][A-Za-z0-9._-]{0,31}$/;
const SAFE_TOKEN = /^[A-Za-z0-9._+/=-]+$/;

/** The problems that keep `settings` from being written as a service (empty when there are none), one sentence each. */
export function checkServiceSettings(settings: ServiceSettings): string[] {
  const problems: string[] = [];
  if (!SAFE_URL.test(settings.url)) {
    problems.push(`--url ${JSON.stringify(settings.url)} must be an http(s) base URL such as https://tendril.example.com (no spaces, quotes or query)`);
  }
  if (!isMachineId(settings.machineId)) problems.push(`--machine ${JSON.stringify(settings.machineId)} is not a machine id`);
  if (!SAFE_TOKEN.test(settings.token)) problems.push("the runner token holds characters a runner token never has; use the output of `tendril register <machine>`");
  for (const [flag, path] of [
    ["--work-dir", settings.workDir],
    ["--node", settings.node],
  ] as const) {
    if (!SAFE_PATH.test(path) || path.split("/").includes("..")) {
      problems.push(`${flag} ${JSON.stringify(path)} must be an absolute path of letters, digits and . _ + - / (no spaces or ..)`);
    }
  }
  if (!SAFE_USER.test(settings.user)) problems.push(`--user ${JSON.stringify(settings.user)} is not a user name`);
  if (settings.user === "nobody") {
    problems.push("--user nobody is shared by unrelated programs (systemd calls it not safe); create a dedicated user for the runner");
  }
  return problems;
}

/** The unit file, `/etc/systemd/system/tendril-runner.service`. */
export function unitFileText(settings: ServiceSettings): string {
  return `# Written by \`tendril runner install\`; installing again rewrites it (local changes: systemctl edit tendril-runner).
# Why each setting is what it is: docs/runners.md, "Running runners in production".
[Unit]
Description=Tendril runner for machine ${settings.machineId}
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User=${settings.user}
# The runner's settings and its token; only root can read this file (mode 0600): systemd reads it before it starts the
# runner, which then gets the token through its environment.
EnvironmentFile=${INSTALL_PATHS.envFile}
ExecStart=${settings.node} ${INSTALL_PATHS.runnerFile}
StateDirectory=tendril
StateDirectoryMode=0700
WorkingDirectory=${INSTALL_PATHS.stateDir}
# Each run's own small files (record, FIFOs, output log, exit status) on a tmpfs, the workspaces in the work dir: a disk
# file system's inode work is the largest fixed cost of a script on some machines. Kept when the runner stops or
# restarts (the next runner re-attaches with them); a reboot empties it, and ends the scripts anyway.
RuntimeDirectory=tendril
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
Environment=TENDRIL_RUNTIME_DIR=%t/tendril
SyslogIdentifier=tendril-runner

# A stop or restart signals the runner only: the scripts it leaves running are re-attached by the next runner. With the
# default (control-group) they would be killed with it.
KillMode=process
# The runner gives each script a cgroup below its own (cancel kills everything in it); this subtree is the runner's.
Delegate=yes
# On SIGTERM the runner takes no new scripts and exits within seconds, leaving running scripts in place.
TimeoutStopSec=30s
Restart=always
RestartSec=5s
# 2: a setting is wrong; 3: the runner token was revoked or replaced. A restart cannot fix either.
RestartPreventExitStatus=2 3
# The scripts (and whatever they leave running) live in this unit's cgroup: a limit here limits every deployment.
TasksMax=infinity
# A script killed for lack of memory is that script's failure, not the runner's.
OOMPolicy=continue

[Install]
WantedBy=multi-user.target
`;
}

/** The environment file, `/etc/tendril/runner.env`; `redactToken` leaves the token out (for `--print`). */
export function envFileText(settings: ServiceSettings, { redactToken = false }: { redactToken?: boolean } = {}): string {
  return `# Written by \`tendril runner install\`. Read by systemd (EnvironmentFile=) as root; mode 0600: it holds the runner token.
TENDRIL_URL=${settings.url}
TENDRIL_MACHINE=${settings.machineId}
TENDRIL_WORK_DIR=${settings.workDir}
TENDRIL_RUNNER_TOKEN=${redactToken ? "<the token, not shown>" : settings.token}
`;
}

/** The `NAME=value` assignments of an environment file as this module writes it (comments and blank lines skipped). */
export function parseEnvFileText(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const match = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (match) values[match[1]!] = match[2]!;
  }
  return values;
}
