// End to end: the real Worker on workerd, a real `tendril runner` process, real scripts.
import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { runFoldersOf } from "../helpers/run-folders.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

async function run(machineId: string, body: Record<string, unknown>) {
  const started = await f.api("POST", `/api/v1/machines/${machineId}/scripts`, body);
  expect(started.status).toBe(201);
  return f.completed(machineId, started.body.ticket);
}

function texts(status: { logs: Array<{ source: string; text: string }> }, source: string): string[] {
  return status.logs.filter((l) => l.source === source).map((l) => l.text);
}

describe("running scripts", () => {
  it("runs hello world and reports its output and exit code 0", async () => {
    const m = f.machine();
    await f.runner(m);
    const status = await run(m, { ticket: "hello", scriptBody: "echo hello" });
    expect(status).toMatchObject({ ticket: "hello", state: "complete", exitCode: 0, hasMoreLogs: false });
    expect(texts(status, "stdout")).toEqual(["hello"]);
    expect(status.logs[0]).toMatchObject({ sequence: 0, source: "stdout", text: "hello" });
    expect(Date.parse(status.logs[0].occurred)).not.toBeNaN();
  });

  it("reports the process's own exit codes, and 128 + n for a signal Tendril did not send", async () => {
    const m = f.machine();
    await f.runner(m);
    expect((await run(m, { scriptBody: "exit 3" })).exitCode).toBe(3);
    expect((await run(m, { scriptBody: "exit 255" })).exitCode).toBe(255);
    expect((await run(m, { scriptBody: "false" })).exitCode).toBe(1);
    expect((await run(m, { scriptBody: "kill -TERM $$" })).exitCode).toBe(128 + 15);
  });

  it("keeps stdout and stderr apart and in order, and flushes a final line without a newline", async () => {
    const m = f.machine();
    await f.runner(m);
    const status = await run(m, { scriptBody: "echo out1; echo err1 >&2; echo out2; printf 'tail-without-newline'" });
    expect(texts(status, "stdout")).toEqual(["out1", "out2", "tail-without-newline"]);
    expect(texts(status, "stderr")).toEqual(["err1"]);
    expect(status.logs.map((l: { sequence: number }) => l.sequence)).toEqual([0, 1, 2, 3]);
  });

  it("passes arguments, environment and files to the script, and keeps the runner token from it", async () => {
    const m = f.machine();
    await f.runner(m);
    const status = await run(m, {
      scriptBody: 'echo "args:$#:$1:$2"; echo "env:$GREETING"; cat config.json; echo; echo "token:${TENDRIL_RUNNER_TOKEN:-none}"',
      arguments: ["first arg", "b"],
      environment: { GREETING: "hi there" },
      files: [{ name: "config.json", contents: Buffer.from('{"a":1}').toString("base64") }],
    });
    expect(status.exitCode).toBe(0);
    expect(texts(status, "stdout")).toEqual(["args:2:first arg:b", "env:hi there", '{"a":1}', "token:none"]);
  });

  it("runs scripts with sh, and fails with -41 and a clear message when the shell is missing", async () => {
    const m = f.machine();
    await f.runner(m, { env: { PATH: "/usr/bin:/bin" } });
    const sh = await run(m, { scriptBody: 'echo "shell:$(cat /proc/$$/comm)"', shell: "sh" });
    expect(sh.exitCode).toBe(0);
    expect(texts(sh, "stdout")).toEqual(["shell:sh"]);
    if (!existsSync("/usr/bin/pwsh") && !existsSync("/bin/pwsh")) {
      const pwsh = await run(m, { scriptBody: "Write-Output hi", shell: "pwsh" });
      expect(pwsh.exitCode).toBe(-41);
      expect(texts(pwsh, "debug").join("\n")).toMatch(/pwsh/);
    }
  });

  it("delivers 5,000 lines once each, in order, across pages", async () => {
    const m = f.machine();
    await f.runner(m);
    const started = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "for i in $(seq 1 5000); do echo line-$i; done" });
    await f.completed(m, started.body.ticket);
    const seen: string[] = [];
    let next = 0;
    let pages = 0;
    for (;;) {
      const page = await f.api("GET", `/api/v1/machines/${m}/scripts/${started.body.ticket}?logSequence=${next}&limit=700`);
      expect(page.status).toBe(200);
      expect(page.body.logs.length).toBeLessThanOrEqual(700);
      for (const line of page.body.logs) {
        expect(line.sequence).toBe(seen.length);
        seen.push(line.text);
      }
      pages += 1;
      next = page.body.nextLogSequence;
      if (!page.body.hasMoreLogs) break;
    }
    expect(pages).toBe(Math.ceil(5000 / 700));
    expect(seen).toEqual(Array.from({ length: 5000 }, (_, i) => `line-${i + 1}`));
  });

  it("holds the start response until the script completes when waitMs is given", async () => {
    const m = f.machine();
    await f.runner(m);
    const response = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "echo waited", waitMs: 20_000 });
    expect(response.status).toBe(201);
    expect(response.body).toMatchObject({ state: "complete", exitCode: 0 });
    expect(response.body.logs.map((l: { text: string }) => l.text)).toEqual(["waited"]);
  });

  it("answers waitMs with the current status when the time passes first", async () => {
    const m = f.machine();
    await f.register(m); // no runner: the script stays pending
    const response = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "true", waitMs: 300 });
    expect(response.status).toBe(201);
    expect(response.body).toMatchObject({ state: "pending", exitCode: null });
  });

  it("streams output live as server-sent events, then the final status, and resumes from logSequence", async () => {
    const m = f.machine();
    await f.runner(m);
    const release = join(f.scratch, `${m}-release`);
    const started = await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      scriptBody: `echo one; echo two; while [ ! -f '${release}' ]; do sleep 0.05; done; echo three`,
    });
    const ticket = started.body.ticket;
    const response = await fetch(`${f.cp.url}/api/v1/machines/${m}/scripts/${ticket}/stream`, {
      headers: { authorization: `Bearer ${f.cp.serverToken}` },
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toMatch(/text\/event-stream/);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    // The first lines arrive while the script is still running.
    await waitFor(async () => {
      const { value } = await reader.read();
      text += decoder.decode(value, { stream: true });
      return text.includes('"text":"two"');
    }, { timeoutMs: 15_000, what: "live lines" });
    const statusNow = await f.api("GET", `/api/v1/machines/${m}/scripts/${ticket}`);
    expect(statusNow.body.state).toBe("running");
    const { writeFileSync } = await import("node:fs");
    writeFileSync(release, "");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    const events = text
      .split("\n\n")
      .filter((block) => block.startsWith("event:"))
      .map((block) => ({ event: /^event: (\w+)/.exec(block)![1], data: JSON.parse(/\ndata: (.*)/.exec(block)![1]!) }));
    expect(events.filter((e) => e.event === "log").map((e) => e.data.text)).toEqual(["one", "two", "three"]);
    expect(events[events.length - 1]).toMatchObject({ event: "status", data: { state: "complete", exitCode: 0 } });
    expect(events[events.length - 1]!.data.logs).toBeUndefined();

    const resumed = await fetch(`${f.cp.url}/api/v1/machines/${m}/scripts/${ticket}/stream?logSequence=2`, {
      headers: { authorization: `Bearer ${f.cp.serverToken}` },
    }).then((r) => r.text());
    expect(resumed.match(/event: log/g)).toHaveLength(1);
    expect(resumed).toContain('"text":"three"');
    expect(resumed).toContain("event: status");
  });

  it("deletes a complete script with DELETE, returning the remaining logs, and removes its workspace", async () => {
    const m = f.machine();
    const runner = await f.runner(m);
    const status = await run(m, {
      ticket: "to-delete",
      scriptBody: "echo a; echo b",
      files: [{ name: "data.txt", contents: Buffer.from("x").toString("base64") }],
    });
    expect(status.exitCode).toBe(0);
    expect(runFoldersOf(runner.workDir, "to-delete")).toHaveLength(1);
    const deleted = await f.api("DELETE", `/api/v1/machines/${m}/scripts/to-delete?logSequence=1`);
    expect(deleted.status).toBe(200);
    expect(deleted.body).toMatchObject({ ticket: "to-delete", state: "complete", exitCode: 0 });
    expect(deleted.body.logs.map((l: { text: string }) => l.text)).toEqual(["b"]);
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/to-delete`)).status).toBe(404);
    await waitFor(() => runFoldersOf(runner.workDir, "to-delete").length === 0, { what: "the workspace to be removed" });
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.scripts.map((s: { ticket: string }) => s.ticket)).not.toContain("to-delete");
  });

  it("refuses to delete a script that is not complete", async () => {
    const m = f.machine();
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "waiting", scriptBody: "true" });
    const response = await f.api("DELETE", `/api/v1/machines/${m}/scripts/waiting`);
    expect(response.status).toBe(409);
    expect(response.body.error.code).toBe("not_complete");
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/waiting`)).body.state).toBe("pending");
  });

  it("shows the runner, its scripts newest first and the mutexes in the machine view", async () => {
    const m = f.machine();
    await f.runner(m);
    await run(m, { ticket: "first", scriptBody: "true", taskId: "ServerTasks-1" });
    await run(m, { ticket: "second", scriptBody: "true" });
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.status).toBe(200);
    expect(view.body.machineId).toBe(m);
    expect(view.body.runner).toMatchObject({ connected: true, version: expect.any(String) });
    expect(view.body.runner.capabilities).toContain("script.v1");
    expect(view.body.scripts.map((s: { ticket: string }) => s.ticket)).toEqual(["second", "first"]);
    expect(view.body.scripts[1]).toMatchObject({ state: "complete", taskId: "ServerTasks-1", isolation: "full", mutexName: "RunningScript" });
    expect(view.body.mutexes).toEqual([]);
    const list = await f.api("GET", "/api/v1/machines");
    const listed = list.body.machines.find((x: { machineId: string }) => x.machineId === m);
    expect(listed).toBeDefined();
    expect(listed.scripts).toBeUndefined();
  });
});
