/** Server-token authentication for the server API: fail closed, constant-time comparison. */
import type { MiddlewareHandler } from "hono";
import { bearerToken, constantTimeEqual, sha256Hex } from "../crypto.js";
import type { Env } from "../env.js";
import { errorJson } from "./errors.js";

/** Requires the server token on every call it guards; refuses everything when no token is configured. */
export function requireServerToken(): MiddlewareHandler<{ Bindings: Env }> {
  return async (c, next) => {
    const configured = c.env.SERVER_TOKEN;
    const presented = bearerToken(c.req.header("authorization"));
    if (!configured) {
      return errorJson(c, 401, "unauthorized", "The control plane has no server token configured, so every server call is refused.");
    }
    // Compare digests so the comparison time says nothing about the secret.
    if (!presented || !constantTimeEqual(await sha256Hex(presented), await sha256Hex(configured))) {
      return errorJson(c, 401, "unauthorized", "Missing or invalid server token (Authorization: Bearer <token>).");
    }
    await next();
  };
}
