/** A real `tendril runner` process for integration tests. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { call } from "./api.js";
import { killScript, pidsWorkingIn, startTendril, type TestProcess } from "./processes.js";
import type { TestControlPlane } from "./control-plane.js";
import { waitFor } from "./wait.js";

/** A running runner process. */
export interface TestRunner {
  machineId: string;
  workDir: string;
  process: TestProcess;
  stop(): Promise<void>;
}

/** Registers `machineId` (unless a token is given) and starts a runner for it; waits until the machine view shows it connected. */
export async function startRunner(
  cp: TestControlPlane,
  machineId: string,
  { token, env = {}, args = [], waitConnected = true }: { token?: string; env?: NodeJS.ProcessEnv; args?: string[]; waitConnected?: boolean } = {},
): Promise<TestRunner> {
  let runnerToken = token;
  if (!runnerToken) {
    const registered = await call(cp, "POST", `/api/v1/machines/${machineId}/runner-token`);
    if (registered.status !== 201) throw new Error(`register failed: ${registered.status} ${JSON.stringify(registered.body)}`);
    runnerToken = registered.body.runnerToken as string;
  }
  const workDir = mkdtempSync(join(tmpdir(), "tendril-runner-"));
  const proc = startTendril(["runner", "--url", cp.url, "--machine", machineId, "--work-dir", workDir, ...args], {
    TENDRIL_RUNNER_TOKEN: runnerToken,
    ...env,
  });
  const runner: TestRunner = {
    machineId,
    workDir,
    process: proc,
    async stop() {
      await proc.stop();
      // Scripts run in process groups of their own; whatever a test left running in this runner's
      // workspaces is stopped here, by PID.
      for (const pid of pidsWorkingIn(workDir)) killScript(pid);
      await waitFor(() => pidsWorkingIn(workDir).length === 0, { timeoutMs: 5_000, what: "scripts of a stopped runner to exit" });
      rmSync(workDir, { recursive: true, force: true });
    },
  };
  if (waitConnected) {
    try {
      await waitFor(async () => (await call(cp, "GET", `/api/v1/machines/${machineId}`)).body?.runner?.connected === true, {
        timeoutMs: 15_000,
        what: `runner for ${machineId} to connect`,
      });
    } catch (error) {
      await runner.stop();
      throw new Error(`${String(error)}\nrunner output:\n${proc.output()}`);
    }
  }
  return runner;
}

/**
 * Starts a runner for `machineId` with its runner token on a work dir of the caller's (say, the one a killed runner
 * used: a restarted runner on the same machine); waits until the machine view shows it connected. Its `stop` stops
 * it and whatever still runs in that work dir, by PID, and leaves the folder to the caller.
 */
export async function startRunnerInWorkDir(
  cp: TestControlPlane,
  machineId: string,
  token: string,
  workDir: string,
  { env = {}, args = [] }: { env?: NodeJS.ProcessEnv; args?: string[] } = {},
): Promise<TestRunner> {
  const proc = startTendril(["runner", "--url", cp.url, "--machine", machineId, "--work-dir", workDir, ...args], { TENDRIL_RUNNER_TOKEN: token, ...env });
  const runner: TestRunner = {
    machineId,
    workDir,
    process: proc,
    async stop() {
      await proc.stop();
      for (const pid of pidsWorkingIn(workDir)) killScript(pid);
      await waitFor(() => pidsWorkingIn(workDir).length === 0, { timeoutMs: 5_000, what: "scripts of a stopped runner to exit" });
    },
  };
  try {
    await waitFor(async () => (await call(cp, "GET", `/api/v1/machines/${machineId}`)).body?.runner?.connected === true, {
      timeoutMs: 15_000,
      what: `runner for ${machineId} to connect`,
    });
  } catch (error) {
    await runner.stop();
    throw new Error(`${String(error)}\nrunner output:\n${proc.output()}`);
  }
  return runner;
}
