/**
 * Protocol versions: a runner offers version 2 in its hello; a control plane that knows only version 1 refuses it
 * during the handshake (4426 for the protocol number, 4400 for a field it does not know), and the runner says hello
 * again at once in version 1 and speaks version 1 on that connection (nothing version 2 adds). A later reconnect
 * offers version 2 again. The fake control plane plays today's control plane (`speakVersion1Only`): any version 2
 * field or message it receives is refused as a bad frame. Real runners and processes; every process stopped by pid.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { forProtocol, outcomeForVersion1 } from "../../runner/versions.js";
import type { RunnerMessage } from "../../shared/protocol.js";
import { isAlive } from "../helpers/processes.js";
import {
  ScriptTag,
  runDir,
  setUpRunnerTest,
  startConnectedRunner,
  startTestRunner,
  tearDownRunnerTest,
  waitFor,
  workspaceOf,
  type FakeControlPlane,
} from "./fake-control-plane.js";

let plane: FakeControlPlane;
let workDir: string;
let tag: ScriptTag;

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("versions"));
  tag = new ScriptTag();
});

afterEach(() => tearDownRunnerTest({ plane, workDir }, tag));

describe("a runner and a control plane of version 1", () => {
  it("says hello in version 2 first, then at once in version 1 when refused with 4426, and is welcomed in version 1", async () => {
    plane.speakVersion1Only();
    const { handle } = await startTestRunner(plane, workDir);
    const first = await plane.connection(1);
    expect((await first.frame("hello")).protocol).toBe(2);
    await waitFor(() => first.closed, "the refusal");
    expect(first.refused).toEqual([4426]);
    const second = await plane.connection(2);
    const hello = await second.frame("hello");
    expect(hello).toEqual({ type: "hello", protocol: 1, runnerId: handle.runnerId, version: "9.9.9", capabilities: ["script.v1", "script.abandon"], inventory: [] });
    await waitFor(() => handle.connected, "the welcome");
    // Refused at once, not after a backoff.
    expect(plane.upgrades[1]!.at - plane.upgrades[0]!.at).toBeLessThan(1_000);
  });

  it("falls back to version 1 too when the refusal is 4400 for a version 2 field", async () => {
    // A control plane that takes the protocol number but not the fields version 2 adds.
    plane.strictVersion1 = true;
    plane.protocols = [1, 2];
    const { handle } = await startTestRunner(plane, workDir);
    const first = await plane.connection(1);
    await waitFor(() => first.closed, "the refusal");
    expect(first.refused).toEqual([4400]);
    const hello = await (await plane.connection(2)).frame("hello");
    expect(hello.protocol).toBe(1);
    expect(hello.killGraceMs).toBeUndefined();
    await waitFor(() => handle.connected, "the welcome");
  });

  it("speaks version 1 on that connection: started without start time and boot, no draining", async () => {
    plane.speakVersion1Only();
    const { handle } = await startTestRunner(plane, workDir);
    await waitFor(() => handle.connected, "the welcome");
    const connection = plane.connections.at(-1)!;
    tag.dispatch(connection, "t1", 1, "echo hello; exit 4");
    const started = await connection.frame("started");
    expect(started).toEqual({ type: "started", ticket: "t1", fence: 1, pid: started.pid });
    const exit = await connection.frame("exit");
    expect(exit.outcome).toEqual({ kind: "exited", code: 4 });
    await handle.drain();
    expect(connection.frames.map((frame) => frame.type)).not.toContain("draining");
    expect(connection.closed?.code).toBe(1000);
    expect(connection.refused).toEqual([]);
  });

  it("lists a re-attached script without `reattached`, and follows it to its real exit code", async () => {
    plane.speakVersion1Only();
    plane.welcomeFromLedger = true;
    plane.autoAck = true;
    const { handle } = await startTestRunner(plane, workDir, {}, { reattachPollMs: 20 });
    await waitFor(() => handle.connected, "the welcome");
    tag.dispatch(plane.connections.at(-1)!, "t1", 1, "echo before; while [ ! -e go ]; do sleep 0.01; done; echo after; exit 6");
    const ledger = plane.ledger("t1", 1);
    await waitFor(() => ledger.next === 1, "the first line");
    await handle.stop();
    const count = plane.connections.length;
    const next = await startTestRunner(plane, workDir, {}, { reattachPollMs: 20 });
    await waitFor(() => next.handle.connected, "the second runner's welcome");
    const hellos = plane.connections.slice(count).flatMap((connection) => connection.all("hello"));
    expect(hellos.at(-1)!.inventory).toEqual([{ ticket: "t1", fence: 1, nextSequence: expect.any(Number), exited: false }]);
    writeFileSync(join(workspaceOf(workDir, "t1"), "go"), "");
    const exit = await waitFor(() => ledger.exits[0], "the exit");
    expect(exit).toEqual({ type: "exit", ticket: "t1", fence: 1, lineCount: 2, outcome: { kind: "exited", code: 6 } });
    expect(ledger.violations).toEqual([]);
  });

  it("reports a script it could not re-attach to as failed, not lost, after stopping it (version 1 has no lost)", async () => {
    plane.speakVersion1Only();
    const { handle } = await startTestRunner(plane, workDir);
    await waitFor(() => handle.connected, "the welcome");
    tag.dispatch(plane.connections.at(-1)!, "t1", 1, "echo ready; sleep 600");
    const { pid } = await plane.connections.at(-1)!.frame("started");
    await plane.connections.at(-1)!.frame("output");
    await handle.stop();
    // As a runner that predates wrappers left it: no `reattach` in its record.
    const file = join(runDir(workDir, "t1"), "record.json");
    const { reattach: _reattach, ...record } = JSON.parse(readFileSync(file, "utf8"));
    writeFileSync(file, JSON.stringify(record));
    plane.welcomeFromLedger = true;
    const next = await startTestRunner(plane, workDir);
    await waitFor(() => next.handle.connected, "the second runner's welcome");
    const connection = plane.connections.at(-1)!;
    const exit = await connection.frame("exit");
    expect(exit.outcome).toEqual({
      kind: "failed",
      message: "The runner restarted and could not follow this script to its end: its result is unknown. It stopped what was left of it (SIGTERM).",
    });
    expect(isAlive(pid)).toBe(false);
    expect(plane.connections.every((each) => each.refused.filter((code) => code !== 4426).length === 0)).toBe(true);
  });

  it("offers version 2 again after a later reconnect, and speaks it once the control plane was upgraded", async () => {
    plane.speakVersion1Only();
    const { handle } = await startTestRunner(plane, workDir);
    await waitFor(() => handle.connected, "the welcome");
    expect(plane.connections).toHaveLength(2);
    // The control plane is upgraded (a deploy drops every socket).
    plane.protocols = [1, 2];
    plane.strictVersion1 = false;
    plane.connections[1]!.cut(1001);
    const upgraded = await plane.connection(3);
    expect((await upgraded.frame("hello")).protocol).toBe(2);
    await waitFor(() => handle.connected, "the welcome in version 2");
    tag.dispatch(upgraded, "t1", 1, "true");
    const started = await upgraded.frame("started");
    expect(started.startTime).toEqual(expect.any(Number));
    expect(upgraded.refused).toEqual([]);
  });
});

describe("messages for a version", () => {
  const lost: RunnerMessage = { type: "exit", ticket: "t1", fence: 1, lineCount: 3, outcome: { kind: "lost", signals: ["SIGTERM", "SIGKILL"], survivors: [{ pid: 42, startTime: 7 }] } };

  it("leaves every version 2 message as it is for version 2", () => {
    expect(forProtocol(lost, 2)).toBe(lost);
    expect(forProtocol({ type: "draining" }, 2)).toEqual({ type: "draining" });
  });

  it("shapes hello, started, a lost exit and draining for version 1, and leaves the others alone", () => {
    const hello: RunnerMessage = {
      type: "hello",
      protocol: 2,
      runnerId: "r",
      version: "1",
      capabilities: [],
      killGraceMs: 10,
      inventory: [{ ticket: "t1", fence: 1, nextSequence: 0, exited: false, reattached: true }],
    };
    expect(forProtocol(hello, 1)).toEqual({ type: "hello", protocol: 1, runnerId: "r", version: "1", capabilities: [], inventory: [{ ticket: "t1", fence: 1, nextSequence: 0, exited: false }] });
    expect(forProtocol({ type: "started", ticket: "t1", fence: 1, pid: 5, startTime: 1, bootId: "b" }, 1)).toEqual({ type: "started", ticket: "t1", fence: 1, pid: 5 });
    expect(forProtocol(lost, 1)).toEqual({
      ...lost,
      outcome: {
        kind: "failed",
        message:
          "The runner restarted and could not follow this script to its end: its result is unknown. It stopped what was left of it (SIGTERM, SIGKILL). A process of it would not die and may still be running: pid 42.",
      },
    });
    expect(forProtocol({ type: "draining" }, 1)).toBeUndefined();
    const exit: RunnerMessage = { type: "exit", ticket: "t1", fence: 1, lineCount: 0, outcome: { kind: "exited", code: 0 } };
    expect(forProtocol(exit, 1)).toEqual(exit);
    expect(outcomeForVersion1({ kind: "cancelled", signals: ["SIGTERM"] })).toEqual({ kind: "cancelled", signals: ["SIGTERM"] });
  });
});
