/**
 * The SDK's HTTP layer is built on the route declarations (shared/routes.ts): every answer is checked against the
 * route's declared answers, so a malformed one is a TendrilProtocolError and never a silently wrong value, and a
 * declared route needs only a few lines to become an SDK method.
 */
import { describe, expect, it } from "vitest";
import { TendrilApiError, TendrilProtocolError } from "../../client/errors.js";
import { TendrilClient, type EscalationEvent } from "../../client/sdk.js";
import { fakeControlPlane, json, logEvent, logLine, machineView, openEventStream, status, statusEvent } from "./sdk-fake.js";

const token = "server-token-1";

async function clientAnswering(statusCode: number, body: unknown) {
  const server = await fakeControlPlane((_request, response) => json(response, statusCode, body));
  return { server, client: new TendrilClient({ url: server.url, serverToken: token }) };
}

describe("the SDK reads every answer against its route's declaration", () => {
  it("rejects a success status that the route does not declare as a protocol error", async () => {
    const { client } = await clientAnswering(202, status());

    const error = await client.getStatus("web-01", "t1").catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(TendrilProtocolError);
    expect((error as Error).message).toBe("GET /api/v1/machines/web-01/scripts/t1 answered with HTTP 202, which its route (getScript) does not declare");
  });

  it("rejects a machine view whose runner has no capabilities as a protocol error naming the field", async () => {
    const view = machineView("web-01", []);
    const { client } = await clientAnswering(200, { ...view, runner: { ...view.runner, capabilities: undefined } });

    await expect(client.getMachine("web-01")).rejects.toThrow(
      /^GET \/api\/v1\/machines\/web-01 answered with a malformed MachineView \(runner\.capabilities: /,
    );
  });

  it("checks the answer of every call, each against the schema its route declares", async () => {
    const { client } = await clientAnswering(200, { unexpected: true });
    const calls: Array<[string, () => Promise<unknown>]> = [
      ["MachineView", () => client.getMachine("web-01")],
      ["MachineList", () => client.listMachines()],
      ["ScriptStatus", () => client.startScript("web-01", { scriptBody: "true" })],
      ["ScriptStatus", () => client.getStatus("web-01", "t1")],
      ["ScriptStatus", () => client.cancelScript("web-01", "t1")],
      ["ScriptStatus", () => client.abandonScript("web-01", "t1")],
      ["ScriptStatus", () => client.completeScript("web-01", "t1")],
      ["RemovedMachine", () => client.removeMachine("web-01")],
      ["RevokedRunnerToken", () => client.revokeRunnerToken("web-01")],
      ["OperatorList", () => client.listOperators()],
      ["RemovedOperator", () => client.removeOperator("alice")],
      ["AuditFeed", () => client.audit()],
      ["ScriptStatus", () => client.machine("web-01").script("t1").result()],
    ];
    for (const [schema, call] of calls) {
      const error = await call().catch((caught: unknown) => caught);
      expect(error, schema).toBeInstanceOf(TendrilProtocolError);
      expect((error as Error).message, schema).toContain(`answered with a malformed ${schema} (`);
    }
    // 201 is the only success these two declare: answered 200, they are refused before their bodies are read.
    for (const call of [() => client.registerMachine("web-01"), () => client.addOperator({ name: "alice", role: "viewer" })]) {
      await expect(call()).rejects.toThrow(/answered with HTTP 200, which its route \((registerMachine|addOperator)\) does not declare/);
    }
  });

  it("accepts an answer carrying fields a newer control plane added", async () => {
    const { client } = await clientAnswering(200, { ...status({ state: "complete", exitCode: 0 }), addedLater: { anything: 1 } });

    await expect(client.getStatus("web-01", "t1")).resolves.toMatchObject({ state: "complete", exitCode: 0 });
  });

  it("turns a declared error answer into a TendrilApiError with its code", async () => {
    const { client } = await clientAnswering(409, { error: { code: "ticket_conflict", message: "Ticket t1 names another script." } });

    const error = await client.startScript("web-01", { ticket: "t1", scriptBody: "true" }).catch((caught: unknown) => caught);

    expect(error).toBeInstanceOf(TendrilApiError);
    expect(error).toMatchObject({ status: 409, code: "ticket_conflict", message: "Ticket t1 names another script." });
  });

  it("turns an error status no route declares (a 500, or a 404 from a control plane without the route) into a TendrilApiError", async () => {
    const internal = await clientAnswering(500, { error: { code: "internal", message: "The control plane failed." } });
    const older = await clientAnswering(404, { error: { code: "not_found", message: "No route GET /api/v1/audit." } });

    await expect(internal.client.getStatus("web-01", "t1")).rejects.toMatchObject({ status: 500, code: "internal" });
    await expect(older.client.audit()).rejects.toMatchObject({ status: 404, code: "not_found" });
  });

  it("reports a malformed machine view to onEscalationError instead of silently not abandoning", async () => {
    let stream: import("node:http").ServerResponse | undefined;
    const server = await fakeControlPlane((request, response) => {
      if (request.url.endsWith("/scripts")) json(response, 201, status({ ticket: "deploy-1" }));
      else if (request.url.includes("/stream")) {
        stream = response;
        openEventStream(response);
        response.write(logEvent(logLine(0, "working")));
      } else if (request.url.endsWith("/cancel")) json(response, 200, status({ ticket: "deploy-1" }));
      else if (request.url === "/api/v1/machines/web-01") json(response, 200, { machineId: "web-01", runner: { connected: true } });
      else if (request.method === "DELETE") json(response, 200, status({ ticket: "deploy-1", state: "complete", exitCode: -43, nextLogSequence: 1 }));
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });
    const stop = new AbortController();
    const errors: Array<[string, unknown]> = [];
    const events: EscalationEvent[] = [];

    const result = await client.executeScript(
      "web-01",
      { ticket: "deploy-1", scriptBody: "sleep 1000" },
      {
        signal: stop.signal,
        abandonAfterCancelMs: 10,
        onLog: () => stop.abort(),
        onEscalation: (event) => events.push(event),
        onEscalationError: (action, error) => {
          errors.push([action, error]);
          stream?.end(statusEvent(-43, 1));
        },
      },
    );

    expect(errors).toHaveLength(1);
    expect(errors[0]?.[0]).toBe("abandon");
    expect(errors[0]?.[1]).toBeInstanceOf(TendrilProtocolError);
    expect(events.map((event) => event.type)).toEqual(["cancel_sent"]);
    expect(result).toMatchObject({ exitCode: -43, outcome: "cancelled" });
  });

  it("sends an empty JSON body to a route that takes one when the caller gives no options", async () => {
    const { server, client } = await clientAnswering(200, status());

    await client.cancelScript("web-01", "t1");
    await client.cancelScript("web-01", "t1", { reason: "superseded by ServerTasks-43", abandonAfterMs: 60_000 });

    expect(server.requests.map((request) => [request.headers["content-type"], request.body])).toEqual([
      ["application/json", "{}"],
      ["application/json", '{"reason":"superseded by ServerTasks-43","abandonAfterMs":60000}'],
    ]);
  });
});

describe("the routes declared for operators, the audit feed and machine removal", () => {
  it("calls each with its method, path, query and body, and returns its validated answer", async () => {
    const answers: Record<string, [number, unknown]> = {
      "DELETE /api/v1/machines/web-01": [200, { machineId: "web-01", removed: true }],
      "DELETE /api/v1/machines/web-01/runner-token": [200, { machineId: "web-01", revoked: true }],
      "GET /api/v1/operators": [200, { operators: [{ name: "alice", role: "viewer", createdAt: "2026-01-01T00:00:00.000Z", expiresAt: "2026-04-01T00:00:00.000Z", lastUsedAt: null }] }],
      "POST /api/v1/operators": [201, { name: "bob", role: "operator", token: "top_1", expiresAt: "2026-02-01T00:00:00.000Z" }],
      "DELETE /api/v1/operators/alice": [200, { name: "alice", removed: true }],
      "GET /api/v1/audit?machineId=web-01&limit=2": [200, { events: [{ at: "2026-01-01T00:00:00.000Z", action: "cancel", actor: "server", reason: null, machineId: "web-01", ticket: "t1" }], nextCursor: "older" }],
    };
    const server = await fakeControlPlane((request, response) => {
      const [code, body] = answers[`${request.method} ${request.url}`] ?? [404, { error: { code: "not_found", message: request.url } }];
      json(response, code, body);
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    expect(await client.machine("web-01").remove()).toEqual({ machineId: "web-01", removed: true });
    expect(await client.revokeRunnerToken("web-01")).toEqual({ machineId: "web-01", revoked: true });
    expect((await client.listOperators()).map((operator) => operator.name)).toEqual(["alice"]);
    expect(await client.addOperator({ name: "bob", role: "operator", expiresInDays: 30 })).toMatchObject({ token: "top_1" });
    expect(await client.removeOperator("alice")).toEqual({ name: "alice", removed: true });
    expect(await client.audit({ machineId: "web-01", limit: 2 })).toMatchObject({ nextCursor: "older", events: [{ action: "cancel" }] });
    expect(JSON.parse(server.requests.find((request) => request.method === "POST")?.body ?? "")).toEqual({ name: "bob", role: "operator", expiresInDays: 30 });
  });
});
