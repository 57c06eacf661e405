/**
 * A real SQLite (sql.js, WebAssembly) in the shape of Durable Object storage that the control plane's stores use
 * (`control-plane/sql.ts`): `sql.exec(query, ...bindings)` returning a cursor, and `transactionSync` (SAVEPOINTs,
 * so transactions nest). It records every statement (for query plans), and a test can make a write fail to see
 * what a failing disk, a full object or a row over the limit does. Also opens SQLite files that workerd persisted.
 */
import { readFileSync } from "node:fs";
import initSqlJs from "sql.js";
import type { Sql, SqlCursor, SqlValue, Storage } from "../../control-plane/sql.js";

type SqlJs = Awaited<ReturnType<typeof initSqlJs>>;
/** A sql.js database. */
export type SqlJsDatabase = InstanceType<SqlJs["Database"]>;

let loading: Promise<SqlJs> | null = null;

/** Loads sql.js once per test file. */
function sqlJs(): Promise<SqlJs> {
  loading ??= initSqlJs();
  return loading;
}

/** One statement as the code under test ran it. */
export interface RecordedStatement {
  query: string;
  bindings: SqlValue[];
}

/** Decides whether the statement about to run fails instead. */
export type FailureRule = (query: string) => boolean;

/** Statements that change the database. */
export const WRITE = /^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP)\b/i;

/** A rule that fails the `n`th write (from 0) after it was set, and only that one. */
export function nthWrite(n: number): FailureRule {
  let index = 0;
  return (query) => WRITE.test(query) && index++ === n;
}

/** A rule under which storage goes away at the next write: that write and every statement after it fail. */
export function goneAtNextWrite(): FailureRule {
  let gone = false;
  return (query) => (gone ||= WRITE.test(query));
}

/** sql.js behind the `Storage` shape. */
export class SqlJsStorage implements Storage {
  /** Every statement run through `sql.exec`, in order. */
  readonly statements: RecordedStatement[] = [];
  readonly sql: Sql;
  private rule: FailureRule | null = null;
  private depth = 0;

  constructor(readonly db: SqlJsDatabase) {
    this.sql = { exec: <T extends Record<string, SqlValue>>(query: string, ...bindings: SqlValue[]) => this.exec<T>(query, bindings) };
  }

  /** Makes the statements that `rule` picks throw (null: no more failures). */
  failWhen(rule: FailureRule | null): void {
    this.rule = rule;
  }

  /** Runs `body` in a transaction: all of its writes are kept, or none when it throws. */
  transactionSync<T>(body: () => T): T {
    const name = `tx${this.depth}`;
    this.db.run(`SAVEPOINT ${name}`);
    this.depth += 1;
    try {
      const result = body();
      this.depth -= 1;
      this.db.run(`RELEASE ${name}`);
      return result;
    } catch (error) {
      this.depth -= 1;
      this.db.run(`ROLLBACK TO ${name}`);
      this.db.run(`RELEASE ${name}`);
      throw error;
    }
  }

  /** `EXPLAIN QUERY PLAN` of a statement, one detail line per step. */
  queryPlan(statement: RecordedStatement): string[] {
    const result = this.db.exec(`EXPLAIN QUERY PLAN ${statement.query}`, statement.bindings as never);
    return (result[0]?.values ?? []).map((row) => String(row[3]));
  }

  private exec<T extends Record<string, SqlValue>>(query: string, bindings: SqlValue[]): SqlCursor<T> {
    this.statements.push({ query, bindings });
    if (this.rule?.(query)) throw new Error(`injected storage failure: ${query.trim().split("\n")[0]}`);
    const statement = this.db.prepare(query);
    const rows: T[] = [];
    try {
      statement.bind(bindings.map((b) => (b instanceof ArrayBuffer ? new Uint8Array(b) : b)));
      while (statement.step()) rows.push(statement.getAsObject() as T);
    } finally {
      statement.free();
    }
    return {
      toArray: () => rows,
      one: () => {
        if (rows.length !== 1) throw new Error(`expected exactly one row, got ${rows.length}`);
        return rows[0]!;
      },
      [Symbol.iterator]: () => rows[Symbol.iterator](),
    };
  }
}

/** A new empty in-memory database as `Storage`. */
export async function openSqlJsStorage(): Promise<SqlJsStorage> {
  const SQL = await sqlJs();
  return new SqlJsStorage(new SQL.Database());
}

/**
 * Opens a copy of an SQLite file (for instance one that workerd persisted for a Durable Object). Only what is
 * in the main file is seen: a live database may still hold recent writes in its `-wal` file.
 */
export async function openSqliteFile(path: string): Promise<SqlJsStorage> {
  const SQL = await sqlJs();
  return new SqlJsStorage(new SQL.Database(readFileSync(path)));
}

/** Opens a database from its bytes (a copy of a file). */
export async function openSqliteBytes(bytes: Uint8Array): Promise<SqlJsStorage> {
  const SQL = await sqlJs();
  return new SqlJsStorage(new SQL.Database(bytes));
}
