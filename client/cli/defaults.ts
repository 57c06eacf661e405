/** Defaults and timings of the `tendril` command line and the processes it manages. */
export const DEFAULTS = {
  /** Port of a local control plane (`start`, `control-plane`). */
  port: 8787,
  /** Address a local control plane listens on. */
  host: "127.0.0.1",
  /** The machine `start` runs a runner for. */
  localMachineId: "local",
  /** How long `start` waits for its runner to connect before printing the banner anyway. */
  runnerConnectWaitMs: 15_000,
  /** After Ctrl-C, how long the runner child (which got the same SIGINT) may take to exit by itself. */
  runnerSelfStopWaitMs: 2_000,
  /** How long a stopping runner child gets before SIGKILL (its own stop may wait for script kills). */
  runnerStopGraceMs: 15_000,
  /** Pause before restarting a runner child that died. */
  runnerRestartDelayMs: 1_000,
  /** Restarts in a row before `start` gives up on its runner. */
  runnerMaxRestarts: 5,
  /** A runner child that stayed up this long resets the restart count. */
  runnerStableAfterMs: 60_000,
  /** How long the `runner` command lets the runner stop after a fatal error. */
  runnerFatalStopMs: 5_000,
} as const;
