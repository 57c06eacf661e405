// Versions meet in the field: a runner upgraded before its control plane, and a control plane upgraded before its
// runners. Today's runner offers protocol 2, and speaks 1 to the 0.1.0 control plane that refuses it; today's control
// plane speaks 1 to a 0.1.0 runner. The 0.1.0 build is kept under test/fixtures/v0.1.0 (a clone may be shallow).
// Answers of the 0.1.0 control plane are read raw here: they are 0.1.0's contract, not today's.
import { describe, expect, it } from "vitest";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { ROOT, pidsWorkingIn, killScript, startProcess, startTendril, type TestProcess } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();
const FIXTURE = join(ROOT, "test", "fixtures", "v0.1.0");

/** A raw call: status and JSON body, checked against nothing but what the test asserts. */
async function raw(base: { url: string; serverToken: string }, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const response = await fetch(`${base.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${base.serverToken}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function completed(base: { url: string; serverToken: string }, machineId: string, ticket: string): Promise<any> {
  return waitFor(
    async () => {
      const status = await raw(base, "GET", `/api/v1/machines/${machineId}/scripts/${ticket}`);
      return status.body?.state === "complete" ? status.body : undefined;
    },
    { timeoutMs: 30_000, what: `${ticket} to complete` },
  );
}

/** Stops a runner process and whatever its scripts left in its work dir, by PID. */
async function stopRunner(runner: TestProcess, workDir: string): Promise<void> {
  await runner.stop();
  for (const pid of pidsWorkingIn(workDir)) killScript(pid);
  rmSync(workDir, { recursive: true, force: true });
}

describe("protocol versions", () => {
  it("today's runner runs, cancels and abandons scripts on the 0.1.0 control plane, speaking protocol 1 after its offer of 2 is refused", async () => {
    const stateDir = mkdtempSync(join(tmpdir(), "tendril-old-cp-"));
    const workDir = mkdtempSync(join(tmpdir(), "tendril-skew-runner-"));
    const serverToken = randomBytes(18).toString("base64url");
    const oldCp = startProcess(process.execPath, [join(FIXTURE, "control-plane.mjs"), serverToken, stateDir]);
    let runner: TestProcess | undefined;
    try {
      const url = await waitFor(() => /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(oldCp.stdout())?.[1], { timeoutMs: 30_000, what: "the 0.1.0 control plane" });
      const base = { url, serverToken };
      const registered = await raw(base, "POST", "/api/v1/machines/skew-1/runner-token");
      expect(registered.status).toBe(201);
      runner = startTendril(["runner", "--url", url, "--machine", "skew-1", "--work-dir", workDir], { TENDRIL_RUNNER_TOKEN: registered.body.runnerToken });
      await waitFor(async () => (await raw(base, "GET", "/api/v1/machines/skew-1")).body?.runner?.connected === true, { timeoutMs: 20_000, what: "the runner to connect" });

      await raw(base, "POST", "/api/v1/machines/skew-1/scripts", { ticket: "plain", scriptBody: "echo from-today; exit 3" });
      const plain = await completed(base, "skew-1", "plain");
      expect(plain.exitCode).toBe(3);
      expect(plain.logs.filter((line: { source: string }) => line.source === "stdout").map((line: { text: string }) => line.text)).toEqual(["from-today"]);

      await raw(base, "POST", "/api/v1/machines/skew-1/scripts", { ticket: "slow", scriptBody: "echo started; exec sleep 600" });
      await waitFor(async () => (await raw(base, "GET", "/api/v1/machines/skew-1/scripts/slow")).body.logs.some((l: { text: string }) => l.text === "started"), { what: "the slow script" });
      await raw(base, "POST", "/api/v1/machines/skew-1/scripts/slow/cancel");
      expect((await completed(base, "skew-1", "slow")).exitCode).toBe(-43);

      await raw(base, "POST", "/api/v1/machines/skew-1/scripts", { ticket: "stuck", scriptBody: "echo started; exec sleep 600" });
      await waitFor(async () => (await raw(base, "GET", "/api/v1/machines/skew-1/scripts/stuck")).body.logs.some((l: { text: string }) => l.text === "started"), { what: "the stuck script" });
      const abandoned = await raw(base, "POST", "/api/v1/machines/skew-1/scripts/stuck/abandon", { killProcess: true });
      expect(abandoned.body).toMatchObject({ state: "complete", exitCode: -48 });
      // It was refused once (the 0.1.0 control plane knows no version 2) and fell back, without a loop of refusals.
      expect(runner.output().match(/refused protocol 2/g)).toHaveLength(1);
      expect(runner.output()).toMatch(/speaks protocol 1/);
      expect((await raw(base, "GET", "/api/v1/machines/skew-1")).body.runner.connected).toBe(true);
    } finally {
      if (runner) await stopRunner(runner, workDir);
      await oldCp.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 120_000);

  it("a 0.1.0 runner runs and cancels scripts on today's control plane, which speaks protocol 1 to it", async () => {
    const m = f.machine("old-runner");
    const token = await f.register(m);
    const workDir = mkdtempSync(join(tmpdir(), "tendril-old-runner-"));
    const tokenFile = join(workDir, "..", `${m}.token`);
    writeFileSync(tokenFile, token, { mode: 0o600 });
    const runner = startProcess(process.execPath, [join(FIXTURE, "bin", "tendril.mjs"), "runner", "--url", f.cp.url, "--machine", m, "--work-dir", workDir], {
      TENDRIL_RUNNER_TOKEN: token,
    });
    try {
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body?.runner?.connected === true, { timeoutMs: 20_000, what: "the 0.1.0 runner to connect" });
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.runner.version).toBe("0.1.0");

      await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "plain", scriptBody: "echo from-old; exit 5" });
      const plain = await f.completed(m, "plain");
      expect(plain.exitCode).toBe(5);
      expect(plain.logs.filter((line: { source: string }) => line.source === "stdout").map((line: { text: string }) => line.text)).toEqual(["from-old"]);

      await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "slow", scriptBody: "echo started; exec sleep 600" });
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}/scripts/slow`)).body.logs.some((l: { text: string }) => l.text === "started"), { what: "the slow script" });
      await f.api("POST", `/api/v1/machines/${m}/scripts/slow/cancel`, { reason: "skew test" });
      const slow = await f.completed(m, "slow");
      expect(slow.exitCode).toBe(-43);
      expect(slow.events.map((event: { action: string }) => event.action)).toEqual(["cancel"]);
      // Nothing it could not parse reached it: it never closed the connection for a bad frame.
      expect(runner.output()).not.toMatch(/bad frame|4400/i);
    } finally {
      await stopRunner(runner, workDir);
      rmSync(tokenFile, { force: true });
    }
  }, 120_000);
});
