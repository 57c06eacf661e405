/** A real local control plane for integration tests: `tendril control-plane` on workerd, in its own process group. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { startTendril, type TestProcess } from "./processes.js";
import { waitFor } from "./wait.js";

/** A running control plane and what a test needs to talk to it. */
export interface TestControlPlane {
  url: string;
  serverToken: string;
  stateDir: string;
  process: TestProcess;
  /** Stops the control plane (and its workerd) by PID. `keepState` leaves the state folder for a restart. */
  stop(options?: { keepState?: boolean }): Promise<void>;
}

/** Starts a control plane on a free loopback port, optionally on an existing state folder. */
export async function startControlPlane(
  options: { stateDir?: string; serverToken?: string; port?: number; args?: string[] } = {},
): Promise<TestControlPlane> {
  const stateDir = options.stateDir ?? mkdtempSync(join(tmpdir(), "tendril-cp-"));
  const serverToken = options.serverToken ?? randomBytes(24).toString("base64url");
  // Its own temporary folder, removed when it stops: a control plane killed on purpose cannot remove workerd's folder.
  const temporary = mkdtempSync(join(tmpdir(), "tendril-cp-tmp-"));
  const removeTemporary = () => rmSync(temporary, { recursive: true, force: true });
  const proc = startTendril([
    "control-plane",
    "--port",
    String(options.port ?? 0),
    "--server-token",
    serverToken,
    "--state-dir",
    stateDir,
    ...(options.args ?? []),
  ], { TMPDIR: temporary });
  let url: string;
  try {
    url = await waitFor(
      () => {
        const match = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(proc.stdout());
        if (!match && proc.child.exitCode !== null) throw new Error(`control plane exited: ${proc.output()}`);
        return match?.[1];
      },
      { timeoutMs: 30_000, what: "the control plane to listen" },
    );
  } catch (error) {
    await proc.stop();
    removeTemporary();
    throw error;
  }
  return {
    url,
    serverToken,
    stateDir,
    process: proc,
    async stop({ keepState = false } = {}) {
      await proc.stop();
      removeTemporary();
      if (!keepState && !options.stateDir) rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
