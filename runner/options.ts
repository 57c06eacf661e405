/** The runner's one typed options object and its defaults. */
import { readFileSync } from "node:fs";
import { isMachineId } from "../shared/ids.js";

/** Where the runner writes its own diagnostics (never script output). */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** Everything a runner needs; `startRunner` fills the fields that have a default from `RUNNER_DEFAULTS`. */
export interface RunnerOptions {
  /** The control plane's http(s) base URL, e.g. `https://tendril.example.workers.dev`. */
  url: string;
  /** The machine this runner serves (1-64 characters of `[A-Za-z0-9._-]`). */
  machineId: string;
  /** The machine's runner token, sent as `Authorization: Bearer <token>` on the WebSocket upgrade. */
  token: string;
  /** Root folder of the scripts' working directories (`<workDir>/runs/<run id>/work/`), and of the run folders unless `runtimeDir` is given. */
  workDir: string;
  /**
   * Root folder of the run folders (`<runtimeDir>/runs/<run id>/`: record, script file, FIFOs, spool, output log, exit
   * status; see run-folder.ts); default `workDir`. A tmpfs such as `/run/tendril` saves a disk file system's inode
   * work on every script; it must survive a runner restart (not a reboot), and serves one work dir only.
   */
  runtimeDir?: string;
  /** Cancel: how long to wait after SIGTERM before sending SIGKILL to the process group. */
  killGraceMs: number;
  /** How often to send the `ping` heartbeat frame (the welcome may ask for a shorter interval). */
  heartbeatMs: number;
  /** When no inbound frame of any kind arrives for this long, the socket is terminated and reopened. */
  deadAfterMs: number;
  /** After a process exited, how long to wait for its stdout/stderr to close before reporting the exit;
   *  a grandchild that keeps the pipes open must not hold the exit back forever. */
  pipeDrainMs: number;
  /** First reconnect delay ceiling; full jitter doubles it per failed attempt. */
  reconnectBaseMs: number;
  /** Largest reconnect delay; also the delay after the control plane refused the upgrade (401/404). */
  reconnectMaxMs: number;
  /** Backpressure, per script: once this much of its output (estimated frame bytes: text plus 64 per line) waits
   *  for the control plane's acknowledgement, the runner stops reading the script's pipes, so the script blocks on
   *  its next write instead of the runner's memory growing; reading resumes once acknowledgements bring it to half.
   *  It holds while disconnected too. At most half of it is sent ahead of the acknowledgements. */
  maxUnackedBytes: number;
  /** Output frames wait while the WebSocket's own send buffer holds this many bytes (`ws` would queue without
   *  limit); they go on once it has drained to half. Small frames (started, exit, heartbeats) are never held back. */
  maxSocketBufferBytes: number;
  /** UNSAFE: turns every kill into a no-op, for tests that need a process that cannot be killed. */
  disableKill: boolean;
  /** The runner version reported in `hello`. */
  version: string;
  /** Diagnostics sink. */
  logger: Logger;
  /** Called once, with one clear sentence, when the control plane ends this runner for good (close code 4000
   *  Replaced or 4001 TokenRevoked); the runner has stopped by then. `RunnerHandle.stopped` tells the same. */
  onFatal?: (message: string) => void;
}

/** The options a caller must always give. */
export type RequiredRunnerOptions = Pick<RunnerOptions, "url" | "machineId" | "token" | "workDir">;

/** What `startRunner` accepts: the required fields plus any defaults to override. */
export type RunnerInput = RequiredRunnerOptions & Partial<RunnerOptions>;

/** Reads this package's version; the path is the same from the sources (runner/) and the bundle (dist/). */
function packageVersion(): string {
  try {
    const raw: unknown = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
    if (typeof raw === "object" && raw !== null && "version" in raw && typeof raw.version === "string") {
      return raw.version;
    }
  } catch {
    // A missing or unreadable package.json only costs the version string.
  }
  return "0.0.0-unknown";
}

/** Writes `<ISO time> <LEVEL> runner: message` lines to stderr, leaving stdout to whoever embeds the runner. */
export const stderrLogger: Logger = {
  info: (message) => process.stderr.write(`${new Date().toISOString()} INFO  runner: ${message}\n`),
  warn: (message) => process.stderr.write(`${new Date().toISOString()} WARN  runner: ${message}\n`),
  error: (message) => process.stderr.write(`${new Date().toISOString()} ERROR runner: ${message}\n`),
};

/** Defaults for every option that has one. */
export const RUNNER_DEFAULTS: Omit<RunnerOptions, keyof RequiredRunnerOptions> = {
  killGraceMs: 10_000,
  heartbeatMs: 10_000,
  deadAfterMs: 25_000,
  pipeDrainMs: 2_000,
  reconnectBaseMs: 200,
  reconnectMaxMs: 10_000,
  maxUnackedBytes: 8 * 1024 * 1024,
  maxSocketBufferBytes: 4 * 1024 * 1024,
  disableKill: false,
  version: packageVersion(),
  logger: stderrLogger,
};

/** Fills the defaults (a field given as `undefined` keeps its default) and refuses options that cannot work. */
export function resolveRunnerOptions(input: RunnerInput): RunnerOptions {
  const given = Object.fromEntries(Object.entries(input).filter(([, value]) => value !== undefined));
  const options: RunnerOptions = { ...RUNNER_DEFAULTS, ...given, url: input.url, machineId: input.machineId, token: input.token, workDir: input.workDir };
  const problems = [
    isMachineId(options.machineId) ? undefined : `machineId ${JSON.stringify(options.machineId)} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'`,
    /^https?:\/\//i.test(options.url) ? undefined : `url ${JSON.stringify(options.url)} must start with http:// or https://`,
    options.token.length > 0 ? undefined : "token must not be empty",
    options.workDir.length > 0 ? undefined : "workDir must not be empty",
    options.runtimeDir === undefined || options.runtimeDir.length > 0 ? undefined : "runtimeDir must not be empty",
    // The hello schema takes 1-64 characters; a longer version would get every connection closed as a bad frame.
    options.version.length >= 1 && options.version.length <= 64 ? undefined : "version must be 1-64 characters",
    ...(["killGraceMs", "heartbeatMs", "deadAfterMs", "pipeDrainMs", "reconnectBaseMs", "reconnectMaxMs"] as const).map((name) =>
      Number.isFinite(options[name]) && options[name] >= 0 ? undefined : `${name} must be a number >= 0`,
    ),
    options.heartbeatMs > 0 ? undefined : "heartbeatMs must be > 0",
    ...(["maxUnackedBytes", "maxSocketBufferBytes"] as const).map((name) =>
      Number.isSafeInteger(options[name]) && options[name] >= 1024 ? undefined : `${name} must be an integer >= 1024`,
    ),
    options.deadAfterMs > options.heartbeatMs ? undefined : "deadAfterMs must be longer than heartbeatMs",
  ].filter((problem) => problem !== undefined);
  if (problems.length > 0) throw new Error(`Invalid runner options: ${problems.join("; ")}.`);
  return options;
}
