/**
 * What every `tendril` program shares, the full command line (main.ts) and the one-file runner (runner-file.ts):
 * running a commander program to an exit code, wrapping command actions, and the `Examples:` part of help texts.
 */
import { CommanderError, type Command } from "commander";
import { CLI_EXIT } from "./exit-codes.js";
import { flushAndExit, printError } from "./output.js";

/** Where each command's action stores the exit code the process ends with. */
export interface ExitResult {
  code: number;
}

/** Parses `argv` with `program` (whose actions write `result`), prints an error as one line, flushes and exits. */
export async function runProgram(program: Command, argv: string[], result: ExitResult): Promise<never> {
  // `tendril machines | head` closes stdout early; that is not an error worth a stack trace.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code !== "EPIPE") throw error;
    });
  }
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
  return flushAndExit(result.code);
}

/** Wraps a command's action so that its resolved exit code lands in `result`. */
export function actionFor(result: ExitResult) {
  return <A extends unknown[]>(fn: (...args: A) => Promise<number>) =>
    async (...args: A): Promise<void> => {
      result.code = await fn(...args);
    };
}

/** The `Examples:` section of a help text; `# ...` lines are comments, not commands. */
export function examples(lines: string[]): string {
  return `\nExamples:\n${lines.map((line) => `  $ ${line}`).join("\n")}`.replace(/\$ #/g, "#");
}
