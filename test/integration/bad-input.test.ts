// Bad input on every route gets a 4xx with the error shape and changes nothing; tokens are enforced.
import { describe, expect, it } from "vitest";
import { call, runnerUpgradeStatus } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";

const f = useControlPlane();

function expectError(response: { status: number; body: any }, status: number, code: string): void {
  expect(response.status, JSON.stringify(response.body)).toBe(status);
  expect(response.body).toEqual({ error: { code, message: expect.any(String) } });
  expect(response.body.error.message.length).toBeGreaterThan(10);
}

/** Everything observable about a machine and the machine list. */
async function snapshot(machineId: string): Promise<string> {
  const view = await f.api("GET", `/api/v1/machines/${machineId}`);
  const list = await f.api("GET", "/api/v1/machines");
  const { runner: _runner, ...rest } = view.body;
  return JSON.stringify({ rest, machines: list.body.machines.map((x: { machineId: string }) => x.machineId) });
}

const base64 = (s: string) => Buffer.from(s).toString("base64");

describe("bad input", () => {
  it("rejects every malformed start request with 400 invalid_request and creates nothing", async () => {
    const m = f.machine();
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "existing", scriptBody: "true" });
    const before = await snapshot(m);
    const bad: unknown[] = [
      {},
      { scriptBody: 1 },
      { scriptBody: "true", unknown: 1 },
      { scriptBody: "true", files: [{ name: "a", contents: base64("x"), extra: true }] },
      { scriptBody: "true", environment: { A: 1 } },
      { scriptBody: "true", environment: "A=1" },
      { scriptBody: "true", arguments: "a b" },
      { scriptBody: "true", arguments: [1] },
      { scriptBody: "true", files: [{ name: "a", contents: "not base64!" }] },
      { scriptBody: "true", files: [{ name: "a", contents: "abc" }] },
      { scriptBody: "true", files: [{ name: "../etc/passwd", contents: base64("x") }] },
      { scriptBody: "true", files: [{ name: "dir/file", contents: base64("x") }] },
      { scriptBody: "true", files: [{ name: "..", contents: base64("x") }] },
      { scriptBody: "true", files: [{ name: "a", contents: base64("x") }, { name: "a", contents: base64("y") }] },
      { scriptBody: "true", files: Array.from({ length: 101 }, (_, i) => ({ name: `f${i}`, contents: "" })) },
      { scriptBody: "true", isolation: "partial" },
      { scriptBody: "true", shell: "zsh" },
      { scriptBody: "true", mutexTimeoutMs: -1 },
      { scriptBody: "true", mutexTimeoutMs: 1.5 },
      { scriptBody: "true", mutexTimeoutMs: "10" },
      { scriptBody: "true", waitMs: 30_001 },
      { scriptBody: "true", waitMs: -5 },
      { scriptBody: "true", ticket: "has space" },
      { scriptBody: "true", ticket: "x".repeat(129) },
      { scriptBody: "true", ticket: "" },
      { scriptBody: "true", mutexName: "" },
      { scriptBody: "true", taskId: 7 },
      [],
      "just a string",
      null,
    ];
    for (const body of bad) {
      expectError(await f.api("POST", `/api/v1/machines/${m}/scripts`, body), 400, "invalid_request");
    }
    for (const raw of ["{not json", "", "[1,2", '{"scriptBody": "x",}']) {
      expectError(await call(f.cp, "POST", `/api/v1/machines/${m}/scripts`, undefined, { rawBody: raw }), 400, "invalid_request");
    }
    expect(await snapshot(m)).toBe(before);
  });

  it("rejects a mutexTimeoutMs or a cancel's abandonAfterMs over 30 days with 400, so that no deadline falls past the range of a date (bug 4)", async () => {
    const m = f.machine();
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "held", scriptBody: "true" });
    const before = await snapshot(m);
    for (const mutexTimeoutMs of [2_592_000_001, Number.MAX_SAFE_INTEGER]) {
      expectError(await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "late", scriptBody: "true", mutexTimeoutMs }), 400, "invalid_request");
      expectError(await f.api("POST", `/api/v1/machines/${m}/scripts/held/cancel`, { abandonAfterMs: mutexTimeoutMs }), 400, "invalid_request");
    }
    expect(await snapshot(m)).toBe(before);
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/held`)).body.state).toBe("pending");
    const longest = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "late", scriptBody: "true", mutexTimeoutMs: 2_592_000_000 });
    expect(longest.status).toBe(201);
  });

  it("rejects oversized requests with 413 too_large", async () => {
    const m = f.machine();
    await f.register(m);
    const before = await snapshot(m);
    const bigBody = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "#".repeat(1024 * 1024 + 1) });
    expectError(bigBody, 413, "too_large");
    const bigRequest = await f.api("POST", `/api/v1/machines/${m}/scripts`, {
      scriptBody: "true",
      files: [{ name: "big", contents: base64("x".repeat(7 * 1024 * 1024)) }],
    });
    expectError(bigRequest, 413, "too_large");
    expect(await snapshot(m)).toBe(before);
    // Exactly at the scriptBody limit is fine.
    const atLimit = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "#".repeat(1024 * 1024), isolation: "none" });
    expect(atLimit.status).toBe(201);
  });

  it("rejects bad query parameters on status, stream and delete", async () => {
    const m = f.machine();
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "t", scriptBody: "true" });
    for (const query of ["logSequence=-1", "logSequence=1.5", "logSequence=abc", "limit=0", "limit=10001", "limit=-3", "limit=x"]) {
      expectError(await f.api("GET", `/api/v1/machines/${m}/scripts/t?${query}`), 400, "invalid_request");
    }
    expectError(await f.api("GET", `/api/v1/machines/${m}/scripts/t/stream?logSequence=-1`), 400, "invalid_request");
    expectError(await f.api("DELETE", `/api/v1/machines/${m}/scripts/t?logSequence=x`), 400, "invalid_request");
    for (const query of ["limit=0", "limit=10001", "limit=x"]) {
      expectError(await f.api("DELETE", `/api/v1/machines/${m}/scripts/t?${query}`), 400, "invalid_request");
    }
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/t?limit=10000`)).status).toBe(200);
  });

  it("answers unknown machines with 404 unknown_machine and creates nothing", async () => {
    const m = f.machine("never");
    for (const [method, path, body] of [
      ["GET", `/api/v1/machines/${m}`],
      ["POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "true" }],
      ["GET", `/api/v1/machines/${m}/scripts/t`],
      ["GET", `/api/v1/machines/${m}/scripts/t/stream`],
      ["DELETE", `/api/v1/machines/${m}/scripts/t`],
    ] as const) {
      expectError(await f.api(method, path, body), 404, "unknown_machine");
    }
    const list = await f.api("GET", "/api/v1/machines");
    expect(list.body.machines.map((x: { machineId: string }) => x.machineId)).not.toContain(m);
  });

  it("answers unknown tickets with 404 unknown_script", async () => {
    const m = f.machine();
    await f.register(m);
    expectError(await f.api("GET", `/api/v1/machines/${m}/scripts/nope`), 404, "unknown_script");
    expectError(await f.api("GET", `/api/v1/machines/${m}/scripts/nope/stream`), 404, "unknown_script");
    expectError(await f.api("DELETE", `/api/v1/machines/${m}/scripts/nope`), 404, "unknown_script");
  });

  it("rejects invalid machine ids and tickets in the path with 400", async () => {
    expectError(await f.api("POST", `/api/v1/machines/${"x".repeat(65)}/runner-token`), 400, "invalid_request");
    expectError(await f.api("POST", "/api/v1/machines/bad%20id/runner-token"), 400, "invalid_request");
    const m = f.machine();
    await f.register(m);
    expectError(await f.api("GET", `/api/v1/machines/${m}/scripts/${"t".repeat(129)}`), 400, "invalid_request");
    expectError(await f.api("POST", `/api/v1/machines/${m}/runner-token`, { unexpected: true }), 400, "invalid_request");
  });

  it("answers unknown routes with 404 not_found and wrong methods with 405 method_not_allowed", async () => {
    const m = f.machine();
    await f.register(m);
    expectError(await f.api("GET", "/api/v1/nothing-here"), 404, "not_found");
    expectError(await f.api("GET", `/api/v1/machines/${m}/scripts/t/extra/deep`), 404, "not_found");
    expectError(await call(f.cp, "GET", "/nowhere", undefined, { token: null }), 404, "not_found");
    expectError(await f.api("PUT", "/api/v1/machines"), 405, "method_not_allowed");
    expectError(await f.api("PATCH", `/api/v1/machines/${m}`), 405, "method_not_allowed");
    expectError(await f.api("GET", `/api/v1/machines/${m}/runner-token`), 405, "method_not_allowed");
    expectError(await f.api("PATCH", `/api/v1/machines/${m}/scripts`), 405, "method_not_allowed");
    expectError(await f.api("POST", `/api/v1/machines/${m}/scripts/t`), 405, "method_not_allowed");
  });

  it("answers /healthz without authentication", async () => {
    const response = await call(f.cp, "GET", "/healthz", undefined, { token: null });
    expect(response).toMatchObject({ status: 200, body: { ok: true } });
  });
});

describe("authentication", () => {
  it("refuses server calls without the right server token with 401 and changes nothing", async () => {
    const m = f.machine();
    await f.register(m);
    const before = await snapshot(m);
    for (const token of [null, "wrong", `${f.cp.serverToken}x`, f.cp.serverToken.slice(1)]) {
      for (const [method, path, body] of [
        ["GET", "/api/v1/machines"],
        ["GET", `/api/v1/machines/${m}`],
        ["POST", `/api/v1/machines/${m}/runner-token`],
        ["POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "true" }],
        ["GET", `/api/v1/machines/${m}/scripts/t`],
        ["DELETE", `/api/v1/machines/${m}/scripts/t`],
        ["GET", `/api/v1/machines/${m}/scripts/t/stream`],
      ] as const) {
        expectError(await call(f.cp, method, path, body, { token }), 401, "unauthorized");
      }
    }
    expectError(await call(f.cp, "GET", "/api/v1/machines", undefined, { token: null, headers: { authorization: "Basic abc" } }), 401, "unauthorized");
    expect(await snapshot(m)).toBe(before);
  });

  it("refuses runner sockets with a missing, wrong, revoked or other machine's token before the upgrade", async () => {
    const a = f.machine();
    const b = f.machine();
    const oldToken = await f.register(a);
    const tokenA = await f.register(a); // re-issuing revokes the old one
    const tokenB = await f.register(b);
    const status = (machineId: string, token: string | null) => runnerUpgradeStatus(f.cp, machineId, token);
    expect(await status(a, null)).toBe(401);
    expect(await status(a, "trt_wrong")).toBe(401);
    expect(await status(a, oldToken)).toBe(401);
    expect(await status(a, tokenB)).toBe(401);
    expect(await status(b, tokenA)).toBe(401);
    expect(await status(a, f.cp.serverToken)).toBe(401);
    expect(await status(a, tokenA)).toBe(101);
  });

  it("stores runner tokens only as hashes: the token never appears in a machine view", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    const list = await f.api("GET", "/api/v1/machines");
    expect(JSON.stringify(view.body)).not.toContain(token);
    expect(JSON.stringify(list.body)).not.toContain(token);
  });
});
