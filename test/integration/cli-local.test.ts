// The commands that run things on this computer (`control-plane`, `start`, `runner`) against a real control
// plane: issue 9's bugs 5 (`--retention 2d`), 9 (the runner token out of `ps`) and 16 (a port already in use).
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { useControlPlane } from "../helpers/fixture.js";
import { pidsInGroup, startTendril, type TestProcess } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

// Started with the README's own example of a retention: before bug 5 was fixed, this control plane never started.
const f = useControlPlane({ args: ["--retention", "2d"] });

const scratch = mkdtempSync(join(tmpdir(), "tendril-cli-local-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Runs a `tendril` command that is expected to end by itself within 30 s; stops it by PID in any case. */
async function finished(args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string): Promise<{ code: number | null; output: string }> {
  const proc = startTendril(args, env, cwd);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`tendril ${args.join(" ")} did not exit within 30 s; its output:\n${proc.output()}`)), 30_000);
  });
  try {
    const { code } = await Promise.race([proc.exited, deadline]);
    return { code, output: proc.output() };
  } finally {
    clearTimeout(timer);
    await proc.stop();
  }
}

/** The command lines of every live process in a process group (NUL-separated arguments joined with spaces). */
function commandLines(pgid: number): string[] {
  return pidsInGroup(pgid).flatMap((pid) => {
    try {
      return [readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ")];
    } catch {
      return []; // gone meanwhile
    }
  });
}

/** Waits until the machine view shows a runner connected. */
async function connected(machineId: string, proc: TestProcess): Promise<void> {
  await waitFor(async () => (await f.api("GET", `/api/v1/machines/${machineId}`)).body?.runner?.connected === true, {
    timeoutMs: 15_000,
    what: `a runner for ${machineId} to connect; its output:\n${proc.output()}`,
  });
}

describe("durations on the command line (bug 5)", () => {
  it("starts `tendril control-plane --retention 2d`, the example the README and --help give", async () => {
    expect(f.cp.process.output()).toContain(`listening on ${f.cp.url}`);
    expect((await f.api("GET", "/healthz")).status).toBe(200);
  });
});

describe("a port already in use (bug 16)", () => {
  const port = () => new URL(f.cp.url).port;
  const friendly = (p: string) =>
    new RegExp(
      `^error: could not start the control plane: 127\\.0\\.0\\.1:${p} is already in use \\(is another \`npm start\` or ` +
        "`tendril control-plane` running\\?\\); stop it, or choose another port with --port$",
    );

  it("tendril control-plane says only that the port is in use, with no workerd trace", async () => {
    const second = await finished(["control-plane", "--port", port(), "--server-token", "t", "--state-dir", join(scratch, "second")]);
    expect(second.code).toBe(2);
    expect(second.output).not.toMatch(/kj::Exception|workerd|Fatal/);
    expect(second.output.trim()).toMatch(friendly(port()));
  });

  it("a second npm start (tendril start) says only that the port is in use, with no workerd trace", async () => {
    const cwd = mkdtempSync(join(scratch, "start-"));
    const second = await finished(["start", "--port", port()], { TENDRIL_URL: "", TENDRIL_SERVER_TOKEN: "" }, cwd);
    expect(second.code).toBe(2);
    expect(second.output).not.toMatch(/kj::Exception|workerd|Fatal/);
    expect(second.output.trim()).toMatch(friendly(port()));
  });
});

describe("the runner token stays out of ps (bug 9)", () => {
  it("refuses a --token-file that its group or other users can read, and says to chmod 600", async () => {
    const m = f.machine("file");
    const path = join(scratch, `${m}-token`);
    writeFileSync(path, `${await f.register(m)}\n`);
    chmodSync(path, 0o644);
    const refused = await finished(["runner", "--url", f.cp.url, "--machine", m, "--token-file", path, "--work-dir", join(scratch, m)], {
      TENDRIL_RUNNER_TOKEN: "",
    });
    expect(refused.code).toBe(2);
    expect(refused.output.trim()).toBe(
      `error: runner token file ${path} is readable by its group and other users (mode 0644); make it readable by its owner only: chmod 600 ${path}`,
    );
    expect((await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected).toBe(false);
  });

  it("connects with the token from a --token-file only its owner can read, and no process shows the token", async () => {
    const m = f.machine("file");
    const token = await f.register(m);
    const path = join(scratch, `${m}-token`);
    writeFileSync(path, `${token}\n`, { mode: 0o600 });
    const runner = startTendril(["runner", "--url", f.cp.url, "--machine", m, "--token-file", path, "--work-dir", join(scratch, m)], {
      TENDRIL_RUNNER_TOKEN: "",
    });
    try {
      await connected(m, runner);
      expect(commandLines(runner.pid).join("\n")).not.toContain(token);
      expect(runner.output()).not.toMatch(/warning/);
    } finally {
      await runner.stop();
    }
  });

  it("still connects with --token, but warns that the token is visible in ps", async () => {
    const m = f.machine("flag");
    const runner = startTendril(["runner", "--url", f.cp.url, "--machine", m, "--token", await f.register(m), "--work-dir", join(scratch, m)], {
      TENDRIL_RUNNER_TOKEN: "",
    });
    try {
      await connected(m, runner);
      expect(runner.output()).toContain(
        "warning: --token puts the runner token on this process's command line, which every user on this machine can read " +
          "(ps, /proc/<pid>/cmdline); use --token-file FILE (mode 600) or the TENDRIL_RUNNER_TOKEN environment variable instead",
      );
    } finally {
      await runner.stop();
    }
  });
});

describe("the temporary folder", () => {
  it("keeps nothing of a control plane once it was stopped (workerd's own folder included)", async () => {
    const temporary = mkdtempSync(join(scratch, "tmp-"));
    const proc = startTendril(["control-plane", "--port", "0", "--server-token", "t".repeat(32), "--state-dir", join(scratch, "state-tmp")], { TMPDIR: temporary });
    try {
      await waitFor(() => /listening on http:\/\/127\.0\.0\.1:\d+/.test(proc.stdout()), { timeoutMs: 30_000, what: "the control plane to listen" });
      // While it runs, Miniflare's folder is there (in one of ours).
      expect(readdirSync(temporary)).toHaveLength(1);
    } finally {
      await proc.stop();
    }
    expect((await proc.exited).signal).toBeNull();
    expect(readdirSync(temporary)).toEqual([]);
  });

  it("leaves neither workerd nor its runner running, and nothing in the temporary folder, when npm start is killed with SIGKILL", async () => {
    const temporary = mkdtempSync(join(scratch, "tmp-"));
    const cwd = mkdtempSync(join(scratch, "start-killed-"));
    const proc = startTendril(["start", "--port", "0"], { TMPDIR: temporary, TENDRIL_URL: "", TENDRIL_SERVER_TOKEN: "" }, cwd);
    try {
      await waitFor(() => /Press Ctrl-C to stop/.test(proc.stdout()), { timeoutMs: 60_000, what: `npm start's banner:\n${proc.output()}` });
      // Its workerd and its runner child are in its process group.
      const children = pidsInGroup(proc.pid).filter((pid) => pid !== proc.pid);
      const names = children.map((pid) => readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0"));
      expect(names.some((argv) => argv[0]!.endsWith("/workerd"))).toBe(true);
      expect(names.some((argv) => argv.includes("runner"))).toBe(true);
      // The runner drains (SIGTERM) and exits; workerd is killed.
      await killOutright(proc, temporary, "workerd and the runner to end with npm start");
    } finally {
      await proc.stop();
    }
  });

  it("leaves no workerd running, and nothing in the temporary folder, when the control plane is killed with SIGKILL", async () => {
    const temporary = mkdtempSync(join(scratch, "tmp-"));
    const proc = startTendril(["control-plane", "--port", "0", "--server-token", "t".repeat(32), "--state-dir", join(scratch, "state-killed")], { TMPDIR: temporary });
    try {
      await waitFor(() => /listening on http:\/\/127\.0\.0\.1:\d+/.test(proc.stdout()), { timeoutMs: 30_000, what: "the control plane to listen" });
      // workerd is a child of the command, in its process group.
      const workerd = pidsInGroup(proc.pid).filter((pid) => pid !== proc.pid && readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "workerd");
      expect(workerd).toHaveLength(1);
      await killOutright(proc, temporary, "workerd to die with the command");
    } finally {
      await proc.stop();
    }
  });
});

/** SIGKILLs a command, then waits until nothing of its process group is left and its temporary folder is empty. */
async function killOutright(proc: TestProcess, temporary: string, what: string): Promise<void> {
  process.kill(proc.pid, "SIGKILL");
  expect((await proc.exited).signal).toBe("SIGKILL");
  await waitFor(() => pidsInGroup(proc.pid).length === 0, { timeoutMs: 20_000, what });
  await waitFor(() => readdirSync(temporary).length === 0, { timeoutMs: 10_000, what: "the temporary folder to be emptied" });
}
