// Starts the real local stack for the benchmarks: `tendril control-plane` (workerd) and runner processes started from
// the one-file runner (dist/tendril-runner.mjs, what a machine runs as a service), each in its own process group and
// stopped by PID. Loopback only.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const BIN = join(ROOT, "bin", "tendril.js");
/** The one-file runner `npm run bench` builds first (scripts/build.mjs), as `tendril runner install` installs it. */
export const RUNNER_FILE = join(ROOT, "dist", "tendril-runner.mjs");

/** Resolves once `check` returns a truthy value; throws after `timeoutMs`. */
export async function waitFor(check, timeoutMs = 30_000, intervalMs = 2) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

function startGroup(args, env = {}, nodeFlags = [], script = BIN) {
  const child = spawn(process.execPath, [...nodeFlags, script, ...args], {
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, CLOUDFLARE_CF_FETCH_ENABLED: "false", WRANGLER_SEND_METRICS: "false", ...env },
  });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (out += d));
  const exited = new Promise((resolve) => child.on("exit", resolve));
  return {
    pid: child.pid,
    output: () => out,
    async stop() {
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {}
      const done = await Promise.race([exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 5_000))]);
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {}
      if (!done) await exited;
    },
  };
}

/** Every pid in a process group. */
export function groupPids(pgid) {
  const pids = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[2]) === pgid) pids.push(Number(entry));
    } catch {}
  }
  return pids;
}

/** CPU time of a process in ms, as user and system time (Linux counts both in ticks of 10 ms). */
export function cpuTimes(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { user: Number(fields[11]) * 10, system: Number(fields[12]) * 10 };
  } catch {
    return { user: 0, system: 0 };
  }
}

/** CPU time (user + system) of a process, in ms. */
export function cpuMs(pid) {
  const { user, system } = cpuTimes(pid);
  return user + system;
}

/** CPU time every core of the machine spent busy (anything but idle and waiting for I/O) so far, in ms. */
export function machineBusyMs() {
  const [user, nice, system, , , irq, softirq, steal] = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  return (user + nice + system + irq + softirq + steal) * 10;
}

/** Processes (and threads) the machine started since boot: the `processes` line of /proc/stat counts every fork. */
export function forksSoFar() {
  return Number(/^processes (\d+)$/m.exec(readFileSync("/proc/stat", "utf8"))?.[1] ?? 0);
}

/** Resident memory of a process, in MB (VmRSS), or its peak (VmHWM). */
export function rssMb(pid, field = "VmRSS") {
  try {
    const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** Starts a control plane; returns its URL, an API helper and stop(). `env` is added to its environment. */
export async function startControlPlane(extraArgs = [], env = {}) {
  const token = "bench-server-token";
  const stateDir = mkdtempSync(join(tmpdir(), "tendril-bench-cp-"));
  const proc = startGroup(["control-plane", "--port", "0", "--server-token", token, "--state-dir", stateDir, ...extraArgs], env);
  const url = await waitFor(() => /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(proc.output())?.[1], 60_000, 20);
  const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  const api = async (method, path, body) => {
    const response = await fetch(url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  };
  return {
    url,
    token,
    api,
    pid: proc.pid,
    /** Everything it printed so far (with `TENDRIL_TRACE=1`, its stage timestamps). */
    output: proc.output,
    /** The workerd processes doing the work. */
    workerdPids: () => groupPids(proc.pid).filter((pid) => pid !== proc.pid),
    async stop() {
      await proc.stop();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** Whether `path` is the mount point of a tmpfs. */
function isTmpfs(path) {
  try {
    return readFileSync("/proc/mounts", "utf8")
      .split("\n")
      .some((line) => {
        const [, mountPoint, type] = line.split(" ");
        return mountPoint === path && type === "tmpfs";
      });
  } catch {
    return false;
  }
}

/**
 * Where the runners' runtime dirs go: as `tendril runner install` sets a runner up, each run's own files on a tmpfs
 * (systemd's /run there; /dev/shm here, where the benchmark needs no root), the workspaces in the work dir.
 * TENDRIL_BENCH_RUNTIME_ROOT names another folder, or `off` keeps the run folders in the work dir.
 */
export const RUNTIME_ROOT = (() => {
  const given = process.env.TENDRIL_BENCH_RUNTIME_ROOT;
  if (given === "off") return undefined;
  if (given) return given;
  return isTmpfs("/dev/shm") ? "/dev/shm" : undefined;
})();

/** Registers `machineId` and starts a runner process for it from the one-file runner; resolves once it is connected. */
export async function startRunner(cp, machineId, env = {}, nodeFlags = []) {
  const registered = await cp.api("POST", `/api/v1/machines/${machineId}/runner-token`);
  // TENDRIL_BENCH_RUNNER_ROOT puts the runners' work dirs elsewhere than the temporary folder, to compare filesystems.
  const workDir = mkdtempSync(join(process.env.TENDRIL_BENCH_RUNNER_ROOT || tmpdir(), "tendril-bench-runner-"));
  const runtimeDir = RUNTIME_ROOT === undefined ? undefined : mkdtempSync(join(RUNTIME_ROOT, "tendril-bench-runtime-"));
  if (!existsSync(RUNNER_FILE)) throw new Error(`${RUNNER_FILE} is missing: build it first (npm run build)`);
  const runtime = runtimeDir === undefined ? [] : ["--runtime-dir", runtimeDir];
  // TENDRIL_BENCH_RUNNER_NODE_FLAGS (space-separated) adds Node.js flags to every runner, for experiments.
  const extraFlags = (process.env.TENDRIL_BENCH_RUNNER_NODE_FLAGS ?? "").split(" ").filter(Boolean);
  const proc = startGroup(["--url", cp.url, "--machine", machineId, "--work-dir", workDir, ...runtime], {
    TENDRIL_RUNNER_TOKEN: registered.body.runnerToken,
    ...env,
  }, [...nodeFlags, ...extraFlags], RUNNER_FILE);
  await waitFor(async () => (await cp.api("GET", `/api/v1/machines/${machineId}`)).body.runner.connected, 30_000, 20);
  const runnerPid = () => groupPids(proc.pid).find((pid) => pid === proc.pid) ?? proc.pid;
  return {
    pid: proc.pid,
    workDir,
    runnerPid,
    async stop() {
      await proc.stop();
      // A runner that stops leaves its running scripts to the next one (their wrappers wait); there is none here.
      killWrappersOf(workDir);
      rmSync(workDir, { recursive: true, force: true });
      if (runtimeDir !== undefined) rmSync(runtimeDir, { recursive: true, force: true });
    },
  };
}

/** SIGKILLs the process group of every script wrapper (`/bin/sh -s tendril-wrapper <workDir> …`) of `workDir`. */
export function killWrappersOf(workDir) {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if (argv[0] === "/bin/sh" && argv[1] === "-s" && argv[2] === "tendril-wrapper" && argv[3] === workDir) process.kill(-Number(entry), "SIGKILL");
    } catch {}
  }
}

/** Percentile of a list of numbers (p in 0–100). */
export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index];
}

/**
 * Starts the baseline process (bench/baseline.mjs); `spawnTrue(n)` has it spawn `bash -c true` n times one after
 * another and resolves with each one's time in ms.
 */
export function startBaseline() {
  const child = spawn(process.execPath, [join(ROOT, "bench", "baseline.mjs")], { stdio: ["pipe", "pipe", "inherit"] });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const answers = [];
  createInterface({ input: child.stdout }).on("line", (line) => answers.shift()?.(JSON.parse(line)));
  return {
    pid: child.pid,
    spawnTrue(count) {
      return new Promise((resolve) => {
        answers.push(resolve);
        child.stdin.write(`${count}\n`);
      });
    },
    async stop() {
      child.stdin.end();
      const done = await Promise.race([exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 5_000))]);
      if (!done) {
        child.kill("SIGKILL");
        await exited;
      }
    },
  };
}

/** Runs `bash -c <script>` directly from Node and resolves when it exits. */
export function spawnDirect(script, stdio = "ignore") {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", script], { stdio });
    child.on("error", reject);
    child.on("exit", resolve);
  });
}
