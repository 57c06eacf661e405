// Processes that may outlive what the control plane knows of them, through the real control plane on workerd with
// runner connections driven by hand: the survivors of a script a restarted runner had to stop (-46), and what the
// next welcome says of abandoned processes (the kill asked for while no runner was there, their start time and boot).
import { describe, expect, it } from "vitest";
import { PROTOCOL_VERSION } from "../../shared/protocol.js";
import { openRunnerSocket, type TestRunnerSocket } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

type Inventory = Array<{ ticket: string; fence: number; nextSequence: number; exited: boolean }>;

/** A runner connection by hand that said hello as `runnerId` and got its welcome. */
async function runnerSocket(machineId: string, token: string, runnerId: string, inventory: Inventory = []): Promise<TestRunnerSocket & { welcome: any }> {
  const socket = await openRunnerSocket(f.cp, machineId, token);
  socket.send({ type: "hello", protocol: PROTOCOL_VERSION, runnerId, version: "0.1.0", capabilities: ["script.v1", "script.abandon"], inventory });
  const welcome = await waitFor(() => socket.messages.find((m) => m.type === "welcome"), { what: "the welcome" });
  return { ...socket, welcome };
}

/** Closes a hand-driven connection and waits until the machine shows no runner. */
async function goAway(machineId: string, socket: TestRunnerSocket): Promise<void> {
  socket.ws.close(1000);
  await socket.closed;
  await waitFor(async () => (await f.api("GET", `/api/v1/machines/${machineId}`)).body.runner.connected === false, { what: "the runner to be gone" });
}

const view = async (machineId: string) => (await f.api("GET", `/api/v1/machines/${machineId}`)).body;

describe("a script that a restarted runner found and had to stop (bug 2)", () => {
  it("stays running under its mutex until the runner reports it lost, then completes with -46 and lists the surviving processes as abandoned as the mutex goes to the next script", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const first = await runnerSocket(m, token, "runner-process-1");
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "main", scriptBody: "sleep 600" });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "next", scriptBody: "echo next" });
    const dispatch = await waitFor(() => first.messages.find((msg) => msg.type === "dispatch" && msg.ticket === "main"), { what: "the dispatch" });
    await goAway(m, first);

    // A new runner process lists the run its predecessor left: it goes on, holding its mutex.
    const second = await runnerSocket(m, token, "runner-process-2", [{ ticket: "main", fence: dispatch.fence, nextSequence: 0, exited: false }]);
    expect(second.welcome.resume).toEqual([{ ticket: "main", fence: dispatch.fence, action: "continue", nextSequence: 0 }]);
    expect((await view(m)).mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["main"], waiting: ["next"] }]);
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/main`)).body.state).toBe("running");
    expect(second.messages.some((msg) => msg.type === "dispatch" && msg.ticket === "next")).toBe(false);

    // It stops the run; two processes will not die.
    const occurred = new Date().toISOString();
    second.send({ type: "output", ticket: "main", fence: dispatch.fence, sequence: 0, lines: [{ source: "debug", text: "Stopping the run a previous runner left.", occurred }] });
    second.send({
      type: "exit",
      ticket: "main",
      fence: dispatch.fence,
      lineCount: 1,
      outcome: { kind: "lost", signals: ["SIGTERM", "SIGKILL"], survivors: [{ pid: 999_991, startTime: 12_345, bootId: "boot-a" }, { pid: 999_992 }] },
    });
    const main = await f.completed(m, "main");
    expect(main.exitCode).toBe(-46);
    expect(main.logs.map((l: { text: string }) => l.text)).toEqual([
      "Stopping the run a previous runner left.",
      "The runner restarted and could not re-attach to this script, so it stopped it; the script's result is unknown.",
      `2 processes of this script would not die and may still be running on machine ${m} (pid 999991, 999992); listed as abandoned until the runner sees them exit.`,
    ]);
    const after = await view(m);
    expect(after.abandoned.map((a: { ticket: string; pid: number }) => [a.ticket, a.pid])).toEqual([
      ["main", 999_991],
      ["main", 999_992],
    ]);
    await waitFor(() => second.messages.find((msg) => msg.type === "dispatch" && msg.ticket === "next"), { what: "the next script's dispatch" });
    // The exit's acknowledgement and the next dispatch come from one decision, but not necessarily in one read.
    await waitFor(() => second.messages.some((msg) => msg.type === "exit_ack" && msg.ticket === "main"), { what: "the exit's acknowledgement" });

    // Each survivor leaves the list when the runner sees it exit, and only that one.
    second.send({ type: "abandoned_exit", ticket: "main", fence: dispatch.fence, pid: 999_992 });
    await waitFor(async () => (await view(m)).abandoned.length === 1, { what: "one survivor to be gone" });
    expect((await view(m)).abandoned.map((a: { pid: number }) => a.pid)).toEqual([999_991]);
    second.ws.close(1000);
  });
});

describe("abandoned processes in the next welcome", () => {
  /** A machine whose script `a` ran on a hand-driven runner that reported its process, then went away. */
  async function abandonedWhileAway(killProcess: boolean) {
    const m = f.machine();
    const token = await f.register(m);
    const first = await runnerSocket(m, token, "runner-process-1");
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "a", scriptBody: "sleep 600" });
    const dispatch = await waitFor(() => first.messages.find((msg) => msg.type === "dispatch" && msg.ticket === "a"), { what: "the dispatch" });
    first.send({ type: "started", ticket: "a", fence: dispatch.fence, pid: 424_242, startTime: 987_654, bootId: "boot-b" });
    await goAway(m, first);
    const abandoned = await f.api("POST", `/api/v1/machines/${m}/scripts/a/abandon`, { killProcess });
    expect(abandoned.body).toMatchObject({ state: "complete", exitCode: -48 });
    return { m, token, fence: dispatch.fence as number };
  }

  it("delivers a kill asked for while no runner was connected with the next welcome, as killProcess on the abandon answer and kill on the watch entry (bug 7)", async () => {
    const { m, token, fence } = await abandonedWhileAway(true);
    const back = await runnerSocket(m, token, "runner-process-1", [{ ticket: "a", fence, nextSequence: 0, exited: false }]);
    expect(back.welcome.resume).toEqual([{ ticket: "a", fence, action: "abandon", nextSequence: 0, killProcess: true }]);
    expect(back.welcome.watch).toEqual([{ ticket: "a", fence, pid: 424_242, startTime: 987_654, bootId: "boot-b", kill: true }]);
    await goAway(m, back);
    // Delivered once: the next welcome still watches the process but asks for no kill.
    const again = await runnerSocket(m, token, "runner-process-2");
    expect(again.welcome.watch).toEqual([{ ticket: "a", fence, pid: 424_242, startTime: 987_654, bootId: "boot-b" }]);
    again.ws.close(1000);
  });

  it("names an abandoned process in the welcome's watch list by its pid, start time and boot id (bug 8)", async () => {
    const { m, token, fence } = await abandonedWhileAway(false);
    const back = await runnerSocket(m, token, "runner-process-2");
    expect(back.welcome.resume).toEqual([]);
    expect(back.welcome.watch).toEqual([{ ticket: "a", fence, pid: 424_242, startTime: 987_654, bootId: "boot-b" }]);
    back.ws.close(1000);
  });
});
