/**
 * Stage timestamps for the benchmark's breakdown of a dispatch (bench/breakdown.mjs). Only when the Worker has
 * `TENDRIL_TRACE` set to "1" (the local launcher passes `TENDRIL_TRACE=1` from its environment; never set in
 * production): each stage prints one line, `tendril-trace <ticket> <stage> <epoch ms>`, which the launcher's
 * output carries. Otherwise every call returns at once.
 */
import type { Env } from "./env.js";

/** Records that `ticket` reached `stage` now. */
export function traceStage(env: Pick<Env, "TENDRIL_TRACE">, ticket: string, stage: string): void {
  if (env.TENDRIL_TRACE === "1") console.log(`tendril-trace ${ticket} ${stage} ${Date.now()}`);
}
