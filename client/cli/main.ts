/**
 * The `tendril` command line (API.md, "Commands"): the local all-in-one behind `npm start`, the control
 * plane and runner processes, and the server-side commands built on the SDK.
 *
 * Exit codes of the command itself: 0 success; 1 a script ended with a negative Tendril code; 2 a usage
 * or API error (one line on stderr); 3 the runner had to stop for good; 0–255 from `run` is the script's own.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import packageJson from "../../package.json" with { type: "json" };
import type { LogLine, MachineView, ScriptStatus, StartScriptInput } from "../../shared/api.js";
import { ExitCode } from "../../shared/exit-codes.js";
import { isMachineId, isTicket } from "../../shared/ids.js";
import { formatDuration, parseDuration } from "../durations.js";
import { TendrilApiError } from "../errors.js";
import { LOCAL_DIR, readLocalConfig, resolveServerSettings, writeLocalConfig } from "../local-config.js";
import { TendrilClient } from "../sdk.js";

/** Exit codes of the `tendril` command itself (a `run` otherwise exits with the script's own code). */
const CLI_EXIT = {
  ok: 0,
  /** A script ended with one of Tendril's negative codes. */
  scriptFailed: 1,
  /** Bad usage, unreachable control plane, or an API error. */
  usage: 2,
  /** The runner had to stop for good (token revoked or replaced). */
  runnerFatal: 3,
  /** Stopped waiting after repeated Ctrl-C. */
  interrupted: 130,
} as const;

/** Timings of the processes the command line manages. */
const DEFAULTS = {
  port: 8787,
  host: "127.0.0.1",
  localMachineId: "local",
  /** How long `start` waits for its runner to connect before printing the banner anyway. */
  runnerConnectWaitMs: 15_000,
  /** After Ctrl-C, how long the runner child (which got the same SIGINT) may take to exit by itself. */
  runnerSelfStopWaitMs: 2_000,
  /** How long a stopping runner child gets before SIGKILL (its own stop may wait for script kills). */
  runnerStopGraceMs: 15_000,
  /** Pause before restarting a runner child that died. */
  runnerRestartDelayMs: 1_000,
  /** Restarts in a row before `start` gives up on its runner. */
  runnerMaxRestarts: 5,
  /** A runner child that stayed up this long resets the restart count. */
  runnerStableAfterMs: 60_000,
  /** How long the `runner` command lets the runner stop after a fatal error. */
  runnerFatalStopMs: 5_000,
} as const;

/** Runs the `tendril` command line with `process.argv`-style arguments, then exits the process. */
export async function main(argv: string[]): Promise<void> {
  // `tendril machines | head` closes stdout early; that is not an error worth a stack trace.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code !== "EPIPE") throw error;
    });
  }
  const result = { code: CLI_EXIT.ok as number };
  const program = buildProgram(argv, result);
  try {
    await program.parseAsync(argv);
  } catch (error) {
    // Commander has already printed its own usage errors (and help/version output, with code 0).
    if (error instanceof CommanderError) result.code = error.exitCode === 0 ? CLI_EXIT.ok : CLI_EXIT.usage;
    else {
      printError(error);
      result.code = CLI_EXIT.usage;
    }
  }
  await exit(result.code);
}

/** The command tree; each action stores its exit code in `result`. */
function buildProgram(argv: string[], result: { code: number }): Command {
  const program = new Command("tendril")
    .description("Tendril: run deployment scripts on a fleet of machines, one isolation mutex per machine.")
    .version(packageJson.version)
    .enablePositionalOptions()
    .exitOverride() // inherited by the subcommands below: errors reach `main`, which picks the exit code
    .showHelpAfterError("(add --help for usage)");
  program.addHelpText(
    "after",
    examples([
      "npm start                                       # control plane + runner for machine `local`",
      "npx tendril run --machine local -- echo hello",
      "npx tendril machines",
    ]),
  );

  const action =
    <A extends unknown[]>(fn: (...args: A) => Promise<number>) =>
    async (...args: A) => {
      result.code = await fn(...args);
    };

  program
    .command("start")
    .description("Run Tendril locally: the control plane on workerd (state in .tendril/) plus a runner for machine `local`.")
    .option("--port <port>", "port of the control plane", parsePort, DEFAULTS.port)
    .addHelpText(
      "after",
      examples([
        "npm start",
        "npx tendril start --port 8788",
        "# then, from another terminal in the same folder:",
        "npx tendril run --machine local -- echo hello",
      ]),
    )
    .action(action((options: { port: number }) => startAllInOne({ port: options.port, argv })));

  program
    .command("control-plane")
    .description("Run the control plane alone on this computer (workerd via Miniflare).")
    .option("--port <port>", "port to listen on (0 picks a free one)", parsePort, DEFAULTS.port)
    .option("--host <host>", "address to listen on", DEFAULTS.host)
    .option("--server-token <token>", "server token (env TENDRIL_SERVER_TOKEN; generated and printed when absent)")
    .option("--state-dir <dir>", "where the persisted state lives", `${LOCAL_DIR}/state`)
    .addHelpText(
      "after",
      examples([
        "tendril control-plane --port 8787 --server-token s3cret --state-dir .tendril/state",
        "TENDRIL_SERVER_TOKEN=s3cret tendril control-plane --port 0",
      ]),
    )
    .action(action(runControlPlane));

  program
    .command("runner")
    .description("Run a runner: keeps one connection to the control plane and runs the scripts of one machine.")
    .option("--url <url>", "the control plane's http(s) base URL (env TENDRIL_URL)")
    .option("--machine <id>", "the machine this runner serves (env TENDRIL_MACHINE)")
    .option("--token <token>", "the machine's runner token from `tendril register` (env TENDRIL_RUNNER_TOKEN)")
    .option("--work-dir <dir>", `where script workspaces live (env TENDRIL_WORK_DIR; default ${LOCAL_DIR}/work)`)
    .option("--kill-grace <duration>", "time between SIGTERM and SIGKILL when cancelling (default 10s)", parseDurationArg)
    .addHelpText(
      "after",
      examples([
        "TENDRIL_RUNNER_TOKEN=$(tendril register web-01) tendril runner --url https://tendril.example.com --machine web-01",
        "tendril runner --url http://127.0.0.1:8787 --machine web-01 --token <token> --work-dir /var/lib/tendril --kill-grace 30s",
      ]),
    )
    .action(action(runRunner));

  withServerOptions(
    program
      .command("register")
      .description("Issue a runner token for a machine (creating the machine when new; any previous token stops working).")
      .argument("<machine>", "machine id", parseMachineIdArg),
  )
    .addHelpText("after", examples(["tendril register web-01", "export TENDRIL_RUNNER_TOKEN=$(tendril register web-01)"]))
    .action(action(register));

  withServerOptions(
    program
      .command("run")
      .description("Run a script on a machine, stream its output live, and exit with its exit code.")
      .requiredOption("--machine <id>", "the machine to run on", parseMachineIdArg)
      .addOption(new Option("--isolation <mode>", "full takes the mutex exclusively, none shares it").choices(["full", "none"]))
      .option("--mutex <name>", "the isolation mutex's name (default RunningScript)")
      .option("--mutex-timeout <duration>", "give up (exit code -44) after waiting this long for the mutex", parseDurationArg)
      .option("--abandon-after <duration>", "after Ctrl-C, abandon the script if it is still running this long after", parseDurationArg)
      .addOption(new Option("--shell <shell>", "the shell that runs the script (default bash)").choices(["bash", "sh", "pwsh"]))
      .option("--ticket <ticket>", "the script's ticket (makes the call idempotent; generated when absent)", parseTicketArg)
      .option("--task-id <id>", "a label shown to scripts waiting for this one")
      .option("--env <NAME=VALUE>", "an environment variable for the script (repeatable)", collectEnvArg)
      .argument("[script...]", "the script; put it after -- (its words are joined with spaces)")
      .passThroughOptions(),
  )
    .addHelpText(
      "after",
      [
        examples([
          "tendril run --machine local -- echo hello",
          "tendril run --machine web-01 --mutex-timeout 30s --env RELEASE=42 -- ./deploy.sh",
          "tendril run --machine web-01 --isolation none -- 'uptime && df -h'",
        ]),
        "",
        "Ctrl-C cancels the script; a second Ctrl-C abandons it (the mutex is released at once, the process may",
        "keep running); a third stops waiting. Negative Tendril exit codes are explained on stderr and exit 1.",
      ].join("\n"),
    )
    .action(action(runScript));

  withServerOptions(
    program
      .command("machines")
      .description("List the registered machines: runner connection, version, mutex holders and waiters.")
      .option("--json", "print the API's JSON instead of a table"),
  )
    .addHelpText("after", examples(["tendril machines", "tendril machines --json"]))
    .action(action(listMachines));

  withServerOptions(
    program
      .command("status")
      .description("Show a script's state, exit code and logs.")
      .argument("<machine>", "machine id", parseMachineIdArg)
      .argument("<ticket>", "the script's ticket", parseTicketArg)
      .option("--json", "print the API's JSON (all log pages combined)"),
  )
    .addHelpText("after", examples(["tendril status web-01 deploy-42", "tendril status web-01 deploy-42 --json"]))
    .action(action(showStatus));

  withServerOptions(
    program
      .command("cancel")
      .description("Cancel a script: a pending one never runs, a running one has its process tree stopped.")
      .argument("<machine>", "machine id", parseMachineIdArg)
      .argument("<ticket>", "the script's ticket", parseTicketArg)
      .option("--abandon-after <duration>", "let the control plane abandon it if still running this long after", parseDurationArg)
      .option("--json", "print the API's JSON"),
  )
    .addHelpText("after", examples(["tendril cancel web-01 deploy-42", "tendril cancel web-01 deploy-42 --abandon-after 2m"]))
    .action(action(cancel));

  withServerOptions(
    program
      .command("abandon")
      .description("Abandon a script whose process will not die: it completes with -48 and its mutex is released now.")
      .argument("<machine>", "machine id", parseMachineIdArg)
      .argument("<ticket>", "the script's ticket", parseTicketArg)
      .option("--kill-process", "also ask the runner for a best-effort kill of the process tree")
      .option("--json", "print the API's JSON"),
  )
    .addHelpText("after", examples(["tendril abandon web-01 deploy-42", "tendril abandon web-01 deploy-42 --kill-process"]))
    .action(action(abandon));

  return program;
}

// ---------------------------------------------------------------------------------------------------
// start: the local all-in-one

/** What `tendril start` needs. */
interface StartOptions {
  /** Port of the local control plane. */
  port: number;
  /** The command line, to find the `tendril` entry script the runner child is started with. */
  argv: string[];
}

/** `tendril start`: control plane + a supervised runner child for machine `local`, until Ctrl-C. */
async function startAllInOne(options: StartOptions): Promise<number> {
  const shutdown = new Shutdown();
  const cwd = process.cwd();
  // Reusing the saved token keeps the persisted state usable by whoever already holds the token.
  const saved = await readLocalConfig(cwd).catch((error: unknown) => {
    process.stderr.write(`warning: ${describeError(error)}; a new server token will be generated\n`);
    return undefined;
  });
  const serverToken = saved?.serverToken ?? generateToken();

  const { startLocalControlPlane } = await import("../../control-plane/local/launcher.js");
  const controlPlane = await startLocalControlPlane({
    port: options.port,
    serverToken,
    stateDir: resolve(cwd, LOCAL_DIR, "state"),
  }).catch((error: unknown) => {
    throw new Error(`could not start the control plane on port ${options.port}: ${describeError(error)}`);
  });
  shutdown.claimSignals();
  let runner: RunnerSupervisor | undefined;
  try {
    await writeLocalConfig(cwd, { url: controlPlane.url, serverToken });
    const client = new TendrilClient({ url: controlPlane.url, serverToken });
    if (!shutdown.requested) {
      const { runnerToken } = await client.registerMachine(DEFAULTS.localMachineId);
      runner = new RunnerSupervisor({
        entryScript: tendrilEntryScript(options.argv),
        url: controlPlane.url,
        machineId: DEFAULTS.localMachineId,
        runnerToken,
        workDir: resolve(cwd, LOCAL_DIR, "work"),
      });
      shutdown.onForce(() => runner?.kill());
      const connected = await waitForRunner(client, DEFAULTS.localMachineId, shutdown);
      if (!shutdown.requested) printStartBanner(controlPlane.url, serverToken, connected);
    }
    const signal = await shutdown.signal;
    process.stderr.write("stopping the runner and the control plane…\n");
    // Ctrl-C in a terminal signals the whole process group, so the runner child is already stopping:
    // a SIGTERM on top would be its second signal, which forces it out without its graceful stop.
    await runner?.stop(signal === "SIGINT" ? DEFAULTS.runnerSelfStopWaitMs : 0);
  } finally {
    runner?.kill();
    await controlPlane.stop();
  }
  return CLI_EXIT.ok;
}

function printStartBanner(url: string, serverToken: string, runnerConnected: boolean): void {
  const lines = [
    `listening on ${url}`,
    "",
    "Tendril is running on this computer.",
    `  control plane  ${url}`,
    `  server token   ${serverToken}`,
    `  machine        ${DEFAULTS.localMachineId} (${runnerConnected ? "runner connected" : "runner not connected yet"})`,
    `  settings       ${LOCAL_DIR}/local.json (used by the commands below when run in this folder)`,
    "",
    "Try it from another terminal in this folder:",
    `  npx tendril run --machine ${DEFAULTS.localMachineId} -- echo hello`,
    "",
    "Press Ctrl-C to stop.",
    "",
  ];
  process.stdout.write(lines.join("\n"));
}

/** Polls the machine view until its runner is connected; false when it is not within the wait. */
async function waitForRunner(client: TendrilClient, machineId: string, shutdown: Shutdown): Promise<boolean> {
  const deadline = Date.now() + DEFAULTS.runnerConnectWaitMs;
  while (Date.now() < deadline && !shutdown.requested) {
    const machine = await client.getMachine(machineId).catch(() => undefined);
    if (machine?.runner.connected) return true;
    await delay(100);
  }
  return false;
}

/** The `tendril` entry script to start a runner child with: next to this bundle, else the one we were run as. */
function tendrilEntryScript(argv: string[]): string {
  // Bundled into dist/cli.js, `../bin/tendril.js` is the package's bin; from sources it does not exist.
  const besideBundle = fileURLToPath(new URL("../bin/tendril.js", import.meta.url));
  if (existsSync(besideBundle)) return besideBundle;
  const invoked = argv[1];
  if (invoked === undefined) throw new Error("cannot tell which `tendril` script to start the runner with");
  return invoked;
}

/** What the runner supervisor starts. */
interface RunnerSupervisorOptions {
  /** The `tendril` entry script (bin/tendril.js), run with this Node binary. */
  entryScript: string;
  /** The control plane's base URL. */
  url: string;
  /** The machine the runner serves. */
  machineId: string;
  /** Passed through the environment, not argv, so it does not show up in `ps`. */
  runnerToken: string;
  /** The runner's work folder. */
  workDir: string;
}

/**
 * Keeps a runner child process alive for `start`: its output prefixed `[runner]`, restarted after a
 * short delay when it dies unexpectedly (a bounded number of times), stopped with SIGTERM then SIGKILL.
 */
class RunnerSupervisor {
  private child: ChildProcess | undefined;
  private stopping = false;
  private restarts = 0;
  private restartTimer: NodeJS.Timeout | undefined;

  /** Starts the first runner child. */
  constructor(private readonly options: RunnerSupervisorOptions) {
    this.spawn();
  }

  /** Stops the runner child: lets it exit by itself for `selfStopWaitMs`, then SIGTERM, a bounded wait, SIGKILL. */
  async stop(selfStopWaitMs: number): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || hasExited(child)) return;
    if (selfStopWaitMs > 0 && (await waitForExit(child, selfStopWaitMs))) return;
    child.kill("SIGTERM");
    if (await waitForExit(child, DEFAULTS.runnerStopGraceMs)) return;
    process.stderr.write(`the runner did not stop within ${formatDuration(DEFAULTS.runnerStopGraceMs)}; killing it\n`);
    child.kill("SIGKILL");
    await waitForExit(child, 2_000);
  }

  /** Kills the runner child at once (forced exit); no restarts afterwards. */
  kill(): void {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    if (this.child && !hasExited(this.child)) this.child.kill("SIGKILL");
  }

  private spawn(): void {
    const { entryScript, url, machineId, runnerToken, workDir } = this.options;
    const startedAt = Date.now();
    const child = spawn(
      process.execPath,
      [entryScript, "runner", "--url", url, "--machine", machineId, "--work-dir", workDir],
      { env: { ...process.env, TENDRIL_RUNNER_TOKEN: runnerToken }, stdio: ["ignore", "pipe", "pipe"] },
    );
    this.child = child;
    prefixLines(child.stdout, process.stdout, "[runner] ");
    prefixLines(child.stderr, process.stderr, "[runner] ");
    child.on("error", (error) => process.stderr.write(`[runner] could not start: ${error.message}\n`));
    child.on("exit", (code, signal) => {
      if (this.stopping) return;
      if (Date.now() - startedAt > DEFAULTS.runnerStableAfterMs) this.restarts = 0;
      // Ctrl-C in the terminal reaches the child too, and it may exit before our own SIGINT handler has
      // run; deciding after the delay keeps a normal shutdown from looking like a crash.
      this.restartTimer = setTimeout(() => this.restartAfterExit(code, signal), DEFAULTS.runnerRestartDelayMs);
    });
  }

  private restartAfterExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stopping) return;
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    if (code === CLI_EXIT.runnerFatal) {
      process.stderr.write(
        `[start] the runner ${how} and stopped for good (its token was revoked or replaced, e.g. by \`tendril register ${this.options.machineId}\`); ` +
          "the control plane keeps running; restart `npm start` to get a runner again\n",
      );
      return;
    }
    if (this.restarts >= DEFAULTS.runnerMaxRestarts) {
      process.stderr.write(
        `[start] the runner ${how}; it failed ${this.restarts + 1} times in a row, so it is not restarted again ` +
          "(the control plane keeps running; restart `npm start` to try again)\n",
      );
      return;
    }
    this.restarts++;
    process.stderr.write(
      `[start] the runner ${how} unexpectedly; restarting it (attempt ${this.restarts} of ${DEFAULTS.runnerMaxRestarts})\n`,
    );
    this.spawn();
  }
}

// ---------------------------------------------------------------------------------------------------
// control-plane and runner

/** `tendril control-plane`: the local control plane alone, until SIGINT/SIGTERM. */
async function runControlPlane(options: { port: number; host: string; serverToken?: string; stateDir: string }): Promise<number> {
  const shutdown = new Shutdown();
  const given = options.serverToken ?? nonEmpty(process.env.TENDRIL_SERVER_TOKEN);
  const serverToken = given ?? generateToken();
  const { startLocalControlPlane } = await import("../../control-plane/local/launcher.js");
  const controlPlane = await startLocalControlPlane({
    port: options.port,
    host: options.host,
    serverToken,
    stateDir: resolve(options.stateDir),
  }).catch((error: unknown) => {
    throw new Error(`could not start the control plane on ${options.host}:${options.port}: ${describeError(error)}`);
  });
  shutdown.claimSignals();
  try {
    if (given === undefined) process.stdout.write(`server token: ${serverToken}\n`);
    process.stdout.write(`listening on ${controlPlane.url}\n`);
    await shutdown.signal;
  } finally {
    await controlPlane.stop();
  }
  return CLI_EXIT.ok;
}

/** Flags of `tendril runner`. */
interface RunnerFlags {
  url?: string;
  machine?: string;
  token?: string;
  workDir?: string;
  killGrace?: number;
}

/** `tendril runner`: one runner until SIGINT/SIGTERM (exit 0) or a fatal stop (exit 3). */
async function runRunner(flags: RunnerFlags): Promise<number> {
  const shutdown = new Shutdown();
  const env = process.env;
  const url = flags.url ?? nonEmpty(env.TENDRIL_URL);
  const machineId = flags.machine ?? nonEmpty(env.TENDRIL_MACHINE);
  const token = flags.token ?? nonEmpty(env.TENDRIL_RUNNER_TOKEN);
  const workDir = resolve(flags.workDir ?? nonEmpty(env.TENDRIL_WORK_DIR) ?? `${LOCAL_DIR}/work`);
  const missing = [
    url === undefined ? "--url (or TENDRIL_URL)" : undefined,
    machineId === undefined ? "--machine (or TENDRIL_MACHINE)" : undefined,
    token === undefined ? "--token (or TENDRIL_RUNNER_TOKEN)" : undefined,
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
  const { startRunner } = await import("../../runner/index.js");
  const runner = await startRunner({
    url,
    machineId,
    token,
    workDir,
    killGraceMs: flags.killGrace,
    disableKill,
    onFatal: (message: string) => reportFatal(message),
  });
  process.stdout.write(`runner ${runner.runnerId} serving machine ${machineId} from ${url} (work dir ${workDir})\n`);

  const outcome = await Promise.race([
    shutdown.signal.then(() => ({ fatal: undefined })),
    fatal.then((message) => ({ fatal: message })),
  ]);
  if (outcome.fatal !== undefined) {
    process.stderr.write(`error: the runner stopped for good: ${oneLine(outcome.fatal)}\n`);
    await Promise.race([runner.stop().catch(() => undefined), delay(DEFAULTS.runnerFatalStopMs)]);
    return CLI_EXIT.runnerFatal;
  }
  await runner.stop();
  return CLI_EXIT.ok;
}

// ---------------------------------------------------------------------------------------------------
// server-side commands

/** `--url` and `--server-token`, shared by every server-side command. */
interface ServerFlags {
  url?: string;
  serverToken?: string;
}

function withServerOptions(command: Command): Command {
  return command
    .option("--url <url>", "the control plane's URL (env TENDRIL_URL; else .tendril/local.json)")
    .option("--server-token <token>", "the server token (env TENDRIL_SERVER_TOKEN; else .tendril/local.json)");
}

async function clientFor(flags: ServerFlags): Promise<TendrilClient> {
  const settings = await resolveServerSettings({
    flagUrl: flags.url,
    flagToken: flags.serverToken,
    env: process.env,
    cwd: process.cwd(),
  });
  return new TendrilClient(settings);
}

/** `tendril register M`: only the token on stdout, so `$(tendril register M)` captures it. */
async function register(machineId: string, flags: ServerFlags): Promise<number> {
  const client = await clientFor(flags);
  const { runnerToken } = await client.registerMachine(machineId);
  process.stdout.write(`${runnerToken}\n`);
  process.stderr.write(
    `Runner token for machine ${machineId} (any earlier token of this machine no longer works). Start its runner with:\n` +
      `  TENDRIL_RUNNER_TOKEN=<the token> tendril runner --url ${client.url} --machine ${machineId}\n`,
  );
  return CLI_EXIT.ok;
}

/** Flags of `tendril run`. */
interface RunFlags extends ServerFlags {
  machine: string;
  isolation?: "full" | "none";
  mutex?: string;
  mutexTimeout?: number;
  abandonAfter?: number;
  shell?: "bash" | "sh" | "pwsh";
  ticket?: string;
  taskId?: string;
  env?: Record<string, string>;
}

/** `tendril run`: start, stream live, delete once complete, exit with the script's code; Ctrl-C escalates. */
async function runScript(script: string[], flags: RunFlags): Promise<number> {
  const scriptBody = script.join(" ");
  if (scriptBody.trim() === "") {
    throw new Error("no script given: put it after --, e.g. tendril run --machine local -- echo hello");
  }
  const client = await clientFor(flags);
  const machineId = flags.machine;
  const ticket = flags.ticket ?? randomUUID();
  const request: StartScriptInput = {
    ticket,
    scriptBody,
    ...(flags.shell && { shell: flags.shell }),
    ...(flags.isolation && { isolation: flags.isolation }),
    ...(flags.mutex !== undefined && { mutexName: flags.mutex }),
    ...(flags.mutexTimeout !== undefined && { mutexTimeoutMs: flags.mutexTimeout }),
    ...(flags.taskId !== undefined && { taskId: flags.taskId }),
    ...(flags.env && { environment: flags.env }),
  };

  const cancel = new AbortController();
  const abandonNow = new AbortController();
  let interrupts = 0;
  const onInterrupt = () => {
    interrupts++;
    if (interrupts === 1) {
      const automatic =
        flags.abandonAfter === undefined ? "" : `; it is abandoned automatically if still running after ${formatDuration(flags.abandonAfter)}`;
      process.stderr.write(`cancelling… (press Ctrl-C again to abandon${automatic})\n`);
      cancel.abort();
    } else if (interrupts === 2) {
      process.stderr.write(
        `abandoning: the control plane completes the script with -48 and releases its mutex now; ` +
          `its process may keep running on machine ${machineId} (press Ctrl-C again to stop waiting)\n`,
      );
      abandonNow.abort();
    } else {
      process.stderr.write(`stopped waiting; see the script with: tendril status ${machineId} ${ticket}\n`);
      void exit(CLI_EXIT.interrupted);
    }
  };
  process.on("SIGINT", onInterrupt);
  process.on("SIGTERM", onInterrupt);
  try {
    const outcome = await client.executeScript(machineId, request, {
      onLog: printLogLine,
      cancelSignal: cancel.signal,
      abandonSignal: abandonNow.signal,
      ...(flags.abandonAfter !== undefined && { abandonAfterMs: flags.abandonAfter }),
      onEscalationError: (what, error) => process.stderr.write(`could not ${what} the script: ${describeError(error)}\n`),
      onFallback: (error) => printDebug(`live output unavailable (${describeError(error)}); polling instead`),
    });
    if (outcome.deleteError !== undefined) {
      process.stderr.write(`warning: the script completed but could not be deleted: ${describeError(outcome.deleteError)}\n`);
    }
    const result = processExitFor(outcome.exitCode);
    if (result.message) process.stderr.write(`${result.message}\n`);
    return result.code;
  } finally {
    process.off("SIGINT", onInterrupt);
    process.off("SIGTERM", onInterrupt);
  }
}

/** `tendril machines`: a table, or the API's JSON. */
async function listMachines(flags: ServerFlags & { json?: boolean }): Promise<number> {
  const machines = await (await clientFor(flags)).listMachines();
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ machines }, null, 2)}\n`);
    return CLI_EXIT.ok;
  }
  if (machines.length === 0) {
    process.stdout.write("no machines registered yet (register one with: tendril register <machine>)\n");
    return CLI_EXIT.ok;
  }
  const rows = machines.map((machine) => [
    machine.machineId,
    machine.runner.connected ? "connected" : "offline",
    machine.runner.version ?? "-",
    describeMutexes(machine),
  ]);
  process.stdout.write(formatTable(["MACHINE", "RUNNER", "VERSION", "MUTEXES"], rows));
  return CLI_EXIT.ok;
}

/** `tendril status M TICKET`: every log page, combined. */
async function showStatus(machineId: string, ticket: string, flags: ServerFlags & { json?: boolean }): Promise<number> {
  const client = await clientFor(flags);
  let status = await client.getStatus(machineId, ticket);
  const logs = [...status.logs];
  while (status.hasMoreLogs) {
    status = await client.getStatus(machineId, ticket, { logSequence: status.nextLogSequence });
    logs.push(...status.logs);
  }
  const combined: ScriptStatus = { ...status, logs };
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(combined, null, 2)}\n`);
    return CLI_EXIT.ok;
  }
  process.stdout.write(
    [
      `ticket     ${combined.ticket}`,
      `state      ${combined.state}`,
      `exit code  ${describeExitCode(combined.exitCode)}`,
      `logs       ${logs.length === 1 ? "1 line" : `${logs.length} lines`}`,
      ...logs.map((line) => `  ${line.source.padEnd(6)} ${line.text}`),
      "",
    ].join("\n"),
  );
  return CLI_EXIT.ok;
}

/** `tendril cancel M TICKET`. */
async function cancel(
  machineId: string,
  ticket: string,
  flags: ServerFlags & { abandonAfter?: number; json?: boolean },
): Promise<number> {
  const client = await clientFor(flags);
  const status = await client.cancelScript(
    machineId,
    ticket,
    flags.abandonAfter === undefined ? {} : { abandonAfterMs: flags.abandonAfter },
  );
  if (flags.json) process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
  else if (status.state === "complete") process.stdout.write(`${ticket} is complete: exit code ${describeExitCode(status.exitCode)}\n`);
  else {
    const later = flags.abandonAfter === undefined ? "" : `; abandoned if still running after ${formatDuration(flags.abandonAfter)}`;
    process.stdout.write(`cancel requested for ${ticket} (now ${status.state})${later}\n`);
  }
  return CLI_EXIT.ok;
}

/** `tendril abandon M TICKET`. */
async function abandon(
  machineId: string,
  ticket: string,
  flags: ServerFlags & { killProcess?: boolean; json?: boolean },
): Promise<number> {
  const client = await clientFor(flags);
  const status = await client.abandonScript(machineId, ticket, flags.killProcess ? { killProcess: true } : {});
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
    return CLI_EXIT.ok;
  }
  process.stdout.write(`${ticket} is ${status.state}: exit code ${describeExitCode(status.exitCode)}\n`);
  if (status.exitCode === ExitCode.Abandoned) {
    process.stdout.write(
      `its mutex is released; the process may still be running on machine ${machineId}` +
        `${flags.killProcess ? " (a best-effort kill was requested)" : ""}\n`,
    );
  }
  return CLI_EXIT.ok;
}

// ---------------------------------------------------------------------------------------------------
// exit codes and output

/** What Tendril's own (negative) exit codes mean. */
const TENDRIL_EXIT_MEANINGS = new Map<number, string>([
  [ExitCode.Fatal, "failed: the runner could not run the script"],
  [ExitCode.Cancelled, "cancelled"],
  [ExitCode.MutexTimeout, "timed out waiting for the isolation mutex"],
  [ExitCode.Unknown, "result unknown: the runner lost track of the script"],
  [ExitCode.Abandoned, "abandoned: the process may still be running"],
]);

/** A script exit code for people: `0`, `-43 (cancelled)`, `-` while there is none. */
function describeExitCode(exitCode: number | null): string {
  if (exitCode === null) return "-";
  const meaning = TENDRIL_EXIT_MEANINGS.get(exitCode);
  return meaning ? `${exitCode} (${meaning})` : String(exitCode);
}

/** The one mapping from a script's exit code to the exit code of `tendril run` (and what to say about it). */
function processExitFor(exitCode: number): { code: number; message?: string } {
  if (exitCode >= 0 && exitCode <= 255) return { code: exitCode };
  const meaning = TENDRIL_EXIT_MEANINGS.get(exitCode);
  if (meaning) return { code: CLI_EXIT.scriptFailed, message: `${meaning} (${exitCode})` };
  // A process exit code outside 0–255 (possible on Windows) cannot be passed on as is.
  return { code: CLI_EXIT.scriptFailed, message: `the script exited with ${exitCode}, which is outside 0-255` };
}

/** stdout lines to stdout, stderr lines to stderr, Tendril's own debug lines to stderr, dimmed. */
function printLogLine(line: LogLine): void {
  switch (line.source) {
    case "stdout":
      process.stdout.write(`${line.text}\n`);
      return;
    case "stderr":
      process.stderr.write(`${line.text}\n`);
      return;
    case "debug":
      printDebug(line.text);
      return;
    default: {
      const unreachable: never = line.source;
      process.stderr.write(`${String(unreachable)}\n`);
    }
  }
}

function printDebug(text: string): void {
  const useColor = process.stderr.isTTY && process.env.NO_COLOR === undefined;
  const line = `[tendril] ${text}`;
  process.stderr.write(useColor ? `\x1b[2m${line}\x1b[22m\n` : `${line}\n`);
}

function describeMutexes(machine: MachineView): string {
  const busy = machine.mutexes.filter((mutex) => mutex.holders.length > 0 || mutex.waiting.length > 0);
  if (busy.length === 0) return "-";
  return busy
    .map((mutex) => {
      const held = mutex.holders.length ? `held (${mutex.mode}) by ${mutex.holders.join(", ")}` : "free";
      const waiting = mutex.waiting.length ? `; waiting: ${mutex.waiting.join(", ")}` : "";
      return `${mutex.name} ${held}${waiting}`;
    })
    .join(" | ");
}

function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length)));
  const format = (row: string[]) =>
    row
      .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join("  ")
      .trimEnd();
  return `${[header, ...rows].map(format).join("\n")}\n`;
}

function examples(lines: string[]): string {
  return `\nExamples:\n${lines.map((line) => `  $ ${line}`).join("\n")}`.replace(/\$ #/g, "#");
}

function describeError(error: unknown): string {
  if (error instanceof TendrilApiError) return `${oneLine(error.message)} (${error.code}, HTTP ${error.status})`;
  if (error instanceof Error) return oneLine(error.message);
  return oneLine(String(error));
}

function printError(error: unknown): void {
  process.stderr.write(`error: ${describeError(error)}\n`);
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim();
}

/** Copies a child's output line by line with a prefix. */
function prefixLines(source: Readable | null, target: Writable, prefix: string): void {
  if (!source) return;
  const lines = createInterface({ input: source, crlfDelay: Infinity });
  lines.on("line", (line) => target.write(`${prefix}${line}\n`));
}

// ---------------------------------------------------------------------------------------------------
// argument parsers

const MACHINE_ID_RULE = "use 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'";

function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65_535) throw new InvalidArgumentError("expected a port number from 0 to 65535.");
  return port;
}

function parseDurationArg(value: string): number {
  try {
    return parseDuration(value);
  } catch (error) {
    throw new InvalidArgumentError(describeError(error));
  }
}

function parseMachineIdArg(value: string): string {
  if (!isMachineId(value)) throw new InvalidArgumentError(`invalid machine id: ${MACHINE_ID_RULE}.`);
  return value;
}

function parseTicketArg(value: string): string {
  if (!isTicket(value)) throw new InvalidArgumentError("invalid ticket: use 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-'.");
  return value;
}

function collectEnvArg(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const equals = value.indexOf("=");
  if (equals <= 0) throw new InvalidArgumentError("expected NAME=VALUE.");
  return { ...previous, [value.slice(0, equals)]: value.slice(equals + 1) };
}

// ---------------------------------------------------------------------------------------------------
// processes and signals

/** The first SIGINT/SIGTERM requests a graceful stop; a second one forces the exit at once. */
class Shutdown {
  /** Resolves with the first stop signal. */
  readonly signal: Promise<NodeJS.Signals>;
  /** True once a stop signal arrived. */
  requested = false;
  private readonly forceActions: Array<() => void> = [];
  private readonly handler: (signal: NodeJS.Signals) => void;

  /** Installs the signal handlers (they stay until the process exits). */
  constructor() {
    let resolveSignal: (signal: NodeJS.Signals) => void = () => undefined;
    this.signal = new Promise((resolveFirst) => (resolveSignal = resolveFirst));
    this.handler = (signal: NodeJS.Signals) => {
      if (!this.requested) {
        this.requested = true;
        resolveSignal(signal);
        return;
      }
      process.stderr.write(`${signal} again: exiting now\n`);
      for (const action of this.forceActions) action();
      process.exit(CLI_EXIT.interrupted);
    };
    process.on("SIGINT", this.handler);
    process.on("SIGTERM", this.handler);
  }

  /**
   * Removes every other SIGINT/SIGTERM listener. Miniflare installs its own that dispose workerd and call
   * `process.exit(130/143)` at once, which would skip the graceful stop (runner child, exit code 0).
   */
  claimSignals(): void {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      for (const listener of process.listeners(signal)) {
        if (listener !== this.handler) process.removeListener(signal, listener);
      }
    }
  }

  /** Registers what a forced exit must still do (e.g. kill a child process). */
  onForce(action: () => void): void {
    this.forceActions.push(action);
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Waits for a child to exit; false when it has not within `ms`. */
function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (hasExited(child)) return Promise.resolve(true);
  return new Promise((resolveExit) => {
    const timer = setTimeout(() => resolveExit(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolveExit(true);
    });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolveDelay) => setTimeout(resolveDelay, ms));
}

/** A fresh server token: 32 random bytes, base64url. */
function generateToken(): string {
  return randomBytes(32).toString("base64url");
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

/** Flushes stdout and stderr (bounded, in case a reader stalls), then exits. */
async function exit(code: number): Promise<never> {
  const flush = (stream: Writable) =>
    new Promise<void>((resolveFlush) => {
      const timer = setTimeout(resolveFlush, 1_000);
      stream.write("", () => {
        clearTimeout(timer);
        resolveFlush();
      });
    });
  await Promise.all([flush(process.stdout), flush(process.stderr)]);
  process.exit(code);
}
