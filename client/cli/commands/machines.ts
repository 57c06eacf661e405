/** `tendril machines`: the registered machines, their runners and mutexes. */
import type { MachineView } from "../../../shared/api.js";
import { CLI_EXIT } from "../exit-codes.js";
import { formatTable } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** `tendril machines`: a table, or the API's JSON. */
export async function listMachines(flags: ServerFlags & { json?: boolean }): Promise<number> {
  const machines = await (await clientFor(flags)).listMachines();
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
    machine.runner.connected ? "connected" : "offline",
    machine.runner.version ?? "-",
    describeMutexes(machine),
  ]);
  process.stdout.write(formatTable(["MACHINE", "RUNNER", "VERSION", "MUTEXES"], rows));
  return CLI_EXIT.ok;
}

/** The mutexes that are held or waited for, e.g. `RunningScript held (exclusive) by t1; waiting: t2`. */
function describeMutexes(machine: MachineView): string {
  const busy = machine.mutexes.filter((mutex) => mutex.holders.length > 0 || mutex.waiting.length > 0);
  if (busy.length === 0) return "-";
  return busy
    .map((mutex) => {
      const held = mutex.holders.length ? `held (${mutex.mode}) by ${mutex.holders.join(", ")}` : "free";
      const waiting = mutex.waiting.length ? `; waiting: ${mutex.waiting.join(", ")}` : "";
      return `${mutex.name} ${held}${waiting}`;
    })
    .join(" | ");
}
