/** `tendril cancel M TICKET`: stop a script (a pending one never runs; a running one has its process tree stopped). */
import type { CancelScriptOptions } from "../../sdk.js";
import { formatDuration } from "../../durations.js";
import { CLI_EXIT, describeExitCode } from "../exit-codes.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** Flags of `tendril cancel`. */
export interface CancelFlags extends ServerFlags {
  /** Sent as `abandonAfterMs`: the control plane abandons the script if still not complete this long after. */
  abandonAfter?: number;
  /** Why; recorded in the audit trail and the script's log. */
  reason?: string;
  /** With the server token: the person or task it acts for (the actor becomes `server:<requestedBy>`). */
  requestedBy?: string;
  json?: boolean;
}

/** `tendril cancel M TICKET`: sends the cancel and prints the status it answered with. */
export async function cancel(machineId: string, ticket: string, flags: CancelFlags): Promise<number> {
  const client = await clientFor(flags);
  const options: CancelScriptOptions = {
    ...(flags.abandonAfter !== undefined && { abandonAfterMs: flags.abandonAfter }),
    ...(flags.reason !== undefined && { reason: flags.reason }),
    ...(flags.requestedBy !== undefined && { requestedBy: flags.requestedBy }),
  };
  const status = await client.cancelScript(machineId, ticket, options);
  if (flags.json) process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
  else if (status.state === "complete") process.stdout.write(`${ticket} is complete: exit code ${describeExitCode(status.exitCode)}\n`);
  else {
    const later =
      flags.abandonAfter === undefined
        ? ""
        : `; the control plane abandons it if still not complete after ${formatDuration(flags.abandonAfter)}`;
    process.stdout.write(`cancel requested for ${ticket} (now ${status.state})${later}\n`);
  }
  return CLI_EXIT.ok;
}
