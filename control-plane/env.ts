/** The Worker's bindings (see wrangler.toml): declarations only. */
import type { MachineObject } from "./machine/machine-object.js";
import type { RegistryObject } from "./registry/registry-object.js";

/** Bindings and secrets available to the Worker and its objects. */
export interface Env {
  /** One object per machine, named by the machine id. */
  MACHINE: DurableObjectNamespace<MachineObject>;
  /**
   * A single object that keeps the fleet: registered machines, runner token hashes (checked before any machine is
   * woken), each machine's summary, the audit feed and the operators.
   */
  REGISTRY: DurableObjectNamespace<RegistryObject>;
  /** The server API's bearer token (a Worker secret). Unset (and no `SERVER_TOKEN_NEXT`) means every server call is refused. */
  SERVER_TOKEN?: string;
  /** While set, a second server token accepted beside `SERVER_TOKEN`: rotation without downtime. */
  SERVER_TOKEN_NEXT?: string;
  /** How long the fleet-wide audit feed keeps an event, in ms (default 90 days). */
  AUDIT_RETENTION_MS?: string;
  /** How long completed scripts that the server never deleted are kept, in ms (default 7 days). */
  SCRIPT_RETENTION_MS?: string;
  /** Most output stored per script, in bytes (default 100 MiB); later output is dropped with a note. */
  MAX_SCRIPT_OUTPUT_BYTES?: string;
  /** "1": print the benchmark's stage timestamps (control-plane/trace.ts). Unset in production. */
  TENDRIL_TRACE?: string;
}

/** The registry: the one object that knows every machine, operator and console session. */
export function registryStub(env: Pick<Env, "REGISTRY">) {
  return env.REGISTRY.get(env.REGISTRY.idFromName("registry"));
}
