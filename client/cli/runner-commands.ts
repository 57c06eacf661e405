/**
 * The runner's command-line surface, defined once for both programs that carry it: `tendril runner [install]` (the
 * full command line) and `node tendril-runner.mjs [install]` (the one-file runner that `runner install` puts on a
 * machine). Only the way it is invoked differs between them, so the help texts show that invocation.
 */
import type { Command } from "commander";
import { LOCAL_DIR } from "../local-config.js";
import { parseDurationArg, parseMachineIdArg } from "./args.js";
import { INSTALL_PATHS } from "./runner-service.js";
import { examples } from "./program.js";

/** How the runner is invoked in help texts: `tendril runner` or `node tendril-runner.mjs`. */
export interface RunnerInvocation {
  /** The words before the runner's own flags, e.g. `tendril runner`. */
  run: string;
  /** The words before `install`'s flags, e.g. `sudo tendril runner install`. */
  install: string;
}

/** Adds the runner's flags and help text to `command` (its action is the caller's). */
export function defineRunnerCommand(command: Command, invocation: RunnerInvocation): Command {
  return command
    .option("--url <url>", "the control plane's http(s) base URL (env TENDRIL_URL)")
    .option("--machine <id>", "the machine this runner serves (env TENDRIL_MACHINE)")
    .option("--token-file <file>", "file holding the machine's runner token from `tendril register` (mode 600: readable by its owner only)")
    .option("--token <token>", "the runner token itself (visible to every user in `ps`: prefer --token-file or env TENDRIL_RUNNER_TOKEN)")
    .option("--work-dir <dir>", `where script workspaces live (env TENDRIL_WORK_DIR; default ${LOCAL_DIR}/work)`)
    .option(
      "--runtime-dir <dir>",
      "where each run's own small files live (record, FIFOs, output log), best on a tmpfs such as /run/tendril; one per work dir (env TENDRIL_RUNTIME_DIR; default the work dir)",
    )
    .option("--kill-grace <duration>", "time between SIGTERM and SIGKILL when cancelling (default 10s)", parseDurationArg)
    .addHelpText(
      "after",
      examples([
        "(umask 077; tendril register web-01 > runner-token)   # a file only its owner can read",
        `${invocation.run} --url https://tendril.example.com --machine web-01 --token-file runner-token`,
        `TENDRIL_RUNNER_TOKEN=$(tendril register web-01) ${invocation.run} --url http://127.0.0.1:8787 --machine web-01 --kill-grace 30s`,
        `${invocation.install} --url https://tendril.example.com --machine web-01 --token-file runner-token --user tendril`,
      ]) +
        "\n\nThe runner token: --token-file (refused when its group or other users can read the file) or the\n" +
        "TENDRIL_RUNNER_TOKEN environment variable. --token still works, but warns: every user on this machine can read\n" +
        "a process's command line. Scripts run as this runner's user and can read its token either way (README,\n" +
        '"Security of the runner token").\n\n' +
        "SIGTERM stops the runner and leaves its running scripts to the next runner on the same work dir, which\n" +
        "re-attaches to them. To run it as a systemd service, see `install` (docs/runners.md).",
    );
}

/** Adds `install` under `parent`: the flags of `runner install` and its help text (its action is the caller's). */
export function defineInstallCommand(parent: Command, invocation: RunnerInvocation): Command {
  return parent
    .command("install")
    .description(
      `Install the runner as a systemd service: the one-file runner in ${INSTALL_PATHS.runnerDir}/, ` +
        `${INSTALL_PATHS.unitFile} and ${INSTALL_PATHS.envFile} (mode 0600, the token); then enable and start it.`,
    )
    .option("--url <url>", "the control plane's http(s) base URL")
    .option("--machine <id>", "the machine this runner serves", parseMachineIdArg)
    .option(
      "--token-file <file>",
      `file holding the machine's runner token (mode 600); may be left out to keep the token of an existing ${INSTALL_PATHS.envFile} for the same machine`,
    )
    .option("--work-dir <dir>", `absolute path of the runner's work dir (default ${INSTALL_PATHS.defaultWorkDir})`)
    .option("--user <user>", "the user the runner and its scripts run as (required when installing as root; `root` must be said explicitly)")
    .option("--node <path>", "the Node.js (20 or later) the service runs (default: this one)")
    .option("--root <dir>", "write the files under this folder instead of / and start nothing (for images and tests)")
    .option("--print", "show the files that would be written, and write nothing")
    .addHelpText(
      "after",
      examples([
        "sudo useradd --system --home-dir /var/lib/tendril --shell /usr/sbin/nologin tendril",
        `${invocation.install} --url https://tendril.example.com --machine web-01 --token-file runner-token --user tendril`,
        `${invocation.install} --url https://tendril.example.com --machine web-01 --user tendril --print`,
        `${invocation.install} --url https://tendril.example.com --machine web-01 --token-file t --user tendril --root ./image`,
      ]) +
        "\n\nWhere systemd is not running, the files are written and nothing is started; it says how to start it.\n" +
        "Installing again upgrades in place: the new runner re-attaches to the scripts the old one left running.\n" +
        "Production notes (upgrades, logs, uninstall, what re-attach guarantees): docs/runners.md.",
    );
}
