/**
 * Exit codes of the `tendril` command itself, and the one mapping from a script's exit code (docs/api.md,
 * "Exit codes") to what `tendril run` exits with and says.
 */
import { ExitCode } from "../../shared/exit-codes.js";

/** Exit codes of the `tendril` command itself (a `run` otherwise exits with the script's own code). */
export const CLI_EXIT = {
  ok: 0,
  /** A script ended with one of Tendril's negative codes. */
  scriptFailed: 1,
  /** Bad usage, unreachable control plane, or an API error. */
  usage: 2,
  /** The runner had to stop for good (token revoked or replaced). */
  runnerFatal: 3,
  /** Stopped waiting after repeated Ctrl-C. */
  interrupted: 130,
} as const;

/** What each of Tendril's own (negative) exit codes means: a short label and, for some, why. */
const TENDRIL_EXIT_CODES = new Map<number, { label: string; detail?: string }>([
  [ExitCode.Fatal, { label: "failed", detail: "the runner could not run the script" }],
  [ExitCode.Cancelled, { label: "cancelled" }],
  [ExitCode.MutexTimeout, { label: "timed out waiting for the isolation mutex" }],
  [ExitCode.Unknown, { label: "result unknown", detail: "the runner lost track of the script" }],
  [ExitCode.Abandoned, { label: "abandoned", detail: "the process may still be running" }],
]);

/** A script exit code for people: `0`, `-43 (cancelled)`, `-` while there is none. */
export function describeExitCode(exitCode: number | null): string {
  if (exitCode === null) return "-";
  const meaning = TENDRIL_EXIT_CODES.get(exitCode);
  if (!meaning) return String(exitCode);
  return `${exitCode} (${meaning.label}${meaning.detail ? `: ${meaning.detail}` : ""})`;
}

/** A script exit code for a table cell: `0`, `-48 (abandoned)`, `-` while there is none. */
export function labelExitCode(exitCode: number | null): string {
  if (exitCode === null) return "-";
  const meaning = TENDRIL_EXIT_CODES.get(exitCode);
  return meaning ? `${exitCode} (${meaning.label})` : String(exitCode);
}

/**
 * What `tendril run` exits with for a script's exit code, and the line it prints on stderr: 0–255 pass
 * through; Tendril's codes exit 1 with e.g. `cancelled (-43)` or `abandoned (-48): …`.
 */
export function runExitFor(exitCode: number, machineId?: string): { code: number; message?: string } {
  if (exitCode >= 0 && exitCode <= 255) return { code: exitCode };
  const meaning = TENDRIL_EXIT_CODES.get(exitCode);
  if (meaning) {
    const where = exitCode === ExitCode.Abandoned && machineId !== undefined ? ` on machine ${machineId}` : "";
    const detail = meaning.detail ? `: ${meaning.detail}${where}` : "";
    return { code: CLI_EXIT.scriptFailed, message: `${meaning.label} (${exitCode})${detail}` };
  }
  // A process exit code outside 0–255 (possible on Windows) cannot be passed on as is.
  return { code: CLI_EXIT.scriptFailed, message: `the script exited with ${exitCode}, which is outside 0-255` };
}
