/**
 * The tokens behind the console: who a token typed into the sign-in form is (the same rules as the server API's
 * Bearer tokens: a configured server token, compared as SHA-256 digests in constant time, or a current operator
 * token looked up by its hash in the registry), and which keys sign and verify session cookies.
 */
import { constantTimeEqual, sha256Hex } from "../crypto.js";
import type { Env } from "../env.js";
import { OPERATOR_TOKEN_PREFIX } from "../http/callers.js";
import { sessionKey, type SessionKey, type SessionSubject } from "./session.js";

/** The server tokens accepted now: `SERVER_TOKEN`, and `SERVER_TOKEN_NEXT` while it is set. */
export function configuredServerTokens(env: Env): string[] {
  return [env.SERVER_TOKEN, env.SERVER_TOKEN_NEXT].filter((token): token is string => typeof token === "string" && token.length > 0);
}

/** Who signed in, and the server token whose key signs the session. */
export interface SignIn {
  subject: SessionSubject;
  signingToken: string;
}

/**
 * Who a presented token is, or null (not a server token nor a current operator token). A server-token session is
 * signed with the key of the very token presented, so it ends when that token is retired by a rotation; an
 * operator's session with the key of the newest server token (`SERVER_TOKEN_NEXT` while a rotation is under way), so
 * that it outlives a rotation that began before it.
 */
export async function identifyToken(env: Env, presented: string): Promise<SignIn | null> {
  const configured = configuredServerTokens(env);
  const newest = configured[configured.length - 1];
  if (newest === undefined || presented.length === 0) return null;
  const presentedHash = await sha256Hex(presented);
  let matched: string | null = null;
  // Every configured token is compared, so the time taken does not say which one matched.
  for (const token of configured) if (constantTimeEqual(presentedHash, await sha256Hex(token))) matched = token;
  if (matched !== null) return { subject: { kind: "server" }, signingToken: matched };
  if (!presented.startsWith(OPERATOR_TOKEN_PREFIX)) return null;
  const operator = await env.REGISTRY.get(env.REGISTRY.idFromName("registry")).authenticateOperator(presentedHash);
  return operator ? { subject: { kind: "operator", ...operator }, signingToken: newest } : null;
}

/** The keys that may have signed a live session: one per configured server token. */
export function verifyingKeys(env: Env): Promise<SessionKey[]> {
  return Promise.all(configuredServerTokens(env).map(sessionKey));
}
