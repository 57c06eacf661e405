/**
 * The console's pure parts: its session cookie (signed, expiring, bound to the key of a server token), its form
 * token, the client key that sign-in slowdown counts by, the slowdown itself on a real SQLite, where its live log
 * resumes, and how it shows times.
 */
import { describe, expect, it } from "vitest";
import { clientKey } from "../../control-plane/console/client-key.js";
import { logEvent, resumeFrom, statusEvent } from "../../control-plane/console/log-events.js";
import {
  clearedSessionCookie,
  formToken,
  formTokenMatches,
  newClaims,
  openSession,
  readCookie,
  sealSession,
  SESSION_TTL_MS,
  sessionCookie,
  sessionKey,
} from "../../control-plane/console/session.js";
import { formatDuration, formatExact, formatRelative } from "../../control-plane/console/time.js";
import { beginSignIn, delayAfter, endSession, pruneConsole, sessionEnded, SIGN_IN_POLICY, signInSucceeded } from "../../control-plane/registry/console-store.js";
import { migrate } from "../../control-plane/registry/registry-store.js";
import { openSqlJsStorage } from "../helpers/sqljs-storage.js";

const NOW = Date.parse("2026-12-02T10:00:00.000Z");
const alice = { kind: "operator", name: "alice", role: "operator", generation: 3 } as const;

describe("the session cookie", () => {
  it("opens with the key of the token that signed it, and carries who signed in until it expires 12 hours later", async () => {
    const key = await sessionKey("server-token-a");
    const claims = newClaims(alice, NOW);
    expect(claims.exp - NOW).toBe(SESSION_TTL_MS);
    const value = await sealSession(claims, key);
    const other = await sessionKey("server-token-b");
    expect((await openSession(value, [other, key], NOW + 1_000))?.claims).toEqual(claims);
    expect(await openSession(value, [other], NOW + 1_000)).toBeNull();
    expect(await openSession(value, [key], claims.exp)).toBeNull();
  });

  it("refuses a cookie whose claims were changed, however it was re-encoded", async () => {
    const key = await sessionKey("server-token-a");
    const value = await sealSession(newClaims({ ...alice, role: "viewer" }, NOW), key);
    const [payload, signature] = value.split(".") as [string, string];
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
    const promoted = Buffer.from(JSON.stringify({ ...claims, who: { ...claims.who, role: "operator" } })).toString("base64url");
    expect(await openSession(`${promoted}.${signature}`, [key], NOW)).toBeNull();
    expect(await openSession(`${payload}.${signature.slice(0, -2)}AA`, [key], NOW)).toBeNull();
    expect(await openSession("not a cookie", [key], NOW)).toBeNull();
  });

  it("gives each session its own form token, which only that session accepts", async () => {
    const key = await sessionKey("server-token-a");
    const one = await openSession(await sealSession(newClaims({ kind: "server" }, NOW), key), [key], NOW);
    const two = await openSession(await sealSession(newClaims({ kind: "server" }, NOW), key), [key], NOW);
    const token = await formToken(one!);
    expect(await formTokenMatches(one!, token)).toBe(true);
    expect(await formTokenMatches(two!, token)).toBe(false);
    expect(await formTokenMatches(one!, null)).toBe(false);
    expect(await formTokenMatches(one!, "")).toBe(false);
  });

  it("is HttpOnly, SameSite=Strict and 12 hours long, Secure with a __Host- name on https, and found among other cookies", () => {
    expect(sessionCookie("v", false)).toBe("tendril-session=v; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict");
    expect(sessionCookie("v", true)).toBe("__Host-tendril-session=v; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict; Secure");
    expect(clearedSessionCookie(true)).toContain("Max-Age=0");
    expect(readCookie("a=1; tendril-session=abc.def; b=2", "tendril-session")).toBe("abc.def");
    expect(readCookie("xtendril-session=abc", "tendril-session")).toBeNull();
  });
});

describe("the sign-in slowdown", () => {
  it("counts a client by its IPv4 address or its IPv6 /64", () => {
    expect(clientKey("203.0.113.7")).toBe("203.0.113.7");
    expect(clientKey("::ffff:203.0.113.7")).toBe("203.0.113.7");
    expect(clientKey("2001:db8:0:1:aaaa::1")).toBe("2001:db8:0:1::/64");
    expect(clientKey("2001:0db8:0000:0001:bbbb:0:0:2")).toBe("2001:db8:0:1::/64");
    expect(clientKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(clientKey("::1")).toBe("0:0:0:0::/64");
    expect(clientKey(undefined)).toBe("unknown");
    expect(clientKey("not an address")).toBe("unknown");
  });

  it("lets a few failures pass, then makes the client wait twice as long after each further one, up to 15 minutes", () => {
    expect([1, 2, 3, 4].map(delayAfter)).toEqual([0, 0, 0, 0]);
    expect([5, 6, 7, 8].map(delayAfter)).toEqual([1_000, 2_000, 4_000, 8_000]);
    expect(delayAfter(100)).toBe(SIGN_IN_POLICY.maxDelayMs);
  });

  it("refuses a client that failed too often until its wait is over, never another client, and forgets it after a success", async () => {
    const storage = await openSqlJsStorage();
    storage.transactionSync(() => migrate(storage.sql));
    const attempt = (client: string, now: number) => storage.transactionSync(() => beginSignIn(storage.sql, client, now));
    for (let i = 0; i < SIGN_IN_POLICY.freeFailures; i += 1) expect(attempt("203.0.113.7", NOW)).toBe(0);
    expect(attempt("203.0.113.7", NOW + 100)).toBe(900);
    expect(attempt("198.51.100.1", NOW + 100)).toBe(0);
    // Once the wait is over the next attempt goes ahead, and (failing) doubles the wait.
    expect(attempt("203.0.113.7", NOW + 1_000)).toBe(0);
    expect(attempt("203.0.113.7", NOW + 1_001)).toBe(1_999);
    signInSucceeded(storage.sql, "203.0.113.7");
    expect(attempt("203.0.113.7", NOW + 1_002)).toBe(0);
    // An hour without attempts forgets the failures.
    for (let i = 0; i < 10; i += 1) attempt("192.0.2.9", NOW);
    expect(attempt("192.0.2.9", NOW + 1)).toBeGreaterThan(0);
    expect(attempt("192.0.2.9", NOW + SIGN_IN_POLICY.forgetAfterMs + 1)).toBe(0);
  });

  it("remembers a signed-out session until its cookie would have expired", async () => {
    const storage = await openSqlJsStorage();
    storage.transactionSync(() => migrate(storage.sql));
    endSession(storage.sql, "sid-1", NOW + 1_000);
    endSession(storage.sql, "sid-1", NOW + 1_000);
    expect(sessionEnded(storage.sql, "sid-1")).toBe(true);
    expect(sessionEnded(storage.sql, "sid-2")).toBe(false);
    pruneConsole(storage.sql, NOW + 1_000);
    expect(sessionEnded(storage.sql, "sid-1")).toBe(false);
  });
});

describe("the live log", () => {
  it("resumes after Last-Event-ID when the browser reconnects, else from the page's next line", () => {
    expect(resumeFrom("29", "1")).toBe(30);
    expect(resumeFrom(undefined, "17")).toBe(17);
    expect(resumeFrom(undefined, undefined)).toBe(0);
    expect(resumeFrom("", "3")).toBe(3);
    expect(resumeFrom("-1", undefined)).toBeNull();
    expect(resumeFrom(undefined, "1e3")).toBeNull();
  });

  it("names each line's event by its sequence, and ends with a status event that has no id", () => {
    expect(logEvent({ sequence: 7, source: "stdout", text: "hi", occurred: "2026-12-02T10:00:00.000Z" })).toBe(
      'id: 7\nevent: log\ndata: {"sequence":7,"source":"stdout","text":"hi","occurred":"2026-12-02T10:00:00.000Z"}\n\n',
    );
    expect(statusEvent({ state: "complete", exitCode: -48, nextLogSequence: 8 })).toBe('event: status\ndata: {"state":"complete","exitCode":-48,"nextLogSequence":8}\n\n');
  });
});

describe("times", () => {
  it("reads as a person says them, with the exact time for the hover text", () => {
    expect(formatDuration(4_400)).toBe("4 s");
    expect(formatDuration(3 * 60_000 + 59_000)).toBe("3 min");
    expect(formatDuration(2 * 3_600_000 + 5 * 60_000)).toBe("2 h 5 min");
    expect(formatDuration(3 * 86_400_000 + 4 * 3_600_000)).toBe("3 d 4 h");
    expect(formatRelative("2026-12-02T09:57:00.000Z", NOW, "ago")).toBe("3 min ago");
    expect(formatRelative("2026-12-02T09:57:00.000Z", NOW, "for")).toBe("3 min");
    expect(formatRelative("2026-12-02T10:00:02.000Z", NOW, "ago")).toBe("just now");
    expect(formatRelative("2026-12-02T11:00:00.000Z", NOW, "ago")).toBe("in 1 h");
    expect(formatExact("2026-12-02T09:57:00.123Z")).toBe("2026-12-02 09:57:00 UTC");
  });
});
