/**
 * The machine's timing and housekeeping policy, pure: when a silent runner connection counts as dead, when
 * completed scripts fall out of retention and how many are pruned at once, and when the one alarm must fire.
 */

/** How often runners are told to send a heartbeat ping. */
export const HEARTBEAT_MS = 10_000;
/** A runner connection with no ping and no message for this long is dead (half-open) and is closed. */
export const DEAD_AFTER_MS = 25_000;
/** Most expired scripts pruned by one alarm. */
export const PRUNE_SCRIPTS = 200;
/**
 * Most stored output (bytes) one alarm prunes, so that one alarm stays short however much the expired scripts
 * printed; the rest goes with the next alarm, which is due at once.
 */
export const PRUNE_BYTES = 256 * 1024 * 1024;

/** Whether a runner last seen at `lastSeen` is dead at `now`, or else when to look again. */
export function checkLiveness(lastSeen: number, now: number): { dead: true; silentMs: number } | { dead: false; nextCheckAt: number } {
  const silentMs = now - lastSeen;
  return silentMs >= DEAD_AFTER_MS ? { dead: true, silentMs } : { dead: false, nextCheckAt: lastSeen + DEAD_AFTER_MS };
}

/** Completed scripts that finished at or before this moment are past retention. */
export function retentionCutoff(now: number, retentionMs: number): number {
  return now - retentionMs;
}

/**
 * Which of the expired scripts (oldest first) one alarm prunes: at most `PRUNE_SCRIPTS`, and no more once
 * `PRUNE_BYTES` of output is reached (always at least one, so that pruning makes progress).
 */
export function pruneBatch(expired: ReadonlyArray<{ ticket: string; logBytes: number }>): string[] {
  const batch: string[] = [];
  let bytes = 0;
  for (const script of expired) {
    if (batch.length >= PRUNE_SCRIPTS || (batch.length > 0 && bytes + script.logBytes > PRUNE_BYTES)) break;
    batch.push(script.ticket);
    bytes += script.logBytes;
  }
  return batch;
}

/** The moments the one alarm serves. */
export interface AlarmInputs {
  /** The core's earliest deadline (mutex timeouts, abandon after cancel). */
  coreDeadline: number | null;
  /** When the connected runner is next checked for life. */
  heartbeatCheckAt: number | null;
  /** When the oldest completed script finished, if any. */
  oldestCompletion: number | null;
  retentionMs: number;
}

/** When the alarm must fire next: the earliest of every deadline, or null when nothing is due ever. */
export function nextAlarm(inputs: AlarmInputs): number | null {
  const retention = inputs.oldestCompletion === null ? null : inputs.oldestCompletion + inputs.retentionMs;
  let due: number | null = null;
  for (const at of [inputs.coreDeadline, inputs.heartbeatCheckAt, retention]) if (at !== null && (due === null || at < due)) due = at;
  return due;
}
