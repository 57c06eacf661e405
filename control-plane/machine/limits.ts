/** A machine's retention and output limits: their defaults, and how they are read from the Worker's vars. */

/** Retention and output limits of a machine. */
export interface MachineLimits {
  /** How long a completed script the server never deleted is kept, in ms. */
  retentionMs: number;
  /** Most output stored per script, in UTF-8 bytes; later output is counted, not stored, with one line saying so. */
  maxOutputBytes: number;
}

/** The defaults of `MachineLimits`: 7 days, 100 MiB. */
export const DEFAULT_LIMITS: MachineLimits = {
  retentionMs: 7 * 24 * 60 * 60 * 1000,
  maxOutputBytes: 100 * 1024 * 1024,
};

/** Reads the limits from the Worker's vars; a missing or invalid value keeps its default. */
export function machineLimits(vars: { SCRIPT_RETENTION_MS?: string | undefined; MAX_SCRIPT_OUTPUT_BYTES?: string | undefined }): MachineLimits {
  const positive = (raw: string | undefined, fallback: number) => {
    const value = raw === undefined ? NaN : Number(raw);
    return Number.isSafeInteger(value) && value > 0 ? value : fallback;
  };
  return {
    retentionMs: positive(vars.SCRIPT_RETENTION_MS, DEFAULT_LIMITS.retentionMs),
    maxOutputBytes: positive(vars.MAX_SCRIPT_OUTPUT_BYTES, DEFAULT_LIMITS.maxOutputBytes),
  };
}
