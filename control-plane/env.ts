/** The Worker's bindings (see wrangler.toml). */
import type { MachineObject } from "./machine/machine-object.js";
import type { RegistryObject } from "./registry/registry-object.js";

/** Bindings and secrets available to the Worker and its objects. */
export interface Env {
  /** One object per machine, named by the machine id. */
  MACHINE: DurableObjectNamespace<MachineObject>;
  /** A single object that lists the registered machines. */
  REGISTRY: DurableObjectNamespace<RegistryObject>;
  /** The server API's bearer token (a Worker secret). Unset means every server call is refused. */
  SERVER_TOKEN?: string;
  /** How long completed scripts that the server never deleted are kept, in ms (default 7 days). */
  SCRIPT_RETENTION_MS?: string;
  /** Most output stored per script, in bytes (default 100 MiB); later output is dropped with a note. */
  MAX_SCRIPT_OUTPUT_BYTES?: string;
}

/** Retention and output limits, with their defaults. */
export interface MachineLimits {
  retentionMs: number;
  maxOutputBytes: number;
}

/** The defaults of `MachineLimits`. */
export const DEFAULT_LIMITS: MachineLimits = {
  retentionMs: 7 * 24 * 60 * 60 * 1000,
  maxOutputBytes: 100 * 1024 * 1024,
};

/** Reads the limits from the bindings; a missing or invalid value keeps its default. */
export function machineLimits(env: Env): MachineLimits {
  const positive = (raw: string | undefined, fallback: number) => {
    const value = raw === undefined ? NaN : Number(raw);
    return Number.isSafeInteger(value) && value > 0 ? value : fallback;
  };
  return {
    retentionMs: positive(env.SCRIPT_RETENTION_MS, DEFAULT_LIMITS.retentionMs),
    maxOutputBytes: positive(env.MAX_SCRIPT_OUTPUT_BYTES, DEFAULT_LIMITS.maxOutputBytes),
  };
}
