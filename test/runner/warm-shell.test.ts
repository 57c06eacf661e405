/**
 * Warm shells: a script that execs into a shell started ahead of time must be the very process a cold start would
 * have made (output, arguments, environment, folder, stdin, process group, marker, cgroup, kill, release); the pool
 * refills after use, takes the cold path whenever a shell could not do exactly that, and leaves nothing behind.
 * Real processes; every test stops what it started, by pid.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { build } from "esbuild";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ScriptPayload } from "../../shared/api.js";
import { CgroupTree, SCRIPT_MARKER_VARIABLE, environHasEntry, ownCgroupPath, parseProcessStat } from "../../runner/containment.js";
import type { ProcessManagerOptions, ScriptProcess, SpawnResult } from "../../runner/process-manager.js";
import { WarmShellPool, type WarmShellOptions } from "../../runner/warm-shell.js";
import { RunFolders, type Run } from "../../runner/run-folder.js";
import { ROOT, isAlive, killGroup, killPid, pidsInGroup, pidsInGroupNamed, removeDir, tempDir } from "../helpers/processes.js";
import { waitFor, waitForBlockedWriter, within } from "./fake-control-plane.js";
import { spawnInRun } from "./spawn.js";

let workDir: string;
let runs: RunFolders;
const pools: WarmShellPool[] = [];
/** Process groups (and lone pids) a test started; each test also stops its own, this is the safety net. */
const startedGroups = new Set<number>();

beforeEach(async () => {
  workDir = await tempDir("warm");
  runs = new RunFolders(workDir);
  runs.prepare();
});

afterEach(async () => {
  await Promise.all(pools.splice(0).map((pool) => pool.dispose()));
  for (const pid of startedGroups) {
    killGroup(pid);
    killPid(pid);
  }
  startedGroups.clear();
  await removeDir(workDir);
});

const BASE: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, TENDRIL_RUNNER_TOKEN: "secret-token", KEEP_ME: "kept" };

const OPTIONS: ProcessManagerOptions = { pipeDrainMs: 300, disableKill: false, baseEnvironment: BASE };

/** Usable cgroups on this machine, or the reason there are none. */
const cgroups = CgroupTree.detect(() => undefined);
const cgroupsUsable = typeof cgroups !== "string";
// The tree is this file's: what it made and is empty by now goes with the file (scripts' cgroups, this process's folder).
afterAll(() => {
  if (typeof cgroups !== "string") cgroups.removeEmpty();
});
const MODES: Array<[string, CgroupTree | undefined]> = [["without cgroups", undefined]];
if (typeof cgroups !== "string") MODES.push(["with cgroups", cgroups]);

function payload(scriptBody: string, extra: Partial<ScriptPayload> = {}): ScriptPayload {
  return { scriptBody, shell: "bash", arguments: [], environment: {}, files: [], ...extra };
}

interface Started {
  result: SpawnResult;
  run: Run;
  output: { stdout: Buffer[]; stderr: Buffer[] };
}

/** Writes the workspace and spawns the script, collecting its output. */
async function start(ticket: string, script: ScriptPayload, options: ProcessManagerOptions, cwd?: string): Promise<Started> {
  const output = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  const { result, run } = await spawnInRun(runs, ticket, script, options, (stream, chunk) => output[stream].push(chunk), cwd);
  if (result.ok) startedGroups.add(result.process.pid);
  return { result, run, output };
}

function processOf(started: Started): ScriptProcess {
  if (!started.result.ok) throw new Error(`spawn failed: ${started.result.outcome.message}`);
  return started.result.process;
}

const text = (chunks: Buffer[]): string => Buffer.concat(chunks).toString("utf8");

/** Waits for a started script's end; returns its outcome, its output and the process. */
async function ended(started: Started) {
  const child = processOf(started);
  const outcome = await within(child.wait(), "the outcome");
  // As the runner does once it holds the whole output: the wrapper may exit.
  child.settle();
  return { outcome, stdout: text(started.output.stdout), stderr: text(started.output.stderr), bytes: Buffer.concat(started.output.stdout), child, run: started.run };
}

/** Runs a script to its end, in whichever way the pool (if any) starts it. */
async function run(ticket: string, script: ScriptPayload, options: ProcessManagerOptions) {
  return ended(await start(ticket, script, options));
}

/** A pool whose shells wait: a first script ran cold, which armed it. */
async function armedPool(poolOptions: WarmShellOptions = {}, extra: Partial<ProcessManagerOptions> = {}) {
  // One shell unless a test asks for more: each test knows which shell its script must find.
  const size = poolOptions.size ?? 1;
  const pool = new WarmShellPool({ ...poolOptions, size });
  pools.push(pool);
  const options: ProcessManagerOptions = { ...OPTIONS, ...extra, warmShells: pool };
  await run("arm", payload("true"), options);
  await waitFor(() => pool.idlePids.length === size, `${size} waiting shell(s)`);
  return { pool, options };
}

/**
 * A pool of one whose first refill stays starting until told: every wrapper makes its FIFOs with mkfifo, found on the
 * PATH, and this one records its caller (the wrapper) and holds the second call (the refill's shell) until `letGo`.
 * The first script (cold) has run when this returns.
 */
async function poolWithSlowRefill(startingWaitMs: number) {
  const bin = join(workDir, "bin");
  const calls = join(workDir, "mkfifo-calls");
  const go = join(workDir, "mkfifo-go");
  const realMkfifo = ["/usr/bin/mkfifo", "/bin/mkfifo"].find(existsSync)!;
  mkdirSync(bin);
  writeFileSync(
    join(bin, "mkfifo"),
    `#!/bin/sh\necho "$PPID" >>'${calls}'\nif [ "$(wc -l <'${calls}')" -eq 2 ]; then while [ ! -e '${go}' ]; do sleep 0.01; done; fi\nexec '${realMkfifo}' "$@"\n`,
    { mode: 0o755 },
  );
  const pool = new WarmShellPool({ size: 1, startingWaitMs });
  pools.push(pool);
  const options: ProcessManagerOptions = { ...OPTIONS, baseEnvironment: { ...BASE, PATH: `${bin}:${BASE.PATH}` }, warmShells: pool };
  await run("arm", payload("true"), options);
  return {
    pool,
    options,
    /** The wrappers that ran mkfifo, in order. */
    callers: (): number[] => (existsSync(calls) ? readFileSync(calls, "utf8").trim().split("\n").map(Number) : []),
    letGo: () => writeFileSync(go, ""),
  };
}

/** Starts a script that must run in the shell that waits now. */
async function startWarm(ticket: string, script: ScriptPayload, pool: WarmShellPool, options: ProcessManagerOptions): Promise<Started> {
  const [waiting] = pool.idlePids;
  expect(waiting).toBeDefined();
  const started = await start(ticket, script, options);
  expect(processOf(started).pid).toBe(waiting);
  return started;
}

/** Runs a script in the shell that waits now, to its end. */
async function runWarm(ticket: string, script: ScriptPayload, pool: WarmShellPool, options: ProcessManagerOptions) {
  return ended(await startWarm(ticket, script, pool, options));
}

/** A string with every character of one and two UTF-8 bytes but NUL, then quotes, `$`, backslashes, newlines, emoji. */
function awkwardText(): string {
  let value = "";
  for (let code = 1; code < 0x800; code++) value += String.fromCodePoint(code);
  return `${value}€😀\u{10FFFF}'"$HOME\`id\`\\\\n\n'' \\'end\n`;
}

describe("a script in a warm shell", () => {
  it("reports its stdout, stderr and exit code", async () => {
    const { pool, options } = await armedPool();
    const result = await runWarm("t1", payload("echo out; echo err >&2; exit 3"), pool, options);
    expect(result.outcome).toEqual({ kind: "exited", code: 3 });
    expect(result.stdout).toBe("out\n");
    expect(result.stderr).toBe("err\n");
  });

  it("runs sh scripts too", async () => {
    const { pool, options } = await armedPool();
    const result = await runWarm("t1", payload('echo "sh says $0" | grep -c script.sh', { shell: "sh" }), pool, options);
    expect(result.outcome).toEqual({ kind: "exited", code: 0 });
    expect(result.stdout).toBe("1\n");
  });

  it("gets its arguments and environment values byte for byte: quotes, newlines, $, backslashes, unicode", async () => {
    const { pool, options } = await armedPool();
    const awkward = awkwardText();
    const args = [awkward, "", "with space", "-e", "*", "'", "\n"];
    const environment = { AWKWARD: awkward, EMPTY: "", QUOTE: "'", BACKSLASH: "\\" };
    const script = payload('printf "%s\\0" "$#" "$@" "$AWKWARD" "${EMPTY-unset}" "$QUOTE" "$BACKSLASH"', { arguments: args, environment });
    const result = await runWarm("t1", script, pool, options);
    expect(result.outcome).toEqual({ kind: "exited", code: 0 });
    const expected = [String(args.length), ...args, awkward, "", "'", "\\"].map((value) => `${value}\0`).join("");
    expect(result.bytes.equals(Buffer.from(expected, "utf8"))).toBe(true);
  });

  describe.each(MODES)("%s", (_mode, cgroupTree) => {
    it("gets exactly the environment a cold script gets", async () => {
      // What a runner started from a shell has: PWD and OLDPWD of that shell, SHLVL and _, a secret, odd values.
      const base: NodeJS.ProcessEnv = {
        ...BASE,
        PWD: "/tmp",
        OLDPWD: "/usr",
        SHLVL: "2",
        _: "/usr/bin/node",
        LANG: "C.UTF-8",
        ODD: "line one\nline 'two' \"three\" $HOME \\ é😀",
      };
      const requested = {
        PATH: `${process.env.PATH}:/opt/extra bin`,
        HOME: "/home/elsewhere",
        PS4: "+> ",
        ENV: "/etc/nonexistent-env",
        CDPATH: "/usr",
        KEEP_ME: "overridden",
        // Bytes 0x81-0x88 are dash's internal quoting marks: they must pass through single quotes untouched.
        ODD_TOO: "quote ' double \" $HOME `id` \\ \\' new\nline\ttab é € 😀 \u0081\u0088 end",
        TENDRIL_TICKET: "chosen",
        [SCRIPT_MARKER_VARIABLE]: "chosen",
      };
      const pool = new WarmShellPool({ size: 1 });
      pools.push(pool);
      const options: ProcessManagerOptions = { ...OPTIONS, baseEnvironment: base, warmShells: pool, ...(cgroupTree ? { cgroups: cgroupTree } : {}) };
      // As the shell received it, then as the script sees it once bash has started.
      const script = payload('cat /proc/$$/environ; printf "\\0--\\0"; env -0', { environment: requested });
      const cold = await run("env", script, options);
      await waitFor(() => pool.idlePids.length === 1, "a waiting shell");
      const warm = await runWarm("env", script, pool, options);

      const views = (result: typeof cold) => {
        const [received, seen] = result.bytes.toString("utf8").split("\0--\0");
        const marker = `${SCRIPT_MARKER_VARIABLE}=${result.child.marker}`;
        const entries = (list: string) => {
          const all = list.split("\0").filter((entry) => entry !== "");
          // Each start has a marker and a run folder of its own, and the marker must be there; the rest is compared.
          expect(all).toContain(marker);
          return all
            .filter((entry) => entry !== marker)
            .map((entry) => entry.replaceAll(result.run.dir, "<run>"))
            .sort();
        };
        return { received: entries(received!), seen: entries(seen!) };
      };
      const coldViews = views(cold);
      const warmViews = views(warm);
      expect(warmViews.seen).toEqual(coldViews.seen);
      // The cgroup wrapper is a shell too, and sets PWD to its folder before it execs the script's shell.
      const shellSet = (entries: string[]) => entries.filter((entry) => !/^(PWD|OLDPWD|SHLVL|_)=/.test(entry));
      expect(shellSet(warmViews.received)).toEqual(shellSet(coldViews.received));
      if (cgroupTree === undefined) expect(warmViews.received).toEqual(coldViews.received);
      expect(warmViews.seen).toContain("TENDRIL_TICKET=env");
      expect(warmViews.seen).toContain("OLDPWD=/usr");
      expect(warmViews.seen.filter((entry) => entry.startsWith("TENDRIL_RUNNER_TOKEN="))).toEqual([]);
    });

    it("has the same open files and signal dispositions as a cold script", async () => {
      const pool = new WarmShellPool({ size: 1 });
      pools.push(pool);
      const options: ProcessManagerOptions = { ...OPTIONS, warmShells: pool, ...(cgroupTree ? { cgroups: cgroupTree } : {}) };
      // A snapshot taken by a simple command: during a pipeline, bash itself holds the pipes for a moment.
      // The shell's own signal mask is read by a builtin: a child reading it races bash's SIGCHLD blocking around its
      // fork and wait (blocked most of the time, clear now and then under load). What a child inherits is read by the
      // child itself.
      const script = payload(
        "find /proc/$$/fd -mindepth 1 -printf '%f %l\\n' >fds; " +
          'while read -r line; do case $line in Sig[IB]*) echo "shell $line";; esac; done </proc/$$/status >>fds; ' +
          "grep -E '^Sig(Ign|Blk)' /proc/self/status | sed 's/^/child /' >>fds; sed 's/:\\[[0-9]*\\]//' fds | sort",
      );
      const cold = await run("fds", script, options);
      await waitFor(() => pool.idlePids.length === 1, "a waiting shell");
      const warm = await runWarm("fds", script, pool, options);
      // Each run has a folder of its own (where its script file is).
      expect(warm.stdout.replaceAll(warm.run.dir, "<run>").split("\n")).toEqual(cold.stdout.replaceAll(cold.run.dir, "<run>").split("\n"));
      expect(warm.stdout).toContain("0 /dev/null\n");
      expect(warm.stdout).toMatch(/^shell SigIgn:/m);
      expect(warm.stdout).toMatch(/^child SigBlk:/m);
    });
  });

  it("runs in its run's working directory, with stdin from /dev/null", async () => {
    const { pool, options } = await armedPool();
    const result = await runWarm("t1", payload('pwd -P; readlink /proc/$$/cwd; readlink /proc/$$/fd/0; cat; echo "cat=$?"'), pool, options);
    const dir = result.run.cwd;
    expect(result.stdout).toBe(`${dir}\n${dir}\n/dev/null\ncat=0\n`);
  });

  it("runs in the process group and session its wrapper leads, and carries its marker", async () => {
    const { pool, options } = await armedPool();
    const started = await startWarm("t1", payload("echo $$ $(cut -d' ' -f5,6 /proc/$$/stat); sleep 600"), pool, options);
    const child = processOf(started);
    try {
      await waitFor(() => text(started.output.stdout).includes("\n"), "the group and session");
      const [script, group, session] = text(started.output.stdout).trim().split(" ").map(Number);
      expect([group, session]).toEqual([child.pid, child.pid]);
      expect(script).not.toBe(child.pid);
      expect(child.marker).toMatch(/^[0-9a-f]{32}$/);
      // The wrapper was started with the marker; the script's shell got TENDRIL_TICKET too.
      expect(environHasEntry(readFileSync(`/proc/${child.pid}/environ`), Buffer.from(`${SCRIPT_MARKER_VARIABLE}=${child.marker}`))).toBe(true);
      const environ = readFileSync(`/proc/${script}/environ`);
      expect(environHasEntry(environ, Buffer.from(`${SCRIPT_MARKER_VARIABLE}=${child.marker}`))).toBe(true);
      expect(environHasEntry(environ, Buffer.from("TENDRIL_TICKET=t1"))).toBe(true);
    } finally {
      killGroup(child.pid);
    }
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "signaled", signal: "SIGKILL", number: 9 });
  });

  it.runIf(cgroupsUsable)("runs in the cgroup its shell joined while it waited, which is removed after the script", async () => {
    const tree = cgroups as CgroupTree;
    const { pool, options } = await armedPool({}, { cgroups: tree });
    const [waiting] = pool.idlePids;
    const joined = ownCgroupPath(readFileSync(`/proc/${waiting}/cgroup`, "utf8"));
    expect(joined).toMatch(/\/tendril\/r-\d+-\d+\/s-[0-9a-f]{32}$/);
    const result = await runWarm("t1", payload("cat /proc/self/cgroup"), pool, options);
    expect(ownCgroupPath(result.stdout)).toBe(joined);
    expect(joined!.endsWith(`/s-${result.child.marker}`)).toBe(true);
    await waitFor(() => !existsSync(join(tree.own, `s-${result.child.marker}`)), "the script's cgroup to be removed");
  });

  it("is killed with its whole tree, grandchildren included", async () => {
    const { pool, options } = await armedPool();
    const started = await startWarm("t1", payload("sleep 600 & echo $!; wait"), pool, options);
    const child = processOf(started);
    await waitFor(() => text(started.output.stdout).includes("\n"), "the grandchild's pid");
    const grandchild = Number(text(started.output.stdout).trim());
    startedGroups.add(grandchild);
    const { signals } = await within(child.killTree(5_000), "the kill");
    expect(signals).toEqual(["SIGTERM"]);
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "signaled", signal: "SIGTERM", number: 15 });
    await waitFor(() => !isAlive(grandchild), "the grandchild to die");
  });

  it("is killed at once with killNow, and knows the start time that names its pid", async () => {
    const { pool, options } = await armedPool();
    const started = await startWarm("t1", payload("trap '' TERM; echo ready; sleep 600"), pool, options);
    const child = processOf(started);
    await waitFor(() => text(started.output.stdout).includes("ready"), "the trap to be set");
    expect(child.startTime).toBe(parseProcessStat(readFileSync(`/proc/${child.pid}/stat`, "utf8"))?.startTime);
    expect(child.killNow()).toEqual(["SIGKILL"]);
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "signaled", signal: "SIGKILL", number: 9 });
  });

  it("stops reading while its output is paused, so it blocks, and delivers every byte after resume", async () => {
    const { pool, options } = await armedPool();
    // More than the spool lets a writer get ahead (a generation of 32 MiB at most, and the pipe).
    const total = 40_000_000;
    const started = await startWarm("t1", payload(`head -c ${total} /dev/zero | tr '\\0' a; echo; echo done`), pool, options);
    const child = processOf(started);
    child.pauseOutput();
    await waitFor(() => pidsInGroupNamed(child.pid, "tr")[0], "the tr process");
    await waitForBlockedWriter(pidsInGroupNamed(child.pid, "tr")[0]!, "tr to block on its full output", 10_000, 300);
    expect(text(started.output.stdout).length).toBeLessThan(total / 2);
    child.resumeOutput();
    expect(await within(child.wait(), "the outcome", 20_000)).toEqual({ kind: "exited", code: 0 });
    expect(Buffer.concat(started.output.stdout).length).toBe(total + "\ndone\n".length);
  });

  it("keeps running when released", async () => {
    const { pool, options } = await armedPool();
    const started = await startWarm("t1", payload("echo ready; sleep 600"), pool, options);
    const child = processOf(started);
    try {
      await waitFor(() => text(started.output.stdout).includes("ready"), "the script to start");
      child.release();
      expect(await within(child.wait(), "the release")).toBeUndefined();
      expect(isAlive(child.pid)).toBe(true);
    } finally {
      killGroup(child.pid);
    }
    await waitFor(() => !isAlive(child.pid), "the released process to die");
  });
});

describe("the pool", () => {
  it("keeps two shells waiting by default once a first script armed it", async () => {
    const pool = new WarmShellPool();
    pools.push(pool);
    await run("arm", payload("true"), { ...OPTIONS, warmShells: pool });
    await waitFor(() => pool.idlePids.length === 2, "two waiting shells");
  });

  it("takes the cold path for a variable name a shell cannot export as it is, and keeps its shell for the next script", async () => {
    const { pool, options } = await armedPool();
    const [waiting] = pool.idlePids;
    for (const [ticket, name] of [["t1", "BAD-NAME"], ["t2", "OPTIND"], ["t3", "IFS"], ["t4", "BASH_ENV"]] as const) {
      // What the script's shell received (bash itself drops some of these from what it passes on).
      const result = await run(ticket, payload(`tr '\\0' '\\n' </proc/$$/environ | grep -c '^${name}=x$'`, { environment: { [name]: "x" } }), options);
      expect(result.child.pid).not.toBe(waiting);
      expect(result.stdout).toBe("1\n");
    }
    expect(pool.idlePids).toEqual([waiting]);
    await runWarm("t5", payload("true", { environment: { GOOD_NAME: "x" } }), pool, options);
  });

  it("takes the cold path, which reports the failure, when the working directory cannot be entered", async () => {
    const { pool, options } = await armedPool();
    const [waiting] = pool.idlePids;
    const missing = await start("t1", payload("true"), options, join(workDir, "missing-folder"));
    expect(missing.result.ok).toBe(false);
    if (!missing.result.ok) expect(missing.result.outcome.message).toMatch(/^Could not start bash .* in .*missing-folder: .*ENOENT/);
    const notFolder = await start("t2", payload("true"), options, missing.run.scriptPath);
    expect(notFolder.result.ok).toBe(false);
    if (!notFolder.result.ok) expect(notFolder.result.outcome.message).toMatch(/ENOTDIR/);
    expect(pool.idlePids).toEqual([waiting]);
  });

  it("replaces a shell warmed with another environment, and runs that script cold", async () => {
    const { pool, options } = await armedPool();
    const [stale] = pool.idlePids;
    const changed: ProcessManagerOptions = { ...options, baseEnvironment: { ...BASE, KEEP_ME: "changed" } };
    const result = await run("t1", payload('echo "$KEEP_ME"'), changed);
    expect(result.child.pid).not.toBe(stale);
    expect(result.stdout).toBe("changed\n");
    await waitFor(() => !isAlive(stale!), "the stale shell to be killed");
    await waitFor(() => pool.idlePids.length === 1, "a fresh shell");
    const warm = await runWarm("t2", payload('echo "$KEEP_ME"'), pool, changed);
    expect(warm.stdout).toBe("changed\n");
  });

  it("discards a shell killed while it waited, and runs the next script cold", async () => {
    const { pool, options } = await armedPool();
    const [killed] = pool.idlePids;
    killGroup(killed!);
    await waitFor(() => !isAlive(killed!), "the shell to die");
    const result = await run("t1", payload("echo fine"), options);
    expect(result.child.pid).not.toBe(killed);
    expect(result.outcome).toEqual({ kind: "exited", code: 0 });
    expect(result.stdout).toBe("fine\n");
    await waitFor(() => pool.idlePids.length === 1 && pool.idlePids[0] !== killed, "a fresh shell");
  });

  it("refills once the claimed script has exited, not while it starts", async () => {
    const { pool, options } = await armedPool({ refillDelayMs: 60_000 });
    const started = await startWarm("t1", payload("echo started; sleep 600"), pool, options);
    const child = processOf(started);
    await waitFor(() => text(started.output.stdout).includes("started"), "the script to run");
    // The refill waits for the exit (or a minute): none can have happened yet.
    expect(pool.idlePids).toEqual([]);
    killGroup(child.pid);
    await within(child.wait(), "the outcome");
    await waitFor(() => pool.idlePids.length === 1, "the refill");
    expect(pool.idlePids[0]).not.toBe(child.pid);
  });

  it("refills after refillDelayMs while the claimed script still runs", async () => {
    const { pool, options } = await armedPool({ refillDelayMs: 50 });
    const started = await startWarm("t1", payload("sleep 600"), pool, options);
    const child = processOf(started);
    try {
      await waitFor(() => pool.idlePids.length === 1, "the refill");
      expect(child.hasExited).toBe(false);
      expect(isAlive(child.pid)).toBe(true);
    } finally {
      killGroup(child.pid);
    }
    await within(child.wait(), "the outcome");
  });

  it("after a release, refills only refillDelayMs later, when the next script would have started", async () => {
    const { pool, options } = await armedPool({ refillDelayMs: 2_000 });
    const started = await startWarm("t1", payload("sleep 600"), pool, options);
    const child = processOf(started);
    try {
      const released = Date.now();
      child.release();
      await waitFor(() => pool.idlePids.length === 1, "the refill", 10_000);
      // Not at the release (then it would be within milliseconds), but once the delay passed.
      expect(Date.now() - released).toBeGreaterThanOrEqual(1_900);
    } finally {
      killGroup(child.pid);
    }
  });

  it("gives a script the shell that is still starting when none is ready, instead of starting a wrapper of its own", async () => {
    const { pool, options, callers, letGo } = await poolWithSlowRefill(60_000);
    const shell = await waitFor(() => callers()[1], "the refill's shell to start");
    expect(pool.idlePids).toEqual([]);
    const starting = start("t1", payload("echo taken"), options);
    letGo();
    const result = await ended(await starting);
    expect(result.outcome).toEqual({ kind: "exited", code: 0 });
    expect(result.stdout).toBe("taken\n");
    expect(result.child.pid).toBe(shell);
  });

  it("starts a wrapper of its own once the starting shell took longer than startingWaitMs", async () => {
    const { pool, options, callers, letGo } = await poolWithSlowRefill(50);
    const shell = await waitFor(() => callers()[1], "the refill's shell to start");
    try {
      const result = await run("t1", payload("echo cold"), options);
      expect(result.stdout).toBe("cold\n");
      expect(result.child.pid).not.toBe(shell);
      expect(callers()[2]).toBe(result.child.pid);
    } finally {
      letGo();
    }
    // The slow one is still the pool's, once ready.
    await waitFor(() => pool.idlePids.includes(shell), "the slow shell to be ready");
  });

  it("kills every waiting shell when disposed, releases their cgroups, and starts no more", async () => {
    const extra = cgroupsUsable ? { cgroups: cgroups as CgroupTree } : {};
    const { pool, options } = await armedPool({ size: 2 }, extra);
    const waiting = pool.idlePids;
    const joined = waiting.map((pid) => ownCgroupPath(readFileSync(`/proc/${pid}/cgroup`, "utf8")));
    const folders = cgroupsUsable ? joined.map((path) => join((cgroups as CgroupTree).own, path!.split("/").at(-1)!)) : [];
    expect(folders.every(existsSync)).toBe(true);
    await within(pool.dispose(), "the disposal");
    expect(waiting.filter(isAlive)).toEqual([]);
    expect(pool.idlePids).toEqual([]);
    if (cgroupsUsable) {
      await waitFor(() => folders.every((folder) => !existsSync(folder)), "the shells' cgroups to be removed");
    }
    const after = await run("t1", payload("echo cold"), options);
    expect(after.stdout).toBe("cold\n");
    // A refill would start in the turn of the event loop after the exit was reported.
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    expect(pool.idlePids).toEqual([]);
  });

  it("loses a waiting shell when the process that started it dies: the shell reads EOF and exits", async () => {
    const dir = await tempDir("warm-owner");
    try {
      const entry = join(dir, "owner.mjs");
      await build({
        stdin: { contents: OWNER_SOURCE, resolveDir: ROOT, loader: "ts", sourcefile: "owner.ts" },
        outfile: entry,
        bundle: true,
        format: "esm",
        platform: "node",
        target: "node20",
        banner: { js: 'import { createRequire } from "node:module"; const require = createRequire(import.meta.url);' },
        logLevel: "warning",
      });
      const owner = spawn(process.execPath, [entry, dir], { detached: true, stdio: ["ignore", "pipe", "inherit"] });
      startedGroups.add(owner.pid!);
      let printed = "";
      owner.stdout!.on("data", (chunk: Buffer) => (printed += chunk.toString()));
      const shell = await waitFor(() => /^waiting (\d+)\n/.exec(printed)?.[1], "the owner's waiting shell", 20_000).then(Number);
      startedGroups.add(shell);
      expect(isAlive(shell)).toBe(true);
      killGroup(owner.pid!);
      await waitFor(() => !isAlive(owner.pid!), "the owner to die");
      await waitFor(() => !isAlive(shell), "the shell to exit on EOF");
      // Its copiers, in its process group, follow: they read EOF once it is gone, and finish their files.
      await waitFor(() => pidsInGroup(shell).length === 0, "the shell's copiers to exit");
    } finally {
      await removeDir(dir);
    }
  });
});

/** A process that runs one script with a pool, prints the pid of the shell that then waits, and stays. */
const OWNER_SOURCE = `
import { spawnScript } from "./runner/process-manager.ts";
import { WarmShellPool } from "./runner/warm-shell.ts";
const pool = new WarmShellPool({ size: 1 });
import { mkdirSync } from "node:fs";
const runDir = process.argv[2] + "/runs/owner";
mkdirSync(runDir, { recursive: true });
const started = await spawnScript(
  { ticket: "owner", shell: "sh", scriptPath: "/dev/null", runDir, cwd: process.argv[2], arguments: [], environment: {} },
  () => undefined,
  { pipeDrainMs: 100, disableKill: false, warmShells: pool },
);
if (!started.ok) throw new Error(started.outcome.message);
await started.process.wait();
started.process.settle();
const timer = setInterval(() => {
  if (pool.idlePids.length === 0) return;
  process.stdout.write("waiting " + pool.idlePids[0] + "\\n");
  clearInterval(timer);
  setInterval(() => undefined, 60_000);
}, 5);
`;
