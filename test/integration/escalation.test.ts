// The server side's cancel → abandon escalation, end to end: the SDK and the CLI against the real control
// plane and real runners.
import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { TendrilClient } from "../../client/sdk.js";
import { useControlPlane } from "../helpers/fixture.js";
import { isAlive, pidFrom, pidsInGroup, signalGroup, startTendril } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();
const UNKILLABLE = { env: { TENDRIL_UNSAFE_DISABLE_PROCESS_KILL: "1" } };

const client = () => new TendrilClient({ url: f.cp.url, serverToken: f.cp.serverToken });

describe("executeScript", () => {
  it("resolves as completed when nothing was aborted", async () => {
    const m = f.machine();
    await f.runner(m);
    const lines: string[] = [];
    const result = await client().executeScript(m, { scriptBody: "echo one; echo two; exit 4" }, { onLog: (line) => lines.push(line.text) });
    expect(result).toMatchObject({ outcome: "completed", exitCode: 4 });
    expect(lines).toEqual(["one", "two"]);
  });

  it("cancels on abort and resolves as cancelled when the cancel lands before abandon is needed", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    const controller = new AbortController();
    const running = client().executeScript(
      m,
      { scriptBody: `echo $$ > '${pidFile}'; sleep 600` },
      { signal: controller.signal, abandonAfterCancelMs: 20_000 },
    );
    const pgid = await pidFrom(pidFile);
    controller.abort();
    const result = await running;
    expect(result).toMatchObject({ outcome: "cancelled", exitCode: -43 });
    expect(pidsInGroup(pgid)).toEqual([]);
  });

  it("escalates to abandon after the threshold when the cancel does not land, and the mutex is free again", async () => {
    const m = f.machine();
    await f.runner(m, UNKILLABLE);
    const pidFile = join(f.scratch, `${m}.pid`);
    const controller = new AbortController();
    const events: string[] = [];
    const running = client().executeScript(
      m,
      { scriptBody: `echo $$ > '${pidFile}'; sleep 600` },
      { signal: controller.signal, abandonAfterCancelMs: 500, onEscalation: (event) => events.push(event.type) },
    );
    const pid = await pidFrom(pidFile);
    try {
      controller.abort();
      const result = await running;
      expect(result).toMatchObject({ outcome: "abandoned", exitCode: -48 });
      expect(events).toEqual(["cancel_sent", "abandon_sent"]);
      expect(isAlive(pid)).toBe(true);
      const next = await client().executeScript(m, { scriptBody: "echo next" });
      expect(next).toMatchObject({ outcome: "completed", exitCode: 0 });
    } finally {
      signalGroup(pid, "SIGKILL");
    }
  });
});

describe("tendril run and Ctrl-C", () => {
  it("cancels the script on the first SIGINT and exits 1 with the cancelled code", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    const run = startTendril(["run", "--machine", m, "--url", f.cp.url, "--server-token", f.cp.serverToken, "--", `echo $$ > '${pidFile}'; sleep 600`]);
    try {
      const pgid = await pidFrom(pidFile);
      run.child.kill("SIGINT");
      const { code } = await run.exited;
      expect(code).toBe(1);
      expect(run.output()).toMatch(/Cancelling/);
      expect(run.output()).toMatch(/cancelled \(-43\)/);
      expect(pidsInGroup(pgid)).toEqual([]);
    } finally {
      await run.stop();
    }
  });

  it("abandons on the second SIGINT when the cancel does not land", async () => {
    const m = f.machine();
    await f.runner(m, UNKILLABLE);
    const pidFile = join(f.scratch, `${m}.pid`);
    const run = startTendril(["run", "--machine", m, "--url", f.cp.url, "--server-token", f.cp.serverToken, "--", `echo $$ > '${pidFile}'; sleep 600`]);
    const pid = await pidFrom(pidFile);
    try {
      run.child.kill("SIGINT");
      await waitFor(() => /Cancelling/.test(run.output()), { what: "the cancel to be sent" });
      run.child.kill("SIGINT");
      const { code } = await run.exited;
      expect(code).toBe(1);
      expect(run.output()).toMatch(/abandoned \(-48\)/);
      expect(isAlive(pid)).toBe(true);
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.mutexes).toEqual([]);
    } finally {
      signalGroup(pid, "SIGKILL");
      await run.stop();
    }
  });

  it("abandons by itself with --abandon-after once a cancel does not land", async () => {
    const m = f.machine();
    await f.runner(m, UNKILLABLE);
    const pidFile = join(f.scratch, `${m}.pid`);
    const run = startTendril([
      "run",
      "--machine",
      m,
      "--url",
      f.cp.url,
      "--server-token",
      f.cp.serverToken,
      "--abandon-after",
      "500ms",
      "--",
      `echo $$ > '${pidFile}'; sleep 600`,
    ]);
    const pid = await pidFrom(pidFile);
    try {
      run.child.kill("SIGINT");
      const { code } = await run.exited;
      expect(code).toBe(1);
      expect(run.output()).toMatch(/abandoned \(-48\)/);
    } finally {
      signalGroup(pid, "SIGKILL");
      await run.stop();
    }
  });
});
