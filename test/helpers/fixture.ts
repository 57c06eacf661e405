/** One control plane per test file, fresh machine ids per test, and cleanup of everything started. */
import { afterAll, beforeAll } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { call } from "./api.js";
import { startControlPlane, type TestControlPlane } from "./control-plane.js";
import { startRunner, type TestRunner } from "./runner.js";
import { waitFor } from "./wait.js";

/** What an integration test file uses. */
export interface Fixture {
  /** The control plane (set in beforeAll). */
  cp: TestControlPlane;
  /** A scratch folder for marker files, removed after the file. */
  scratch: string;
  /** A machine id unique in this file. */
  machine(prefix?: string): string;
  /** Starts a runner that is stopped after the file (or earlier by the test). */
  runner(machineId: string, options?: Parameters<typeof startRunner>[2]): Promise<TestRunner>;
  /** Registers a machine without starting a runner; returns its runner token. */
  register(machineId: string): Promise<string>;
  /** Calls the API with the server token. */
  api: <T = any>(method: string, path: string, body?: unknown) => ReturnType<typeof call<T>>;
  /** Waits until a script is complete and returns its full status. */
  completed(machineId: string, ticket: string, timeoutMs?: number): Promise<any>;
}

/** Sets up the fixture for the current test file. */
export function useControlPlane(options: { args?: string[] } = {}): Fixture {
  const runners: TestRunner[] = [];
  let counter = 0;
  const fixture: Fixture = {
    cp: undefined as unknown as TestControlPlane,
    scratch: "",
    machine(prefix = "m") {
      counter += 1;
      return `${prefix}-${process.pid}-${counter}`;
    },
    async runner(machineId, options) {
      const runner = await startRunner(fixture.cp, machineId, options);
      runners.push(runner);
      return runner;
    },
    async register(machineId) {
      const response = await call(fixture.cp, "POST", `/api/v1/machines/${machineId}/runner-token`);
      if (response.status !== 201) throw new Error(`register: ${response.status}`);
      return response.body.runnerToken as string;
    },
    api: (method, path, body) => call(fixture.cp, method, path, body),
    async completed(machineId, ticket, timeoutMs = 20_000) {
      await waitFor(
        async () => (await call(fixture.cp, "GET", `/api/v1/machines/${machineId}/scripts/${ticket}?limit=1`)).body?.state === "complete",
        { timeoutMs, what: `script ${ticket} to complete` },
      );
      return (await call(fixture.cp, "GET", `/api/v1/machines/${machineId}/scripts/${ticket}`)).body;
    },
  };
  beforeAll(async () => {
    fixture.scratch = mkdtempSync(join(tmpdir(), "tendril-scratch-"));
    fixture.cp = await startControlPlane({ args: options.args ?? [] });
  });
  afterAll(async () => {
    await Promise.all(runners.map((r) => r.stop()));
    await fixture.cp?.stop();
    rmSync(fixture.scratch, { recursive: true, force: true });
  });
  return fixture;
}
