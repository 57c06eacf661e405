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
}
