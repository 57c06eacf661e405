/**
 * How `executeScript` stops a script it was asked to stop: cancel first, then — if the script is still
 * not complete some time later and the machine's runner supports it — abandon. The HTTP calls are
 * injected, so this module only decides what to send and when.
 */
import type { RunnerView, ScriptStatus } from "../shared/api.js";
import { ExitCode } from "../shared/exit-codes.js";
import type { CAPABILITIES } from "../shared/protocol.js";

/** The capability a runner advertises when it can let go of a script's process (docs/api.md, "Abandon"). */
export const ABANDON_CAPABILITY = "script.abandon" satisfies (typeof CAPABILITIES)[number];

// setTimeout fires at once for delays over 2^31-1 ms (about 24.8 days); longer waits are capped there.
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How a script executed by `executeScript` ended, from the caller's side:
 * - `completed`: no cancel or abandon was sent; the script ran to its end (its exit code may still be
 *   negative, e.g. -44 after a mutex timeout, or -43 when someone else cancelled it);
 * - `cancelled`: a cancel (or an abandon of a script that had not started) was sent and the script
 *   completed without being abandoned — exit code -43, or its own when it had already exited;
 * - `abandoned`: the script was abandoned (by the escalation, the abandon signal, or the control plane's
 *   `abandonAfterMs` deadline) — exit code -48; its process may still be running.
 */
export type ExecutionOutcome = "completed" | "cancelled" | "abandoned";

/** What the escalation did, reported as it happens. */
export type EscalationEvent =
  /** The cancel call was answered (the script completes asynchronously). */
  | { type: "cancel_sent"; status: ScriptStatus }
  /**
   * The abandon call was answered: `trigger` is `signal` for the explicit abandon signal, `deadline` when
   * the script was still not complete `abandonAfterCancelMs` after the cancel.
   */
  | { type: "abandon_sent"; trigger: "signal" | "deadline"; status: ScriptStatus }
  /**
   * The deadline passed but the machine's runner does not advertise `script.abandon` (or is not
   * connected, so it advertises nothing): nothing was abandoned and the script is still followed.
   */
  | { type: "abandon_unavailable"; runner: RunnerView };

/** The calls the escalation makes; `executeScript` binds them to one script. */
export interface EscalationActions {
  /** Sends the cancel. */
  cancel(): Promise<ScriptStatus>;
  /** Sends the abandon. */
  abandon(): Promise<ScriptStatus>;
  /** Reads the machine's runner (connection and capabilities). */
  runner(): Promise<RunnerView>;
}

/** When to escalate, and whom to tell. */
export interface EscalationOptions {
  /** Aborting it sends the cancel (once) and starts the abandon deadline. */
  signal?: AbortSignal | undefined;
  /** Aborting it sends the abandon at once (once), whatever the runner advertises. */
  abandonSignal?: AbortSignal | undefined;
  /** After the cancel, how long to wait for completion before abandoning; `Infinity` never abandons. */
  abandonAfterCancelMs: number;
  /** Reports each step (see `EscalationEvent`). */
  onEvent?: ((event: EscalationEvent) => void) | undefined;
  /** Reports a call that failed; the script is still followed. */
  onError?: ((action: "cancel" | "abandon", error: unknown) => void) | undefined;
}

/**
 * The cancel → abandon escalation of one script. Create it once the script has a ticket; call `stop`
 * once the script is complete (or following it failed), then `outcome` with its exit code.
 */
export class ScriptEscalation {
  private cancelSent = false;
  private abandonSent = false;
  private stopped = false;
  private deadline: ReturnType<typeof setTimeout> | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly detach: Array<() => void>;

  /** Starts listening to the signals (acting at once on one that has already aborted). */
  constructor(
    private readonly actions: EscalationActions,
    private readonly options: EscalationOptions,
  ) {
    this.detach = [
      onAbort(options.signal, () => this.cancel()),
      onAbort(options.abandonSignal, () => this.abandon("signal")),
    ];
  }

  /**
   * Stops escalating: detaches from the signals, clears the abandon deadline (so no timer outlives the
   * script), and waits for calls already sent so that no callback fires after this resolves.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.deadline);
    this.deadline = undefined;
    for (const undo of this.detach.splice(0)) undo();
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  /** How the script ended, given its final exit code (see `ExecutionOutcome`). */
  outcome(exitCode: number): ExecutionOutcome {
    if (!this.cancelSent && !this.abandonSent) return "completed";
    return exitCode === ExitCode.Abandoned ? "abandoned" : "cancelled";
  }

  private cancel(): void {
    if (this.stopped || this.cancelSent) return;
    this.cancelSent = true;
    const waitMs = this.options.abandonAfterCancelMs;
    if (Number.isFinite(waitMs) && !this.abandonSent) {
      this.deadline = setTimeout(() => this.deadlinePassed(), Math.min(waitMs, MAX_TIMER_MS));
    }
    this.track(async () => {
      try {
        const status = await this.actions.cancel();
        this.options.onEvent?.({ type: "cancel_sent", status });
      } catch (error) {
        this.options.onError?.("cancel", error);
      }
    });
  }

  private deadlinePassed(): void {
    this.deadline = undefined;
    if (this.stopped || this.abandonSent) return;
    this.track(async () => {
      let runner: RunnerView;
      try {
        // Read once, now: the runner may have been upgraded (or replaced) since the script started.
        runner = await this.actions.runner();
      } catch (error) {
        this.options.onError?.("abandon", error);
        return;
      }
      if (this.stopped || this.abandonSent) return;
      if (!runner.capabilities.includes(ABANDON_CAPABILITY)) {
        this.options.onEvent?.({ type: "abandon_unavailable", runner });
        return;
      }
      await this.sendAbandon("deadline");
    });
  }

  private abandon(trigger: "signal" | "deadline"): void {
    if (this.stopped || this.abandonSent) return;
    this.track(() => this.sendAbandon(trigger));
  }

  private async sendAbandon(trigger: "signal" | "deadline"): Promise<void> {
    this.abandonSent = true;
    clearTimeout(this.deadline);
    this.deadline = undefined;
    try {
      const status = await this.actions.abandon();
      this.options.onEvent?.({ type: "abandon_sent", trigger, status });
    } catch (error) {
      this.options.onError?.("abandon", error);
    }
  }

  /** Runs `task` and remembers it until it settles; an exception from a caller's callback is dropped. */
  private track(task: () => Promise<void>): void {
    const running: Promise<void> = task()
      .catch(() => undefined)
      .finally(() => this.inFlight.delete(running));
    this.inFlight.add(running);
  }
}

/** Runs `action` once when `signal` aborts (at once if it already has); returns a function that detaches it. */
function onAbort(signal: AbortSignal | undefined, action: () => void): () => void {
  if (!signal) return () => undefined;
  if (signal.aborted) {
    action();
    return () => undefined;
  }
  signal.addEventListener("abort", action, { once: true });
  return () => signal.removeEventListener("abort", action);
}
