// The SDK's handle style against the real control plane and a real runner: a run's logs from the start and live,
// its stored result, cancel and abandon, re-attaching by ticket, and what disposal deletes and what it leaves alone.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TendrilApiError } from "../../client/errors.js";
import { TendrilClient } from "../../client/sdk.js";
import { useControlPlane } from "../helpers/fixture.js";
import { isAlive, killScript, pidFrom } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();
const client = () => new TendrilClient({ url: f.cp.url, serverToken: f.cp.serverToken });

describe("a run's handle", () => {
  it("delivers every line from the start and then live, reads the stored result, and deletes the run when disposed", async () => {
    const m = f.machine();
    await f.runner(m);
    const gate = join(f.scratch, `${m}.gate`);
    const machine = client().machine(m);
    const lines: string[] = [];
    let ticket: string;
    {
      await using run = await machine.start({
        scriptBody: `echo before; echo warn >&2; while [ ! -e '${gate}' ]; do sleep 0.05; done; echo after; exit 3`,
        taskId: "ServerTasks-42",
      });
      ticket = run.ticket;
      for await (const line of run.logs()) {
        lines.push(`${line.source}:${line.text}`);
        // `after` waits for the gate, which opens only once the reader has seen `warn`: it can only come live.
        if (line.text === "warn") await import("node:fs/promises").then((fs) => fs.writeFile(gate, ""));
      }
      expect(await run.result()).toMatchObject({ ticket, state: "complete", exitCode: 3 });
    }

    // Each stream in its order (between stdout and stderr, the order is the order the runner read them in).
    expect(lines.filter((line) => line.startsWith("stdout:"))).toEqual(["stdout:before", "stdout:after"]);
    expect(lines.filter((line) => line.startsWith("stderr:"))).toEqual(["stderr:warn"]);
    expect(lines.at(-1)).toBe("stdout:after");
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/${ticket}`)).status).toBe(404);
  });

  it("re-attaches by ticket from another client: the same lines from sequence 0 and the same stored result", async () => {
    const m = f.machine();
    await f.runner(m);
    const run = await client().machine(m).start({ ticket: "reattach-1", scriptBody: "echo one; echo two; exit 5" });
    const first = await run.result();

    const again = client().machine(m).script("reattach-1");
    const lines: string[] = [];
    for await (const line of again.logs()) lines.push(line.text);

    expect(lines).toEqual(["one", "two"]);
    expect(await again.result()).toEqual(first);
    expect(first.exitCode).toBe(5);
    expect(await again.dispose()).toMatchObject({ outcome: "deleted" });
    expect(await run.dispose()).toEqual({ outcome: "already_deleted" });
  });

  it("resolves cancel once it is recorded; the stored result is -43 once the runner has stopped the process", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    await using run = await client().machine(m).start({ scriptBody: `echo $$ > '${pidFile}'; sleep 600` });
    const pid = await pidFrom(pidFile);

    const answered = await run.cancel({ reason: "superseded by ServerTasks-43" });
    const result = await run.result();

    expect(["running", "complete"]).toContain(answered.state);
    expect(result.exitCode).toBe(-43);
    await waitFor(() => !isAlive(pid), { what: "the cancelled process to exit" });
  });

  it("abandons with killProcess: the run is complete with -48 at once and the machine takes the next script", async () => {
    const m = f.machine();
    await f.runner(m, { env: { TENDRIL_UNSAFE_DISABLE_PROCESS_KILL: "1" } });
    const pidFile = join(f.scratch, `${m}.pid`);
    const machine = client().machine(m);
    const run = await machine.start({ scriptBody: `echo $$ > '${pidFile}'; trap '' TERM; sleep 600` });
    const pid = await pidFrom(pidFile);
    try {
      const answered = await run.abandon({ killProcess: true });

      expect(answered).toMatchObject({ state: "complete", exitCode: -48 });
      expect((await run.result()).exitCode).toBe(-48);
      const next = await machine.execute({ scriptBody: "echo next" });
      expect(next).toMatchObject({ exitCode: 0, outcome: "completed" });
      expect(await run.dispose()).toMatchObject({ outcome: "deleted" });
    } finally {
      killScript(pid); // kill is disabled on this runner: the test stops what it started
    }
  });

  it("leaves a run that is still running alone when disposed: it goes on, stored and re-attachable", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    const machine = client().machine(m);
    let ticket = "";
    const thrown = await (async () => {
      await using run = await machine.start({ scriptBody: `echo $$ > '${pidFile}'; sleep 600` });
      ticket = run.ticket;
      await pidFrom(pidFile);
      throw new Error("the deployment server gave up on this step");
    })().catch((error: unknown) => error);
    const pid = await pidFrom(pidFile);

    expect((thrown as Error).message).toBe("the deployment server gave up on this step");
    expect(isAlive(pid)).toBe(true);
    const again = machine.script(ticket);
    expect((await again.status()).state).toBe("running");
    await again.cancel();
    expect((await again.result()).exitCode).toBe(-43);
    expect(await again.dispose()).toMatchObject({ outcome: "deleted" });
  });

  it("executeScript deletes the finished script, so its status answers 404 afterwards", async () => {
    const m = f.machine();
    await f.runner(m);
    const result = await client().executeScript(m, { ticket: "executed-1", scriptBody: "echo done" });

    expect(result).toMatchObject({ ticket: "executed-1", exitCode: 0, outcome: "completed" });
    const error = await client().getStatus(m, "executed-1").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TendrilApiError);
    expect(error).toMatchObject({ status: 404, code: "unknown_script" });
  });
});
