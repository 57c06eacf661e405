// The isolation mutex end to end: real runner, real processes that wait on marker files.
import { describe, expect, it } from "vitest";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** A script that records that it started, then waits until the test releases it. */
function gated(name: string): { scriptBody: string; started: string; release: () => void } {
  const started = join(f.scratch, `${name}.started`);
  const release = join(f.scratch, `${name}.release`);
  return {
    scriptBody: `touch '${started}'; while [ ! -f '${release}' ]; do sleep 0.02; done; echo done-${name}`,
    started,
    release: () => writeFileSync(release, ""),
  };
}

async function state(machineId: string, ticket: string): Promise<string> {
  return (await f.api("GET", `/api/v1/machines/${machineId}/scripts/${ticket}?limit=1`)).body.state;
}

describe("the isolation mutex", () => {
  it("holds back a second full script on the same mutex until the first completes", async () => {
    const m = f.machine();
    await f.runner(m);
    const a = gated(`${m}-a`);
    const b = gated(`${m}-b`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "a", scriptBody: a.scriptBody, taskId: "ServerTasks-1" });
    await waitFor(() => existsSync(a.started), { what: "a to start" });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "b", scriptBody: b.scriptBody });

    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["a"], waiting: ["b"] }]);
    expect(await state(m, "b")).toBe("pending");
    const waiting = await f.api("GET", `/api/v1/machines/${m}/scripts/b`);
    expect(waiting.body.logs[0]).toMatchObject({ source: "debug" });
    expect(waiting.body.logs[0].text).toContain("a (task ServerTasks-1)");
    expect(existsSync(b.started)).toBe(false);

    a.release();
    await f.completed(m, "a");
    await waitFor(() => existsSync(b.started), { what: "b to start after a" });
    b.release();
    expect((await f.completed(m, "b")).exitCode).toBe(0);
  });

  it("runs two isolation-none scripts on the same mutex at the same time", async () => {
    const m = f.machine();
    await f.runner(m);
    const a = gated(`${m}-a`);
    const b = gated(`${m}-b`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "a", scriptBody: a.scriptBody, isolation: "none" });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "b", scriptBody: b.scriptBody, isolation: "none" });
    await waitFor(() => existsSync(a.started) && existsSync(b.started), { what: "both to run together" });
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.mutexes[0]).toMatchObject({ mode: "shared", waiting: [] });
    expect(view.body.mutexes[0].holders.sort()).toEqual(["a", "b"]);
    a.release();
    b.release();
    await f.completed(m, "a");
    await f.completed(m, "b");
  });

  it("runs full scripts on different mutex names at the same time", async () => {
    const m = f.machine();
    await f.runner(m);
    const a = gated(`${m}-a`);
    const b = gated(`${m}-b`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "a", scriptBody: a.scriptBody, mutexName: "one" });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "b", scriptBody: b.scriptBody, mutexName: "two" });
    await waitFor(() => existsSync(a.started) && existsSync(b.started), { what: "both to run together" });
    a.release();
    b.release();
    await f.completed(m, "a");
    await f.completed(m, "b");
  });

  it("serves a waiting full script before later none scripts (no overtaking)", async () => {
    const m = f.machine();
    await f.runner(m);
    const first = gated(`${m}-first`);
    const full = gated(`${m}-full`);
    const later = gated(`${m}-later`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "first", scriptBody: first.scriptBody, isolation: "none" });
    await waitFor(() => existsSync(first.started), { what: "first to start" });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "full", scriptBody: full.scriptBody });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "later", scriptBody: later.scriptBody, isolation: "none" });
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.mutexes[0]).toMatchObject({ mode: "shared", holders: ["first"], waiting: ["full", "later"] });
    first.release();
    await waitFor(() => existsSync(full.started), { what: "the full script to start" });
    expect(existsSync(later.started)).toBe(false);
    full.release();
    await waitFor(() => existsSync(later.started), { what: "the later none script to start" });
    later.release();
    await f.completed(m, "later");
  });

  it("completes a script that waited longer than mutexTimeoutMs with -44 and says what it waited for", async () => {
    const m = f.machine();
    await f.runner(m);
    const a = gated(`${m}-a`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "a", scriptBody: a.scriptBody });
    await waitFor(() => existsSync(a.started), { what: "a to start" });
    const b = gated(`${m}-b`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "b", scriptBody: b.scriptBody, mutexTimeoutMs: 500 });
    const status = await f.completed(m, "b", 10_000);
    expect(status.exitCode).toBe(-44);
    expect(status.logs.at(-1)).toMatchObject({ source: "debug" });
    expect(status.logs.at(-1).text).toMatch(/Timed out after \d+ ms waiting for the mutex "RunningScript"; held by a/);
    expect(existsSync(b.started)).toBe(false);
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.mutexes[0]).toMatchObject({ holders: ["a"], waiting: [] });
    a.release();
    await f.completed(m, "a");
  });

  it("keeps a granted script pending while no runner is connected and runs it once one connects", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const marker = join(f.scratch, `${m}-ran`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "later", scriptBody: `echo ran >> '${marker}'` });
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.runner.connected).toBe(false);
    expect(view.body.mutexes[0]).toMatchObject({ holders: ["later"], waiting: [] });
    expect(await state(m, "later")).toBe("pending");
    await f.runner(m, { token });
    const status = await f.completed(m, "later");
    expect(status.exitCode).toBe(0);
    expect(readFileSync(marker, "utf8")).toBe("ran\n");
  });
});
