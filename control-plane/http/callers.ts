/** Who calls the server API, what each caller may do, and the actor its actions are recorded under. Pure. */
import type { OperatorRole } from "../../shared/api.js";
import type { Access } from "../../shared/routes.js";

/** Every operator token starts with this, so that any other token is refused without asking the registry. */
export const OPERATOR_TOKEN_PREFIX = "top_";

/** Who made a request. */
export type Caller =
  | { kind: "server" }
  | { kind: "operator"; name: string; role: OperatorRole; generation: number };

/** The actor an action is recorded under: `server`, `server:<requestedBy>` or `operator:<name>`. */
export function actorOf(caller: Caller, requestedBy?: string): string {
  if (caller.kind === "operator") return `operator:${caller.name}`;
  return requestedBy === undefined ? "server" : `server:${requestedBy}`;
}

/** Whether a caller may use a route of this access level. */
export function permits(caller: Caller, access: Exclude<Access, "public" | "runner">): boolean {
  if (caller.kind === "server") return true;
  switch (access) {
    case "server":
      return false;
    case "read":
      return true;
    case "act":
      return caller.role === "operator";
    default: {
      const unreachable: never = access;
      throw new Error(`unknown access ${String(unreachable)}`);
    }
  }
}
