/**
 * `tendril run`: start a script, stream its output live, delete it once complete, and exit with its
 * exit code. Signals escalate: the first SIGINT/SIGTERM (Ctrl-C) cancels, the second abandons, the
 * third stops waiting; `--abandon-after` abandons by itself some time after the cancel.
 */
import { randomUUID } from "node:crypto";
import type { StartScriptInput } from "../../../shared/api.js";
import { formatDuration } from "../../durations.js";
import type { EscalationEvent } from "../../sdk.js";
import { CLI_EXIT, runExitFor } from "../exit-codes.js";
import { describeError, flushAndExit, printDebug, printLogLine } from "../output.js";
import { clientFor, type ServerFlags } from "../server-client.js";
import { InterruptSteps } from "../signals.js";

/** Flags of `tendril run`. */
export interface RunFlags extends ServerFlags {
  machine: string;
  isolation?: "full" | "none";
  mutex?: string;
  mutexTimeout?: number;
  /** After the cancel, abandon the script if it is still not complete this long after (ms). */
  abandonAfter?: number;
  shell?: "bash" | "sh" | "pwsh";
  ticket?: string;
  taskId?: string;
  env?: Record<string, string>;
}

/** `tendril run`: start, stream live, delete once complete, exit with the script's code; signals escalate. */
export async function runScript(script: string[], flags: RunFlags): Promise<number> {
  const scriptBody = script.join(" ");
  if (scriptBody.trim() === "") {
    throw new Error("no script given: put it after --, e.g. tendril run --machine local -- echo hello");
  }
  const machineId = flags.machine;
  // Chosen here so that every message can name the script, even before the start call is answered.
  const ticket = flags.ticket ?? randomUUID();
  const request: StartScriptInput = {
    ticket,
    scriptBody,
    ...(flags.shell && { shell: flags.shell }),
    ...(flags.isolation && { isolation: flags.isolation }),
    ...(flags.mutex !== undefined && { mutexName: flags.mutex }),
    ...(flags.mutexTimeout !== undefined && { mutexTimeoutMs: flags.mutexTimeout }),
    ...(flags.taskId !== undefined && { taskId: flags.taskId }),
    ...(flags.env && { environment: flags.env }),
  };
  const say = (line: string) => process.stderr.write(`${line}\n`);

  const cancel = new AbortController();
  const abandonNow = new AbortController();
  // Installed first, so that a signal that arrives during the start call is not lost: the SDK sends
  // the cancel (or abandon) as soon as the script exists.
  const interrupts = new InterruptSteps([
    () => {
      const automatic =
        flags.abandonAfter === undefined
          ? ""
          : ` — abandoned automatically if still not complete after ${formatDuration(flags.abandonAfter)}`;
      say(`Cancelling ${ticket}… (press Ctrl-C again to abandon)${automatic}`);
      cancel.abort();
    },
    () => {
      say(
        `Abandoning ${ticket}: its mutex is released now and it completes with -48, but its process may still be ` +
          `running on machine ${machineId} (press Ctrl-C again to stop waiting)`,
      );
      abandonNow.abort();
    },
    () => {
      say(`stopped waiting; see the script with: tendril status ${machineId} ${ticket}`);
      void flushAndExit(CLI_EXIT.interrupted);
    },
  ]);

  const reportEscalation = (event: EscalationEvent) => {
    if (event.type === "abandon_sent" && event.trigger === "deadline") {
      say(
        `${ticket} was still not complete ${formatDuration(flags.abandonAfter ?? 0)} after the cancel: abandoning it ` +
          `(its mutex is released; its process may still be running on machine ${machineId})`,
      );
    } else if (event.type === "abandon_unavailable") {
      const why = event.runner.connected
        ? `the runner of machine ${machineId} does not support abandon`
        : `the runner of machine ${machineId} is not connected`;
      const next = interrupts.received < 2 ? "press Ctrl-C again to abandon it anyway" : "press Ctrl-C again to stop waiting";
      say(`${ticket} is still not complete, but ${why}, so it is not abandoned automatically; still waiting (${next})`);
    }
    // The cancel and an abandon asked for with Ctrl-C were already announced when the signal arrived.
  };

  try {
    const client = await clientFor(flags);
    const result = await client.executeScript(machineId, request, {
      onLog: printLogLine,
      signal: cancel.signal,
      abandonSignal: abandonNow.signal,
      reason: "Ctrl-C in tendril run",
      // Without --abandon-after only a second Ctrl-C abandons. With it, this command abandons by itself,
      // and the control plane gets the same deadline so that it holds even if this command is stopped.
      abandonAfterCancelMs: flags.abandonAfter ?? Number.POSITIVE_INFINITY,
      ...(flags.abandonAfter !== undefined && { abandonAfterMs: flags.abandonAfter }),
      onEscalation: reportEscalation,
      onEscalationError: (what, error) => say(`could not ${what} ${ticket}: ${describeError(error)}`),
      onFallback: (error) => printDebug(`live output unavailable (${describeError(error)}); polling instead`),
    });
    if (result.deleteError !== undefined) {
      say(`warning: the script completed but could not be deleted: ${describeError(result.deleteError)}`);
    }
    const exit = runExitFor(result.exitCode, machineId);
    if (exit.message) say(exit.message);
    else if (result.outcome === "cancelled") say(`${ticket} had already ended by itself when the cancel arrived`);
    return exit.code;
  } finally {
    interrupts.dispose();
  }
}
