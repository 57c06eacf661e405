// `npm run bench:floor [runs] [scripts]`: what Tendril's design allows on this machine, and whose the rest of the fixed
// cost is. Four stacks, each interleaved with the same baseline as `npm run bench` (bench/baseline.mjs):
// - the design alone: a Worker with one SQLite-backed Durable Object per machine and a runner on a WebSocket, doing
//   only what every dispatch and handoff must (a durable commit of the start, a frame to the runner, a run of
//   `bash -c true`, a frame back, a durable commit of the exit together with the next grant, the answer), with the
//   runner spawning each script from Node, then from a long-lived `sh` that it started beforehand;
// - Tendril's control plane as shipped, with a runner that speaks the protocol and does nothing else
//   (bench/lean-runner.mjs): no record, workspace, re-attach wrapper or output;
// - Tendril as shipped (its control plane and its runner, as `npm run bench` starts them, without stage traces).
// FLOOR_ONLY=node|sh|lean|tendril runs one of them; FLOOR_ONLY=direct runs, for an experiment, Tendril with a runner
// whose environment holds a variable no shell can pass on, so that it spawns every script itself (no wrapper).
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { Miniflare } from "miniflare";
import { burstOfTrue, dispatchOnce } from "./figures.mjs";
import { ROOT, percentile, startBaseline, startControlPlane, startRunner } from "./stack.mjs";

const WORKER = `
import { DurableObject } from "cloudflare:workers";
export class Floor extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, code INTEGER)");
    this.waiters = new Map();
    this.queue = [];
    this.next = (this.sql.exec("SELECT coalesce(max(id), 0) AS m FROM runs").one().m) + 1;
  }
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/connect") {
      const [client, server] = Object.values(new WebSocketPair());
      this.ctx.acceptWebSocket(server);
      return new Response(null, { status: 101, webSocket: client });
    }
    const id = this.next++;
    this.sql.exec("INSERT INTO runs (id, state) VALUES (?, 'queued')", id);
    const done = new Promise((resolve) => this.waiters.set(id, resolve));
    this.queue.push(id);
    if (this.queue.length === 1) this.grant();
    return Response.json({ id, code: await done });
  }
  grant() {
    const id = this.queue[0];
    if (id === undefined) return;
    this.sql.exec("UPDATE runs SET state = 'running' WHERE id = ?", id);
    this.ctx.getWebSockets()[0].send(JSON.stringify({ start: id }));
  }
  webSocketMessage(ws, message) {
    const { exit, code } = JSON.parse(message);
    this.sql.exec("UPDATE runs SET state = 'done', code = ? WHERE id = ?", code, exit);
    this.queue.shift();
    this.grant();
    const waiter = this.waiters.get(exit);
    this.waiters.delete(exit);
    waiter?.(code);
  }
}
export default {
  fetch(request, env) {
    if (new URL(request.url).pathname === "/healthz") return new Response("ok");
    return env.FLOOR.get(env.FLOOR.idFromName("machine")).fetch(request);
  },
};
`;

const rounds = 4;
const runs = Number(process.argv[2] ?? 300);
const burst = Number(process.argv[3] ?? 500);
if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(burst / rounds) || burst < rounds) {
  console.error(`usage: node bench/floor.mjs [dispatches, default 300] [scripts handed off, a multiple of ${rounds}, default 500]`);
  process.exit(2);
}
const f = (v) => v.toFixed(2);

/** Dispatch latencies and a burst's rate through `stack` (`dispatch()`, `burst(n)` → ms), interleaved with the baseline. */
async function measure(stack, baseline) {
  for (let i = 0; i < 20; i += 1) await stack.dispatch();
  const dispatch = [];
  const direct = [];
  for (let i = 0; i < runs; i += 1) {
    direct.push(...(await baseline.spawnTrue(1)));
    dispatch.push(await stack.dispatch());
  }
  let burstMs = 0;
  let directMs = 0;
  for (let round = 0; round < rounds; round += 1) {
    directMs += (await baseline.spawnTrue(burst / rounds)).reduce((sum, ms) => sum + ms, 0);
    burstMs += await stack.burst(burst / rounds);
  }
  return { dispatch, direct, rate: burst / (burstMs / 1000), directRate: burst / (directMs / 1000) };
}

function print(name, { dispatch, direct, rate, directRate }) {
  for (const p of [50, 95]) {
    const value = percentile(dispatch, p);
    const base = percentile(direct, p);
    console.log(`| ${name}: dispatch p${p} | ${f(value)} ms | ${f(base)} ms | ${f(value / base)}× |`);
  }
  console.log(`| ${name}: handoff | ${rate.toFixed(0)} scripts/s (${f(1000 / rate)} ms each) | ${directRate.toFixed(0)} scripts/s | ${f(rate / directRate)}× |`);
}

/** The design alone: the Worker above, its runner started by Node (`helper` false) or by a long-lived `sh`. */
async function designFloor(baseline, helper) {
  const stateDir = mkdtempSync(join(tmpdir(), "tendril-floor-"));
  const compatibilityDate = /^compatibility_date\s*=\s*"([^"]+)"/m.exec(readFileSync(join(ROOT, "wrangler.toml"), "utf8"))[1];
  const mf = new Miniflare({
    modules: true,
    script: WORKER,
    compatibilityDate,
    durableObjects: { FLOOR: { className: "Floor", useSQLite: true } },
    durableObjectsPersist: stateDir,
    // As the control plane does: requests reach the Worker on a socket of its own.
    unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
    host: "127.0.0.1",
    port: 0,
    cf: false,
  });
  let runner;
  let exited;
  try {
    const url = (await mf.unsafeGetDirectURL()).origin;
    runner = spawn(process.execPath, [join(ROOT, "bench", "floor-runner.mjs"), `${url.replace("http", "ws")}/connect`, ...(helper ? ["--helper"] : [])], { stdio: ["ignore", "pipe", "inherit"] });
    exited = new Promise((resolve) => runner.on("exit", resolve));
    await new Promise((resolve) => createInterface({ input: runner.stdout }).once("line", resolve));
    const call = async (path) => {
      const started = performance.now();
      await (await fetch(url + path, { method: "POST" })).text();
      return performance.now() - started;
    };
    // A burst is one request per script, all at once, as `npm run bench` submits its scripts.
    const burst = async (n) => {
      const started = performance.now();
      await Promise.all(Array.from({ length: n }, () => call("/run")));
      return performance.now() - started;
    };
    return await measure({ dispatch: () => call("/run"), burst }, baseline);
  } finally {
    runner?.kill("SIGTERM");
    await exited;
    await mf.dispose();
    rmSync(stateDir, { recursive: true, force: true });
  }
}

/** Starts bench/lean-runner.mjs for `machineId`; resolves once it is connected. */
async function startLeanRunner(cp, machineId) {
  const registered = await cp.api("POST", `/api/v1/machines/${machineId}/runner-token`);
  const runner = spawn(process.execPath, [join(ROOT, "bench", "lean-runner.mjs"), `${cp.url.replace("http", "ws")}/api/v1/machines/${machineId}/runner`], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, TENDRIL_RUNNER_TOKEN: registered.body.runnerToken },
  });
  const exited = new Promise((resolve) => runner.on("exit", resolve));
  await new Promise((resolve) => createInterface({ input: runner.stdout }).once("line", resolve));
  return {
    async stop() {
      runner.kill("SIGTERM");
      await exited;
    },
  };
}

/** Tendril's control plane with a runner from `startRunner` (bench/lean-runner.mjs, or Tendril's own). */
async function tendril(baseline, startRunner) {
  const cp = await startControlPlane();
  const machineId = "floor";
  let runner;
  try {
    runner = await startRunner(cp, machineId);
    let count = 0;
    // As `npm run bench` measures them.
    const dispatch = () => dispatchOnce(cp, machineId);
    const burst = async (n) => {
      const tickets = Array.from({ length: n }, () => `b-${(count += 1)}`);
      const started = performance.now();
      await burstOfTrue(cp, machineId, tickets);
      return performance.now() - started;
    };
    return await measure({ dispatch, burst }, baseline);
  } finally {
    await runner?.stop();
    await cp.stop();
  }
}

const only = process.env.FLOOR_ONLY;
const baseline = startBaseline();
try {
  console.log(`Floor of the design (${runs} dispatches, ${burst} handed-off scripts), ${new Date().toISOString()}`);
  console.log("| figure | value | baseline | ratio |");
  console.log("|---|---|---|---|");
  if (!only || only === "node") print("design, Node spawns", await designFloor(baseline, false));
  if (!only || only === "sh") print("design, a waiting sh spawns", await designFloor(baseline, true));
  if (!only || only === "lean") print("Tendril's control plane, lean runner", await tendril(baseline, startLeanRunner));
  if (!only || only === "tendril") print("Tendril as shipped", await tendril(baseline, startRunner));
  if (only === "direct") print("Tendril, no wrapper", await tendril(baseline, (cp, id) => startRunner(cp, id, { "NOT-EXPORTABLE": "1" })));
} finally {
  await baseline.stop();
}
