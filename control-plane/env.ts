/** The Worker's bindings (see wrangler.toml): declarations only. */
import type { MachineObject } from "./machine/machine-object.js";
import type { RegistryObject } from "./registry/registry-object.js";

/** Bindings and secrets available to the Worker and its objects. */
export interface Env {
  /** One object per machine, named by the machine id. */
  MACHINE: DurableObjectNamespace<MachineObject>;
  /** A single object that lists the registered machines and checks runner tokens before any machine is woken. */
  REGISTRY: DurableObjectNamespace<RegistryObject>;
  /** The server API's bearer token (a Worker secret). Unset means every server call is refused. */
  SERVER_TOKEN?: string;
  /** How long completed scripts that the server never deleted are kept, in ms (default 7 days). */
  SCRIPT_RETENTION_MS?: string;
  /** Most output stored per script, in bytes (default 100 MiB); later output is dropped with a note. */
  MAX_SCRIPT_OUTPUT_BYTES?: string;
}
