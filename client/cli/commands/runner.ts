/** `tendril runner`: one runner process serving one machine. */
import { resolve } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { isMachineId } from "../../../shared/ids.js";
import { LOCAL_DIR } from "../../local-config.js";
import { MACHINE_ID_RULE, nonEmpty } from "../args.js";
import { DEFAULTS } from "../defaults.js";
import { CLI_EXIT } from "../exit-codes.js";
import { oneLine } from "../output.js";
import { Shutdown } from "../signals.js";
import { resolveRunnerToken, TOKEN_FLAG_WARNING } from "../token-file.js";

/** Flags of `tendril runner` (each also read from the environment). */
export interface RunnerFlags {
  url?: string;
  machine?: string;
  /** A file holding the runner token, readable by its owner only. */
  tokenFile?: string;
  /** The runner token itself (warned: it shows in `ps`). */
  token?: string;
  workDir?: string;
  /** Where the runs' own files go (a tmpfs such as /run/tendril); default the work dir. */
  runtimeDir?: string;
  killGrace?: number;
}

/** How long a runner asked to stop by SIGTERM gets to say `draining` and close before the process exits anyway. */
const DRAIN_MS = 5_000;

/**
 * `tendril runner`: one runner until SIGINT/SIGTERM (exit 0) or a fatal stop (exit 3). SIGTERM (`systemctl stop`, an
 * upgrade) drains: the runner says `draining`, closes, and leaves its running scripts to the next runner process,
 * which re-attaches to them. SIGINT (Ctrl-C) stops it the same way without saying `draining`.
 */
export async function runRunner(flags: RunnerFlags): Promise<number> {
  const shutdown = new Shutdown();
  const env = process.env;
  const url = flags.url ?? nonEmpty(env.TENDRIL_URL);
  const machineId = flags.machine ?? nonEmpty(env.TENDRIL_MACHINE);
  const found = await resolveRunnerToken({ tokenFile: flags.tokenFile, token: flags.token, environment: nonEmpty(env.TENDRIL_RUNNER_TOKEN) });
  if (found?.source === "flag") process.stderr.write(`${TOKEN_FLAG_WARNING}\n`);
  // Kept out of this process's environment from here on, so that nothing it starts inherits it. The initial
  // environment the kernel shows in /proc/<pid>/environ (to this user and root) keeps it: Node cannot erase that.
  delete env.TENDRIL_RUNNER_TOKEN;
  const token = found?.token;
  const workDir = resolve(flags.workDir ?? nonEmpty(env.TENDRIL_WORK_DIR) ?? `${LOCAL_DIR}/work`);
  const runtimeGiven = flags.runtimeDir ?? nonEmpty(env.TENDRIL_RUNTIME_DIR);
  const runtimeDir = runtimeGiven === undefined ? undefined : resolve(runtimeGiven);
  const missing = [
    url === undefined ? "--url (or TENDRIL_URL)" : undefined,
    machineId === undefined ? "--machine (or TENDRIL_MACHINE)" : undefined,
    token === undefined ? "--token-file (or TENDRIL_RUNNER_TOKEN)" : undefined,
  ].filter((item) => item !== undefined);
  if (url === undefined || machineId === undefined || token === undefined) {
    throw new Error(`the runner needs ${missing.join(", ")}; get a token with \`tendril register <machine>\``);
  }
  if (!/^https?:\/\//i.test(url)) throw new Error(`invalid --url ${JSON.stringify(url)}: it must start with http:// or https://`);
  if (!isMachineId(machineId)) throw new Error(`invalid machine id ${JSON.stringify(machineId)}: ${MACHINE_ID_RULE}`);

  // The runner itself prints the UNSAFE warning when kill is disabled.
  const disableKill = env.TENDRIL_UNSAFE_DISABLE_PROCESS_KILL === "1";

  let reportFatal: (message: string) => void = () => undefined;
  const fatal = new Promise<string>((resolveFatal) => (reportFatal = resolveFatal));
  // Loaded lazily (a chunk of its own in dist/) so that the other commands start without it.
  const { startRunner } = await import("../../../runner/index.js");
  const runner = await startRunner({
    url,
    machineId,
    token,
    workDir,
    runtimeDir,
    killGraceMs: flags.killGrace,
    disableKill,
    onFatal: (message: string) => reportFatal(message),
  });
  process.stdout.write(`runner ${runner.runnerId} serving machine ${machineId} from ${url} (work dir ${workDir}${runtimeDir === undefined ? "" : `, runtime dir ${runtimeDir}`})\n`);

  const outcome = await Promise.race([
    shutdown.signal.then((signal) => ({ fatal: undefined, signal })),
    fatal.then((message) => ({ fatal: message, signal: undefined })),
  ]);
  if (outcome.fatal !== undefined) {
    process.stderr.write(`error: the runner stopped for good: ${oneLine(outcome.fatal)}\n`);
    await Promise.race([runner.stop().catch(() => undefined), delay(DEFAULTS.runnerFatalStopMs)]);
    return CLI_EXIT.runnerFatal;
  }
  if (outcome.signal === "SIGTERM") await Promise.race([runner.drain(), delay(DRAIN_MS)]);
  else await runner.stop();
  return CLI_EXIT.ok;
}
