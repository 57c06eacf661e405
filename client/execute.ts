/**
 * `executeScript` (and `machine.execute`): one script start to finish on a `ScriptRun` handle — start, follow its
 * output, stop it when asked (cancel, then abandon when the runner advertises `script.abandon`), delete it once
 * complete, and answer with its exit code and how it ended.
 */
import type { LogLine, ScriptStatus, StartScriptInput } from "../shared/api.js";
import { TendrilProtocolError } from "./errors.js";
import { ScriptEscalation, type EscalationEvent, type ExecutionOutcome } from "./escalation.js";
import type { MachineHandle } from "./handles.js";
import { DEFAULTS } from "./defaults.js";

/** Options of `executeScript`. */
export interface ExecuteScriptOptions {
  /** Receives every log line once, in order. */
  onLog?: (line: LogLine) => void;
  /** Called once the start call has been answered. */
  onStarted?: (started: { ticket: string; created: boolean }) => void;
  /**
   * Aborting it stops the script: the cancel is sent (once), and if the script is still not complete
   * `abandonAfterCancelMs` later, it is abandoned — only when the machine's runner advertises
   * `script.abandon` (else `onEscalation` gets `abandon_unavailable` and the script is still followed).
   * The call still resolves only once the script is complete.
   */
  signal?: AbortSignal;
  /**
   * After the cancel, how long to wait for the script to complete before abandoning it (default
   * `DEFAULTS.abandonAfterCancelMs`, 30 s); `Infinity` never abandons by itself. The client does this,
   * so it needs this call to keep running; see `abandonAfterMs` for the control plane's own deadline.
   */
  abandonAfterCancelMs?: number;
  /**
   * Sent with the cancel (`{"abandonAfterMs": N}`): the control plane itself abandons the script if it
   * is still not complete N ms after the cancel, even if this process has gone away.
   */
  abandonAfterMs?: number;
  /** Aborting it abandons the script at once (once), whatever the runner advertises; no cancel is sent first. */
  abandonSignal?: AbortSignal;
  /** Sent with every abandon: also ask the runner for a best-effort kill of the process tree. */
  killProcessOnAbandon?: boolean;
  /** Why this call stops the script, sent with its cancel and abandon (recorded in the audit trail and the log). */
  reason?: string;
  /** Reports each escalation step: cancel sent, abandon sent, abandon not available. */
  onEscalation?: (event: EscalationEvent) => void;
  /** Reports a cancel, machine read or abandon call that failed (the script is still followed). */
  onEscalationError?: (action: "cancel" | "abandon", error: unknown) => void;
  /** Reports that live streaming failed and status polling took over. */
  onFallback?: (error: unknown) => void;
  /** Leave the completed script on the control plane instead of deleting it (default false). */
  keep?: boolean;
}

/** The result of `executeScript`. */
export interface ExecutedScript {
  /** The script's ticket (the given one, or the one generated for it). */
  ticket: string;
  /** False when the ticket already existed and this call followed the earlier script. */
  created: boolean;
  /** The script's exit code (negative codes are Tendril's, see `ExitCode`). */
  exitCode: number;
  /** How it ended: by itself (`completed`), after this call's cancel (`cancelled`), or `abandoned` (-48). */
  outcome: ExecutionOutcome;
  /** The final status (`complete`) as stored; its log lines all went to `onLog`, so `logs` is empty. */
  status: ScriptStatus;
  /** Set when the script completed but deleting it failed; the result above is still valid. */
  deleteError?: unknown;
}

/** Runs `request` on `machine` start to finish (see `ExecuteScriptOptions`). */
export async function executeOn(machine: MachineHandle, request: StartScriptInput, options: ExecuteScriptOptions): Promise<ExecutedScript> {
  const abandonAfterCancelMs = options.abandonAfterCancelMs ?? DEFAULTS.abandonAfterCancelMs;
  if (Number.isNaN(abandonAfterCancelMs) || abandonAfterCancelMs < 0) {
    throw new RangeError(`abandonAfterCancelMs must be a non-negative number of milliseconds (or Infinity), not ${abandonAfterCancelMs}`);
  }
  // The handle chooses the ticket before the start call, which makes the call safe to retry and lets a cancel
  // name the script even while the start call is still in flight.
  const run = await machine.start(request);
  const created = run.created ?? false;
  options.onStarted?.({ ticket: run.ticket, created });

  const reason = options.reason === undefined ? {} : { reason: options.reason };
  const cancelOptions = { ...reason, ...(options.abandonAfterMs === undefined ? {} : { abandonAfterMs: options.abandonAfterMs }) };
  const abandonOptions = { ...reason, ...(options.killProcessOnAbandon === undefined ? {} : { killProcess: options.killProcessOnAbandon }) };
  const escalation = new ScriptEscalation(
    {
      cancel: () => run.cancel(cancelOptions),
      abandon: () => run.abandon(abandonOptions),
      // Validated like every answer: a malformed view is reported to `onEscalationError`, not read as "no abandon".
      runner: async () => (await machine.view()).runner,
    },
    {
      signal: options.signal,
      abandonSignal: options.abandonSignal,
      abandonAfterCancelMs,
      onEvent: options.onEscalation,
      onError: options.onEscalationError,
    },
  );
  let next = 0;
  let streamed: ScriptStatus | undefined;
  try {
    const followOptions = options.onFallback ? { onFallback: options.onFallback } : {};
    for await (const event of run.events(followOptions)) {
      if (event.type === "log") {
        next = event.line.sequence + 1;
        options.onLog?.(event.line);
      } else {
        streamed = event.status;
      }
    }
  } finally {
    // Complete (or following failed): nothing is left to cancel or abandon, and no timer may linger.
    await escalation.stop();
  }
  if (streamed?.exitCode == null) throw new TendrilProtocolError(`script ${run.ticket} completed without an exit code`);
  const result = (status: ScriptStatus, exitCode: number): ExecutedScript => ({
    ticket: run.ticket,
    created,
    exitCode,
    outcome: escalation.outcome(exitCode),
    status: { ...status, logs: [] },
  });
  // The status event is the final status as the control plane stored it; kept, the script stays as it is.
  if (options.keep) return result(streamed, streamed.exitCode);
  try {
    const deleted = await run.complete({ logSequence: next });
    for (const line of deleted.logs) if (line.sequence >= next) options.onLog?.(line);
    return result(deleted, deleted.exitCode ?? streamed.exitCode);
  } catch (deleteError) {
    return { ...result(streamed, streamed.exitCode), deleteError };
  }
}
