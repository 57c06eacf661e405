/** The Tendril control plane Worker: the HTTP edge plus the Durable Object classes it binds. */
import { createApp } from "./http/app.js";

export { MachineObject } from "./machine/machine-object.js";
export { RegistryObject } from "./registry/registry-object.js";

export default createApp();
