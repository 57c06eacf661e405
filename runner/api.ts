/** The runner's public types: the handle `startRunner` returns, its stats, and the seams tests use. */
import type { EndReason, SocketFactory } from "./connection.js";
import type { CgroupTree } from "./containment.js";
import type { SpoolStats } from "./output-spool.js";
import type { Origin, Phase } from "./script-state.js";

/** Why a runner stopped. */
export type RunnerStop = { kind: "stopped" } | EndReason;

/** A running runner. */
export interface RunnerHandle {
  /** Random per runner process; the control plane tells a restarted runner from a reconnected one by it. */
  readonly runnerId: string;
  /** True while the handshake with the control plane is complete. */
  readonly connected: boolean;
  /**
   * Closes the socket with 1000, stops tracking every script (their processes keep running, left for the next runner
   * process to re-attach to) and removes its empty cgroups.
   */
  stop(): Promise<void>;
  /**
   * The graceful stop of SIGTERM: says `draining` (protocol 2; the control plane holds new dispatches), then stops as
   * `stop` does. Running scripts are left for the next runner process to re-attach to.
   */
  drain(): Promise<void>;
  /** Resolves once the runner stopped: `stopped` after `stop()`, or why the control plane ended it (4000/4001). */
  readonly stopped: Promise<RunnerStop>;
  /** How much output the runner holds right now, per script and in the socket's send buffer. */
  stats(): RunnerStats;
}

/** One tracked script's output as the runner holds it. */
export interface ScriptStats extends SpoolStats {
  ticket: string;
  fence: number;
  phase: Exclude<Phase, "released">;
  /** Dispatched to this runner process, re-attached to after a restart, or a predecessor's it cannot follow. */
  origin: Origin;
  /** True while the script's pipes are not read (backpressure). */
  outputPaused: boolean;
}

/** What the runner holds: unacknowledged output (bounded by `maxUnackedBytes` per script) and queued frames. */
export interface RunnerStats {
  /** Estimated bytes of unacknowledged output over every tracked script. */
  heldBytes: number;
  /** Bytes the WebSocket has queued that the OS has not taken yet. */
  socketBufferedBytes: number;
  scripts: ScriptStats[];
}

/** Seams for tests; production code passes nothing. */
export interface RunnerDependencies {
  /** Opens the WebSocket; default `ws`. */
  socketFactory?: SocketFactory;
  /** The environment scripts inherit (secrets removed); default `process.env`. */
  environment?: NodeJS.ProcessEnv;
  /** Where scripts get their own cgroups; `null`: none (marker sweep only); default: detected at start. */
  cgroups?: CgroupTree | null;
  /** How often abandoned processes are looked at; default `WATCH_DEFAULTS.pollMs`. */
  watchPollMs?: number;
  /** How often a re-attached script's wrapper and exit status file are looked at; default `REATTACH_DEFAULTS.pollMs`. */
  reattachPollMs?: number;
  /** Output log segment size in bytes; default `LOG_DEFAULTS.segmentBytes`. */
  logSegmentBytes?: number;
}
