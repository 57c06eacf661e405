/** `tendril abandon M TICKET`: give up on a script whose process will not die. */
import { ExitCode } from "../../../shared/exit-codes.js";
import { CLI_EXIT, describeExitCode } from "../exit-codes.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** Flags of `tendril abandon`. */
export interface AbandonFlags extends ServerFlags {
  /** Also ask the runner for a best-effort kill of the process tree. */
  killProcess?: boolean;
  json?: boolean;
}

/** `tendril abandon M TICKET`: sends the abandon and prints the status it answered with. */
export async function abandon(machineId: string, ticket: string, flags: AbandonFlags): Promise<number> {
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
