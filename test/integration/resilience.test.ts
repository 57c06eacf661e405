// Connection faults between a real runner and the real control plane: cuts, a half-open link, a replaced runner.
// The runner reaches the control plane through a fault-injecting TCP proxy; the test talks to the API directly.
import { afterEach, describe, expect, it } from "vitest";
import { realpathSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { call } from "../helpers/api.js";
import { startFaultProxy, type FaultProxy } from "../helpers/fault-proxy.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

const proxies: FaultProxy[] = [];
afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});

/** A proxy in front of the file's control plane. */
async function proxy(): Promise<FaultProxy> {
  const p = await startFaultProxy(Number(new URL(f.cp.url).port));
  proxies.push(p);
  return p;
}

/** A runner whose WebSocket goes through `p` (the last `--url` wins over the helper's own). */
function runnerThrough(p: FaultProxy, machineId: string, options: { token?: string } = {}) {
  return f.runner(machineId, { ...options, args: ["--url", p.url] });
}

interface Line {
  sequence: number;
  source: string;
  text: string;
}

/** Every stored line of a script, read page by page from the start. */
async function allLines(machineId: string, ticket: string, limit = 10_000): Promise<Line[]> {
  const lines: Line[] = [];
  let next = 0;
  for (;;) {
    const page = await f.api("GET", `/api/v1/machines/${machineId}/scripts/${ticket}?logSequence=${next}&limit=${limit}`);
    expect(page.status).toBe(200);
    lines.push(...page.body.logs);
    next = page.body.nextLogSequence;
    if (!page.body.hasMoreLogs) return lines;
  }
}

const view = async (machineId: string) => (await f.api("GET", `/api/v1/machines/${machineId}`)).body;

describe("resilience", () => {
  it("delivers 20,000 lines exactly once and in order across at least five connection cuts", async () => {
    const m = f.machine();
    const p = await proxy();
    const runner = await runnerThrough(p, m);
    // 200 bursts of 100 numbered lines with a short pause between them: long enough to span the cuts.
    const scriptBody = [
      "i=0",
      "for b in $(seq 1 200); do",
      '  for j in $(seq 1 100); do i=$((i+1)); echo "line-$i"; done',
      "  sleep 0.04",
      "done",
    ].join("\n");
    const started = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "cuts", scriptBody });
    expect(started.status).toBe(201);

    // Follow the stored lines; each time at least 1,500 new ones were stored on a live connection, cut it.
    let stored = 0;
    let storedAtLastCut = 0;
    let cuts = 0;
    let state = "pending";
    let misordered: Line | undefined;
    await waitFor(
      async () => {
        const page = await f.api("GET", `/api/v1/machines/${m}/scripts/cuts?logSequence=${stored}&limit=10000`);
        for (const line of page.body.logs as Line[]) {
          if (line.sequence !== stored || line.text !== `line-${stored + 1}`) misordered ??= line;
          stored += 1;
        }
        if (misordered) return true;
        state = page.body.state;
        if (state !== "complete" && stored - storedAtLastCut >= 1_500 && p.connections() > 0) {
          p.cut();
          cuts += 1;
          storedAtLastCut = stored;
        }
        return state === "complete" && !page.body.hasMoreLogs;
      },
      { timeoutMs: 60_000, intervalMs: 25, what: `the script to complete across cuts (${cuts} cuts, ${stored} lines stored)` },
    );
    expect(misordered, "a line stored out of order or twice, seen while following the output").toBeUndefined();
    expect(cuts).toBeGreaterThanOrEqual(5);

    const status = (await f.api("GET", `/api/v1/machines/${m}/scripts/cuts?limit=1`)).body;
    expect(status).toMatchObject({ state: "complete", exitCode: 0 });
    const lines = await allLines(m, "cuts", 7_000);
    expect(lines.map((l) => l.sequence)).toEqual(Array.from({ length: 20_000 }, (_, i) => i));
    expect(lines.every((l) => l.source === "stdout")).toBe(true);
    expect(lines.map((l) => l.text)).toEqual(Array.from({ length: 20_000 }, (_, i) => `line-${i + 1}`));

    // The runner rode out every cut: still the same process, connected again.
    expect(runner.process.child.exitCode).toBeNull();
    await waitFor(async () => (await view(m)).runner.connected === true, { what: "the runner to be connected after the cuts" });
    expect(p.accepted()).toBeGreaterThan(cuts);
  }, 90_000);

  it("notices a half-open connection within 30 s, reconnects, and runs a script started during the freeze", async () => {
    const m = f.machine();
    const p = await proxy();
    const runner = await runnerThrough(p, m);
    const before = await view(m);
    expect(before.runner.connected).toBe(true);
    const acceptedBefore = p.accepted();
    expect(p.connections()).toBe(1);

    // The link goes silent both ways; nothing is closed. New connections still pass.
    p.freeze();
    const frozenAt = Date.now();
    const started = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "during-freeze", scriptBody: "echo one; echo two" });
    expect(started.status).toBe(201);

    const recovered = await waitFor(
      async () => {
        const runnerView = (await view(m)).runner;
        return p.accepted() > acceptedBefore && runnerView.connected === true && Date.parse(runnerView.connectedAt) > frozenAt
          ? Date.now()
          : undefined;
      },
      { timeoutMs: 40_000, intervalMs: 100, what: "the runner to reconnect after the freeze" },
    );
    const recoveryMs = recovered - frozenAt;
    expect(recoveryMs, `recovered after ${recoveryMs} ms`).toBeLessThan(30_000);

    const status = await f.completed(m, "during-freeze", 15_000);
    expect(status.exitCode).toBe(0);
    expect(status.logs.filter((l: Line) => l.source === "stdout").map((l: Line) => l.text)).toEqual(["one", "two"]);

    // Letting the stale link talk again changes nothing: the new connection stays, the result stands.
    p.thaw();
    const after = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "after-thaw", scriptBody: "echo three", waitMs: 20_000 });
    expect(after.body).toMatchObject({ state: "complete", exitCode: 0 });
    expect((await view(m)).runner.connected).toBe(true);
    expect(runner.process.child.exitCode).toBeNull();
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/during-freeze`)).body).toEqual(status);
  }, 90_000);

  it("replaces an older runner connection cleanly: the old one is closed with 4000 and its runner exits 3", async () => {
    const m = f.machine();
    const token = await f.register(m);

    // A bare connection that completed its handshake sees the close code itself.
    const bare = new WebSocket(`${f.cp.url.replace("http", "ws")}/api/v1/machines/${m}/runner`, { headers: { authorization: `Bearer ${token}` } });
    const bareClosed = new Promise<number>((resolve) => bare.on("close", (code) => resolve(code)));
    const bareWelcomed = new Promise<void>((resolve) => bare.on("message", (data) => (JSON.parse(data.toString()).type === "welcome" ? resolve() : undefined)));
    bare.on("error", () => undefined);
    await new Promise<void>((resolve, reject) => {
      bare.on("open", () => resolve());
      bare.on("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    bare.send(JSON.stringify({ type: "hello", protocol: 1, runnerId: "bare-1", version: "0.1.0", capabilities: ["script.v1"], inventory: [] }));
    await bareWelcomed;

    const first = await f.runner(m, { token });
    expect(await bareClosed).toBe(4000);

    const release = join(f.scratch, `${m}.release`);
    const running = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "on-first", scriptBody: `echo first; while [ ! -f '${release}' ]; do sleep 0.05; done` });
    expect(running.status).toBe(201);
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}/scripts/on-first`)).body.logs.length > 0, { what: "the first runner to run a script" });

    // A second runner process for the same machine and token takes over.
    const second = await f.runner(m, { token, waitConnected: false });
    const exit = await Promise.race([
      first.process.exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`the first runner did not exit:\n${first.process.output()}`)), 15_000)),
    ]);
    expect(exit.code).toBe(3);
    expect(first.process.output()).toMatch(/Another runner took over machine/);
    await waitFor(async () => (await view(m)).runner.connected === true, { what: "the second runner to connect" });

    // The script the first runner ran has no runner left that knows it; the second serves new scripts.
    expect((await f.completed(m, "on-first", 15_000)).exitCode).toBe(-46);
    writeFileSync(release, "");
    const served = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "on-second", scriptBody: "pwd", waitMs: 20_000 });
    expect(served.body).toMatchObject({ state: "complete", exitCode: 0 });
    const cwd = served.body.logs.find((l: Line) => l.source === "stdout").text as string;
    expect(realpathSync(cwd).startsWith(realpathSync(second.workDir))).toBe(true);
    expect(second.process.child.exitCode).toBeNull();
    expect((await call(f.cp, "GET", `/api/v1/machines/${m}`)).body.runner.connected).toBe(true);
  });
});
