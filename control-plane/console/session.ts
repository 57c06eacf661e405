/**
 * The console's session cookie: who signed in (the server token, or an operator's name, role and token generation),
 * a random session id and an expiry, signed with HMAC-SHA256. Nothing in it is secret; the signature makes it
 * unforgeable. The signing key is derived (HKDF) from a server token, so only the control plane knows it and no key
 * has to be stored anywhere: a session signed with a token's key lives only as long as that token is configured.
 * The per-session form token (the CSRF guard of every form) is derived from the same key and the session id.
 * Web Crypto only; no platform imports.
 */
import { z } from "zod";
import { OperatorName, OperatorRole } from "../../shared/api.js";
import { constantTimeEqual } from "../crypto.js";

/** How long a session lasts: 12 hours. */
export const SESSION_TTL_MS = 12 * 60 * 60 * 1000;

/** Who a session acts for. */
export const SessionSubject = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("server") }),
  z.strictObject({ kind: z.literal("operator"), name: OperatorName, role: OperatorRole, generation: z.int().min(1) }),
]);
/** Who a session acts for. */
export type SessionSubject = z.infer<typeof SessionSubject>;

/** What a session cookie carries. */
export const SessionClaims = z.strictObject({
  v: z.literal(1),
  /** 128 random bits, base64url: names the session (sign-out ends it by this id) and seeds its form token. */
  sid: z.string().regex(/^[A-Za-z0-9_-]{22}$/),
  /** When the session ends, epoch ms. */
  exp: z.int().min(0),
  who: SessionSubject,
});
/** What a session cookie carries. */
export type SessionClaims = z.infer<typeof SessionClaims>;

const encoder = new TextEncoder();

/** A Web Crypto HMAC key (spelled so that both the Worker's types and Node's accept it). */
export type SessionKey = Awaited<ReturnType<typeof crypto.subtle.deriveKey>>;

/**
 * Keys derived so far, by token. Values, not promises: a promise made while serving one request must not be awaited
 * by another (workerd ties each to its request). Only configured server tokens land here.
 */
const derivedKeys = new Map<string, SessionKey>();

/** The HMAC key that signs sessions made with (or for) this server token: HKDF-SHA256 of the token. */
export async function sessionKey(serverToken: string): Promise<SessionKey> {
  const known = derivedKeys.get(serverToken);
  if (known !== undefined) return known;
  const material = await crypto.subtle.importKey("raw", encoder.encode(serverToken), "HKDF", false, ["deriveKey"]);
  const key = await crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: encoder.encode("tendril console"), info: encoder.encode("session cookie v1") },
    material,
    { name: "HMAC", hash: "SHA-256", length: 256 },
    false,
    ["sign", "verify"],
  );
  if (derivedKeys.size >= 8) derivedKeys.clear();
  derivedKeys.set(serverToken, key);
  return key;
}

/** New claims for a session that starts now. */
export function newClaims(who: SessionSubject, now: number): SessionClaims {
  return { v: 1, sid: base64url(crypto.getRandomValues(new Uint8Array(16))), exp: now + SESSION_TTL_MS, who };
}

/** The cookie value of a session: `<claims as base64url JSON>.<signature>`. */
export async function sealSession(claims: SessionClaims, key: SessionKey): Promise<string> {
  const payload = base64url(encoder.encode(JSON.stringify(claims)));
  const signature = await crypto.subtle.sign("HMAC", key, encoder.encode(`session.${payload}`));
  return `${payload}.${base64url(new Uint8Array(signature))}`;
}

/** An opened session: its claims and the key that signed it (which also makes its form token). */
export interface OpenedSession {
  claims: SessionClaims;
  key: SessionKey;
}

/**
 * The session a cookie value carries, when one of `keys` signed it and it has not expired; null for anything else
 * (malformed, forged, signed with a retired token's key, expired). The signature is checked before the claims are
 * read, by Web Crypto's own (constant-time) verify.
 */
export async function openSession(value: string, keys: readonly SessionKey[], now: number): Promise<OpenedSession | null> {
  const match = /^([A-Za-z0-9_-]{1,2048})\.([A-Za-z0-9_-]{43})$/.exec(value);
  if (!match) return null;
  const [, payload, signature] = match as unknown as [string, string, string];
  const signatureBytes = fromBase64url(signature);
  if (!signatureBytes) return null;
  for (const key of keys) {
    if (!(await crypto.subtle.verify("HMAC", key, signatureBytes, encoder.encode(`session.${payload}`)))) continue;
    const json = fromBase64url(payload);
    let raw: unknown;
    try {
      raw = json ? JSON.parse(new TextDecoder().decode(json)) : null;
    } catch {
      return null;
    }
    const parsed = SessionClaims.safeParse(raw);
    if (!parsed.success || parsed.data.exp <= now) return null;
    return { claims: parsed.data, key };
  }
  return null;
}

/** The session's form token: every form of the console carries it, and every post must bring it back. */
export async function formToken(session: OpenedSession): Promise<string> {
  const mac = await crypto.subtle.sign("HMAC", session.key, encoder.encode(`form.${session.claims.sid}`));
  return base64url(new Uint8Array(mac));
}

/** Whether a posted form token is this session's (compared in constant time). */
export async function formTokenMatches(session: OpenedSession, presented: string | null): Promise<boolean> {
  if (presented === null) return false;
  return constantTimeEqual(presented, await formToken(session));
}

/** The session cookie's name: with `__Host-` on https (the browser then insists on Secure, Path=/ and no Domain). */
export function sessionCookieName(secure: boolean): string {
  return secure ? "__Host-tendril-session" : "tendril-session";
}

/** A `Set-Cookie` value that stores the session: HttpOnly, SameSite=Strict, Secure on https, for 12 hours. */
export function sessionCookie(value: string, secure: boolean): string {
  return `${sessionCookieName(secure)}=${value}; Path=/; Max-Age=${SESSION_TTL_MS / 1000}; HttpOnly; SameSite=Strict${secure ? "; Secure" : ""}`;
}

/** A `Set-Cookie` value that removes the session cookie from the browser. */
export function clearedSessionCookie(secure: boolean): string {
  return `${sessionCookieName(secure)}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict${secure ? "; Secure" : ""}`;
}

/** The value of cookie `name` in a `Cookie` header, or null. */
export function readCookie(header: string | null | undefined, name: string): string | null {
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64url(text: string): Uint8Array<ArrayBuffer> | null {
  try {
    const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}
