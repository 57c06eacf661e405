/**
 * The entry of the one-file runner, dist/tendril-runner.mjs (scripts/build.mjs): the runner and `install`, with every
 * dependency bundled, so that the file alone runs on a machine with Node.js 20+ — what the systemd unit's
 * `ExecStart` runs. `node tendril-runner.mjs [runner] --url U --machine M` is `tendril runner`; `node
 * tendril-runner.mjs [runner] install ...` is `tendril runner install`, copying this very file.
 */
import { Command } from "commander";
import { fileURLToPath } from "node:url";
import { RUNNER_DEFAULTS } from "../../runner/index.js";
import { installRunner, type RunnerInstallFlags } from "./commands/runner-install.js";
import { runRunner } from "./commands/runner.js";
import { CLI_EXIT } from "./exit-codes.js";
import { actionFor, runProgram } from "./program.js";
import { defineInstallCommand, defineRunnerCommand, type RunnerInvocation } from "./runner-commands.js";

/** The package's version, written in by the build (esbuild `define`): this file sits alone, with no package.json. */
declare const __TENDRIL_VERSION__: string | undefined;
const VERSION = typeof __TENDRIL_VERSION__ === "string" ? __TENDRIL_VERSION__ : "0.0.0-dev";

// The runner's default version comes from a package.json beside the code, which a file installed alone in
// /usr/local/lib/tendril/ does not have (or, worse, finds someone else's): the version built in wins.
RUNNER_DEFAULTS.version = VERSION;

const invocation: RunnerInvocation = { run: "node tendril-runner.mjs", install: "sudo node tendril-runner.mjs install" };
const result = { code: CLI_EXIT.ok as number };
const action = actionFor(result);

const program = defineRunnerCommand(
  new Command("tendril-runner")
    .description(
      "The Tendril runner in one file: keeps one connection to the control plane and runs the scripts of one machine. " +
        "Settings come from the flags or the environment (TENDRIL_URL, TENDRIL_MACHINE, TENDRIL_RUNNER_TOKEN, " +
        "TENDRIL_WORK_DIR), as the systemd unit gives them. `runner` may come first, as in `tendril runner`.",
    )
    .version(VERSION)
    .enablePositionalOptions()
    .exitOverride()
    .showHelpAfterError("(add --help for usage)"),
  invocation,
).action(action(runRunner));

defineInstallCommand(program, invocation).action(
  action((flags: RunnerInstallFlags) => installRunner(flags, { runnerFile: () => fileURLToPath(import.meta.url), version: VERSION })),
);

// `node tendril-runner.mjs runner ...` is accepted too, so that the file stands in for `tendril` word for word.
const argv = process.argv[2] === "runner" ? [...process.argv.slice(0, 2), ...process.argv.slice(3)] : process.argv;
await runProgram(program, argv, result);
