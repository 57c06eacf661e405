/**
 * The registry's SQLite storage: the registered machines, each with the hash of its current runner token, so
 * that the edge can refuse a bad runner token without waking any machine object. Pure storage over `Sql`.
 */
import { constantTimeEqual } from "../crypto.js";
import type { Sql } from "../sql.js";

/** Ordered migrations; entry i moves the schema from version i to i+1. */
const MIGRATIONS: string[][] = [
  // The first registries had this table and no meta: IF NOT EXISTS lets them migrate too.
  [`CREATE TABLE IF NOT EXISTS machines (machine_id TEXT PRIMARY KEY, registered_at INTEGER NOT NULL)`],
  // NULL: registered before the registry kept token hashes (the machine object still checks those).
  [`ALTER TABLE machines ADD COLUMN runner_token_hash TEXT`],
];

/** Brings the schema to the newest version; safe on every start (run it in one transaction). */
export function migrate(sql: Sql): void {
  sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
  const row = sql.exec<{ value: string }>("SELECT value FROM meta WHERE key = 'schema_version'").toArray()[0];
  for (let version = Number(row?.value ?? "0"); version < MIGRATIONS.length; version += 1) {
    for (const statement of MIGRATIONS[version]!) sql.exec(statement);
    sql.exec(
      "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      String(version + 1),
    );
  }
}

/** Records a machine (if new) with the hash of its newly issued runner token. */
export function setRunnerToken(sql: Sql, machineId: string, tokenHash: string, now: number): void {
  sql.exec(
    `INSERT INTO machines (machine_id, registered_at, runner_token_hash) VALUES (?, ?, ?)
     ON CONFLICT (machine_id) DO UPDATE SET runner_token_hash = excluded.runner_token_hash`,
    machineId,
    now,
    tokenHash,
  );
}

/**
 * What the registry says of a runner token presented for a machine: `accepted` (it is the machine's current
 * token), `refused` (an unknown machine or another token), or `unverified` (a machine registered before the
 * registry kept hashes: its object decides, and `adoptRunnerToken` records the hash once it accepted).
 */
export type TokenVerdict = "accepted" | "refused" | "unverified";

/** Checks a runner token's hash against the machine's, in constant time. */
export function checkRunnerToken(sql: Sql, machineId: string, tokenHash: string): TokenVerdict {
  const row = sql.exec<{ runner_token_hash: string | null }>("SELECT runner_token_hash FROM machines WHERE machine_id = ?", machineId).toArray()[0];
  if (!row) return "refused";
  if (row.runner_token_hash === null) return "unverified";
  return constantTimeEqual(tokenHash, row.runner_token_hash) ? "accepted" : "refused";
}

/** Records the hash of a token that the machine object accepted, for a machine registered before hashes were kept. */
export function adoptRunnerToken(sql: Sql, machineId: string, tokenHash: string): void {
  sql.exec("UPDATE machines SET runner_token_hash = ? WHERE machine_id = ? AND runner_token_hash IS NULL", tokenHash, machineId);
}

/** Every registered machine id, sorted. */
export function listMachines(sql: Sql): string[] {
  return sql
    .exec<{ machine_id: string }>("SELECT machine_id FROM machines ORDER BY machine_id")
    .toArray()
    .map((row) => row.machine_id);
}
