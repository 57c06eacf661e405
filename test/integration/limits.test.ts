// Storage cannot grow without bound: retention of completed scripts and a per-script output cap.
import { describe, expect, it } from "vitest";
import { useControlPlane } from "../helpers/fixture.js";
import { runFoldersOf } from "../helpers/run-folders.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane({ args: ["--retention", "1500ms", "--max-output", "4KiB"] });

describe("storage limits", () => {
  it("prunes a completed script the server never deleted once the retention has passed, with its workspace", async () => {
    const m = f.machine();
    const runner = await f.runner(m);
    const done = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "old", scriptBody: "echo kept for a while", waitMs: 20_000 });
    expect(done.body).toMatchObject({ state: "complete", exitCode: 0 });
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/old`)).status).toBe(200);
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}/scripts/old`)).status === 404, {
      timeoutMs: 15_000,
      what: "the expired script to be pruned",
    });
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.scripts).toEqual([]);
    await waitFor(() => runFoldersOf(runner.workDir, "old").length === 0, { what: "its workspace to be removed" });
  });

  it("keeps pending and running scripts whatever their age", async () => {
    const m = f.machine();
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "waiting", scriptBody: "true" });
    const later = Date.now() + 3_000;
    await waitFor(() => Date.now() > later, { timeoutMs: 5_000, what: "the retention to pass" });
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/waiting`)).body.state).toBe("pending");
  });

  it("caps a script's stored output with a clear truncation line and still completes it", async () => {
    const m = f.machine();
    await f.runner(m);
    const response = await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "chatty",
      scriptBody: "for i in $(seq 1 2000); do echo line-$i-padding-padding; done; exit 6",
      waitMs: 20_000,
    });
    expect(response.body).toMatchObject({ state: "complete", exitCode: 6 });
    const logs: Array<{ source: string; text: string; sequence: number }> = response.body.logs;
    const stored = logs.filter((l) => l.source === "stdout");
    const bytes = stored.reduce((sum, l) => sum + l.text.length, 0);
    expect(bytes).toBeLessThanOrEqual(4 * 1024);
    expect(stored.length).toBeGreaterThan(50);
    expect(stored.map((l) => l.text)).toEqual(Array.from({ length: stored.length }, (_, i) => `line-${i + 1}-padding-padding`));
    const truncation = logs.filter((l) => /Output truncated/.test(l.text));
    expect(truncation).toHaveLength(1);
    expect(truncation[0]).toMatchObject({ source: "debug" });
    expect(logs.at(-1)!.text).toMatch(/Output truncated/);
  });
});
