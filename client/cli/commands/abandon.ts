/** `tendril abandon M TICKET`: give up on a script whose process will not die. */
import { ExitCode } from "../../../shared/exit-codes.js";
import type { AbandonScriptOptions } from "../../sdk.js";
import { CLI_EXIT, describeExitCode } from "../exit-codes.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** Flags of `tendril abandon`. */
export interface AbandonFlags extends ServerFlags {
  /** Also ask the runner for a best-effort kill of the process tree. */
  killProcess?: boolean;
  /** Why; recorded in the audit trail and the script's log. */
  reason?: string;
  /** With the server token: the person or task it acts for (the actor becomes `server:<requestedBy>`). */
  requestedBy?: string;
  json?: boolean;
}

/** `tendril abandon M TICKET`: sends the abandon and prints the status it answered with. */
export async function abandon(machineId: string, ticket: string, flags: AbandonFlags): Promise<number> {
  const client = await clientFor(flags);
  const options: AbandonScriptOptions = {
    ...(flags.killProcess && { killProcess: true }),
    ...(flags.reason !== undefined && { reason: flags.reason }),
    ...(flags.requestedBy !== undefined && { requestedBy: flags.requestedBy }),
  };
  const status = await client.abandonScript(machineId, ticket, options);
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
    return CLI_EXIT.ok;
  }
  process.stdout.write(`${ticket} is ${status.state}: exit code ${describeExitCode(status.exitCode)}\n`);
  if (status.exitCode === ExitCode.Abandoned) {
    process.stdout.write(
      `its mutex is released; the process may still be running on machine ${machineId}` +
        `${flags.killProcess ? " (a best-effort kill was requested)" : ""}` +
        ` (see its pid: tendril machine show ${machineId})\n`,
    );
  }
  return CLI_EXIT.ok;
}
