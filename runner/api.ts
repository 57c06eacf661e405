/** The runner's public types: the handle `startRunner` returns, its stats, and the seams tests use. */
import type { EndReason, SocketFactory } from "./connection.js";
import type { CgroupTree } from "./containment.js";
import type { SpoolStats } from "./output-spool.js";
import type { Phase } from "./script-state.js";

/** Why a runner stopped. */
export type RunnerStop = { kind: "stopped" } | EndReason;

/** A running runner. */
export interface RunnerHandle {
  /** Random per runner process; the control plane tells a restarted runner from a reconnected one by it. */
  readonly runnerId: string;
  /** True while the handshake with the control plane is complete. */
  readonly connected: boolean;
  /** Closes the socket with 1000, stops tracking every script (their processes keep running) and removes its empty cgroups. */
  stop(): Promise<void>;
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
}
