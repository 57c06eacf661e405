// With no server token configured, the control plane refuses every server call (fail closed).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startLocalControlPlane, type LocalControlPlane } from "../../control-plane/local/launcher.js";

let cp: LocalControlPlane;
let stateDir: string;

beforeAll(async () => {
  stateDir = mkdtempSync(join(tmpdir(), "tendril-closed-"));
  cp = await startLocalControlPlane({ port: 0, serverToken: "", stateDir });
});

afterAll(async () => {
  await cp?.stop();
  rmSync(stateDir, { recursive: true, force: true });
});

describe("a control plane without a server token", () => {
  it("refuses every server call with 401, whatever token is presented", async () => {
    for (const authorization of [undefined, "Bearer ", "Bearer anything", "Bearer undefined"]) {
      for (const [method, path] of [
        ["GET", "/api/v1/machines"],
        ["POST", "/api/v1/machines/m1/runner-token"],
        ["GET", "/api/v1/machines/m1"],
      ]) {
        const response = await fetch(`${cp.url}${path}`, { method, headers: authorization ? { authorization } : {} });
        expect(response.status).toBe(401);
        expect(await response.json()).toEqual({ error: { code: "unauthorized", message: expect.stringMatching(/token/) } });
      }
    }
  });

  it("still answers /healthz", async () => {
    const response = await fetch(`${cp.url}/healthz`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ ok: true });
  });
});
