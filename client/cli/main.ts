/**
 * The `tendril` command line (docs/api.md, "Commands"): `main` and the command tree. Each command's action
 * lives in `commands/<name>.ts`; the local all-in-one's runner child in `supervisor.ts`; the runner's own flags (shared
 * with the one-file runner, runner-file.ts) in `runner-commands.ts`.
 *
 * Exit codes of the command itself: 0 success; 1 a script ended with a negative Tendril code; 2 a usage
 * or API error (one line on stderr); 3 the runner had to stop for good; 0–255 from `run` is the script's own.
 */
import { Command, Option } from "commander";
import packageJson from "../../package.json" with { type: "json" };
import { LOCAL_DIR } from "../local-config.js";
import {
  collectEnvArg,
  parseBytesArg,
  parseDurationArg,
  parseLimitArg,
  parseMachineIdArg,
  parseOperatorNameArg,
  parsePort,
  parseReasonArg,
  parseRequestedByArg,
  parseTicketArg,
} from "./args.js";
import { abandon } from "./commands/abandon.js";
import { showAudit } from "./commands/audit.js";
import { cancel } from "./commands/cancel.js";
import { runControlPlane } from "./commands/control-plane.js";
import { removeMachine, revokeRunnerToken, showMachine } from "./commands/machine.js";
import { listMachines } from "./commands/machines.js";
import { addOperator, listOperators, removeOperator } from "./commands/operator.js";
import { register } from "./commands/register.js";
import { runScript } from "./commands/run.js";
import { bundledRunnerFile, installRunner, type RunnerInstallFlags } from "./commands/runner-install.js";
import { runRunner } from "./commands/runner.js";
import { startAllInOne } from "./commands/start.js";
import { showStatus } from "./commands/status.js";
import { DEFAULTS } from "./defaults.js";
import { CLI_EXIT } from "./exit-codes.js";
import { actionFor, examples, runProgram, type ExitResult } from "./program.js";
import { defineInstallCommand, defineRunnerCommand } from "./runner-commands.js";

/** Runs the `tendril` command line with `process.argv`-style arguments, then exits the process. */
export async function main(argv: string[]): Promise<void> {
  const result: ExitResult = { code: CLI_EXIT.ok };
  await runProgram(buildProgram(argv, result), argv, result);
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
      "npx tendril audit --machine local",
      "sudo npx tendril runner install --url https://tendril.example.com --machine web-01 --token-file t --user tendril",
    ]) +
      "\n\nDurations (--mutex-timeout, --abandon-after, --kill-grace, --retention, --audit-retention): a number with a unit of ms, s, m, h\n" +
      "or d (500ms, 30s, 2m, 1h, 2d), or several such as 1h30m; a plain number is milliseconds.",
  );

  const action = actionFor(result);

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
    .option(
      "--server-token-next <token>",
      "a second server token accepted beside --server-token, to rotate it without downtime (env TENDRIL_SERVER_TOKEN_NEXT)",
    )
    .option("--state-dir <dir>", "where the persisted state lives", `${LOCAL_DIR}/state`)
    .option(
      "--retention <duration>",
      "how long completed scripts the server never deleted are kept, e.g. 2d or 12h (default 7d)",
      parseDurationArg,
    )
    .option("--max-output <size>", "most output stored per script; later output is dropped with a note (default 100MiB)", parseBytesArg)
    .option("--audit-retention <duration>", "how long the audit feed keeps an event, e.g. 30d (default 90d)", parseDurationArg)
    .addHelpText(
      "after",
      examples([
        "tendril control-plane --port 8787 --server-token s3cret --state-dir .tendril/state",
        "tendril control-plane --port 0 --retention 2d --max-output 10MiB",
        "TENDRIL_SERVER_TOKEN=s3cret tendril control-plane --port 0",
        "tendril control-plane --server-token old-s3cret --server-token-next new-s3cret --audit-retention 30d",
      ]),
    )
    .action(action(runControlPlane));

  const runnerInvocation = { run: "tendril runner", install: "sudo tendril runner install" };
  const runner = defineRunnerCommand(
    program.command("runner").description("Run a runner: keeps one connection to the control plane and runs the scripts of one machine."),
    runnerInvocation,
  ).action(action(runRunner));
  defineInstallCommand(runner, runnerInvocation).action(
    action((flags: RunnerInstallFlags) => installRunner(flags, { runnerFile: bundledRunnerFile, version: packageJson.version })),
  );

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
      .description("List the fleet a page at a time: each machine's runner, mutex holders, waiters and abandoned processes, and the fleet's counts.")
      .option("--limit <n>", "machines per page, 1-500 (default 100)", parseLimitArg(500))
      .option("--cursor <cursor>", "the page after the one that printed this cursor")
      .option("--all", "every page, one after the other")
      .option("--prefix <prefix>", "only machines whose id starts with this")
      .addOption(new Option("--status <status>", "only machines in this state (busy: a mutex is held; stuck: something abandoned may still run, or a holder ran over an hour)").choices(["connected", "disconnected", "busy", "stuck"]))
      .option("--json", "print the API's JSON instead of a table"),
  )
    .addHelpText(
      "after",
      examples([
        "tendril machines",
        "tendril machines --prefix web- --status busy",
        "tendril machines --status stuck            # with the pids of their abandoned processes",
        "tendril machines --limit 50 --cursor <the cursor the previous page printed>",
        "tendril machines --all --json",
      ]),
    )
    .action(action(listMachines));

  const machine = program
    .command("machine")
    .description("One machine: its full view, its removal, its runner token.")
    .addHelpText("after", examples(["tendril machine show web-01", "tendril machine remove web-01", "tendril machine revoke-token web-01"]));
  withServerOptions(
    machine
      .command("show")
      .description("Show a machine: its runner, each mutex with its holders and queue, its scripts, and abandoned processes with their pids.")
      .argument("<machine>", "machine id", parseMachineIdArg)
      .option("--json", "print the API's JSON"),
  )
    .addHelpText("after", examples(["tendril machine show web-01", "tendril machine show web-01 --json"]))
    .action(action(showMachine));
  withServerOptions(
    machine
      .command("remove")
      .description("Remove a decommissioned machine: its scripts, logs and summary are deleted and its runner token revoked (server token only).")
      .argument("<machine>", "machine id", parseMachineIdArg),
  )
    .addHelpText(
      "after",
      examples(["tendril machine remove web-01", "tendril cancel web-01 deploy-42 --reason decommissioning   # first, if it is busy"]) +
        "\n\nRefused while a script is pending or running on it: cancel those first (or let them finish). Its audit\n" +
        "events stay in the feed (tendril audit --machine web-01).",
    )
    .action(action(removeMachine));
  withServerOptions(
    machine
      .command("revoke-token")
      .description("Revoke a machine's runner token without issuing a new one; its runner is disconnected (server token only).")
      .argument("<machine>", "machine id", parseMachineIdArg),
  )
    .addHelpText("after", examples(["tendril machine revoke-token web-01", "tendril register web-01   # a new token, when it should come back"]))
    .action(action(revokeRunnerToken));

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
      .option("--reason <text>", "why, recorded in the audit trail and the script's log (up to 500 characters)", parseReasonArg)
      .option("--requested-by <who>", "with the server token: the person or task it acts for, recorded as the actor server:<who>", parseRequestedByArg)
      .option("--json", "print the API's JSON"),
  )
    .addHelpText(
      "after",
      examples([
        "tendril cancel web-01 deploy-42 --reason 'wrong release'",
        "tendril cancel web-01 deploy-42 --abandon-after 2m --reason 'hung on the AV scan'",
        "tendril cancel web-01 deploy-42 --reason superseded --requested-by 'alice (ServerTasks-42)'",
      ]),
    )
    .action(action(cancel));

  withServerOptions(
    program
      .command("abandon")
      .description("Abandon a script whose process will not die: it completes with -48 and its mutex is released now.")
      .argument("<machine>", "machine id", parseMachineIdArg)
      .argument("<ticket>", "the script's ticket", parseTicketArg)
      .option("--kill-process", "also ask the runner for a best-effort kill of the process tree")
      .option("--reason <text>", "why, recorded in the audit trail and the script's log (up to 500 characters)", parseReasonArg)
      .option("--requested-by <who>", "with the server token: the person or task it acts for, recorded as the actor server:<who>", parseRequestedByArg)
      .option("--json", "print the API's JSON"),
  )
    .addHelpText(
      "after",
      examples([
        "tendril abandon web-01 deploy-42 --reason 'stuck in the AV scan'",
        "tendril abandon web-01 deploy-42 --kill-process --reason 'cancel did not land'",
      ]),
    )
    .action(action(abandon));

  withServerOptions(
    program
      .command("audit")
      .description("The audit feed, newest first: who cancelled, abandoned or changed what, when and why.")
      .option("--machine <id>", "only this machine's events", parseMachineIdArg)
      .option("--limit <n>", "events per page, 1-500 (default 100)", parseLimitArg(500))
      .option("--cursor <cursor>", "the page after the one that printed this cursor (older events)")
      .option("--all", "every page, back to the oldest event kept (90 days by default)")
      .option("--json", "print the API's JSON"),
  )
    .addHelpText(
      "after",
      examples([
        "tendril audit",
        "tendril audit --machine web-01 --limit 20",
        "tendril audit --cursor <the cursor the previous page printed>",
        "tendril audit --machine web-01 --all --json",
      ]),
    )
    .action(action(showAudit));

  const operator = program
    .command("operator")
    .description("Operators: people who watch (viewer) or also cancel and abandon (operator) with a token of their own.")
    .addHelpText("after", examples(["tendril operator add alice --role operator", "tendril operator list", "tendril operator remove alice"]));
  withServerOptions(
    operator
      .command("add")
      .description("Add an operator (or give an existing one a new token and role) and print its token, shown this once.")
      .argument("<name>", "the operator's name", parseOperatorNameArg)
      .addOption(new Option("--role <role>", "viewer reads; operator also cancels and abandons").choices(["viewer", "operator"]).makeOptionMandatory())
      .option("--expires-in-days <days>", "the token's lifetime, 1-365 days (default 90)", parseLimitArg(365))
      .option("--json", "print the API's JSON (with the token)"),
  )
    .addHelpText(
      "after",
      examples([
        "tendril operator add alice --role operator",
        "tendril operator add dashboards --role viewer --expires-in-days 365",
        "(umask 077; tendril operator add bob --role viewer > bob.token)",
      ]) +
        "\n\nThe token goes to stdout alone (so that $(...) or a redirect captures it), what to do with it to stderr.\n" +
        "The operator uses it where the server token would go: --server-token or TENDRIL_SERVER_TOKEN, or the console.",
    )
    .action(action(addOperator));
  withServerOptions(
    operator.command("list").description("List the operators: role, created, expires, last used (never their tokens).").option("--json", "print the API's JSON"),
  )
    .addHelpText("after", examples(["tendril operator list", "tendril operator list --json"]))
    .action(action(listOperators));
  withServerOptions(
    operator
      .command("remove")
      .description("Remove an operator: its token stops working at once and its console sessions end.")
      .argument("<name>", "the operator's name", parseOperatorNameArg),
  )
    .addHelpText("after", examples(["tendril operator remove alice"]))
    .action(action(removeOperator));

  return program;
}

/** Adds `--url` and `--server-token`, shared by every server-side command. */
function withServerOptions(command: Command): Command {
  return command
    .option("--url <url>", "the control plane's URL (env TENDRIL_URL; else .tendril/local.json)")
    .option(
      "--server-token <token>",
      "the server token, or an operator's token for what its role allows (env TENDRIL_SERVER_TOKEN; else .tendril/local.json)",
    );
}
