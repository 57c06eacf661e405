/**
 * Why a script completed, as a closed union, and the one place that maps each reason to the
 * exit code of the contract (see docs/api.md, "Exit codes").
 */

/** How a script's run ended; every completion carries exactly one of these. */
export type CompletionReason =
  /** The process exited by itself (or was killed by a signal Tendril did not send). */
  | { kind: "exited"; code: number }
  | { kind: "signaled"; signal: string; number: number }
  /** The runner could not run the script at all (spawn failure, missing shell, workspace error). */
  | { kind: "failed"; message: string }
  /** Cancelled: while pending (never ran) or by signalling the running process tree. */
  | { kind: "cancelled" }
  /** Waited longer than `mutexTimeoutMs` for the isolation mutex. */
  | { kind: "mutex_timeout" }
  /** The runner no longer knows the script (it restarted) — result unknown. */
  | { kind: "lost" }
  /** Abandoned by the control plane; the process may still be running. */
  | { kind: "abandoned" };

/** Exit codes shared with Octopus Tentacle where they overlap. */
export const ExitCode = {
  Fatal: -41,
  Cancelled: -43,
  MutexTimeout: -44,
  Unknown: -46,
  Abandoned: -48,
} as const;

/** Maps a completion reason to the exit code the API reports. */
export function exitCodeFor(reason: CompletionReason): number {
  switch (reason.kind) {
    case "exited":
      return reason.code;
    case "signaled":
      return 128 + reason.number;
    case "failed":
      return ExitCode.Fatal;
    case "cancelled":
      return ExitCode.Cancelled;
    case "mutex_timeout":
      return ExitCode.MutexTimeout;
    case "lost":
      return ExitCode.Unknown;
    case "abandoned":
      return ExitCode.Abandoned;
    default: {
      const unreachable: never = reason;
      throw new Error(`unknown completion reason ${JSON.stringify(unreachable)}`);
    }
  }
}
