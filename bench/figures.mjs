// The benchmark figures. Each starts the real stack it needs (control plane on workerd, real runner
// processes), measures the figure and its baseline in the same run, stops everything, and returns rows.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dispatchBreakdown, handoffBreakdown, readTraces } from "./breakdown.mjs";
import { cpuMs, cpuTimes, forksSoFar, machineBusyMs, percentile, ROOT, rssMb, spawnDirect, startBaseline, startControlPlane, startRunner, waitFor } from "./stack.mjs";

/** One row of the table; `extra` may add `fixedCost` (ms above the baseline) and `breakdown` (per-stage ms). */
function row(figure, value, unit, baseline, target, met, note = "", extra = {}) {
  const ratio = typeof baseline === "number" && baseline > 0 && typeof value === "number" ? value / baseline : null;
  return { figure, value, unit, baseline, ratio, target, met, note, ...extra };
}

/** Wall-clock time in ms with sub-ms precision, comparable with bash's $EPOCHREALTIME. */
function wallMs() {
  return performance.timeOrigin + performance.now();
}

async function withStack(fn, { machines = ["bench"], runnerEnv = {}, cpArgs = [], cpEnv = {} } = {}) {
  const cp = await startControlPlane(cpArgs, cpEnv);
  const runners = [];
  try {
    for (const machineId of machines) runners.push(await startRunner(cp, machineId, runnerEnv));
    return await fn(cp, runners);
  } finally {
    for (const runner of runners) await runner.stop();
    await cp.stop();
  }
}

/**
 * Runs `fn(cp, runners, baseline, traceFile)` on a stack that records stage timestamps (bench/breakdown.mjs), with the
 * baseline process (bench/baseline.mjs) started beside it.
 */
async function withTracedStack(fn) {
  const scratch = mkdtempSync(join(tmpdir(), "tendril-bench-trace-"));
  const traceFile = join(scratch, "runner.trace");
  writeFileSync(traceFile, "");
  const baseline = startBaseline();
  try {
    return await withStack((cp, runners) => fn(cp, runners, baseline, traceFile), {
      cpEnv: { TENDRIL_TRACE: "1" },
      runnerEnv: { TENDRIL_TRACE_FILE: traceFile },
    });
  } finally {
    await baseline.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Start `true` with waitMs and wait for the complete answer; returns the latency in ms. */
export async function dispatchOnce(cp, machineId, extra = {}) {
  const started = performance.now();
  const response = await cp.api("POST", `/api/v1/machines/${machineId}/scripts`, { scriptBody: "true", waitMs: 30_000, ...extra });
  const elapsed = performance.now() - started;
  if (response.body?.state !== "complete" || response.body.exitCode !== 0) throw new Error(`dispatch failed: ${JSON.stringify(response.body)}`);
  await cp.api("DELETE", `/api/v1/machines/${machineId}/scripts/${response.body.ticket}`);
  return elapsed;
}

/**
 * Dispatch latency, interleaved with the baseline (one `bash -c true` spawned by the small baseline process) so that
 * both see the same machine load; each dispatch's stages are traced.
 */
export async function dispatch(sizes) {
  return withTracedStack(async (cp, _runners, baseline, traceFile) => {
    for (let i = 0; i < 10; i += 1) await dispatchOnce(cp, "bench"); // warm-up
    const tendril = [];
    const direct = [];
    const clients = new Map();
    for (let i = 0; i < sizes.dispatchRuns; i += 1) {
      direct.push(...(await baseline.spawnTrue(1)));
      const ticket = `d-${i}`;
      const sent = wallMs();
      tendril.push(await dispatchOnce(cp, "bench", { ticket }));
      clients.set(ticket, { sent, received: sent + tendril.at(-1) });
    }
    const p50 = percentile(tendril, 50);
    const p95 = percentile(tendril, 95);
    const b50 = percentile(direct, 50);
    const b95 = percentile(direct, 95);
    const breakdown = dispatchBreakdown(readTraces(cp.output(), traceFile), clients);
    const mean = (values) => values.reduce((sum, v) => sum + v, 0) / values.length;
    const note = `stages: mean of ${breakdown.runs} traced runs, ${mean(tendril).toFixed(2)} ms in all`;
    return [
      row(`dispatch p50 (${sizes.dispatchRuns} runs)`, p50, "ms", b50, "≤ 2× baseline", p50 <= 2 * b50, "", { fixedCost: p50 - b50, breakdown: breakdown.stages, breakdownNote: note }),
      row(`dispatch p95 (${sizes.dispatchRuns} runs)`, p95, "ms", b95, "≤ 3× baseline", p95 <= 3 * b95, "", { fixedCost: p95 - b95 }),
    ];
  });
}

/**
 * Starts a `true` script for each of `tickets` on `machineId`, all at once, then the last once the others are queued
 * (the mutex is FIFO, so it completes last), and resolves once its live stream ends; polling the machine view instead
 * would load the control plane while it works.
 */
export async function burstOfTrue(cp, machineId, tickets) {
  const submit = (ticket) => cp.api("POST", `/api/v1/machines/${machineId}/scripts`, { ticket, scriptBody: "true" });
  const submitted = await Promise.all(tickets.slice(0, -1).map(submit));
  submitted.push(await submit(tickets.at(-1)));
  if (submitted.some((r) => r.status !== 201)) throw new Error("a handoff start failed");
  await untilStreamEnds(cp, machineId, tickets.at(-1));
}

/** Reads a script's live stream (`GET …/stream`) until the control plane ends it, which it does once the script is complete. */
async function untilStreamEnds(cp, machineId, ticket) {
  const response = await fetch(`${cp.url}/api/v1/machines/${machineId}/scripts/${ticket}/stream`, { headers: { authorization: `Bearer ${cp.token}` } });
  if (response.status !== 200) throw new Error(`stream of ${ticket}: ${response.status}`);
  const text = await response.text();
  if (!text.includes("event: status")) throw new Error(`the stream of ${ticket} ended without its final status`);
}

/**
 * Rate of `full` scripts through one mutex, submitted at once, against the baseline process spawning `bash -c true`
 * one after another. In rounds: the baseline's spawns, then a burst of scripts, so that both see the same drift of the
 * machine's speed; each script's stages are traced.
 */
export async function handoff(sizes) {
  const n = sizes.handoffScripts;
  const rounds = 4;
  return withTracedStack(async (cp, [runner], baseline, traceFile) => {
    for (let i = 0; i < 3; i += 1) await dispatchOnce(cp, "bench"); // warm-up
    let directMs = 0;
    let tendrilMs = 0;
    const granted = [];
    // CPU time during Tendril's rounds only: the runner's, the control plane's, and the whole machine's.
    const cpu = { runnerUser: 0, runnerSystem: 0, controlPlane: 0, machine: 0, directMachine: 0 };
    // Processes started during each side's rounds: every one costs a fork, an exec, an exit and a wait.
    const forks = { tendril: 0, direct: 0 };
    const workerd = cp.workerdPids();
    const sample = () => ({ runner: cpuTimes(runner.runnerPid()), controlPlane: workerd.reduce((sum, pid) => sum + cpuMs(pid), 0), machine: machineBusyMs() });
    for (let round = 0; round < rounds; round += 1) {
      const count = Math.ceil(n / rounds);
      const directFrom = machineBusyMs();
      const directForks = forksSoFar();
      directMs += (await baseline.spawnTrue(count)).reduce((sum, ms) => sum + ms, 0);
      cpu.directMachine += machineBusyMs() - directFrom;
      forks.direct += forksSoFar() - directForks;
      const tickets = Array.from({ length: count }, (_, i) => `h-${round}-${i}`);
      const from = sample();
      const tendrilForks = forksSoFar();
      const started = performance.now();
      await burstOfTrue(cp, "bench", tickets);
      tendrilMs += performance.now() - started;
      forks.tendril += forksSoFar() - tendrilForks;
      const to = sample();
      cpu.runnerUser += to.runner.user - from.runner.user;
      cpu.runnerSystem += to.runner.system - from.runner.system;
      cpu.controlPlane += to.controlPlane - from.controlPlane;
      cpu.machine += to.machine - from.machine;
      granted.push(tickets);
    }
    const total = granted.flat().length;
    const rate = total / (tendrilMs / 1000);
    const directRate = total / (directMs / 1000);
    if ((await cp.api("GET", "/api/v1/machines/bench")).body.mutexes.length !== 0) throw new Error("scripts still hold or wait for the mutex");
    const last = await cp.api("GET", `/api/v1/machines/bench/scripts/${granted.at(-1).at(-1)}`);
    if (last.body.exitCode !== 0) throw new Error("the last handoff script did not succeed");
    const traces = readTraces(cp.output(), traceFile);
    // Within a round the scripts follow one another, in the order the runner was given them; the first of each round
    // waited for nothing.
    const inOrder = (tickets) => [...tickets].sort((a, b) => (traces.get(a)?.dispatch ?? 0) - (traces.get(b)?.dispatch ?? 0));
    const stages = granted.map((tickets) => handoffBreakdown(traces, inOrder(tickets)));
    const runs = stages.reduce((sum, b) => sum + b.runs, 0);
    const breakdown = stages[0].stages.map(({ stage }, i) => ({ stage, ms: stages.reduce((sum, b) => sum + b.stages[i].ms * b.runs, 0) / runs }));
    const perScript = 1000 / rate;
    const note = `stages: mean of ${runs} traced handoffs, ${perScript.toFixed(2)} ms per script in all`;
    const others = cpu.machine - cpu.runnerUser - cpu.runnerSystem - cpu.controlPlane;
    const cpuBreakdown = [
      { part: "runner: its own code (user)", ms: cpu.runnerUser / total },
      { part: "runner: the kernel on its behalf (system)", ms: cpu.runnerSystem / total },
      { part: "control plane (workerd)", ms: cpu.controlPlane / total },
      { part: "everything else: wrappers, copiers, scripts, the client, the kernel's own", ms: others / total },
      { part: "in all, both cores", ms: cpu.machine / total },
      { part: "baseline: in all per `bash -c true`, both cores", ms: cpu.directMachine / total },
    ];
    const cpuNote =
      `CPU ms per script, ${(cpu.machine / tendrilMs / 2 * 100).toFixed(0)}% of both cores busy during the handoffs; Linux counts CPU time in 10 ms ticks; ` +
      `processes started per script: ${(forks.tendril / total).toFixed(1)}, the baseline's ${(forks.direct / total).toFixed(1)}`;
    return [
      row(`mutex handoff (${total} full scripts)`, rate, "scripts/s", directRate, "≥ 0.5× baseline rate", rate >= 0.5 * directRate, "", {
        fixedCost: perScript - 1000 / directRate,
        breakdown,
        breakdownNote: note,
        cpuBreakdown,
        cpuNote,
      }),
    ];
  });
}

/** From the abandon request to the moment the next waiter's process runs. */
export async function abandon(sizes) {
  const scratch = mkdtempSync(join(tmpdir(), "tendril-bench-abandon-"));
  try {
    return await withStack(
      async (cp) => {
        // Warm-up: the runner's first scripts load its process code and start its warm shells.
        for (let i = 0; i < 3; i += 1) await dispatchOnce(cp, "bench");
        const latencies = [];
        for (let i = 0; i < sizes.abandonRuns; i += 1) {
          const pidFile = join(scratch, `a${i}.pid`);
          const startFile = join(scratch, `b${i}.t`);
          await cp.api("POST", "/api/v1/machines/bench/scripts", { ticket: `a${i}`, scriptBody: `echo $$ > '${pidFile}'; exec sleep 600` });
          await cp.api("POST", "/api/v1/machines/bench/scripts", { ticket: `b${i}`, scriptBody: `echo $EPOCHREALTIME > '${startFile}'` });
          const pid = await waitFor(() => existsSync(pidFile) && Number(readFileSync(pidFile, "utf8")), 30_000, 2);
          const requested = wallMs();
          await cp.api("POST", `/api/v1/machines/bench/scripts/a${i}/abandon`);
          const began = await waitFor(() => existsSync(startFile) && Number(readFileSync(startFile, "utf8").trim()) * 1000, 30_000, 1);
          latencies.push(began - requested);
          process.kill(pid, "SIGKILL");
        }
        const p50 = percentile(latencies, 50);
        return [row(`abandon → next waiter started, p50 of ${sizes.abandonRuns}`, p50, "ms", null, "≤ 10 ms", p50 <= 10, `p95 ${percentile(latencies, 95).toFixed(1)} ms`)];
      },
      { runnerEnv: { TENDRIL_UNSAFE_DISABLE_PROCESS_KILL: "1" } },
    );
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** A script writing N MB of 100-byte lines, end to end, with the runner's memory sampled throughout. */
export async function output(sizes) {
  const lines = sizes.outputMb * 10_000;
  const script = `yes "$(printf '%099d' 0)" | head -n ${lines}`;
  let started = performance.now();
  await spawnDirect(script);
  const directMbps = sizes.outputMb / ((performance.now() - started) / 1000);
  return withStack(async (cp, [runner]) => {
    let peak = 0;
    const sampler = setInterval(() => (peak = Math.max(peak, rssMb(runner.runnerPid()))), 20);
    try {
      // Warm-up, as for dispatch: the runner's first script loads its process code.
      for (let i = 0; i < 3; i += 1) await dispatchOnce(cp, "bench");
      started = performance.now();
      const first = await cp.api("POST", "/api/v1/machines/bench/scripts", { ticket: "out", scriptBody: script, waitMs: 30_000 });
      if (first.status !== 201) throw new Error(`output start failed: ${JSON.stringify(first.body)}`);
      await waitFor(async () => (await cp.api("GET", "/api/v1/machines/bench/scripts/out?limit=1")).body.state === "complete", 600_000, 10);
      const mbps = sizes.outputMb / ((performance.now() - started) / 1000);
      const tail = await cp.api("GET", `/api/v1/machines/bench/scripts/out?logSequence=${lines - 1}`);
      const stored = tail.body.logs.length === 1 && tail.body.logs[0].sequence === lines - 1 && tail.body.nextLogSequence === lines && tail.body.exitCode === 0;
      if (!stored) throw new Error(`not every line was stored: ${JSON.stringify({ ...tail.body, logs: tail.body.logs.length })}`);
      peak = Math.max(peak, rssMb(runner.runnerPid(), "VmHWM"));
      return [
        row(`output: ${sizes.outputMb} MB of 100-byte lines, end to end`, mbps, "MB/s", directMbps, "≥ 100 MB/s", mbps >= 100),
        row("output: runner peak RSS", peak, "MB", null, "≤ 120 MB", peak <= 120),
      ];
    } finally {
      clearInterval(sampler);
    }
  });
}

/** Dispatch on a free mutex while many scripts wait on another mutex of the same machine. */
export async function queueDepth(sizes) {
  const scratch = mkdtempSync(join(tmpdir(), "tendril-bench-queue-"));
  const release = join(scratch, "release");
  try {
    return await withStack(async (cp) => {
      const measure = async (depth, prefix) => {
        await cp.api("POST", "/api/v1/machines/bench/scripts", {
          ticket: `${prefix}-holder`,
          mutexName: `blocked-${prefix}`,
          scriptBody: `while [ ! -f '${release}' ]; do sleep 0.05; done`,
        });
        for (let i = 0; i < depth; i += 100) {
          await Promise.all(
            Array.from({ length: Math.min(100, depth - i) }, (_, j) =>
              cp.api("POST", "/api/v1/machines/bench/scripts", { ticket: `${prefix}-w${i + j}`, mutexName: `blocked-${prefix}`, scriptBody: "true" }),
            ),
          );
        }
        for (let i = 0; i < 5; i += 1) await dispatchOnce(cp, "bench", { mutexName: "free" });
        const latencies = [];
        for (let i = 0; i < sizes.queueRuns; i += 1) latencies.push(await dispatchOnce(cp, "bench", { mutexName: "free" }));
        return percentile(latencies, 50);
      };
      const shallow = await measure(sizes.queueShallow, "shallow");
      const deep = await measure(sizes.queueDeep, "deep");
      writeFileSync(release, "");
      return [row(`queue depth: dispatch p50 with ${sizes.queueDeep} waiting elsewhere`, deep, "ms", shallow, `≤ 1.5× (baseline: ${sizes.queueShallow} waiting)`, deep <= 1.5 * shallow)];
    });
  } finally {
    writeFileSync(release, "");
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Many machines connected at once through the runner's own connection code in one process. */
export async function fleet(sizes) {
  const cp = await startControlPlane();
  const tokens = [];
  let fleetProcess;
  try {
    const registered = await registerMachines(cp, Array.from({ length: sizes.fleet }, (_, i) => `fleet-${i}`));
    for (const { machineId, runnerToken } of registered) tokens.push({ machineId, token: runnerToken });
    const dispatchP50 = async (machineId) => {
      for (let i = 0; i < 5; i += 1) await dispatchOnce(cp, machineId);
      const latencies = [];
      for (let i = 0; i < sizes.fleetDispatchRuns; i += 1) latencies.push(await dispatchOnce(cp, machineId));
      return percentile(latencies, 50);
    };
    const connect = async (count) => {
      const workDir = mkdtempSync(join(tmpdir(), "tendril-bench-fleet-"));
      const child = spawn(process.execPath, [join(ROOT, "bench", "fleet-runners.mjs")], { stdio: ["pipe", "pipe", "inherit"], detached: true });
      let out = "";
      child.stdout.on("data", (d) => (out += d));
      const started = performance.now();
      child.stdin.end(JSON.stringify({ url: cp.url, workDir, machines: tokens.slice(0, count) }));
      await waitFor(() => /all connected/.test(out), 120_000, 10);
      const seconds = (performance.now() - started) / 1000;
      return {
        seconds,
        async stop() {
          try {
            process.kill(-child.pid, "SIGTERM");
          } catch {}
          await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.on("exit", resolve)));
          rmSync(workDir, { recursive: true, force: true });
        },
      };
    };
    fleetProcess = await connect(sizes.fleetSmall);
    const small = await dispatchP50("fleet-0");
    await fleetProcess.stop();
    fleetProcess = await connect(sizes.fleet);
    const storm = fleetProcess.seconds;
    const large = await dispatchP50("fleet-0");
    const workerd = cp.workerdPids();
    const cpuBefore = workerd.reduce((sum, pid) => sum + cpuMs(pid), 0);
    const idleFrom = performance.now();
    await waitFor(() => performance.now() - idleFrom >= sizes.idleSeconds * 1000, sizes.idleSeconds * 1000 + 5_000, 100);
    const cpuPercent = ((workerd.reduce((sum, pid) => sum + cpuMs(pid), 0) - cpuBefore) / (performance.now() - idleFrom)) * 100;
    return [
      row(`fleet: connect storm of ${sizes.fleet} runners`, storm, "s", null, "≤ 15 s", storm <= 15),
      row(`fleet: dispatch p50 with ${sizes.fleet} connected`, large, "ms", small, `≤ 1.5× (baseline: ${sizes.fleetSmall} connected)`, large <= 1.5 * small),
      row(`fleet: control plane idle CPU with ${sizes.fleet} connected`, cpuPercent, "% of a core", null, "≤ 5%", cpuPercent <= 5),
    ];
  } finally {
    await fleetProcess?.stop();
    await cp.stop();
  }
}

/** The runner's memory when idle and with many scripts running at once. */
export async function runnerMemory(sizes) {
  const scratch = mkdtempSync(join(tmpdir(), "tendril-bench-memory-"));
  const release = join(scratch, "release");
  try {
    return await withStack(async (cp, [runner]) => {
      // Idle is what a runner holds while it waits for hours: read once V8 has given back what starting took (its
      // memory reducer runs some seconds after the last allocation burst), and also 2 s after it connected.
      const settle = performance.now();
      await waitFor(() => performance.now() - settle > 2_000, 5_000, 100);
      const justStarted = rssMb(runner.runnerPid());
      await waitFor(() => performance.now() - settle > sizes.idleRssSeconds * 1000, sizes.idleRssSeconds * 1000 + 5_000, 100);
      const idle = rssMb(runner.runnerPid());
      await Promise.all(
        Array.from({ length: sizes.concurrentScripts }, (_, i) =>
          cp.api("POST", "/api/v1/machines/bench/scripts", {
            ticket: `s${i}`,
            isolation: "none",
            scriptBody: `touch '${join(scratch, `s${i}`)}'; while [ ! -f '${release}' ]; do sleep 0.2; done`,
          }),
        ),
      );
      await waitFor(() => Array.from({ length: sizes.concurrentScripts }, (_, i) => existsSync(join(scratch, `s${i}`))).every(Boolean), 120_000, 20);
      const busy = rssMb(runner.runnerPid());
      writeFileSync(release, "");
      await waitFor(async () => (await cp.api("GET", "/api/v1/machines/bench")).body.mutexes.length === 0, 60_000, 50);
      return [
        row(`runner RSS, idle (${sizes.idleRssSeconds} s after it connected)`, idle, "MB", null, "≤ 60 MB", idle <= 60, `${justStarted.toFixed(2)} MB 2 s after`),
        row(`runner RSS, ${sizes.concurrentScripts} concurrent sleep scripts`, busy, "MB", null, "≤ 150 MB", busy <= 150),
      ];
    });
  } finally {
    writeFileSync(release, "");
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Registrations tried again after a 503 in this run (printed with the fleet list's rows). */
let registrationRetries = 0;

/** Registers the machines `ids`, 50 at a time; resolves with their answers' bodies (machine id and runner token). */
async function registerMachines(cp, ids) {
  const bodies = [];
  for (let i = 0; i < ids.length; i += 50) {
    const batch = await Promise.all(ids.slice(i, i + 50).map((id) => register(cp, id)));
    const failed = batch.find((r) => r.status !== 201);
    if (failed) throw new Error(`a registration failed: HTTP ${failed.status} ${JSON.stringify(failed.body)}`);
    bodies.push(...batch.map((r) => r.body));
  }
  return bodies;
}

/**
 * Registers one machine, trying again on 503 as the API asks: locally, thousands of machine objects made within
 * seconds share one workerd process, whose SQLite then refuses memory to new ones (`storage_unavailable`) until
 * idle objects are evicted.
 */
async function register(cp, machineId) {
  const deadline = performance.now() + 60_000;
  for (let attempt = 1; ; attempt += 1) {
    const response = await cp.api("POST", `/api/v1/machines/${machineId}/runner-token`);
    if (response.status !== 503 || performance.now() > deadline) return response;
    registrationRetries += 1;
    await new Promise((resolve) => setTimeout(resolve, Math.min(2_000, 100 * attempt)));
  }
}

/** p50 of `fn`'s latency over `runs` runs, in ms. */
async function latencyP50(runs, fn) {
  const latencies = [];
  for (let i = 0; i < runs; i += 1) {
    const started = performance.now();
    await fn();
    latencies.push(performance.now() - started);
  }
  return percentile(latencies, 50);
}

/**
 * The fleet list with many registered machines: the first page (answered from the registry's summary rows, one
 * query) against `GET /healthz` in the same run, interleaved; and a dispatch on one of those machines, whose answer
 * does not wait for its summary to reach the registry (the summary's lag is measured apart).
 */
export async function fleetList(sizes) {
  return withStack(
    async (cp) => {
      for (let i = 0; i < 10; i += 1) await dispatchOnce(cp, "bench"); // warm-up
      const before = await latencyP50(sizes.fleetListRuns, () => dispatchOnce(cp, "bench"));
      const retriesBefore = registrationRetries;
      await registerMachines(cp, Array.from({ length: sizes.fleetList }, (_, i) => `fleet-${String(i).padStart(6, "0")}`));
      const retried = registrationRetries - retriesBefore;
      const list = async () => {
        const page = await cp.api("GET", "/api/v1/machines?limit=100");
        if (page.status !== 200 || page.body.machines.length !== Math.min(100, sizes.fleetList + 1)) throw new Error(`fleet list: ${page.status}`);
        if (page.body.counts.total !== sizes.fleetList + 1) throw new Error(`fleet list counts ${JSON.stringify(page.body.counts)}`);
      };
      const health = async () => {
        const response = await fetch(`${cp.url}/healthz`);
        await response.text();
      };
      for (let i = 0; i < 10; i += 1) {
        await list();
        await health();
      }
      const listed = [];
      const healthz = [];
      for (let i = 0; i < sizes.fleetListRuns; i += 1) {
        let started = performance.now();
        await health();
        healthz.push(performance.now() - started);
        started = performance.now();
        await list();
        listed.push(performance.now() - started);
      }
      const after = await latencyP50(sizes.fleetListRuns, () => dispatchOnce(cp, "bench"));
      // How long after a dispatch's answer its machine's summary shows the script gone from the holders.
      const lags = [];
      for (let i = 0; i < Math.min(20, sizes.fleetListRuns); i += 1) {
        const holders = async () => (await cp.api("GET", "/api/v1/machines?prefix=bench&limit=1")).body.machines[0]?.holders.length;
        const started = await cp.api("POST", "/api/v1/machines/bench/scripts", { scriptBody: "sleep 0.2" });
        await waitFor(async () => (await holders()) === 1, 10_000, 2);
        const answered = await cp.api("GET", `/api/v1/machines/bench/scripts/${started.body.ticket}?limit=1`);
        if (answered.body.state === "complete") throw new Error("summary lag: the script completed before its hold was seen");
        const completed = await cp.api("POST", "/api/v1/machines/bench/scripts", { ticket: started.body.ticket, scriptBody: "sleep 0.2", waitMs: 10_000 });
        if (completed.body.state !== "complete") throw new Error("summary lag: the script did not complete");
        const completedAt = performance.now();
        await waitFor(async () => (await holders()) === 0, 10_000, 2);
        lags.push(performance.now() - completedAt);
      }
      const l50 = percentile(listed, 50);
      const h50 = percentile(healthz, 50);
      const lag = percentile(lags, 50);
      return [
        row(`fleet list: first page p50 with ${sizes.fleetList} machines`, l50, "ms", h50, "≤ 2× GET /healthz p50", l50 <= 2 * h50, `p95 ${percentile(listed, 95).toFixed(1)} ms; ${retried} registrations answered 503 and were tried again`),
        row(`fleet list: dispatch p50 with ${sizes.fleetList} registered`, after, "ms", before, "≤ 1.5× (baseline: 1 registered)", after <= 1.5 * before),
        row("fleet list: summary reaches the registry, p50 after completion", lag, "ms", null, "≤ 1,000 ms, after the answer", lag <= 1_000, "the dispatch's answer does not wait for it"),
      ];
    },
    { machines: ["bench"] },
  );
}
