/**
 * The `tendril` command line (docs/api.md, "Commands"): `main` and the command tree. Each command's action
 * lives in `commands/<name>.ts`; the local all-in-one's runner child in `supervisor.ts`.
 *
 * Exit codes of the command itself: 0 success; 1 a script ended with a negative Tendril code; 2 a usage
 * or API error (one line on stderr); 3 the runner had to stop for good; 0–255 from `run` is the script's own.
 */
import { Command, CommanderError, Option } from "commander";
import packageJson from "../../package.json" with { type: "json" };
import { LOCAL_DIR } from "../local-config.js";
import { collectEnvArg, parseBytesArg, parseDurationArg, parseMachineIdArg, parsePort, parseTicketArg } from "./args.js";
import { abandon } from "./commands/abandon.js";
import { cancel } from "./commands/cancel.js";
import { runControlPlane } from "./commands/control-plane.js";
import { listMachines } from "./commands/machines.js";
import { register } from "./commands/register.js";
import { runScript } from "./commands/run.js";
import { runRunner } from "./commands/runner.js";
import { startAllInOne } from "./commands/start.js";
import { showStatus } from "./commands/status.js";
import { DEFAULTS } from "./defaults.js";
import { CLI_EXIT } from "./exit-codes.js";
import { flushAndExit, printError } from "./output.js";

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
  await flushAndExit(result.code);
}

/** The command tree; each action stores its exit code in `result`. */
export function buildProgram(argv: string[], result: { code: number }): Command {
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
    ]) +
      "\n\nDurations (--mutex-timeout, --abandon-after, --kill-grace, --retention): a number with a unit of ms, s, m, h\n" +
      "or d (500ms, 30s, 2m, 1h, 2d), or several such as 1h30m; a plain number is milliseconds.",
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
    .option(
      "--retention <duration>",
      "how long completed scripts the server never deleted are kept, e.g. 2d or 12h (default 7d)",
      parseDurationArg,
    )
    .option("--max-output <size>", "most output stored per script; later output is dropped with a note (default 100MiB)", parseBytesArg)
    .addHelpText(
      "after",
      examples([
        "tendril control-plane --port 8787 --server-token s3cret --state-dir .tendril/state",
        "tendril control-plane --port 0 --retention 2d --max-output 10MiB",
        "TENDRIL_SERVER_TOKEN=s3cret tendril control-plane --port 0",
      ]),
    )
    .action(action(runControlPlane));

  program
    .command("runner")
    .description("Run a runner: keeps one connection to the control plane and runs the scripts of one machine.")
    .option("--url <url>", "the control plane's http(s) base URL (env TENDRIL_URL)")
    .option("--machine <id>", "the machine this runner serves (env TENDRIL_MACHINE)")
    .option("--token-file <file>", "file holding the machine's runner token from `tendril register` (mode 600: readable by its owner only)")
    .option("--token <token>", "the runner token itself (visible to every user in `ps`: prefer --token-file or env TENDRIL_RUNNER_TOKEN)")
    .option("--work-dir <dir>", `where script workspaces live (env TENDRIL_WORK_DIR; default ${LOCAL_DIR}/work)`)
    .option("--kill-grace <duration>", "time between SIGTERM and SIGKILL when cancelling (default 10s)", parseDurationArg)
    .addHelpText(
      "after",
      examples([
        "(umask 077; tendril register web-01 > runner-token)   # a file only its owner can read",
        "tendril runner --url https://tendril.example.com --machine web-01 --token-file runner-token",
        "TENDRIL_RUNNER_TOKEN=$(tendril register web-01) tendril runner --url http://127.0.0.1:8787 --machine web-01 --kill-grace 30s",
      ]) +
        "\n\nThe runner token: --token-file (refused when its group or other users can read the file) or the\n" +
        "TENDRIL_RUNNER_TOKEN environment variable. --token still works, but warns: every user on this machine can read\n" +
        "a process's command line. Scripts run as this runner's user and can read its token either way (README,\n" +
        '"Security of the runner token").',
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
      .option(
        "--abandon-after <duration>",
        "after Ctrl-C, abandon the script if it is still not complete this long after the cancel (see below)",
        parseDurationArg,
      )
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
          "tendril run --machine web-01 --abandon-after 2m -- ./deploy.sh",
          "tendril run --machine web-01 --isolation none -- 'uptime && df -h'",
        ]),
        "",
        "Stopping a script (Ctrl-C, or SIGINT/SIGTERM sent to this command):",
        "  1st  cancels it: a pending script never runs; a running one has its process tree stopped (-43).",
        "  2nd  abandons it: its mutex is released at once and it completes with -48, but its process may",
        "       keep running on the machine.",
        "  3rd  stops waiting at once (exit 130); the script goes on as the control plane decides.",
        "With --abandon-after D, the abandon also happens by itself D after the cancel if the script is still",
        "not complete. This command does it when the machine's runner supports abandon, and the same deadline",
        "is sent with the cancel, so the control plane abandons it too even if this command is stopped first.",
        "",
        "Exit code: the script's own (0-255), or 1 for Tendril's negative codes, which are named on stderr,",
        "e.g. `cancelled (-43)`, `abandoned (-48)`, `timed out waiting for the isolation mutex (-44)`.",
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
      .option("--abandon-after <duration>", "let the control plane abandon it if still not complete this long after", parseDurationArg)
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

/** Adds `--url` and `--server-token`, shared by every server-side command. */
function withServerOptions(command: Command): Command {
  return command
    .option("--url <url>", "the control plane's URL (env TENDRIL_URL; else .tendril/local.json)")
    .option("--server-token <token>", "the server token (env TENDRIL_SERVER_TOKEN; else .tendril/local.json)");
}

/** The `Examples:` section of a help text; `# ...` lines are comments, not commands. */
function examples(lines: string[]): string {
  return `\nExamples:\n${lines.map((line) => `  $ ${line}`).join("\n")}`.replace(/\$ #/g, "#");
}
