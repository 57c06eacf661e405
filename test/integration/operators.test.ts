// Operators and server tokens on the real Worker: what each role may call (a table over every route), the order of
// the checks (401, then 403, then 400, then 404), revocation and expiry of operator tokens, lastUsedAt, and the
// rotation of the server token with SERVER_TOKEN_NEXT. Expiry is reached by editing the stopped control plane's
// persisted registry (test/helpers/persisted-sqlite.ts), as the passing of 90 days would.
import { describe, expect, it } from "vitest";
import { rmSync } from "node:fs";
import { call } from "../helpers/api.js";
import { startControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";
import { editRegistry } from "../helpers/persisted-sqlite.js";

const f = useControlPlane();

type Caller = "server" | "operator" | "viewer";

/** Adds an operator with the server token; returns its token. */
async function addOperator(base: { url: string; serverToken: string }, name: string, role: "viewer" | "operator", expiresInDays?: number): Promise<string> {
  const added = await call(base, "POST", "/api/v1/operators", { name, role, ...(expiresInDays === undefined ? {} : { expiresInDays }) });
  expect(added.status, JSON.stringify(added.body)).toBe(201);
  expect(added.body.token).toMatch(/^top_/);
  return added.body.token;
}

/** A machine with a complete script (`done`, cancelled while pending: no runner needed) and a pending one (`held`). */
async function machineWithScripts(prefix: string): Promise<string> {
  const m = f.machine(prefix);
  await f.register(m);
  expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "done", scriptBody: "true" })).status).toBe(201);
  expect((await f.api("POST", `/api/v1/machines/${m}/scripts/done/cancel`)).body.state).toBe("complete");
  return m;
}

/** One call of the table: a method, a path and a body, made against a fresh machine of the caller's own. */
interface Row {
  name: string;
  method: string;
  path: (m: string, operatorName: string) => string;
  body?: unknown;
  /** The status each caller gets. */
  expect: Record<Caller, number>;
}

const ROWS: Row[] = [
  { name: "list machines", method: "GET", path: () => "/api/v1/machines?limit=5", expect: { server: 200, operator: 200, viewer: 200 } },
  { name: "machine view", method: "GET", path: (m) => `/api/v1/machines/${m}`, expect: { server: 200, operator: 200, viewer: 200 } },
  { name: "script status", method: "GET", path: (m) => `/api/v1/machines/${m}/scripts/done`, expect: { server: 200, operator: 200, viewer: 200 } },
  { name: "live stream", method: "GET", path: (m) => `/api/v1/machines/${m}/scripts/done/stream`, expect: { server: 200, operator: 200, viewer: 200 } },
  { name: "audit feed", method: "GET", path: (m) => `/api/v1/audit?machineId=${m}`, expect: { server: 200, operator: 200, viewer: 200 } },
  { name: "start", method: "POST", path: (m) => `/api/v1/machines/${m}/scripts`, body: { ticket: "new", scriptBody: "true" }, expect: { server: 201, operator: 403, viewer: 403 } },
  { name: "cancel", method: "POST", path: (m) => `/api/v1/machines/${m}/scripts/held/cancel`, body: { reason: "table" }, expect: { server: 200, operator: 200, viewer: 403 } },
  { name: "abandon with killProcess", method: "POST", path: (m) => `/api/v1/machines/${m}/scripts/done/abandon`, body: { killProcess: true }, expect: { server: 200, operator: 200, viewer: 403 } },
  { name: "delete a script", method: "DELETE", path: (m) => `/api/v1/machines/${m}/scripts/done`, expect: { server: 200, operator: 403, viewer: 403 } },
  { name: "issue a runner token", method: "POST", path: (m) => `/api/v1/machines/${m}/runner-token`, expect: { server: 201, operator: 403, viewer: 403 } },
  { name: "revoke the runner token", method: "DELETE", path: (m) => `/api/v1/machines/${m}/runner-token`, expect: { server: 200, operator: 403, viewer: 403 } },
  { name: "list operators", method: "GET", path: () => "/api/v1/operators", expect: { server: 200, operator: 403, viewer: 403 } },
  { name: "add an operator", method: "POST", path: () => "/api/v1/operators", body: { name: "table-extra", role: "viewer" }, expect: { server: 201, operator: 403, viewer: 403 } },
  { name: "remove an operator", method: "DELETE", path: (_m, name) => `/api/v1/operators/${name}-victim`, expect: { server: 200, operator: 403, viewer: 403 } },
  { name: "remove the machine", method: "DELETE", path: (m) => `/api/v1/machines/${m}`, expect: { server: 200, operator: 403, viewer: 403 } },
];

describe("who may call what", () => {
  it("answers the server token, an operator and a viewer on every route as the contract says, and no token or a wrong one with 401", async () => {
    const tokens: Record<Caller, string> = {
      server: f.cp.serverToken,
      operator: await addOperator(f.cp, "table-op", "operator"),
      viewer: await addOperator(f.cp, "table-viewer", "viewer"),
    };
    const answers: string[] = [];
    const wanted: string[] = [];
    for (const caller of ["server", "operator", "viewer"] as const) {
      // Each caller works on a machine of its own: `done` is complete, and `held` holds the mutex (no runner is
      // connected, so it stays pending).
      const m = await machineWithScripts(caller);
      expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "held", scriptBody: "true" })).status).toBe(201);
      await addOperator(f.cp, `${caller}-victim`, "viewer");
      for (const row of ROWS) {
        // A machine may be removed only while nothing is pending: the server cancels what is left, so that only the
        // caller's permission decides.
        if (row.name === "remove the machine") for (const t of ["held", "new"]) await f.api("POST", `/api/v1/machines/${m}/scripts/${t}/cancel`);
        const response = await call(f.cp, row.method, row.path(m, caller), row.body, { token: tokens[caller] });
        answers.push(`${caller} ${row.name}: ${response.status}`);
        wanted.push(`${caller} ${row.name}: ${row.expect[caller]}`);
        if (response.status === 403) expect(response.body.error.code).toBe("forbidden");
      }
      for (const token of [null, "wrong", `${tokens[caller]}x`]) {
        for (const row of ROWS) {
          const response = await call(f.cp, row.method, row.path(m, caller), row.body, { token });
          if (response.status !== 401) answers.push(`${String(token)} ${row.name}: ${response.status}`);
        }
      }
    }
    expect(answers).toEqual(wanted);
  }, 120_000);

  it("checks authentication, then permission, then the request, then existence", async () => {
    const viewer = await addOperator(f.cp, "order-viewer", "viewer");
    const operator = await addOperator(f.cp, "order-op", "operator");
    const m = await machineWithScripts("order");
    const as = (token: string | null, method: string, path: string, body?: unknown) => call(f.cp, method, path, body, { token });
    // A bad token: 401 whatever else is wrong.
    expect((await as("wrong", "POST", "/api/v1/machines/no-such/scripts/t/cancel", { abandonAfterMs: -1 })).status).toBe(401);
    // A viewer may not cancel: 403 before the bad body (400) and the unknown machine (404).
    expect((await as(viewer, "POST", "/api/v1/machines/no-such/scripts/t/cancel", { abandonAfterMs: -1 })).status).toBe(403);
    // An operator may not start scripts, whatever the body says.
    expect((await as(operator, "POST", `/api/v1/machines/${m}/scripts`, { nonsense: true })).status).toBe(403);
    // requestedBy from an operator token is a permission matter: 403 even when the body is otherwise invalid.
    const requestedBy = await as(operator, "POST", `/api/v1/machines/${m}/scripts/done/cancel`, { requestedBy: "mallory", abandonAfterMs: -1 });
    expect(requestedBy.status).toBe(403);
    expect(requestedBy.body.error.code).toBe("forbidden");
    // Permitted: a bad request is 400 before an unknown machine is 404.
    expect((await as(operator, "POST", "/api/v1/machines/no-such/scripts/t/cancel", { abandonAfterMs: -1 })).status).toBe(400);
    expect((await as(operator, "POST", "/api/v1/machines/no-such/scripts/t/cancel", {})).status).toBe(404);
    expect((await as(viewer, "GET", "/api/v1/machines/no-such")).body.error.code).toBe("unknown_machine");
    // The server token may say on whose behalf it acts; an operator acts as itself.
    const byServer = await f.api("POST", `/api/v1/machines/${m}/scripts/done/cancel`, { requestedBy: "alice (ServerTasks-1)" });
    expect(byServer.status).toBe(200);
  });

  it("records an operator's cancel and abandon under operator:<name>, with its reason", async () => {
    const token = await addOperator(f.cp, "alice", "operator");
    const m = f.machine("actor");
    await f.register(m);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "a", scriptBody: "true" });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "b", scriptBody: "true" });
    const cancelled = await call(f.cp, "POST", `/api/v1/machines/${m}/scripts/b/cancel`, { reason: "stuck in AV scan" }, { token });
    expect(cancelled.body.events).toEqual([{ at: expect.any(String), action: "cancel", actor: "operator:alice", reason: "stuck in AV scan" }]);
    expect(cancelled.body.logs.map((l: { text: string }) => l.text)).toContain("Cancel requested by operator:alice: stuck in AV scan");
    const abandoned = await call(f.cp, "POST", `/api/v1/machines/${m}/scripts/a/abandon`, {}, { token });
    expect(abandoned.body.events).toEqual([{ at: expect.any(String), action: "abandon", actor: "operator:alice", reason: null }]);
  });
});

describe("operator tokens", () => {
  it("lists operators without their tokens, with lastUsedAt once a token was used", async () => {
    const token = await addOperator(f.cp, "lister", "viewer", 30);
    const before = (await f.api("GET", "/api/v1/operators")).body.operators.find((o: { name: string }) => o.name === "lister");
    expect(before).toEqual({ name: "lister", role: "viewer", createdAt: expect.any(String), expiresAt: expect.any(String), lastUsedAt: null });
    expect(Date.parse(before.expiresAt) - Date.parse(before.createdAt)).toBeGreaterThanOrEqual(30 * 86_400_000 - 1_000);
    expect((await call(f.cp, "GET", "/api/v1/machines", undefined, { token })).status).toBe(200);
    const list = (await f.api("GET", "/api/v1/operators")).body;
    expect(list.operators.find((o: { name: string }) => o.name === "lister").lastUsedAt).toEqual(expect.any(String));
    expect(JSON.stringify(list)).not.toContain(token);
    expect(JSON.stringify(list)).not.toContain(token.slice(4, 20));
  });

  it("stops accepting a token at once when its operator is removed, and the old token when the same name is added again", async () => {
    const first = await addOperator(f.cp, "rotating", "operator");
    expect((await call(f.cp, "GET", "/api/v1/machines", undefined, { token: first })).status).toBe(200);
    const second = await addOperator(f.cp, "rotating", "viewer");
    expect((await call(f.cp, "GET", "/api/v1/machines", undefined, { token: first })).status).toBe(401);
    expect((await call(f.cp, "GET", "/api/v1/machines", undefined, { token: second })).status).toBe(200);
    // The new token carries the new role.
    expect((await call(f.cp, "POST", "/api/v1/machines/x/scripts/t/cancel", {}, { token: second })).status).toBe(403);
    expect((await f.api("DELETE", "/api/v1/operators/rotating")).body).toEqual({ name: "rotating", removed: true });
    expect((await call(f.cp, "GET", "/api/v1/machines", undefined, { token: second })).status).toBe(401);
    const again = await f.api("DELETE", "/api/v1/operators/rotating");
    expect(again.status).toBe(404);
    expect(again.body.error.code).toBe("unknown_operator");
  });

  it("refuses an expired operator token with 401", async () => {
    let cp: TestControlPlane | undefined = await startControlPlane();
    const { stateDir, serverToken } = cp;
    try {
      const token = await addOperator(cp, "expiring", "viewer", 1);
      const keeper = await addOperator(cp, "keeper", "viewer", 1);
      expect((await call(cp, "GET", "/api/v1/machines", undefined, { token })).status).toBe(200);
      await cp.stop({ keepState: true });
      cp = undefined;
      // A day (and a moment) later, as far as the token is concerned.
      await editRegistry(stateDir, (storage) => storage.db.run("UPDATE operators SET expires_at = ? WHERE name = 'expiring'", [Date.now() - 1]));
      cp = await startControlPlane({ stateDir, serverToken });
      const refused = await call(cp, "GET", "/api/v1/machines", undefined, { token });
      expect(refused.status).toBe(401);
      expect(refused.body.error.code).toBe("unauthorized");
      expect((await call(cp, "GET", "/api/v1/machines", undefined, { token: keeper })).status).toBe(200);
    } finally {
      await cp?.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 90_000);
});

describe("server token rotation", () => {
  it("accepts both tokens while SERVER_TOKEN_NEXT is set, and only the new one once the rotation is done", async () => {
    const next = "next-server-token-0123456789";
    let cp: TestControlPlane | undefined = await startControlPlane({ args: ["--server-token-next", next] });
    const { stateDir, serverToken: old } = cp;
    try {
      const m = f.machine("rot");
      expect((await call(cp, "POST", `/api/v1/machines/${m}/runner-token`, undefined, { token: old })).status).toBe(201);
      expect((await call(cp, "GET", `/api/v1/machines/${m}`, undefined, { token: next })).status).toBe(200);
      expect((await call(cp, "DELETE", `/api/v1/machines/${m}/runner-token`, undefined, { token: next })).status).toBe(200);
      expect((await call(cp, "GET", "/api/v1/operators", undefined, { token: `${next}x` })).status).toBe(401);
      await cp.stop({ keepState: true });
      const restarted = await startControlPlane({ stateDir, serverToken: next });
      cp = restarted;
      expect((await call(restarted, "GET", `/api/v1/machines/${m}`, undefined, { token: next })).status).toBe(200);
      const refused = await call(restarted, "GET", `/api/v1/machines/${m}`, undefined, { token: old });
      expect(refused.status).toBe(401);
      // What each token did is recorded as the server's. The feed is the registry's copy, which a machine sends after
      // its answer (and, across the restart, at its next alarm): waited for.
      const feed = await waitFor(async () => {
        const events = (await call(restarted, "GET", `/api/v1/audit?machineId=${m}`, undefined, { token: next })).body.events;
        return events.length >= 2 ? events : undefined;
      }, { what: "both token events in the feed", timeoutMs: 30_000 });
      expect(feed.map((e: { action: string; actor: string }) => `${e.action} ${e.actor}`)).toEqual(["runner-token-revoked server", "runner-token-issued server"]);
    } finally {
      await cp?.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 90_000);
});
