// The runner socket's authentication at the edge: a bad runner token is refused with 401 before any machine
// object is woken, so it learns nothing of which machines exist and costs no object a wake-up. Watched from
// outside through the objects' SQLite files in the control plane's state folder (test/helpers/object-storage.ts).
import { describe, expect, it } from "vitest";
import { runnerUpgradeStatus } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { databaseOpening, isObjectInMemory, objectDatabases } from "../helpers/object-storage.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** Registers a machine and returns its runner token and the database file its object created. */
async function registered(machineId: string): Promise<{ token: string; database: string }> {
  const before = new Set(objectDatabases(f.cp.stateDir, "MachineObject"));
  const token = await f.register(machineId);
  const created = objectDatabases(f.cp.stateDir, "MachineObject").filter((file) => !before.has(file));
  expect(created).toHaveLength(1);
  return { token, database: created[0]! };
}

describe("runner socket authentication", () => {
  it("refuses a bad runner token with 401 before any machine object is woken, whether or not the machine exists (bug 14)", async () => {
    const m = f.machine();
    const other = f.machine();
    const { token, database } = await registered(m);
    const { token: otherToken } = await registered(other);
    const databases = objectDatabases(f.cp.stateDir, "MachineObject");

    // A machine that was never registered: the same 401 as a wrong token, and no object comes to exist for it.
    const unknown = f.machine("never");
    expect(await runnerUpgradeStatus(f.cp, unknown, token)).toBe(401);
    expect(await runnerUpgradeStatus(f.cp, unknown, "trt_made-up")).toBe(401);
    expect(objectDatabases(f.cp.stateDir, "MachineObject")).toEqual(databases);

    // A registered machine whose object is out of memory: bad tokens do not bring it back.
    await waitFor(() => !isObjectInMemory(database), { timeoutMs: 60_000, intervalMs: 100, what: "the machine object to be evicted" });
    for (const bad of ["trt_wrong", otherToken, f.cp.serverToken, `${token}x`]) {
      expect(await runnerUpgradeStatus(f.cp, m, bad)).toBe(401);
    }
    expect(isObjectInMemory(database)).toBe(false);
    expect(objectDatabases(f.cp.stateDir, "MachineObject")).toEqual(databases);

    // The right token does reach the object (which wakes and opens its database again).
    expect(await runnerUpgradeStatus(f.cp, m, token)).toBe(101);
    expect(await waitFor(() => databaseOpening(database), { what: "the machine object to wake" })).toBeGreaterThan(0);
    // The unknown machine is still unknown (this server call does reach its object, which finds no machine).
    expect((await f.api("GET", `/api/v1/machines/${unknown}`)).status).toBe(404);
  }, 90_000);

  it("refuses a runner token once it was re-issued, at the edge as in the object", async () => {
    const m = f.machine();
    const first = await f.register(m);
    const second = await f.register(m);
    expect(await runnerUpgradeStatus(f.cp, m, first)).toBe(401);
    expect(await runnerUpgradeStatus(f.cp, m, second)).toBe(101);
  });

  it("answers a plain GET with a valid runner token with 400, and one without a token with 401", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const plain = await fetch(`${f.cp.url}/api/v1/machines/${m}/runner`, { headers: { authorization: `Bearer ${token}` } });
    expect(plain.status).toBe(400);
    expect(await plain.json()).toMatchObject({ error: { code: "invalid_request" } });
    const bare = await fetch(`${f.cp.url}/api/v1/machines/${m}/runner`);
    expect(bare.status).toBe(401);
    expect(await bare.json()).toMatchObject({ error: { code: "unauthorized" } });
  });
});
