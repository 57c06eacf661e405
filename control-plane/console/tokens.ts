/**
 * The tokens behind the console: who a token typed into the sign-in form is (the same rules as the server API's
 * Bearer tokens: a configured server token, compared as SHA-256 digests in constant time, or a current operator
 * token looked up by its hash in the registry), and which keys sign and verify session cookies.
 */
import type { Env } from "../env.js";
import { identifyCaller, serverTokens } from "../http/auth.js";
import { sessionKey, type SessionKey, type SessionSubject } from "./session.js";

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
  const newest = serverTokens(env).at(-1);
  if (newest === undefined || presented.length === 0) return null;
  const who = await identifyCaller(env, presented);
  if (who === null) return null;
  return { subject: who.caller, signingToken: who.serverToken ?? newest };
}

/** The keys that may have signed a live session: one per configured server token. */
export function verifyingKeys(env: Env): Promise<SessionKey[]> {
  return Promise.all(serverTokens(env).map(sessionKey));
}
