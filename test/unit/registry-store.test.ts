/**
 * The registry's storage on a real SQLite: machines with the hashes of their runner tokens, so that the edge
 * refuses a bad runner token, for a registered machine or not, before any machine object is woken (bug 14).
 */
import { describe, expect, it } from "vitest";
import { adoptRunnerToken, checkRunnerToken, listMachines, migrate, setRunnerToken } from "../../control-plane/registry/registry-store.js";
import { openSqlJsStorage } from "../helpers/sqljs-storage.js";

const A = "a".repeat(64);
const B = "b".repeat(64);

async function registry() {
  const storage = await openSqlJsStorage();
  storage.transactionSync(() => migrate(storage.sql));
  return storage;
}

describe("checkRunnerToken", () => {
  it("accepts the current token's hash and refuses another token and an unknown machine alike", async () => {
    const { sql } = await registry();
    setRunnerToken(sql, "web-01", A, 1);
    expect(checkRunnerToken(sql, "web-01", A)).toBe("accepted");
    expect(checkRunnerToken(sql, "web-01", B)).toBe("refused");
    expect(checkRunnerToken(sql, "nobody", A)).toBe("refused");
  });

  it("refuses the previous token once a new one is issued", async () => {
    const { sql } = await registry();
    setRunnerToken(sql, "web-01", A, 1);
    setRunnerToken(sql, "web-01", B, 2);
    expect(checkRunnerToken(sql, "web-01", A)).toBe("refused");
    expect(checkRunnerToken(sql, "web-01", B)).toBe("accepted");
    expect(listMachines(sql)).toEqual(["web-01"]);
  });
});

describe("a registry from before token hashes", () => {
  it("keeps its machines, leaves their tokens to the machine objects until one is accepted, then checks them itself", async () => {
    const storage = await openSqlJsStorage();
    storage.sql.exec("CREATE TABLE machines (machine_id TEXT PRIMARY KEY, registered_at INTEGER NOT NULL)");
    storage.sql.exec("INSERT INTO machines (machine_id, registered_at) VALUES ('old-1', 5), ('old-2', 6)");
    storage.transactionSync(() => migrate(storage.sql));
    storage.transactionSync(() => migrate(storage.sql)); // again: nothing to do
    expect(listMachines(storage.sql)).toEqual(["old-1", "old-2"]);
    expect(checkRunnerToken(storage.sql, "old-1", A)).toBe("unverified");
    adoptRunnerToken(storage.sql, "old-1", A);
    adoptRunnerToken(storage.sql, "old-1", B); // only the first accepted token is adopted
    expect(checkRunnerToken(storage.sql, "old-1", A)).toBe("accepted");
    expect(checkRunnerToken(storage.sql, "old-1", B)).toBe("refused");
    expect(checkRunnerToken(storage.sql, "new-1", A)).toBe("refused");
  });
});
