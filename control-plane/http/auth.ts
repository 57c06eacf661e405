/**
 * Authentication of the server API: who is calling (the server token, its rotation successor, or an operator's
 * token), and whether that caller may use a route. Fail closed: with no server token configured, every call is
 * refused.
 */
import type { MiddlewareHandler } from "hono";
import type { Access } from "../../shared/routes.js";
import { bearerToken, constantTimeEqual, sha256Hex } from "../crypto.js";
import { registryStub, type Env } from "../env.js";
import { OPERATOR_TOKEN_PREFIX, permits, type Caller } from "./callers.js";
import { errorJson } from "./errors.js";

/**
 * The digests of the configured server tokens, kept once computed: the server token's path costs one digest (the
 * presented token's) and no object call. Values, not promises: a promise made while serving one request must not be
 * awaited by another (workerd ties each to its request).
 */
const configuredDigests = new Map<string, string>();

async function digestOf(token: string): Promise<string> {
  const known = configuredDigests.get(token);
  if (known !== undefined) return known;
  const digest = await sha256Hex(token);
  // Only the configured secrets land here (a rotation adds one), but keep it bounded all the same.
  if (configuredDigests.size >= 8) configuredDigests.clear();
  configuredDigests.set(token, digest);
  return digest;
}

/** The server tokens accepted now: `SERVER_TOKEN`, and `SERVER_TOKEN_NEXT` while it is set. */
export function serverTokens(env: Env): string[] {
  return [env.SERVER_TOKEN, env.SERVER_TOKEN_NEXT].filter((token): token is string => typeof token === "string" && token.length > 0);
}

/**
 * Who a presented token is: a configured server token (compared as SHA-256 digests, every one of them, in constant
 * time, so the time taken does not say which matched), with the one it matched; or a current operator token, looked
 * up by its hash in the registry. Null for anything else.
 */
export async function identifyCaller(env: Env, presented: string): Promise<{ caller: Caller; serverToken: string | null } | null> {
  const presentedHash = await sha256Hex(presented);
  let matched: string | null = null;
  for (const token of serverTokens(env)) if (constantTimeEqual(presentedHash, await digestOf(token))) matched = token;
  if (matched !== null) return { caller: { kind: "server" }, serverToken: matched };
  if (!presented.startsWith(OPERATOR_TOKEN_PREFIX)) return null;
  const identity = await registryStub(env).authenticateOperator(presentedHash);
  return identity ? { caller: { kind: "operator", ...identity }, serverToken: null } : null;
}

/**
 * Requires a token that may use a route of this access level, in the contract's order: no valid token is 401
 * `unauthorized` (and wakes no machine object); a valid one that may not make this call is 403 `forbidden`. The
 * server token is compared (as SHA-256 digests, in constant time) before anything else; another token that looks
 * like an operator's is looked up by its hash in the registry (unknown, revoked or expired: 401). The caller is
 * left in the context (`c.get("caller")`).
 */
export function requireAccess(access: Exclude<Access, "public" | "runner">): MiddlewareHandler<{ Bindings: Env; Variables: { caller: Caller } }> {
  return async (c, next) => {
    const configured = serverTokens(c.env);
    if (configured.length === 0) {
      return errorJson(c, 401, "unauthorized", "The control plane has no server token configured, so every server call is refused.");
    }
    const presented = bearerToken(c.req.header("authorization"));
    if (!presented) return errorJson(c, 401, "unauthorized", "Missing or invalid token (Authorization: Bearer <token>).");
    const caller = (await identifyCaller(c.env, presented))?.caller;
    if (!caller) return errorJson(c, 401, "unauthorized", "Missing or invalid token (Authorization: Bearer <token>): not the server token, nor a current operator token.");
    if (!permits(caller, access)) {
      const message =
        access === "server"
          ? `Operator ${caller.kind === "operator" ? caller.name : ""} may not make this call: it needs the server token.`
          : "A viewer may only read: cancel and abandon need an operator of role operator.";
      return errorJson(c, 403, "forbidden", message);
    }
    c.set("caller", caller);
    await next();
  };
}
