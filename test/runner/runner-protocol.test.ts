/**
 * The runner against a fake control plane: a real `ws` server on 127.0.0.1 that speaks the protocol, with
 * real scripts running as real processes.
 */
import { existsSync, readdirSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CAPABILITIES, PROTOCOL_VERSION } from "../../shared/protocol.js";
import { backoffDelay, runnerSocketUrl } from "../../runner/connection.js";
import type { RunnerInput } from "../../runner/index.js";
import { isAlive, killGroup, removeDir, tempDir } from "../helpers/processes.js";
import {
  setUpRunnerTest,
  startConnectedRunner,
  startTestRunner as startAgainst,
  tearDownRunnerTest,
  runDir,
  waitFor,
  workspaceOf,
  within,
  type FakeControlPlane,
  type TestRunner,
} from "./fake-control-plane.js";

// ---------------------------------------------------------------------------------------------------
// per-test setup

let plane: FakeControlPlane;
let workDir: string;

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("runner"));
});

// Safety net: every test stops its own processes, by pid.
afterEach(() => tearDownRunnerTest({ plane, workDir }));

function startTestRunner(overrides: Partial<RunnerInput> = {}): Promise<TestRunner> {
  return startAgainst(plane, workDir, overrides);
}

/**
 * A runner whose first connection is welcomed (by the test itself while `plane.autoWelcome` is off), with that
 * connection; `environment` replaces the runner's own (what its scripts inherit).
 */
function connectedRunner(overrides: Partial<RunnerInput> = {}, environment?: NodeJS.ProcessEnv) {
  return startConnectedRunner(plane, workDir, overrides, environment === undefined ? {} : { environment });
}

// ---------------------------------------------------------------------------------------------------

describe("runner handshake", () => {
  it("connects to the machine's runner path with the runner token and says hello", async () => {
    plane.autoWelcome = false;
    const { handle } = await startTestRunner();
    const connection = await plane.connection(1);
    const hello = await connection.frame("hello");
    expect(plane.upgrades[0]).toMatchObject({ path: "/api/v1/machines/m1/runner", authorization: "Bearer runner-token" });
    expect(hello).toEqual({
      type: "hello",
      protocol: PROTOCOL_VERSION,
      runnerId: handle.runnerId,
      version: "9.9.9",
      capabilities: [...CAPABILITIES],
      killGraceMs: expect.any(Number),
      inventory: [],
    });
    expect(handle.connected).toBe(false);
    connection.welcome();
    await waitFor(() => handle.connected, "the runner to count itself connected");
    expect(connection.invalid).toEqual([]);
  });

  it("sends nothing but hello and heartbeats before the welcome", async () => {
    plane.autoWelcome = false;
    await startTestRunner({ heartbeatMs: 20 });
    const connection = await plane.connection(1);
    await connection.frame("hello");
    // A dispatch before the welcome violates the protocol: the runner closes with 4403.
    connection.dispatch("t1", 1, "echo hi");
    await waitFor(() => connection.closed, "the runner to close the socket");
    expect(connection.closed?.code).toBe(4403);
    expect(connection.frames.map((frame) => frame.type)).toEqual(["hello"]);
    expect(plane.pids()).toEqual([]);
  });

  it("reconnects with a fresh hello after the connection drops", async () => {
    const { handle } = await startTestRunner();
    const first = await plane.connection(1);
    await first.frame("hello");
    first.ws.terminate();
    const second = await plane.connection(2);
    const hello = await second.frame("hello");
    expect(hello.runnerId).toBe(handle.runnerId);
    await waitFor(() => handle.connected, "the runner to be connected again");
  });

  it("retries at the maximum backoff after the control plane refuses the upgrade with 401", async () => {
    plane.refuse.push(401);
    const { logs } = await startTestRunner({ reconnectBaseMs: 1, reconnectMaxMs: 400 });
    await plane.connection(1);
    const [refused, accepted] = plane.upgrades;
    expect(accepted!.at - refused!.at).toBeGreaterThanOrEqual(350);
    expect(logs.some((line) => line.startsWith("error:") && line.includes("HTTP 401") && line.includes("tendril register m1"))).toBe(true);
  });

  it("closes the socket with 4400 when the control plane sends a bad frame, and reconnects", async () => {
    const { logs } = await startTestRunner();
    const first = await plane.connection(1);
    await first.frame("hello");
    first.ws.send("{not json");
    await waitFor(() => first.closed, "the runner to close the socket");
    expect(first.closed?.code).toBe(4400);
    await plane.connection(2);
    expect(logs.some((line) => line.startsWith("error:") && line.includes("bad frame"))).toBe(true);
  });

  it.each([
    [4000, "replaced"],
    [4001, "token_revoked"],
  ] as const)("stops for good when the control plane closes the socket with %i", async (code, kind) => {
    const { handle, fatal, connection } = await connectedRunner();
    connection.ws.close(code, "test");
    const stopped = await within(handle.stopped, "the runner to stop");
    expect(stopped.kind).toBe(kind);
    expect(fatal).toHaveLength(1);
    expect(handle.connected).toBe(false);
    // Stopped means no reconnect timer either: nothing can open a second socket.
    expect(plane.upgrades).toHaveLength(1);
  });

  it("closes the socket with 1000 on stop and leaves running scripts alone", async () => {
    const { handle, connection } = await connectedRunner();
    connection.dispatch("t1", 1, "echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    await within(handle.stop(), "stop");
    await waitFor(() => connection.closed, "the close");
    expect(connection.closed?.code).toBe(1000);
    expect(isAlive(pid)).toBe(true);
    killGroup(pid);
    await waitFor(() => !isAlive(pid), "the script to die");
  });
});

describe("runner heartbeat", () => {
  it("sends ping frames and stays connected while the control plane answers", async () => {
    const { handle } = await startTestRunner({ heartbeatMs: 20, deadAfterMs: 200 });
    const connection = await plane.connection(1);
    // 20 pings take about 400 ms: twice the dead-connection limit.
    await waitFor(() => connection.pings >= 20, "20 pings");
    expect(plane.connections).toHaveLength(1);
    expect(connection.closed).toBeUndefined();
    expect(handle.connected).toBe(true);
  });

  it("drops a silent connection after deadAfterMs and reconnects", async () => {
    plane.answerPings = false;
    const { logs } = await startTestRunner({ heartbeatMs: 20, deadAfterMs: 200 });
    const first = await plane.connection(1);
    await first.frame("hello");
    const second = await plane.connection(2, 3_000);
    await second.frame("hello");
    await waitFor(() => first.closed, "the first socket to close");
    expect(logs.some((line) => line.includes("No frame from the control plane for 200 ms"))).toBe(true);
  });
});

describe("runner scripts", () => {
  it("runs a dispatched script and reports started, numbered output and then its exit", async () => {
    const { connection } = await connectedRunner({}, { ...process.env, TENDRIL_RUNNER_TOKEN: "must-not-leak" });
    connection.dispatch("t1", 7, 'echo "args: $*"; echo "token=${TENDRIL_RUNNER_TOKEN-unset} env=$GREETING ticket=$TENDRIL_TICKET"; echo oops >&2; cat data.txt; exit 5', {
      arguments: ["a", "b c"],
      environment: { GREETING: "hello" },
      files: [{ name: "data.txt", contents: Buffer.from("from a file\n").toString("base64") }],
    });
    const started = await connection.frame("started");
    expect(started).toMatchObject({ ticket: "t1", fence: 7 });
    expect(started.pid).toBeGreaterThan(0);
    const exit = await connection.frame("exit");
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 7, lineCount: 4, outcome: { kind: "exited", code: 5 } });
    const lines = connection.lines("t1");
    // stdout and stderr are separate pipes: only the order within each stream is fixed.
    expect(lines.map((line) => line.split(":")[0])).toEqual(["0", "1", "2", "3"]);
    expect(lines.map((line) => line.replace(/^\d+:/, "")).sort()).toEqual(
      ["stdout:args: a b c", "stdout:token=unset env=hello ticket=t1", "stderr:oops", "stdout:from a file"].sort(),
    );
    // The exit comes after every output frame.
    for (const output of connection.all("output", "t1")) expect(connection.indexOf(output)).toBeLessThan(connection.indexOf(exit));
    expect(connection.indexOf(started)).toBeLessThan(connection.indexOf(connection.all("output", "t1")[0]!));
    expect(connection.invalid).toEqual([]);
  });

  it("runs a redelivered dispatch of the same ticket and fence only once", async () => {
    const { connection } = await connectedRunner();
    connection.dispatch("t1", 1, "echo once; sleep 0.2");
    connection.dispatch("t1", 1, "echo once; sleep 0.2");
    await connection.frame("exit");
    expect(connection.all("started")).toHaveLength(1);
    expect(connection.lines("t1")).toEqual(["0:stdout:once"]);
  });

  it("reports a missing shell as one debug line and a failed exit, without started", async () => {
    const emptyDir = await tempDir("empty");
    try {
      const { connection } = await connectedRunner({}, { PATH: emptyDir });
      connection.dispatch("t1", 1, "Write-Output hi", { shell: "pwsh" });
      const exit = await connection.frame("exit");
      const message = 'The shell "pwsh" was not found on this machine\'s PATH.';
      expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 1, lineCount: 1, outcome: { kind: "failed", message } });
      expect(connection.lines("t1")).toEqual([`0:debug:${message}`]);
      expect(connection.all("started")).toEqual([]);
    } finally {
      await removeDir(emptyDir);
    }
  });

  it("keeps output and the exit until acknowledged, and resends exactly from the welcome's nextSequence", async () => {
    plane.autoWelcome = false;
    const { connection: first } = await connectedRunner();
    first.dispatch("t1", 3, "for i in 0 1 2 3 4; do echo line$i; done");
    await first.frame("exit");
    first.send({ type: "ack", ticket: "t1", fence: 3, nextSequence: 2 });
    // The ack is processed before the next frame: wait for a round trip through a second script.
    await first.roundTrip("t2", 4);
    first.send({ type: "exit_ack", ticket: "t2", fence: 4 });
    first.ws.terminate();

    const second = await plane.connection(2);
    const hello = await second.frame("hello");
    expect(hello.inventory).toEqual([{ ticket: "t1", fence: 3, nextSequence: 2, exited: true }]);
    // The control plane stored line 2 as well; only its acknowledgement was lost.
    second.welcome([{ ticket: "t1", fence: 3, action: "continue", nextSequence: 3 }]);
    const exit = await second.frame("exit");
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 3, lineCount: 5, outcome: { kind: "exited", code: 0 } });
    expect(second.lines("t1")).toEqual(["3:stdout:line3", "4:stdout:line4"]);
    expect(second.all("started")).toEqual([]);

    second.send({ type: "exit_ack", ticket: "t1", fence: 3 });
    await second.roundTrip("t3", 5);
    second.send({ type: "exit_ack", ticket: "t3", fence: 5 });
    await second.roundTrip("t4", 6);
    second.ws.terminate();
    const third = await plane.connection(3);
    expect((await third.frame("hello")).inventory).toEqual([{ ticket: "t4", fence: 6, nextSequence: 0, exited: true }]);
  });

  it("resends the output a running script wrote while disconnected, then its exit, after the welcome", async () => {
    plane.autoWelcome = false;
    const { connection: first, logs } = await connectedRunner();
    first.dispatch("t1", 1, "echo before; while [ ! -e go ]; do sleep 0.02; done; echo after1; echo after2 >&2");
    await first.frame("started");
    await first.frame("output");
    first.send({ type: "ack", ticket: "t1", fence: 1, nextSequence: 1 });
    first.ws.terminate();

    const second = await plane.connection(2);
    const hello = await second.frame("hello");
    // Whether the ack arrived before the drop is a race; either answer is a valid inventory.
    expect(hello.inventory).toHaveLength(1);
    expect(hello.inventory[0]).toMatchObject({ ticket: "t1", fence: 1, exited: false });
    // Let the script finish while the runner waits for the welcome: nothing may be sent yet.
    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    await waitFor(() => logs.some((line) => line.includes("t1 (fence 1) ended: exited with code 0")), "the runner to see the exit");
    expect(second.frames.map((frame) => frame.type)).toEqual(["hello"]);

    second.welcome([{ ticket: "t1", fence: 1, action: "continue", nextSequence: 1 }]);
    const exit = await second.frame("exit");
    expect(exit).toMatchObject({ lineCount: 3, outcome: { kind: "exited", code: 0 } });
    // stdout and stderr are separate pipes: which line got sequence 1 depends on which pipe was read first.
    expect(second.lines("t1").map((line) => line.split(":")[0])).toEqual(["1", "2"]);
    expect(second.lines("t1").map((line) => line.replace(/^\d+:/, "")).sort()).toEqual(["stderr:after2", "stdout:after1"]);
    // An ack that arrived proves started arrived before it: then it is not repeated; otherwise it is.
    expect(second.all("started")).toHaveLength(hello.inventory[0]!.nextSequence === 1 ? 0 : 1);
  });

  it("sends started again after a reconnect when no ack showed that it arrived", async () => {
    plane.autoWelcome = false;
    const { connection: first } = await connectedRunner();
    first.dispatch("t1", 1, "while [ ! -e go ]; do sleep 0.02; done; echo done");
    const started = await first.frame("started");
    first.ws.terminate();
    const second = await plane.connection(2);
    await second.frame("hello");
    second.welcome([{ ticket: "t1", fence: 1, action: "continue", nextSequence: 0 }]);
    expect(await second.frame("started")).toEqual(started);
    second.send({ type: "ack", ticket: "t1", fence: 1, nextSequence: 0 });
    // A round trip through another script: the ack has been handled by now.
    await second.roundTrip("t2", 2);
    second.ws.terminate();
    const third = await plane.connection(3);
    await third.frame("hello");
    third.welcome([{ ticket: "t1", fence: 1, action: "continue", nextSequence: 0 }, { ticket: "t2", fence: 2, action: "forget", nextSequence: 0 }]);
    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    const exit = await third.frame("exit");
    expect(exit).toMatchObject({ ticket: "t1", lineCount: 1 });
    expect(third.all("started")).toEqual([]);
  });

  it("ignores a repeated dispatch of a script it already ran to the end and forgot", async () => {
    const { logs, connection } = await connectedRunner();
    connection.dispatch("t1", 1, "echo once");
    await connection.frame("exit");
    connection.send({ type: "exit_ack", ticket: "t1", fence: 1 });
    connection.dispatch("t1", 1, "echo once");
    await connection.roundTrip("t2", 2);
    expect(connection.all("started", "t1")).toHaveLength(1);
    expect(connection.all("exit", "t1")).toHaveLength(1);
    expect(connection.lines("t1")).toEqual(["0:stdout:once"]);
    expect(logs.some((line) => line.includes("Ignoring a repeated dispatch of t1 (fence 1)"))).toBe(true);
  });

  it("never logs the runner token or the values of a request's environment, not even in a failure", async () => {
    const token = "runner-token-SECRET-4711";
    plane.refuse.push(401);
    const { logs, connection } = await connectedRunner({ token, reconnectMaxMs: 50 });
    expect(connection.request.headers.authorization).toBe(`Bearer ${token}`);
    connection.dispatch("t1", 1, 'echo "the script may print its own: $API_KEY"', { environment: { API_KEY: "env-secret-value-1" } });
    await connection.frame("exit", (frame) => frame.ticket === "t1");
    connection.dispatch("t2", 2, "true", { environment: { API_KEY: "env-secret-value-2", BROKEN: "nul\u0000env-secret-value-3" } });
    const failed = await connection.frame("exit", (frame) => frame.ticket === "t2");
    expect(failed.outcome.kind).toBe("failed");
    expect(JSON.stringify(failed)).not.toContain("env-secret-value");
    expect(connection.lines("t1")).toEqual(["0:stdout:the script may print its own: env-secret-value-1"]);
    expect(logs.some((line) => line.includes("HTTP 401"))).toBe(true);
    expect(logs.some((line) => line.includes("t2 (fence 2) could not run"))).toBe(true);
    const everything = logs.join("\n");
    expect(everything).not.toContain(token);
    expect(everything).not.toContain("env-secret-value");
  });

  it("cancels a running script with SIGTERM to its group and reports cancelled with a debug line", async () => {
    const { connection } = await connectedRunner();
    connection.dispatch("t1", 1, "echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 1, lineCount: 2, outcome: { kind: "cancelled", signals: ["SIGTERM"] } });
    expect(connection.lines("t1")).toEqual(["0:stdout:ready", "1:debug:Cancelled: sent SIGTERM to the process group."]);
    await waitFor(() => !isAlive(pid), "the script to die");
  });

  it("escalates a cancel to SIGKILL when the script ignores SIGTERM for killGraceMs", async () => {
    const { connection } = await connectedRunner({ killGraceMs: 300 });
    connection.dispatch("t1", 1, "trap '' TERM; echo ready; while :; do sleep 0.05; done");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    connection.send({ type: "cancel", ticket: "t1", fence: 1 });
    const exit = await connection.frame("exit");
    expect(exit.outcome).toEqual({ kind: "cancelled", signals: ["SIGTERM", "SIGKILL"] });
    expect(connection.lines("t1").at(-1)).toBe("1:debug:Cancelled: sent SIGTERM to the process group, then SIGKILL after 300 ms.");
    await waitFor(() => !isAlive(pid), "the script to die");
  });

  it("abandons a script without killing it and reports nothing more for it", async () => {
    const { connection } = await connectedRunner();
    connection.dispatch("t1", 1, "echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: false });
    const framesAtAbandon = connection.frames.length;
    // A round trip through another script proves the abandon was handled.
    await connection.roundTrip("t2", 2);
    expect(isAlive(pid)).toBe(true);
    killGroup(pid);
    await waitFor(() => !isAlive(pid), "the abandoned script to die");
    await connection.roundTrip("t3", 3);
    expect(connection.frames.slice(framesAtAbandon).filter((frame) => "ticket" in frame && frame.ticket === "t1")).toEqual([]);
  });

  it("abandons a script with killProcess by killing its process group", async () => {
    const { connection } = await connectedRunner();
    connection.dispatch("t1", 1, "trap '' TERM; echo ready; sleep 600");
    const { pid } = await connection.frame("started");
    await connection.frame("output");
    connection.send({ type: "abandon", ticket: "t1", fence: 1, killProcess: true });
    await waitFor(() => !isAlive(pid), "the abandoned script to die");
    await connection.roundTrip("t2", 2);
    expect(connection.all("exit", "t1")).toEqual([]);
  });

  it("kills the tree and drops a script the welcome answers with cancel", async () => {
    plane.autoWelcome = false;
    const { connection: first } = await connectedRunner();
    first.dispatch("t1", 1, "echo ready; sleep 600");
    const { pid } = await first.frame("started");
    await first.frame("output");
    first.ws.terminate();
    const second = await plane.connection(2);
    await second.frame("hello");
    second.welcome([{ ticket: "t1", fence: 1, action: "cancel", nextSequence: 0 }]);
    await waitFor(() => !isAlive(pid), "the script to die");
    second.ws.terminate();
    const third = await plane.connection(3);
    expect((await third.frame("hello")).inventory).toEqual([]);
    expect(second.all("output")).toEqual([]);
    expect(second.all("exit")).toEqual([]);
  });

  it("releases a script the welcome answers with abandon, and forgets one answered with forget", async () => {
    plane.autoWelcome = false;
    const { connection: first } = await connectedRunner();
    first.dispatch("t1", 1, "echo ready; sleep 600");
    first.dispatch("t2", 2, "echo done");
    const { pid } = await first.frame("started", (frame) => frame.ticket === "t1");
    await first.frame("exit", (frame) => frame.ticket === "t2");
    first.ws.terminate();
    const second = await plane.connection(2);
    expect((await second.frame("hello")).inventory.map((item) => item.ticket).sort()).toEqual(["t1", "t2"]);
    second.welcome([
      { ticket: "t1", fence: 1, action: "abandon", nextSequence: 0 },
      { ticket: "t2", fence: 2, action: "forget", nextSequence: 0 },
    ]);
    second.ws.terminate();
    const third = await plane.connection(3);
    expect((await third.frame("hello")).inventory).toEqual([]);
    expect(isAlive(pid)).toBe(true);
    killGroup(pid);
    await waitFor(() => !isAlive(pid), "the abandoned script to die");
  });

  it("ignores messages for a ticket and fence it does not track", async () => {
    const { connection } = await connectedRunner();
    connection.send({ type: "ack", ticket: "nope", fence: 1, nextSequence: 5 });
    connection.send({ type: "exit_ack", ticket: "nope", fence: 1 });
    connection.send({ type: "cancel", ticket: "nope", fence: 1 });
    connection.send({ type: "abandon", ticket: "nope", fence: 1, killProcess: true });
    connection.dispatch("t1", 1, "echo fine");
    await connection.frame("exit");
    expect(connection.closed).toBeUndefined();
    expect(connection.lines("t1")).toEqual(["0:stdout:fine"]);
  });

  it("deletes a run folder on delete_workspace, and only after the ticket's script ended", async () => {
    const { connection } = await connectedRunner();
    connection.dispatch("t1", 1, "echo ready; while [ ! -e go ]; do sleep 0.02; done; cat data.txt", {
      files: [{ name: "data.txt", contents: Buffer.from("still here").toString("base64") }],
    });
    await connection.frame("output");
    const dir = runDir(workDir, "t1");
    connection.send({ type: "delete_workspace", ticket: "t1" });
    // A round trip through another script: the delete request has been handled by now.
    await connection.roundTrip("t2", 2);
    await writeFile(join(dir, "work", "go"), "");
    const exit = await connection.frame("exit", (frame) => frame.ticket === "t1");
    expect(exit.outcome).toEqual({ kind: "exited", code: 0 });
    expect(connection.lines("t1")).toEqual(["0:stdout:ready", "1:stdout:still here"]);
    await waitFor(() => !existsSync(dir), "the run folder, script file included, to be deleted");

    const finished = runDir(workDir, "t2");
    connection.send({ type: "delete_workspace", ticket: "t2" });
    await waitFor(() => !existsSync(finished), "the finished ticket's run folder to be deleted");
    expect(readdirSync(join(workDir, "runs"))).toEqual([]);
  });
});

describe("runner connection helpers", () => {
  it("keeps full-jitter backoff below the capped exponential ceiling", () => {
    expect(backoffDelay(0, 200, 10_000, () => 0.999)).toBe(199);
    expect(backoffDelay(3, 200, 10_000, () => 0.5)).toBe(800);
    expect(backoffDelay(10, 200, 10_000, () => 0.999)).toBe(9_990);
    expect(backoffDelay(1_000, 200, 10_000, () => 0)).toBe(0);
  });

  it("turns the control plane's http(s) URL into the machine's runner socket URL", () => {
    expect(runnerSocketUrl("http://127.0.0.1:8787", "web-01")).toBe("ws://127.0.0.1:8787/api/v1/machines/web-01/runner");
    expect(runnerSocketUrl("https://tendril.example.com/base/", "m.1")).toBe("wss://tendril.example.com/base/api/v1/machines/m.1/runner");
    expect(() => runnerSocketUrl("ftp://example.com", "m")).toThrow(/http/);
  });
});
