/** The SDK's timing defaults, in one place (re-exported by `tendril/sdk`). */

/** Timing defaults of the SDK. */
export const DEFAULTS = {
  /** First wait between status polls; doubles while nothing new arrives. */
  pollInitialDelayMs: 100,
  /** Longest wait between status polls. */
  pollMaxDelayMs: 2_000,
  /** How long following keeps retrying an unreachable control plane (e.g. while it restarts) before giving up. */
  unreachableRetryMs: 30_000,
  /**
   * `executeScript`: once its `signal` has sent the cancel, how long the script may take to complete
   * before it is abandoned (when the runner supports abandon). Longer than the runner's default grace
   * between SIGTERM and SIGKILL (10 s), so that a cancel that works always gets to finish first.
   */
  abandonAfterCancelMs: 30_000,
} as const;
