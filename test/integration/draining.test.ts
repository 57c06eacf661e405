// A runner asked to stop (SIGTERM) says it is draining: the control plane shows it (machine view and fleet list),
// sends it no new script — a granted one waits, holding its mutex — and dispatches to the next runner that connects.
import { describe, expect, it } from "vitest";
import { useControlPlane } from "../helpers/fixture.js";
import { handRunner } from "../helpers/hand-runner.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

describe("a draining runner", () => {
  it("is shown as draining, gets no new script, and the next runner runs what waited", async () => {
    const m = f.machine("drain");
    const token = await f.register(m);
    const first = await handRunner(f.cp, m, token, "runner-1");
    try {
      first.send({ type: "draining" });
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.draining === true, { what: "the machine view to show draining" });
      await waitFor(
        async () => (await f.api("GET", `/api/v1/machines?prefix=${m}`)).body.machines[0]?.runner.draining === true,
        { what: "the fleet list to show draining" },
      );

      const started = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "held", scriptBody: "echo held" });
      expect(started.status).toBe(201);
      expect(started.body.state).toBe("pending");
      const view = (await f.api("GET", `/api/v1/machines/${m}`)).body;
      expect(view.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["held"], waiting: [] }]);
      // A dispatch would have gone out on this socket while the start was answered; the object acknowledges an exit of
      // a script it does not run, and frames on one socket arrive in order: once that ack is here, so would it be.
      first.send({ type: "exit", ticket: "probe", fence: 1, lineCount: 0, outcome: { kind: "exited", code: 0 } });
      await waitFor(() => first.messages.some((message) => message.type === "exit_ack" && message.ticket === "probe"), { what: "the probe's exit_ack" });
      expect(first.messages.filter((message) => message.type === "dispatch")).toEqual([]);
    } finally {
      await first.close();
    }
    const second = await handRunner(f.cp, m, token, "runner-2");
    try {
      expect((await second.dispatchOf("held")).script.scriptBody).toBe("echo held");
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.runner.draining).toBe(false);
    } finally {
      await second.close();
    }
  });
});
