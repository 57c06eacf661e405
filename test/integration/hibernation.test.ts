// Hibernation: a machine object that nobody calls is evicted from memory (its runner's socket stays open and its
// heartbeats are answered by the runtime), and the next call builds a new instance from storage. The eviction is
// watched from outside, through the object's SQLite database in the state folder (test/helpers/object-storage.ts):
// SQLite removes the -wal file when workerd closes the database of an evicted object, and a new instance opens it
// again. Everything must survive: the runner's connection, the mutex's holder and waiter, the logs.
import { describe, expect, it } from "vitest";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { databaseOpening, isObjectInMemory, objectDatabases } from "../helpers/object-storage.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

const stdout = (status: { logs: Array<{ source: string; text: string }> }) => status.logs.filter((l) => l.source === "stdout").map((l) => l.text);

describe("a machine object evicted from memory", () => {
  it("is rebuilt from storage with its runner connection, holder, waiter and logs, and runs scripts afterwards", async () => {
    const m = f.machine();
    const before = new Set(objectDatabases(f.cp.stateDir, "MachineObject"));
    const token = await f.register(m);
    const [database] = objectDatabases(f.cp.stateDir, "MachineObject").filter((file) => !before.has(file));
    expect(database).toBeDefined();
    const runner = await f.runner(m, { token });
    const release = join(f.scratch, `${m}.release`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "holder",
      scriptBody: `echo before-idle; while [ ! -f '${release}' ]; do sleep 0.05; done; echo after-idle`,
    });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "waiter", scriptBody: "echo waiter-ran", taskId: "Task-7" });
    await waitFor(async () => stdout((await f.api("GET", `/api/v1/machines/${m}/scripts/holder`)).body).includes("before-idle"), {
      what: "the holder's first line",
    });
    const viewBefore = (await f.api("GET", `/api/v1/machines/${m}`)).body;
    const holderBefore = (await f.api("GET", `/api/v1/machines/${m}/scripts/holder`)).body;
    const waiterBefore = (await f.api("GET", `/api/v1/machines/${m}/scripts/waiter`)).body;
    expect(viewBefore.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["holder"], waiting: ["waiter"] }]);
    expect(holderBefore.state).toBe("running");
    expect(databaseOpening(database!)).not.toBeNull();

    // Nobody calls the object now. Its database closes when it is evicted (the runner's heartbeats do not wake it).
    await waitFor(() => !isObjectInMemory(database!), { timeoutMs: 60_000, intervalMs: 50, what: "the machine object to be evicted" });

    // The next call builds a new instance, which opens the database again, and finds everything as it was.
    const viewAfter = (await f.api("GET", `/api/v1/machines/${m}`)).body;
    expect(databaseOpening(database!)).not.toBeNull();
    const { lastSeenAt: _before, ...runnerBefore } = viewBefore.runner;
    const { lastSeenAt: _after, ...runnerAfter } = viewAfter.runner;
    // Connected through the same socket: the connection time is the first one (the runner never reconnected).
    expect(runnerAfter).toEqual(runnerBefore);
    expect(runnerAfter.connected).toBe(true);
    expect({ ...viewAfter, runner: null }).toEqual({ ...viewBefore, runner: null });
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/holder`)).body).toEqual(holderBefore);
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/waiter`)).body).toEqual(waiterBefore);
    expect(runner.process.child.exitCode).toBeNull();

    // The rebuilt object still drives the runner: the holder finishes, the waiter runs, and so does a new script.
    writeFileSync(release, "");
    const holder = await f.completed(m, "holder");
    expect(holder.exitCode).toBe(0);
    expect(stdout(holder)).toEqual(["before-idle", "after-idle"]);
    const waiter = await f.completed(m, "waiter");
    expect(waiter.exitCode).toBe(0);
    expect(stdout(waiter)).toEqual(["waiter-ran"]);
    const fresh = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "echo fresh", waitMs: 20_000 });
    expect(fresh.body).toMatchObject({ state: "complete", exitCode: 0 });
    expect(stdout(fresh.body)).toEqual(["fresh"]);
    expect((await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connectedAt).toBe(viewBefore.runner.connectedAt);
  }, 120_000);
});
