import { readdirSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ScriptPayload } from "../../shared/api.js";
import type { Outcome } from "../../shared/protocol.js";
import type { ProcessManagerOptions, ScriptProcess, SpawnResult } from "../../runner/process-manager.js";
import { RunFolders, type Run } from "../../runner/run-folder.js";
import { isAlive, killGroup, killPid, pidsInGroupNamed, removeDir, tempDir } from "../helpers/processes.js";
import { waitFor, waitForBlockedWriter, within } from "./fake-control-plane.js";
import { spawnInRun } from "./spawn.js";

let workDir: string;
let runs: RunFolders;
/** Process groups a test started; each test also stops its own, this is the safety net. */
const startedGroups = new Set<number>();

beforeEach(async () => {
  workDir = await tempDir("pm");
  runs = new RunFolders(workDir);
  runs.prepare();
});

afterEach(async () => {
  for (const pid of startedGroups) killGroup(pid);
  startedGroups.clear();
  await removeDir(workDir);
});

const OPTIONS: ProcessManagerOptions = {
  pipeDrainMs: 300,
  disableKill: false,
  baseEnvironment: { PATH: process.env.PATH, HOME: process.env.HOME, TENDRIL_RUNNER_TOKEN: "secret-token", KEEP_ME: "kept" },
};

function payload(scriptBody: string, extra: Partial<ScriptPayload> = {}): ScriptPayload {
  return { scriptBody, shell: "bash", arguments: [], environment: {}, files: [], ...extra };
}

interface Started {
  result: SpawnResult;
  run: Run;
  output: { stdout: string; stderr: string };
}

/** Writes the workspace and spawns the script, collecting its output. */
async function start(ticket: string, script: ScriptPayload, options: ProcessManagerOptions = OPTIONS): Promise<Started> {
  const output = { stdout: "", stderr: "" };
  const { result, run } = await spawnInRun(runs, ticket, script, options, (stream, chunk) => {
    output[stream] += chunk.toString("utf8");
  });
  if (result.ok) startedGroups.add(result.process.pid);
  return { result, run, output };
}

function processOf(started: Started): ScriptProcess {
  if (!started.result.ok) throw new Error(`spawn failed: ${started.result.outcome.message}`);
  return started.result.process;
}

/** Runs a script to its end; returns its outcome and output. */
async function run(ticket: string, script: ScriptPayload, options: ProcessManagerOptions = OPTIONS) {
  const started = await start(ticket, script, options);
  const child = processOf(started);
  const outcome = await within(child.wait(), "the outcome");
  // As the runner does once it holds the whole output: the wrapper may exit.
  child.settle();
  return { outcome, ...started.output, pid: child.pid, run: started.run };
}

describe("process manager", () => {
  it("reports the exit code and the stdout and stderr of a script", async () => {
    const result = await run("t1", payload("echo out; echo err >&2; exit 3"));
    expect(result.outcome).toEqual({ kind: "exited", code: 3 });
    expect(result.stdout).toBe("out\n");
    expect(result.stderr).toBe("err\n");
  });

  it("reports a script killed by a signal as its wrapper saw it: 128 plus the signal's number, the exit code the API gives", async () => {
    const result = await run("t1", payload("kill -KILL $$"));
    expect(result.outcome).toEqual({ kind: "exited", code: 137 });
  });

  it("reports a script spawned directly and killed by a signal with the signal's name and number", async () => {
    // A variable no shell can pass on as it is: the script is spawned directly, without a wrapper.
    const result = await run("t1", payload("kill -KILL $$", { environment: { "ODD-NAME": "x" } }));
    expect(result.outcome).toEqual({ kind: "signaled", signal: "SIGKILL", number: 9 });
  });

  it("runs the script with sh too", async () => {
    const result = await run("t1", payload('echo "sh says $0" | grep -c script.sh', { shell: "sh" }));
    expect(result.outcome).toEqual({ kind: "exited", code: 0 });
    expect(result.stdout).toBe("1\n");
  });

  it("passes the arguments to the script verbatim, without a shell in between", async () => {
    const args = ["plain", "with space", "it's \"quoted\"", "$HOME", "", "*"];
    const result = await run("t1", payload('printf "<%s>\\n" "$@"', { arguments: args }));
    expect(result.stdout).toBe(args.map((arg) => `<${arg}>\n`).join(""));
  });

  it("gives the script the runner's environment without the runner token, plus the request's variables and TENDRIL_TICKET", async () => {
    const script = payload('echo "token=${TENDRIL_RUNNER_TOKEN-unset} keep=$KEEP_ME mine=$MINE ticket=$TENDRIL_TICKET"', {
      environment: { MINE: "value with spaces", KEEP_ME: "overridden" },
    });
    const result = await run("ticket-7", script);
    expect(result.stdout).toBe("token=unset keep=overridden mine=value with spaces ticket=ticket-7\n");
  });

  it("runs in its run's working directory with the request's files decoded", async () => {
    const files = [
      { name: "config.json", contents: Buffer.from('{"a":1}').toString("base64") },
      { name: "binary.dat", contents: Buffer.from([0, 1, 2, 255]).toString("base64") },
    ];
    const result = await run("t1", payload('pwd; cat config.json; echo; od -An -tu1 binary.dat | tr -s " "', { files }));
    expect(result.stdout).toBe(`${result.run.cwd}\n{"a":1}\n 0 1 2 255\n`);
    expect(result.run.cwd).toBe(join(workDir, "runs", result.run.id, "work"));
  });

  it("gives every run a folder of its own inside the work directory, whatever its ticket", async () => {
    const dots = await run("...", payload("pwd"));
    const dash = await run("-rf", payload("pwd"));
    const again = await run("-rf", payload("pwd"));
    for (const each of [dots, dash, again]) expect(each.stdout).toBe(`${each.run.cwd}\n`);
    expect(new Set([dots.run.dir, dash.run.dir, again.run.dir]).size).toBe(3);
    runs.requestDelete("...");
    await waitFor(() => readdirSync(runs.root).length === 2, "the run of ... to be removed");
    expect(readdirSync(runs.root).sort()).toEqual([dash.run.id, again.run.id].sort());
  });

  it("starts each script in its own process group", async () => {
    const result = await run("t1", payload("cut -d' ' -f5 /proc/$$/stat"));
    expect(result.stdout).toBe(`${result.pid}\n`);
  });

  it("fails without spawning when the shell is not on the PATH", async () => {
    const emptyDir = await tempDir("empty");
    try {
      const options = { ...OPTIONS, baseEnvironment: { PATH: emptyDir } };
      const pwsh = await start("t1", payload("Write-Output hi", { shell: "pwsh" }), options);
      expect(pwsh.result).toEqual({ ok: false, outcome: { kind: "failed", message: 'The shell "pwsh" was not found on this machine\'s PATH.' } });
      const bash = await start("t2", payload("echo hi"), options);
      expect(bash.result).toEqual({ ok: false, outcome: { kind: "failed", message: 'The shell "bash" was not found on this machine\'s PATH.' } });
    } finally {
      await removeDir(emptyDir);
    }
  });

  it("reports a spawn error as a failed outcome with a clear message", async () => {
    const { result } = await spawnInRun(runs, "t1", payload("echo hi"), OPTIONS, () => undefined, join(workDir, "missing-folder"));
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.outcome.kind).toBe("failed");
    expect(result.outcome.message).toMatch(/^Could not start bash .* in .*missing-folder: .*ENOENT/);
  });

  it("reports the exit after pipeDrainMs when a grandchild keeps the pipes open", async () => {
    const started = await start("t1", payload("sleep 600 & echo $!; exit 4"));
    const child = processOf(started);
    const begin = Date.now();
    const outcome = await within(child.wait(), "the outcome despite the open pipes", 3_000);
    const elapsed = Date.now() - begin;
    const grandchild = Number(started.output.stdout.trim());
    try {
      expect(outcome).toEqual({ kind: "exited", code: 4 });
      expect(elapsed).toBeGreaterThanOrEqual(250);
      expect(isAlive(grandchild)).toBe(true);
    } finally {
      killPid(grandchild);
      killGroup(child.pid);
    }
    await waitFor(() => !isAlive(grandchild), "the grandchild to die");
  });

  it("cancels with SIGTERM to the whole process group, grandchildren included", async () => {
    const started = await start("t1", payload("sleep 600 & echo $!; wait"));
    const child = processOf(started);
    await waitFor(() => started.output.stdout.includes("\n"), "the grandchild's pid");
    const grandchild = Number(started.output.stdout.trim());
    const { signals } = await within(child.killTree(5_000), "the kill");
    expect(signals).toEqual(["SIGTERM"]);
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "signaled", signal: "SIGTERM", number: 15 });
    await waitFor(() => !isAlive(grandchild), "the grandchild to die");
  });

  it("escalates to SIGKILL when the script ignores SIGTERM for the grace period", async () => {
    const started = await start("t1", payload("trap '' TERM; echo ready; while :; do sleep 0.05; done"));
    const child = processOf(started);
    await waitFor(() => started.output.stdout.includes("ready"), "the trap to be set");
    const begin = Date.now();
    const { signals } = await within(child.killTree(300), "the kill");
    expect(signals).toEqual(["SIGTERM", "SIGKILL"]);
    expect(Date.now() - begin).toBeGreaterThanOrEqual(250);
    const outcome: Outcome | undefined = await within(child.wait(), "the outcome");
    // The wrapper (the process group's leader) does not trap SIGTERM: it ended at the first signal, the script at the second.
    expect(outcome).toEqual({ kind: "signaled", signal: "SIGTERM", number: 15 });
  });

  it("kills once: a second killTree gets the first one's answer", async () => {
    const started = await start("t1", payload("echo ready; sleep 600"));
    const child = processOf(started);
    await waitFor(() => started.output.stdout.includes("ready"), "the script to start");
    const [first, second] = await within(Promise.all([child.killTree(5_000), child.killTree(5_000)]), "the kills");
    expect(first.signals).toEqual(["SIGTERM"]);
    expect(second).toBe(first);
    await within(child.wait(), "the outcome");
  });

  it("sends no signal to a process that already exited", async () => {
    const started = await start("t1", payload("exit 0"));
    const child = processOf(started);
    await within(child.wait(), "the outcome");
    expect((await child.killTree(100)).signals).toEqual([]);
    expect(child.killNow()).toEqual([]);
  });

  it("kills nothing when kill is disabled", async () => {
    const started = await start("t1", payload("echo ready; sleep 600"), { ...OPTIONS, disableKill: true });
    const child = processOf(started);
    try {
      await waitFor(() => started.output.stdout.includes("ready"), "the script to start");
      expect((await within(child.killTree(100), "the kill")).signals).toEqual([]);
      expect(child.killNow()).toEqual([]);
      expect(isAlive(child.pid)).toBe(true);
    } finally {
      killGroup(child.pid);
    }
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "signaled", signal: "SIGKILL", number: 9 });
  });

  it("kills the process group at once with killNow", async () => {
    const started = await start("t1", payload("trap '' TERM; echo ready; sleep 600"));
    const child = processOf(started);
    await waitFor(() => started.output.stdout.includes("ready"), "the script to start");
    expect(child.killNow()).toEqual(["SIGKILL"]);
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "signaled", signal: "SIGKILL", number: 9 });
  });

  it("releases a process without killing it and reports nothing more for it", async () => {
    const started = await start("t1", payload("echo ready; sleep 600"));
    const child = processOf(started);
    try {
      await waitFor(() => started.output.stdout.includes("ready"), "the script to start");
      child.release();
      expect(await within(child.wait(), "the release")).toBeUndefined();
      expect(isAlive(child.pid)).toBe(true);
      expect((await child.killTree(100)).signals).toEqual([]);
    } finally {
      killGroup(child.pid);
    }
    await waitFor(() => !isAlive(child.pid), "the released process to die");
  });
});

describe("process manager backpressure", () => {
  it("stops reading while output is paused, so the script blocks on its next write, and delivers every byte after resume", async () => {
    // More than the spool lets a writer get ahead (a generation of 32 MiB at most, and the pipe).
    const total = 40_000_000;
    const started = await start("t1", payload(`head -c ${total} /dev/zero | tr '\\0' a; echo; echo done`));
    const child = processOf(started);
    child.pauseOutput();
    expect(child.isOutputPaused).toBe(true);
    await waitFor(() => pidsInGroupNamed(child.pid, "tr").length > 0, "the tr process");
    const tr = pidsInGroupNamed(child.pid, "tr")[0]!;
    await waitForBlockedWriter(tr, "tr to block on its full output", 10_000);
    expect(started.output.stdout.length).toBeLessThan(total / 2);
    expect(child.hasExited).toBe(false);

    child.resumeOutput();
    expect(await within(child.wait(), "the outcome", 20_000)).toEqual({ kind: "exited", code: 0 });
    expect(started.output.stdout.length).toBe(total + "\ndone\n".length);
    expect(started.output.stdout.endsWith("a\ndone\n")).toBe(true);
  });

  it("does not report an exit while output waits unread, however long past pipeDrainMs, and loses none of it", async () => {
    const options = { ...OPTIONS, pipeDrainMs: 20 };
    const started = await start("t1", payload("head -c 50000 /dev/zero | tr '\\0' b; exit 7"), options);
    const child = processOf(started);
    child.pauseOutput();
    await waitFor(() => child.hasExited, "the script to exit with its output unread");
    // A negative can only be shown by letting time pass: ten times pipeDrainMs, and the outcome is still held back.
    let reported = false;
    void child.wait().then(() => (reported = true));
    await new Promise((resolve) => setTimeout(resolve, 10 * options.pipeDrainMs));
    expect(reported).toBe(false);
    child.resumeOutput();
    expect(await within(child.wait(), "the outcome")).toEqual({ kind: "exited", code: 7 });
    expect(started.output.stdout).toBe("b".repeat(50_000));
  });

  it("refuses an environment value or an argument with a NUL character without quoting it", async () => {
    const environment = await start("t1", payload("true", { environment: { API_KEY: "top\u0000secret-value" } }));
    expect(environment.result.ok).toBe(false);
    if (!environment.result.ok) {
      expect(environment.result.outcome.message).toContain('"API_KEY"');
      expect(environment.result.outcome.message).not.toContain("secret-value");
    }
    const argument = await start("t2", payload("true", { arguments: ["fine", "bad\u0000secret-arg"] }));
    expect(argument.result).toEqual({ ok: false, outcome: { kind: "failed", message: "Argument 2 contains a NUL character, which no process argument can hold." } });
  });
});
