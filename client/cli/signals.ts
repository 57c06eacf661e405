/**
 * SIGINT/SIGTERM handling. Long-running processes (`start`, `control-plane`, `runner`) use `Shutdown`:
 * the first signal stops gracefully, a second forces the exit. `tendril run` uses `InterruptSteps`:
 * each signal takes the next step (cancel, abandon, stop waiting). Both react the same to a terminal's
 * Ctrl-C and to a signal sent with `kill`.
 */
import type { EventEmitter } from "node:events";
import { CLI_EXIT } from "./exit-codes.js";

const STOP_SIGNALS = ["SIGINT", "SIGTERM"] as const;

/** The first SIGINT/SIGTERM requests a graceful stop; a second one forces the exit at once. */
export class Shutdown {
  /** Resolves with the first stop signal. */
  readonly signal: Promise<NodeJS.Signals>;
  /** True once a stop signal arrived. */
  requested = false;
  private readonly forceActions: Array<() => void> = [];
  private readonly handler: (signal: NodeJS.Signals) => void;

  /** Installs the signal handlers (they stay until the process exits). */
  constructor() {
    let resolveSignal: (signal: NodeJS.Signals) => void = () => undefined;
    this.signal = new Promise((resolveFirst) => (resolveSignal = resolveFirst));
    this.handler = (signal: NodeJS.Signals) => {
      if (!this.requested) {
        this.requested = true;
        resolveSignal(signal);
        return;
      }
      process.stderr.write(`${signal} again: exiting now\n`);
      for (const action of this.forceActions) action();
      process.exit(CLI_EXIT.interrupted);
    };
    for (const signal of STOP_SIGNALS) process.on(signal, this.handler);
  }

  /** Registers what a forced exit must still do (e.g. kill a child process). */
  onForce(action: () => void): void {
    this.forceActions.push(action);
  }
}

/**
 * Runs one step per SIGINT/SIGTERM: the first step on the first signal, the second on the second, and
 * the last step again on any later one. While installed, the signals no longer end the process.
 */
export class InterruptSteps {
  private count = 0;
  private readonly handler = () => {
    const step = this.steps[Math.min(this.count, this.steps.length - 1)];
    this.count++;
    step?.();
  };

  /** Installs the handler on `target` (the process, or a fake emitter in tests). */
  constructor(
    private readonly steps: ReadonlyArray<() => void>,
    private readonly target: Pick<EventEmitter, "on" | "off"> = process,
  ) {
    for (const signal of STOP_SIGNALS) this.target.on(signal, this.handler);
  }

  /** How many signals have arrived. */
  get received(): number {
    return this.count;
  }

  /** Removes the handler; the signals get their default behaviour back. */
  dispose(): void {
    for (const signal of STOP_SIGNALS) this.target.off(signal, this.handler);
  }
}
