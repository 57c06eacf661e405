/**
 * The handle style of the SDK (`client.machine(id).start(...)` → a `ScriptRun`) against a fake control plane: what
 * each method sends, what it resolves with, and what disposal does in every state of a run.
 */
import type { ServerResponse } from "node:http";
import { describe, expect, it } from "vitest";
import { TendrilApiError, TendrilNetworkError, TendrilProtocolError } from "../../client/errors.js";
import { TendrilClient } from "../../client/sdk.js";
import { fakeControlPlane, json, logEvent, logLine, openEventStream, status, statusEvent, type SeenRequest } from "./sdk-fake.js";

const token = "server-token-1";

/** `logSequence` of a request, as a number. */
function logSequenceOf(request: SeenRequest | undefined): number | undefined {
  const raw = new URL(request?.url ?? "/", "http://x").searchParams.get("logSequence");
  return raw === null ? undefined : Number(raw);
}

describe("MachineHandle", () => {
  it("starts a script with a generated ticket and returns a handle on the run that knows whether it created it", async () => {
    let calls = 0;
    const server = await fakeControlPlane((_request, response) => json(response, ++calls === 1 ? 201 : 200, status({ state: "pending" })));
    const machine = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01");

    const run = await machine.start({ scriptBody: "./deploy.sh", taskId: "ServerTasks-42" });
    const again = await machine.start({ ticket: run.ticket, scriptBody: "./deploy.sh", taskId: "ServerTasks-42" });

    expect(run.ticket).toMatch(/^[0-9a-f-]{36}$/);
    expect([run.machineId, run.created, again.created]).toEqual(["web-01", true, false]);
    expect(JSON.parse(server.requests[0]?.body ?? "")).toEqual({ scriptBody: "./deploy.sh", taskId: "ServerTasks-42", ticket: run.ticket });
  });

  it("re-attaches to a run by its ticket without sending anything", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, status()));
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("deploy-7");

    expect([run.machineId, run.ticket, run.created]).toEqual(["web-01", "deploy-7", undefined]);
    expect(server.requests).toHaveLength(0);
  });
});

describe("ScriptRun.logs", () => {
  it("replays every line from sequence 0 on each iteration, then follows live until the run completes", async () => {
    let live: ServerResponse | undefined;
    const server = await fakeControlPlane((request, response) => {
      openEventStream(response);
      if (logSequenceOf(request) === 0 && live === undefined) {
        live = response;
        response.write(logEvent(logLine(0, "one")) + logEvent(logLine(1, "two")));
      } else {
        response.end(logEvent(logLine(0, "one")) + logEvent(logLine(1, "two")) + logEvent(logLine(2, "three")) + statusEvent(0, 3));
      }
    });
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    const first: string[] = [];
    for await (const line of run.logs()) {
      first.push(line.text);
      // The run goes on while the first reader reads: the rest arrives live on the same stream.
      if (line.sequence === 1) live?.end(logEvent(logLine(2, "three")) + statusEvent(0, 3));
    }
    const second: string[] = [];
    for await (const line of run.logs()) second.push(line.text);

    expect(first).toEqual(["one", "two", "three"]);
    expect(second).toEqual(["one", "two", "three"]);
    expect(server.requests.map(logSequenceOf)).toEqual([0, 0]);
  });

  it("survives a dropped stream: it resumes after the last line it delivered, without a gap or a repeat", async () => {
    const server = await fakeControlPlane((request, response) => {
      if (request.url.includes("/stream")) {
        openEventStream(response);
        response.write(logEvent(logLine(0, "a")) + logEvent(logLine(1, "b")), () => response.destroy());
      } else {
        // Polling takes over from the line after the last one delivered.
        const from = logSequenceOf(request) ?? 0;
        const lines = [logLine(1, "b"), logLine(2, "c")].filter((line) => line.sequence >= from);
        json(response, 200, status({ state: "complete", exitCode: 0, logs: lines, nextLogSequence: 3 }));
      }
    });
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    const lines: string[] = [];
    for await (const line of run.logs()) lines.push(line.text);

    expect(lines).toEqual(["a", "b", "c"]);
    expect(logSequenceOf(server.requests[1])).toBe(2);
  });
});

describe("ScriptRun.result", () => {
  it("answers the stored status read with a GET once the stream has reported completion, not the stream's own final event", async () => {
    const server = await fakeControlPlane((request, response) => {
      if (request.url.includes("/stream")) {
        openEventStream(response);
        response.end(logEvent(logLine(0, "done")) + statusEvent(0, 1));
      } else {
        // Still running at the first read; complete (and stored as exit code 3) at the second.
        const reads = server.requests.filter((seen) => !seen.url.includes("/stream")).length;
        json(response, 200, reads === 1 ? status({ state: "running" }) : status({ state: "complete", exitCode: 3, nextLogSequence: 1 }));
      }
    });
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    const result = await run.result();

    expect(result).toEqual({ ticket: "t1", state: "complete", exitCode: 3, events: [] });
    expect(server.requests.map((request) => request.url)).toEqual([
      "/api/v1/machines/web-01/scripts/t1?logSequence=0&limit=1",
      "/api/v1/machines/web-01/scripts/t1/stream?logSequence=0",
      "/api/v1/machines/web-01/scripts/t1?logSequence=1&limit=1",
    ]);
  });

  it("reads a complete run's result with one request, and later calls answer from what it read", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, status({ state: "complete", exitCode: -43 })));
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    expect(await run.result()).toEqual({ ticket: "t1", state: "complete", exitCode: -43, events: [] });
    expect(await run.result()).toEqual({ ticket: "t1", state: "complete", exitCode: -43, events: [] });
    expect(server.requests).toHaveLength(1);
  });

  it("rejects with a protocol error when the stored status says complete without an exit code", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, status({ state: "complete", exitCode: null })));
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    await expect(run.result()).rejects.toBeInstanceOf(TendrilProtocolError);
  });

  it("rejects with unknown_script once the run has been deleted elsewhere", async () => {
    const server = await fakeControlPlane((_request, response) =>
      json(response, 404, { error: { code: "unknown_script", message: "No script with ticket t1 exists on this machine." } }),
    );
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    await expect(run.result()).rejects.toMatchObject({ status: 404, code: "unknown_script" });
  });
});

describe("ScriptRun.cancel and abandon", () => {
  it("cancel resolves once the control plane has recorded it, with the status it answered, and sends its reason", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, status({ state: "running" })));
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    const answered = await run.cancel({ reason: "superseded by ServerTasks-43", abandonAfterMs: 120_000 });

    expect(answered.state).toBe("running");
    expect(server.requests.map((request) => [request.method, request.url, JSON.parse(request.body)])).toEqual([
      ["POST", "/api/v1/machines/web-01/scripts/t1/cancel", { reason: "superseded by ServerTasks-43", abandonAfterMs: 120_000 }],
    ]);
  });

  it("abandon sends killProcess and resolves with the complete status", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, status({ state: "complete", exitCode: -48 })));
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    const answered = await run.abandon({ reason: "stuck in an AV scan", killProcess: true });

    expect(answered).toMatchObject({ state: "complete", exitCode: -48 });
    expect(JSON.parse(server.requests[0]?.body ?? "")).toEqual({ reason: "stuck in an AV scan", killProcess: true });
  });
});

describe("ScriptRun disposal", () => {
  it("deletes a complete run at the end of an `await using` block", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, status({ state: "complete", exitCode: 0 })));
    const machine = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01");

    {
      await using run = machine.script("t1");
      expect(run.ticket).toBe("t1");
    }

    expect(server.requests.map((request) => [request.method, request.url])).toEqual([
      ["DELETE", "/api/v1/machines/web-01/scripts/t1?logSequence=0&limit=1"],
    ]);
  });

  it("leaves a run that is not complete exactly as it is, and does not throw", async () => {
    const server = await fakeControlPlane((_request, response) =>
      json(response, 409, { error: { code: "not_complete", message: "Script t1 is not complete." } }),
    );
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    expect(await run.dispose()).toEqual({ outcome: "not_complete" });
    // Only the (refused) delete: no cancel, no abandon.
    expect(server.requests.map((request) => request.method)).toEqual(["DELETE"]);
  });

  it("never masks the error that ended the block, and tells onDisposeError why the complete run could not be deleted", async () => {
    const server = await fakeControlPlane(() => undefined);
    await server.close(); // the port is now (almost certainly) refused
    const disposeErrors: Array<[unknown, { machineId: string; ticket: string }]> = [];
    const client = new TendrilClient({ url: server.url, serverToken: token, onDisposeError: (error, run) => disposeErrors.push([error, run]) });
    const original = new Error("the deployment step failed");

    const caught = await (async () => {
      await using _run = client.machine("web-01").script("t1");
      throw original;
    })().catch((error: unknown) => error);

    expect(caught).toBe(original);
    expect(disposeErrors).toHaveLength(1);
    expect(disposeErrors[0]?.[0]).toBeInstanceOf(TendrilNetworkError);
    expect(disposeErrors[0]?.[1]).toEqual({ machineId: "web-01", ticket: "t1" });
  });

  it("treats a run deleted elsewhere as already deleted, and sends nothing for a run this handle deleted", async () => {
    const gone = await fakeControlPlane((_request, response) => json(response, 404, { error: { code: "unknown_script", message: "gone" } }));
    const elsewhere = new TendrilClient({ url: gone.url, serverToken: token }).machine("web-01").script("t1");
    const server = await fakeControlPlane((_request, response) => json(response, 200, status({ state: "complete", exitCode: 0 })));
    const run = new TendrilClient({ url: server.url, serverToken: token }).machine("web-01").script("t1");

    await run.complete();
    const outcomes = [await elsewhere.dispose(), await run.dispose(), await run.dispose()];

    expect(outcomes).toEqual([{ outcome: "already_deleted" }, { outcome: "already_deleted" }, { outcome: "already_deleted" }]);
    expect(server.requests).toHaveLength(1);
    expect(await run.result()).toEqual({ ticket: "t1", state: "complete", exitCode: 0, events: [] });
  });

  it("reports a refused deletion of another kind as failed, with the error", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 401, { error: { code: "unauthorized", message: "Wrong token." } }));
    const run = new TendrilClient({ url: server.url, serverToken: "wrong" }).machine("web-01").script("t1");

    const disposed = await run.dispose();

    expect(disposed.outcome).toBe("failed");
    expect(disposed.outcome === "failed" && disposed.error).toBeInstanceOf(TendrilApiError);
  });
});
