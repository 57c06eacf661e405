/**
 * Stage timestamps for the benchmark's breakdown of a dispatch (bench/breakdown.mjs). Only when the runner is started
 * with `TENDRIL_TRACE_FILE` set: each stage appends one line, `<ticket> <stage> <epoch ms>`, to that file with one
 * synchronous write (microseconds). Otherwise every call returns at once.
 */
import { openSync, writeSync } from "node:fs";

const TRACE_FILE = process.env.TENDRIL_TRACE_FILE;
const traceFd = TRACE_FILE ? openSync(TRACE_FILE, "a", 0o600) : undefined;

/** Records that `ticket` reached `stage` now (wall clock, sub-millisecond). */
export function trace(ticket: string, stage: string): void {
  if (traceFd === undefined) return;
  writeSync(traceFd, `${ticket} ${stage} ${(performance.timeOrigin + performance.now()).toFixed(3)}\n`);
}
