/** Authentication of the server API: who is calling, and whether that caller may use a route. Fail closed. */
import type { MiddlewareHandler } from "hono";
import type { Access } from "../../shared/routes.js";
import { bearerToken, constantTimeEqual, sha256Hex } from "../crypto.js";
import type { Env } from "../env.js";
import { errorJson } from "./errors.js";

/**
 * Requires a token that may use a route of this access level: for now the server token for every level (operator
 * tokens join `read` and `act`). Refuses everything when no server token is configured. Comparisons are of SHA-256
 * digests, so their time says nothing about the secret.
 */
export function requireAccess(_access: Exclude<Access, "public" | "runner">): MiddlewareHandler<{ Bindings: Env }> {
  return async (c, next) => {
    const configured = c.env.SERVER_TOKEN;
    const presented = bearerToken(c.req.header("authorization"));
    if (!configured) {
      return errorJson(c, 401, "unauthorized", "The control plane has no server token configured, so every server call is refused.");
    }
    if (!presented || !constantTimeEqual(await sha256Hex(presented), await sha256Hex(configured))) {
      return errorJson(c, 401, "unauthorized", "Missing or invalid server token (Authorization: Bearer <token>).");
    }
    await next();
  };
}
