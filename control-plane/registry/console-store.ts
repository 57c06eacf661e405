/**
 * What the registry keeps for the console (control-plane/console/): failed sign-ins per client, to slow down token
 * guessing, and the ids of console sessions that were signed out before their cookie expired, so that a copy of a
 * signed-out cookie is refused too. Pure storage over `Sql` plus the slowdown policy; the registry object runs each
 * call in one transaction, and its alarm prunes both tables.
 */
import type { Sql } from "../sql.js";

/** The schema these functions use (one migration of the registry, see registry-store.ts). */
export const CONSOLE_TABLES = [
  // attempts counts sign-ins since the last success (each counted as a failure when it starts, so that a burst of
  // parallel guesses cannot all pass the check before any is recorded); blocked_until is when the next may start.
  `CREATE TABLE console_sign_in (client TEXT PRIMARY KEY, attempts INTEGER NOT NULL, last_attempt_at INTEGER NOT NULL, blocked_until INTEGER NOT NULL)`,
  `CREATE INDEX console_sign_in_by_time ON console_sign_in (last_attempt_at)`,
  // Kept until the cookie would have expired anyway.
  `CREATE TABLE console_ended_sessions (session_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)`,
  `CREATE INDEX console_ended_sessions_by_expiry ON console_ended_sessions (expires_at)`,
];

/** How sign-in failures are slowed down. */
export const SIGN_IN_POLICY = {
  /** Failures a client may make without waiting (typos happen). */
  freeFailures: 5,
  /** The wait after the first failure past the free ones; it doubles with each further one. */
  firstDelayMs: 1_000,
  /** The longest wait. */
  maxDelayMs: 15 * 60 * 1000,
  /** A client's failures are forgotten this long after its last attempt. */
  forgetAfterMs: 60 * 60 * 1000,
} as const;

/** How long a client must wait after its `failures`-th consecutive failure: 0 for the free ones, then 1 s, 2 s, 4 s, … 15 min. */
export function delayAfter(failures: number): number {
  if (failures < SIGN_IN_POLICY.freeFailures) return 0;
  const doublings = Math.min(failures - SIGN_IN_POLICY.freeFailures, 30);
  return Math.min(SIGN_IN_POLICY.firstDelayMs * 2 ** doublings, SIGN_IN_POLICY.maxDelayMs);
}

type SignInRow = { attempts: number; last_attempt_at: number; blocked_until: number };

/**
 * Starts a sign-in attempt of `client`: answers how many ms it must wait first (then nothing is recorded and the
 * token must not be checked), or 0 — then the attempt is counted as a failure until `signInSucceeded` says otherwise.
 */
export function beginSignIn(sql: Sql, client: string, now: number): number {
  const row = sql.exec<SignInRow>("SELECT attempts, last_attempt_at, blocked_until FROM console_sign_in WHERE client = ?", client).toArray()[0];
  const fresh = !row || now - row.last_attempt_at > SIGN_IN_POLICY.forgetAfterMs;
  if (!fresh && row.blocked_until > now) return row.blocked_until - now;
  const attempts = (fresh ? 0 : row.attempts) + 1;
  const delay = delayAfter(attempts);
  sql.exec(
    `INSERT INTO console_sign_in (client, attempts, last_attempt_at, blocked_until) VALUES (?, ?, ?, ?)
     ON CONFLICT (client) DO UPDATE SET attempts = excluded.attempts, last_attempt_at = excluded.last_attempt_at, blocked_until = excluded.blocked_until`,
    client,
    attempts,
    now,
    delay === 0 ? 0 : now + delay,
  );
  return 0;
}

/** A client signed in with a good token: its failures are forgotten. */
export function signInSucceeded(sql: Sql, client: string): void {
  sql.exec("DELETE FROM console_sign_in WHERE client = ?", client);
}

/** Records that a session was signed out; its cookie is refused from now on (until it would have expired). */
export function endSession(sql: Sql, sessionId: string, expiresAt: number): void {
  sql.exec("INSERT OR IGNORE INTO console_ended_sessions (session_id, expires_at) VALUES (?, ?)", sessionId, expiresAt);
}

/** Whether a session was signed out. */
export function sessionEnded(sql: Sql, sessionId: string): boolean {
  return sql.exec("SELECT 1 AS one FROM console_ended_sessions WHERE session_id = ?", sessionId).toArray().length > 0;
}

/** Forgets ended sessions whose cookies have expired and clients whose failures are forgotten. */
export function pruneConsole(sql: Sql, now: number): void {
  sql.exec("DELETE FROM console_ended_sessions WHERE expires_at <= ?", now);
  sql.exec("DELETE FROM console_sign_in WHERE last_attempt_at < ?", now - SIGN_IN_POLICY.forgetAfterMs);
}
