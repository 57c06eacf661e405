/**
 * The shape of Durable Object SQLite storage that the control plane's stores use, declared here so that the
 * stores and the machine engine need no `cloudflare:workers` types: workerd's `ctx.storage` fits it, and so
 * does a test adapter over another SQLite (test/helpers/sqljs-storage.ts).
 */

/** A value SQLite hands back or takes as a binding. */
export type SqlValue = string | number | null | ArrayBuffer;

/** The rows of one statement: read them all, exactly one, or one by one. */
export interface SqlCursor<T> extends Iterable<T> {
  toArray(): T[];
  one(): T;
}

/** Runs one SQL statement with positional `?` bindings (workerd's `SqlStorage`). */
export interface Sql {
  exec<T extends Record<string, SqlValue>>(query: string, ...bindings: SqlValue[]): SqlCursor<T>;
}

/** An object's storage: its SQL, and all-or-nothing transactions (workerd's `ctx.storage`). */
export interface Storage {
  readonly sql: Sql;
  /** Runs `body` in one transaction: every write in it is kept, or none when it throws. */
  transactionSync<T>(body: () => T): T;
}
