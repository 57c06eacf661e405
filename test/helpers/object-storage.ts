/**
 * What a local control plane's Durable Objects leave in its state folder, seen from outside without waking them.
 * Miniflare keeps each object's SQLite database as `<state>/durable-objects/<service>-<Class>/<object id>.sqlite`,
 * in WAL mode: the `-wal` file exists while the database is open, and SQLite removes it when the last connection
 * closes, which workerd does when it evicts the object from memory. So an object whose `-wal` file is gone is not
 * in memory; when it is woken, a new instance opens the database again and a new `-wal` file appears.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

/** The folder holding the databases of one Durable Object class. */
export function objectClassDir(stateDir: string, className: string): string {
  const root = join(stateDir, "durable-objects");
  const name = existsSync(root) ? readdirSync(root).find((entry) => entry.endsWith(`-${className}`) || entry === className) : undefined;
  return join(root, name ?? `-${className}`);
}

/** The database file of every object of a class that has storage (not the class's own metadata), sorted. */
export function objectDatabases(stateDir: string, className: string): string[] {
  const dir = objectClassDir(stateDir, className);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => name.endsWith(".sqlite") && name !== "metadata.sqlite")
    .map((name) => join(dir, name))
    .sort();
}

/** True while the object owning this database is in memory (its database is open). */
export function isObjectInMemory(database: string): boolean {
  return existsSync(`${database}-wal`);
}

/** The inode of a database's `-wal` file while it is open; null while it is closed. */
export function databaseOpening(database: string): number | null {
  try {
    return statSync(`${database}-wal`).ino;
  } catch {
    return null;
  }
}
