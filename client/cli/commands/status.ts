/** `tendril status M TICKET`: a script's state, exit code and logs. */
import type { ScriptStatus } from "../../../shared/api.js";
import { CLI_EXIT, describeExitCode } from "../exit-codes.js";
import { formatTime, oneLine } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** `tendril status M TICKET`: every log page, combined. */
export async function showStatus(machineId: string, ticket: string, flags: ServerFlags & { json?: boolean }): Promise<number> {
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
      `events     ${combined.events.length === 0 ? "none" : ""}`.trimEnd(),
      ...combined.events.map(
        (event) => `  ${formatTime(event.at)} UTC  ${event.action} by ${event.actor}${event.reason === null ? "" : `: ${oneLine(event.reason)}`}`,
      ),
      `logs       ${logs.length === 1 ? "1 line" : `${logs.length} lines`}`,
      ...logs.map((line) => `  ${line.source.padEnd(6)} ${line.text}`),
      "",
    ].join("\n"),
  );
  return CLI_EXIT.ok;
}
