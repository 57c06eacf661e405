/**
 * Reading and writing script logs on a real SQLite (sql.js): a page is one range scan of the primary key
 * wherever it starts, and a page's size is its JSON's size in UTF-8 bytes, not a count of UTF-16 code units.
 */
import { beforeEach, describe, expect, it } from "vitest";
import { appendLines, readLogs } from "../../control-plane/machine/logs.js";
import { migrate } from "../../control-plane/machine/storage.js";
import { openSqlJsStorage, type SqlJsStorage } from "../helpers/sqljs-storage.js";

const OCCURRED = "2026-12-02T08:00:00.000Z";
let storage: SqlJsStorage;

beforeEach(async () => {
  storage = await openSqlJsStorage();
  storage.transactionSync(() => migrate(storage.sql));
});

/** Stores `count` chunks of `perChunk` lines each for ticket `t`, straight into the table. */
function storeChunks(count: number, perChunk: number, text: (sequence: number) => string): void {
  storage.db.run("BEGIN");
  for (let i = 0; i < count; i += 1) {
    const first = i * perChunk;
    const lines = Array.from({ length: perChunk }, (_, k) => ["stdout", text(first + k), OCCURRED]);
    storage.db.run("INSERT INTO log_chunks (ticket, first_seq, last_seq, lines) VALUES ('t', ?, ?, ?)", [first, first + perChunk - 1, JSON.stringify(lines)]);
  }
  storage.db.run("COMMIT");
}

/** The query plan of the log query that `read` runs. */
function planOf(read: () => void): string[] {
  const from = storage.statements.length;
  read();
  const query = storage.statements.slice(from).find((s) => /FROM log_chunks/.test(s.query));
  if (!query) throw new Error("no query on log_chunks");
  return storage.queryPlan(query);
}

describe("reading a page of a long log (bug 11)", () => {
  it("reads a page with one range scan of the primary key that starts at the chunk holding logSequence, so a late page costs no more than an early one", () => {
    storeChunks(5_000, 2, (sequence) => `line ${sequence}`);
    for (const from of [0, 5_001, 9_997]) {
      let page: Array<{ sequence: number; text: string }> = [];
      const plan = planOf(() => {
        page = readLogs(storage.sql, "t", from, 3, 4 * 1024 * 1024);
      });
      expect(page.map((l) => l.sequence)).toEqual([from, from + 1, from + 2]);
      expect(page.map((l) => l.text)).toEqual([`line ${from}`, `line ${from + 1}`, `line ${from + 2}`]);
      // Every step that reads log_chunks is bounded by first_seq: none walks the ticket's chunks from the start.
      const steps = plan.filter((line) => /log_chunks/.test(line));
      expect(steps.length, plan.join("\n")).toBeGreaterThan(0);
      for (const step of steps) expect(step, plan.join("\n")).toMatch(/first_seq[<>=]/);
      expect(plan.some((line) => /\bSCAN\b|TEMP B-TREE/.test(line)), plan.join("\n")).toBe(false);
    }
  });

  it("returns nothing past the end and finds the first line of a log", () => {
    storeChunks(3, 4, (sequence) => `line ${sequence}`);
    expect(readLogs(storage.sql, "t", 12, 10, 1_000_000)).toEqual([]);
    expect(readLogs(storage.sql, "t", 0, 2, 1_000_000).map((l) => l.sequence)).toEqual([0, 1]);
    expect(readLogs(storage.sql, "other", 0, 2, 1_000_000)).toEqual([]);
  });
});

describe("the size of a page (bug 12)", () => {
  it("cuts a page so that its JSON, counted in UTF-8 bytes, stays within the budget, for text outside ASCII", () => {
    storeChunks(10, 10, () => "€".repeat(1_000)); // 1,000 UTF-16 code units, 3,000 UTF-8 bytes
    const page = readLogs(storage.sql, "t", 0, 10_000, 64 * 1024);
    expect(Buffer.byteLength(JSON.stringify(page))).toBeLessThanOrEqual(64 * 1024);
    expect(page.length).toBeGreaterThan(15);
  });

  it("counts what JSON escapes in a page's size", () => {
    storeChunks(10, 10, () => "\u0001".repeat(1_000)); // each written as \u0001: 6 bytes
    const page = readLogs(storage.sql, "t", 0, 10_000, 64 * 1024);
    expect(Buffer.byteLength(JSON.stringify(page))).toBeLessThanOrEqual(64 * 1024);
    expect(page.length).toBeGreaterThan(5);
  });

  it("always returns at least one line, so that a reader gets past a line larger than the budget", () => {
    storeChunks(1, 2, () => "y".repeat(10_000));
    expect(readLogs(storage.sql, "t", 0, 10, 100).map((l) => l.sequence)).toEqual([0]);
  });
});

describe("writing lines", () => {
  it("keeps every row under SQLite's 2 MB row limit and cuts, with a note, a line whose JSON alone would not fit", () => {
    const heavy = "\u0001".repeat(600_000); // 3.6 MB as JSON
    const next = appendLines(storage.sql, "t", 0, [
      { source: "stdout", text: "before", occurred: OCCURRED },
      { source: "stdout", text: heavy, occurred: OCCURRED },
      { source: "stdout", text: "€".repeat(300_000), occurred: OCCURRED },
    ]);
    expect(next).toBe(3);
    const sizes = storage.db.exec("SELECT length(CAST(lines AS BLOB)) FROM log_chunks")[0]!.values.map((row) => Number(row[0]));
    for (const size of sizes) expect(size).toBeLessThan(2_000_000);
    const lines = readLogs(storage.sql, "t", 0, 10, 64 * 1024 * 1024);
    expect(lines.map((l) => l.sequence)).toEqual([0, 1, 2]);
    expect(lines[1]!.text).toMatch(/^\u0001+ \[line cut at \d+ characters\]$/);
    expect(lines[2]!.text).toBe("€".repeat(300_000));
  });
});
