/** `tendril machines`: the registered machines, their runners and what holds or waits for their mutexes. */
import type { MachineSummary } from "../../../shared/api.js";
import { CLI_EXIT } from "../exit-codes.js";
import { formatTable } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** `tendril machines`: a table, or the API's JSON; every page of the fleet list. */
export async function listMachines(flags: ServerFlags & { json?: boolean }): Promise<number> {
  const client = await clientFor(flags);
  const machines: MachineSummary[] = [];
  let cursor: string | undefined;
  do {
    const page = await client.listMachines(cursor === undefined ? {} : { cursor });
    machines.push(...page.machines);
    cursor = page.nextCursor ?? undefined;
  } while (cursor !== undefined);
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
    machine.runner.connected ? (machine.runner.draining ? "draining" : "connected") : "offline",
    machine.runner.version ?? "-",
    machine.holders.length ? machine.holders.join(", ") : "-",
    String(machine.waiting),
    String(machine.abandoned),
  ]);
  process.stdout.write(formatTable(["MACHINE", "RUNNER", "VERSION", "HELD BY", "WAITING", "ABANDONED"], rows));
  return CLI_EXIT.ok;
}
