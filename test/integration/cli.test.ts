// The `tendril` command line against the real control plane and runner.
import { describe, expect, it } from "vitest";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { pidsInGroup, startTendril, type TestProcess } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** Runs a `tendril` command to completion and returns its exit code and output. */
async function tendril(args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string): Promise<{ code: number | null; stdout: string; output: string }> {
  const proc = startTendril(args, env, cwd);
  try {
    const { code } = await Promise.race([
      proc.exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`tendril ${args.join(" ")} did not finish:\n${proc.output()}`)), 30_000)),
    ]);
    return { code, stdout: proc.stdout(), output: proc.output() };
  } finally {
    await proc.stop();
  }
}

const serverEnv = () => ({ TENDRIL_URL: f.cp.url, TENDRIL_SERVER_TOKEN: f.cp.serverToken });

describe("tendril run", () => {
  it("prints the script's output and exits with its exit code", async () => {
    const m = f.machine();
    await f.runner(m);
    const hello = await tendril(["run", "--machine", m, "--", "echo", "hello"], serverEnv());
    expect(hello.code).toBe(0);
    expect(hello.stdout).toBe("hello\n");
    const seven = await tendril(["run", "--machine", m, "--", "echo out; echo err >&2; exit 7"], serverEnv());
    expect(seven.code).toBe(7);
    expect(seven.stdout).toBe("out\n");
    expect(seven.output).toContain("err");
  });

  it("takes --url and --server-token flags and deletes the completed script", async () => {
    const m = f.machine();
    await f.runner(m);
    const result = await tendril(["run", "--machine", m, "--url", f.cp.url, "--server-token", f.cp.serverToken, "--ticket", "cli-t", "--", "echo", "flags"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe("flags\n");
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/cli-t`)).status).toBe(404);
  });

  it("exits 1 and names the meaning of a negative Tendril exit code", async () => {
    const m = f.machine();
    await f.runner(m);
    const release = join(f.scratch, `${m}-release`);
    const blocker = await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "blocker",
      scriptBody: `while [ ! -f '${release}' ]; do sleep 0.02; done`,
    });
    expect(blocker.status).toBe(201);
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}/scripts/blocker`)).body.state === "running", { what: "blocker to run" });
    const result = await tendril(["run", "--machine", m, "--mutex-timeout", "300ms", "--", "true"], serverEnv());
    expect(result.code).toBe(1);
    expect(result.output).toMatch(/-44/);
    writeFileSync(release, "");
    expect((await f.completed(m, "blocker")).exitCode).toBe(0);
  });

  it("explains what is missing when no control plane is configured", async () => {
    const empty = mkdtempSync(join(tmpdir(), "tendril-empty-"));
    try {
      const result = await tendril(["run", "--machine", "x", "--", "true"], { TENDRIL_URL: "", TENDRIL_SERVER_TOKEN: "" }, empty);
      expect(result.code).toBe(2);
      expect(result.output).toMatch(/no control plane configured/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

describe("the other commands", () => {
  it("registers a machine, lists machines and shows a script's status", async () => {
    const m = f.machine();
    const registered = await tendril(["register", m], serverEnv());
    expect(registered.code).toBe(0);
    expect(registered.stdout.trim()).toMatch(/^trt_[A-Za-z0-9_-]+$/);
    await f.runner(m, { token: registered.stdout.trim() });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "shown", scriptBody: "echo visible", waitMs: 20_000 });
    const machines = await tendril(["machines", "--json"], serverEnv());
    expect(machines.code).toBe(0);
    expect(JSON.parse(machines.stdout).machines.map((x: { machineId: string }) => x.machineId)).toContain(m);
    const status = await tendril(["status", m, "shown"], serverEnv());
    expect(status.code).toBe(0);
    expect(status.stdout).toContain("visible");
    expect(status.stdout).toMatch(/complete/);
  });

  it("prints help for every command", async () => {
    for (const command of [[], ["start"], ["control-plane"], ["runner"], ["register"], ["run"], ["machines"], ["status"], ["cancel"], ["abandon"]]) {
      const result = await tendril([...command, "--help"]);
      expect(result.code, command.join(" ")).toBe(0);
      expect(result.stdout).toMatch(/Usage: tendril/);
    }
  });
});

describe("npm start (tendril start)", () => {
  it("runs a control plane and a runner for machine local that a second terminal can use with no flags, and stops both on Ctrl-C", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "tendril-start-"));
    let start: TestProcess | undefined;
    try {
      start = startTendril(["start", "--port", "0"], { TENDRIL_URL: "", TENDRIL_SERVER_TOKEN: "" }, cwd);
      const proc = start;
      await waitFor(() => existsSync(join(cwd, ".tendril", "local.json")) && /tendril run --machine local/.test(proc.output()), {
        timeoutMs: 30_000,
        what: "npm start to be ready",
      });
      const local = JSON.parse(readFileSync(join(cwd, ".tendril", "local.json"), "utf8"));
      expect(local.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(proc.output()).toContain(local.url);
      expect(proc.output()).toContain(local.serverToken);
      await waitFor(async () => {
        const r = await fetch(`${local.url}/api/v1/machines/local`, { headers: { authorization: `Bearer ${local.serverToken}` } });
        return r.ok && ((await r.json()) as { runner: { connected: boolean } }).runner.connected === true;
      }, { timeoutMs: 20_000, what: "the local runner to connect" });
      const hello = await tendril(["run", "--machine", "local", "--", "echo", "hello"], { TENDRIL_URL: "", TENDRIL_SERVER_TOKEN: "" }, cwd);
      expect(hello.stdout).toBe("hello\n");
      expect(hello.code).toBe(0);
      // Its runner child gets the runner token (trt_...) through the environment, never on a command line that
      // every user can read in `ps` (bug 9).
      const commandLines = pidsInGroup(proc.pid).flatMap((pid) => {
        try {
          return [readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ")];
        } catch {
          return []; // gone meanwhile
        }
      });
      expect(commandLines.some((line) => / runner /.test(line)), commandLines.join("\n")).toBe(true);
      expect(commandLines.filter((line) => /trt_|--token/.test(line))).toEqual([]);

      proc.child.kill("SIGINT");
      const { code } = await proc.exited;
      expect(code).toBe(0);
      await waitFor(() => pidsInGroup(proc.pid).length === 0, { timeoutMs: 10_000, what: "every process of npm start to exit" });
    } finally {
      await start?.stop();
      rmSync(cwd, { recursive: true, force: true });
    }
  });
});
