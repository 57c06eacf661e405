/** `tendril machine show|remove|revoke-token M`: one machine's full view, its removal, its runner token. */
import type { MachineView, ScriptSummary } from "../../../shared/api.js";
import { TendrilApiError } from "../../errors.js";
import { CLI_EXIT, labelExitCode } from "../exit-codes.js";
import { formatAge, formatTable, formatTime } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";

/** `tendril machine show M`: runner, mutexes (holders and queue), scripts, abandoned processes with their pids. */
export async function showMachine(machineId: string, flags: ServerFlags & { json?: boolean }): Promise<number> {
  const client = await clientFor(flags);
  const view = await client.getMachine(machineId);
  process.stdout.write(flags.json ? `${JSON.stringify(view, null, 2)}\n` : formatMachineView(view));
  return CLI_EXIT.ok;
}

/** A machine view for people: one block per part, `-` or `none` where there is nothing. */
export function formatMachineView(view: MachineView, now = Date.now()): string {
  const lines = [`machine   ${view.machineId}`, `runner    ${describeRunner(view.runner, now)}`, ""];
  lines.push("mutexes");
  if (view.mutexes.length === 0) lines.push("  none held or waited for");
  for (const mutex of view.mutexes) {
    const held = mutex.holders.length ? `held by ${mutex.holders.join(", ")}` : "free";
    const waiting = mutex.waiting.length ? `; waiting, in order: ${mutex.waiting.join(", ")}` : "";
    lines.push(`  ${mutex.name} (${mutex.mode}): ${held}${waiting}`);
  }
  lines.push("");
  const scripts = view.scripts ?? [];
  lines.push(`scripts (newest first${scripts.length >= 100 ? ", the latest 100" : ""})`);
  if (scripts.length === 0) lines.push("  none stored");
  else lines.push(indent(formatTable(["TICKET", "STATE", "EXIT CODE", "TASK", "MUTEX", "CREATED (UTC)", "STARTED"], scripts.map((s) => scriptRow(s, now)))));
  lines.push("");
  lines.push("abandoned processes that may still be running");
  if (view.abandoned.length === 0) lines.push("  none");
  else {
    const rows = view.abandoned.map((a) => [a.ticket, a.pid === null ? "(not reported yet)" : String(a.pid), `${formatTime(a.abandonedAt)} (${formatAge(a.abandonedAt, now)} ago)`]);
    lines.push(indent(formatTable(["TICKET", "PID", "ABANDONED (UTC)"], rows)));
    lines.push(`  (an entry goes away once the runner sees the process exit; on ${view.machineId}: ps -o pid,etime,args -p <pid>)`);
  }
  return `${lines.join("\n")}\n`;
}

/** `tendril machine remove M`: refused (with what to do) while a script is pending or running there. */
export async function removeMachine(machineId: string, flags: ServerFlags): Promise<number> {
  const client = await clientFor(flags);
  try {
    await client.removeMachine(machineId);
  } catch (error) {
    if (!(error instanceof TendrilApiError && error.code === "machine_busy")) throw error;
    const view = await client.getMachine(machineId).catch(() => undefined);
    const busy = (view?.scripts ?? []).filter((s) => s.state !== "complete").map((s) => `${s.ticket} (${s.state})`);
    const which = busy.length ? `: ${busy.join(", ")}` : "";
    throw new Error(
      `machine ${machineId} was not removed: a script is still pending or running on it${which}. Cancel it first ` +
        `(tendril cancel ${machineId} <ticket> --reason decommissioning) or let it finish, then remove the machine again`,
    );
  }
  process.stdout.write(
    `machine ${machineId} removed: its scripts, logs and summary are deleted and its runner token revoked (a runner still ` +
      `connected is disconnected and stops). Its audit events stay: tendril audit --machine ${machineId}\n`,
  );
  return CLI_EXIT.ok;
}

/** `tendril machine revoke-token M`: the runner token stops working; `tendril register M` issues a new one. */
export async function revokeRunnerToken(machineId: string, flags: ServerFlags): Promise<number> {
  const client = await clientFor(flags);
  await client.revokeRunnerToken(machineId);
  process.stdout.write(
    `the runner token of machine ${machineId} is revoked: its runner is disconnected and cannot connect again until ` +
      `\`tendril register ${machineId}\` issues a new token\n`,
  );
  return CLI_EXIT.ok;
}

function describeRunner(runner: MachineView["runner"], now: number): string {
  const seen = runner.lastSeenAt ? `last seen ${formatAge(runner.lastSeenAt, now)} ago` : "never seen";
  if (!runner.connected) return `not connected (${seen}${runner.version ? `, version ${runner.version}` : ""})`;
  const state = runner.draining ? "draining: stopping, takes no new scripts" : "connected";
  const abandon = runner.capabilities.includes("script.abandon") ? "" : "; cannot abandon";
  return `${state} (version ${runner.version ?? "unknown"}, since ${formatTime(runner.connectedAt)} UTC, ${seen}${abandon})`;
}

function scriptRow(script: ScriptSummary, now: number): string[] {
  return [
    script.ticket,
    script.state,
    script.state === "complete" ? labelExitCode(script.exitCode ?? null) : "-",
    script.taskId ?? "-",
    `${script.mutexName} (${script.isolation})`,
    formatTime(script.createdAt),
    script.startedAt ? `${formatAge(script.startedAt, now)} ago` : "-",
  ];
}

function indent(text: string): string {
  return text
    .trimEnd()
    .split("\n")
    .map((line) => `  ${line}`)
    .join("\n");
}
