// Cancel end to end: real runner, real process trees, real control plane on workerd.
import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { isAlive, pidFrom, pidsInGroup, signalGroup } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

function debugText(status: { logs: Array<{ source: string; text: string }> }): string {
  return status.logs.filter((l) => l.source === "debug").map((l) => l.text).join("\n");
}

describe("cancel", () => {
  it("stops a running sleep with -43 within 5 s and leaves nothing of its process group", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "sleeper", scriptBody: `echo $(cut -d' ' -f5 /proc/$$/stat) > '${pidFile}'; sleep 600` });
    const pgid = await pidFrom(pidFile);
    expect(pidsInGroup(pgid).length).toBeGreaterThan(0);
    const response = await f.api("POST", `/api/v1/machines/${m}/scripts/sleeper/cancel`);
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ ticket: "sleeper", state: "running", exitCode: null });
    const status = await f.completed(m, "sleeper", 5_000);
    expect(status.exitCode).toBe(-43);
    expect(debugText(status)).toMatch(/SIGTERM/);
    expect(pidsInGroup(pgid)).toEqual([]);
  });

  it("SIGKILLs a script that ignores SIGTERM once the grace period has passed", async () => {
    const m = f.machine();
    await f.runner(m, { args: ["--kill-grace", "1s"] });
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "stubborn",
      scriptBody: `trap '' TERM; echo $$ > '${pidFile}'; while true; do sleep 0.1; done`,
    });
    const pgid = await pidFrom(pidFile);
    await f.api("POST", `/api/v1/machines/${m}/scripts/stubborn/cancel`);
    const status = await f.completed(m, "stubborn", 10_000);
    expect(status.exitCode).toBe(-43);
    expect(debugText(status)).toMatch(/SIGTERM.*then SIGKILL/s);
    expect(pidsInGroup(pgid)).toEqual([]);
  });

  it("cancels `(sleep 600) & sleep 600` without hanging on the grandchild's pipes and leaves no process", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "tree", scriptBody: `echo $(cut -d' ' -f5 /proc/$$/stat) > '${pidFile}'; (sleep 600) & sleep 600` });
    const pgid = await pidFrom(pidFile);
    await waitFor(() => pidsInGroup(pgid).length >= 3, { what: "the whole tree to start" });
    await f.api("POST", `/api/v1/machines/${m}/scripts/tree/cancel`);
    const status = await f.completed(m, "tree", 10_000);
    expect(status.exitCode).toBe(-43);
    expect(pidsInGroup(pgid)).toEqual([]);
  });

  it("also kills descendants that escaped the process group with setsid", async () => {
    const m = f.machine();
    await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    const escapedFile = join(f.scratch, `${m}.escaped`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      ticket: "escape",
      scriptBody: `echo $$ > '${pidFile}'; setsid sleep 600 > /dev/null 2>&1 < /dev/null & echo $! > '${escapedFile}'; sleep 600`,
    });
    const pgid = await pidFrom(pidFile);
    const escaped = await pidFrom(escapedFile);
    try {
      await waitFor(() => isAlive(escaped) && !pidsInGroup(pgid).includes(escaped), { what: "the escaped process to leave the group" });
      await f.api("POST", `/api/v1/machines/${m}/scripts/escape/cancel`);
      const status = await f.completed(m, "escape", 10_000);
      expect(status.exitCode).toBe(-43);
      expect(isAlive(escaped)).toBe(false);
      expect(pidsInGroup(pgid)).toEqual([]);
    } finally {
      signalGroup(escaped, "SIGKILL");
    }
  });

  it("completes a pending script at once with -43, and it never runs", async () => {
    const m = f.machine();
    await f.register(m); // no runner: the script cannot start
    const marker = join(f.scratch, `${m}.ran`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "never", scriptBody: `touch '${marker}'` });
    const response = await f.api("POST", `/api/v1/machines/${m}/scripts/never/cancel`);
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ state: "complete", exitCode: -43 });
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.mutexes).toEqual([]);
    await f.runner(m);
    // A later script on the same machine runs; the cancelled one never does.
    const later = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "later", scriptBody: "true", waitMs: 20_000 });
    expect(later.body).toMatchObject({ state: "complete", exitCode: 0 });
    expect(existsSync(marker)).toBe(false);
  });

  it("keeps a completed script's own exit code, and repeated cancels are harmless", async () => {
    const m = f.machine();
    await f.runner(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "done", scriptBody: "exit 5", waitMs: 20_000 });
    for (let i = 0; i < 3; i += 1) {
      const response = await f.api("POST", `/api/v1/machines/${m}/scripts/done/cancel`);
      expect(response.status).toBe(200);
      expect(response.body).toMatchObject({ state: "complete", exitCode: 5 });
    }
    const pidFile = join(f.scratch, `${m}.pid`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "twice", scriptBody: `echo $$ > '${pidFile}'; sleep 600` });
    await pidFrom(pidFile);
    await f.api("POST", `/api/v1/machines/${m}/scripts/twice/cancel`);
    await f.api("POST", `/api/v1/machines/${m}/scripts/twice/cancel`);
    const status = await f.completed(m, "twice", 10_000);
    expect(status.exitCode).toBe(-43);
    expect(status.logs.filter((l: { text: string }) => /Cancellation requested/.test(l.text))).toHaveLength(1);
  });

  it("rejects bad cancel bodies and unknown tickets", async () => {
    const m = f.machine();
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "t", scriptBody: "true" });
    for (const body of [{ abandonAfterMs: -1 }, { abandonAfterMs: 1.5 }, { abandonAfterMs: "5" }, { other: 1 }, [], null]) {
      const response = await f.api("POST", `/api/v1/machines/${m}/scripts/t/cancel`, body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(response.body.error.code).toBe("invalid_request");
    }
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/t`)).body.state).toBe("pending");
    const unknown = await f.api("POST", `/api/v1/machines/${m}/scripts/nope/cancel`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe("unknown_script");
  });
});
