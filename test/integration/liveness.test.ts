// The control plane notices a dead runner connection by itself: a runner socket that completed its handshake and then
// went silent (no heartbeat, no frame) is closed with 4002 by the machine object's alarm, even though the object
// hibernates in between and is woken by that very alarm.
import { describe, expect, it } from "vitest";
import { openRunnerSocket } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

describe("a runner connection that goes silent", () => {
  it("is closed with 4002 about 25 s after its last sign of life, across hibernation, and the machine shows no runner", async () => {
    const m = f.machine("silent");
    const token = await f.register(m);
    const socket = await openRunnerSocket(f.cp, m, token);
    try {
      socket.send({ type: "hello", protocol: 1, runnerId: "silent-runner", version: "0.0.1", capabilities: ["script.v1"], inventory: [] });
      await waitFor(() => socket.messages.some((message) => message.type === "welcome"), { what: "the welcome" });
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected).toBe(true);
      const silentFrom = Date.now();
      // No ping and no frame from here on. The object hibernates after ~10 s idle; its liveness alarm (last sign of
      // life + 25 s) must wake it and close the socket rather than put the check off at every wake.
      const code = await Promise.race([socket.closed, new Promise<string>((resolve) => setTimeout(() => resolve("still open after 75 s"), 75_000))]);
      expect(code).toBe(4002);
      expect(Date.now() - silentFrom).toBeGreaterThanOrEqual(20_000);
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, {
        what: "the machine view to show the runner gone",
      });
      expect(f.cp.process.output()).not.toContain("NOSENTRY");
    } finally {
      socket.ws.terminate();
    }
  }, 120_000);
});
