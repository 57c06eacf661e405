/**
 * The SDK against a small real HTTP server (node:http on 127.0.0.1, port 0) that plays the control
 * plane's part: this checks how the SDK builds requests and reads answers, not the control plane.
 */
import type { ServerResponse } from "node:http";
import { describe, expect, it, vi } from "vitest";
import { TendrilApiError, TendrilNetworkError, TendrilProtocolError } from "../../client/errors.js";
import {
  DEFAULTS,
  TendrilClient,
  type EscalationEvent,
  type ExecuteScriptOptions,
  type ExecutedScript,
  type ScriptEvent,
} from "../../client/sdk.js";
import {
  fakeControlPlane,
  json,
  logEvent,
  logLine,
  machineView,
  openEventStream,
  status,
  statusEvent,
  type FakeControlPlane,
  type SeenRequest,
} from "./sdk-fake.js";

async function collect(events: AsyncIterable<ScriptEvent>): Promise<ScriptEvent[]> {
  const seen: ScriptEvent[] = [];
  for await (const event of events) seen.push(event);
  return seen;
}

/** `logSequence` of a request, as a number. */
function logSequenceOf(request: SeenRequest | undefined): number | undefined {
  const raw = new URL(request?.url ?? "/", "http://x").searchParams.get("logSequence");
  return raw === null ? undefined : Number(raw);
}

/** A fetch that hands the body over one byte per chunk, so every possible split point is exercised. */
const byteByByteFetch: typeof fetch = async (input, init) => {
  const response = await fetch(input, init);
  const bytes = new Uint8Array(await response.arrayBuffer());
  let offset = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset < bytes.length) controller.enqueue(bytes.slice(offset, ++offset));
      else controller.close();
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
};

const token = "server-token-1";

describe("TendrilClient requests", () => {
  it("sends the server token as a bearer token and returns the new runner token", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 201, { machineId: "web-01", runnerToken: "rt-1" }));
    const client = new TendrilClient({ url: server.url, serverToken: token });

    expect(await client.registerMachine("web-01")).toEqual({ machineId: "web-01", runnerToken: "rt-1" });
    expect(server.requests[0]).toMatchObject({ method: "POST", url: "/api/v1/machines/web-01/runner-token" });
    expect(server.requests[0]?.headers.authorization).toBe(`Bearer ${token}`);
  });

  it("reports a 201 start as created and a 200 start of the same ticket as not created", async () => {
    let calls = 0;
    const server = await fakeControlPlane((_request, response) => json(response, ++calls === 1 ? 201 : 200, status({ state: "pending" })));
    const client = new TendrilClient({ url: server.url, serverToken: token });
    const request = { ticket: "t1", scriptBody: "echo hello", environment: { A: "1" } };

    const first = await client.startScript("web-01", request);
    const second = await client.startScript("web-01", request);

    expect(first.created).toBe(true);
    expect(second.created).toBe(false);
    expect(first.status.state).toBe("pending");
    expect(server.requests[0]).toMatchObject({ method: "POST", url: "/api/v1/machines/web-01/scripts" });
    expect(server.requests[0]?.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(server.requests[0]?.body ?? "")).toEqual(request);
  });

  it("calls each route with its method, URL-encoded ids, query and body", async () => {
    const server = await fakeControlPlane((request, response) => {
      if (request.url.endsWith("/stream?logSequence=0")) {
        openEventStream(response);
        response.end(statusEvent(0, 0));
      } else if (request.url === "/api/v1/machines/we%20b%2F01") {
        json(response, 200, machineView("we b/01", []));
      } else {
        json(response, 200, status());
      }
    });
    const client = new TendrilClient({ url: `${server.url}/`, serverToken: token });
    const machine = "we b/01";
    const ticket = "t?1#&";

    await client.getMachine(machine);
    await client.getStatus(machine, ticket, { logSequence: 5, limit: 10 });
    await client.getStatus(machine, ticket);
    await client.completeScript(machine, ticket, { logSequence: 7 });
    await client.cancelScript(machine, ticket, { abandonAfterMs: 120_000 });
    await client.cancelScript(machine, ticket);
    await client.abandonScript(machine, ticket, { killProcess: true });
    await collect(client.streamScript(machine, ticket));

    const script = "/api/v1/machines/we%20b%2F01/scripts/t%3F1%23%26";
    expect(server.requests.map((r) => [r.method, r.url, r.body])).toEqual([
      ["GET", "/api/v1/machines/we%20b%2F01", ""],
      ["GET", `${script}?logSequence=5&limit=10`, ""],
      ["GET", script, ""],
      ["DELETE", `${script}?logSequence=7`, ""],
      ["POST", `${script}/cancel`, '{"abandonAfterMs":120000}'],
      ["POST", `${script}/cancel`, "{}"],
      ["POST", `${script}/abandon`, '{"killProcess":true}'],
      ["GET", `${script}/stream?logSequence=0`, ""],
    ]);
    expect(server.requests.at(-1)?.headers.accept).toBe("text/event-stream");
  });

  it("refuses ids that a URL parser would resolve as dot segments, without sending anything", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, {}));
    const client = new TendrilClient({ url: server.url, serverToken: token });

    await expect(client.getMachine("..")).rejects.toThrow(/invalid machine id "\.\."/);
    await expect(client.getStatus("web-01", ".")).rejects.toThrow(/invalid ticket "\."/);
    expect(server.requests).toHaveLength(0);
  });

  it("returns one page of the fleet list, sending its filters and cursor as the query", async () => {
    const page = {
      machines: [
        {
          machineId: "web-01",
          runner: { connected: true, draining: false, version: "0.1.0", lastSeenAt: "2026-01-01T00:00:00.000Z" },
          holders: ["t1"],
          heldSince: "2026-01-01T00:00:00.000Z",
          waiting: 2,
          abandoned: 0,
          updatedAt: "2026-01-01T00:00:00.000Z",
        },
      ],
      nextCursor: "c2",
      counts: { total: 3, connected: 1, disconnected: 2, busy: 1, stuck: 0 },
    };
    const server = await fakeControlPlane((_request, response) => json(response, 200, page));
    const client = new TendrilClient({ url: server.url, serverToken: token });

    expect(await client.listMachines({ prefix: "web-", status: "busy", limit: 1, cursor: "c1" })).toEqual(page);
    expect(await client.listMachines()).toEqual(page);
    expect(server.requests.map((r) => [r.method, r.url])).toEqual([
      ["GET", "/api/v1/machines?prefix=web-&status=busy&limit=1&cursor=c1"],
      ["GET", "/api/v1/machines"],
    ]);
  });

  it("rejects a URL that is not http or https", () => {
    expect(() => new TendrilClient({ url: "ftp://example.com", serverToken: token })).toThrow(/must start with http/);
    expect(() => new TendrilClient({ url: "not a url", serverToken: token })).toThrow(/invalid control plane URL/);
  });
});

describe("TendrilClient errors", () => {
  it("turns the contract's error body into a TendrilApiError with status, code and message", async () => {
    const server = await fakeControlPlane((_request, response) =>
      json(response, 404, { error: { code: "unknown_machine", message: "Machine web-01 is not registered." } }),
    );
    const client = new TendrilClient({ url: server.url, serverToken: token });

    const error = await client.getMachine("web-01").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TendrilApiError);
    expect(error).toMatchObject({ status: 404, code: "unknown_machine", message: "Machine web-01 is not registered." });
  });

  it("keeps the status and an excerpt of an error answer that is not the contract's shape", async () => {
    const server = await fakeControlPlane((_request, response) => {
      response.writeHead(502, { "content-type": "text/html" });
      response.end("<html>\n  Bad gateway\n</html>");
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    const error = await client.listMachines().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TendrilApiError);
    expect(error).toMatchObject({ status: 502, code: "http_502" });
    expect((error as Error).message).toBe("GET /api/v1/machines failed with HTTP 502 Bad Gateway: <html> Bad gateway </html>");
  });

  it("names the URL when the control plane cannot be reached", async () => {
    const server = await fakeControlPlane(() => undefined);
    await server.close(); // the port is now (almost certainly) refused
    const client = new TendrilClient({ url: server.url, serverToken: token });

    const error = await client.listMachines().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TendrilNetworkError);
    expect((error as Error).message).toMatch(
      new RegExp(`^could not reach the control plane at ${server.url}/api/v1/machines: .*ECONNREFUSED`),
    );
  });

  it("reports an answer that is not JSON as a protocol error", async () => {
    const server = await fakeControlPlane((_request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.end("{oops");
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    await expect(client.getStatus("web-01", "t1")).rejects.toBeInstanceOf(TendrilProtocolError);
  });
});

describe("TendrilClient.streamScript", () => {
  it("parses log and status events split at every byte, ignoring comments and unknown events", async () => {
    const server = await fakeControlPlane((_request, response) => {
      openEventStream(response);
      response.end(
        [
          ": keep-alive\n\n",
          logEvent(logLine(0, "héllo ✓ wörld")),
          // CRLF line endings and a data field without the optional space are both valid.
          `event: log\r\ndata:${JSON.stringify(logLine(1, "warn", "stderr"))}\r\n\r\n`,
          "event: progress\ndata: {}\n\n",
          `event: log\rdata: ${JSON.stringify(logLine(2, "waiting for t0", "debug"))}\r\r`,
          ":another comment\n",
          statusEvent(3, 3),
        ].join(""),
      );
    });
    const client = new TendrilClient({ url: server.url, serverToken: token, fetch: byteByByteFetch });

    const events = await collect(client.streamScript("web-01", "t1"));

    expect(events).toEqual([
      { type: "log", line: logLine(0, "héllo ✓ wörld") },
      { type: "log", line: logLine(1, "warn", "stderr") },
      { type: "log", line: logLine(2, "waiting for t0", "debug") },
      { type: "status", status: status({ state: "complete", exitCode: 3, nextLogSequence: 3 }) },
    ]);
  });

  it("resumes a stream that ends without a status event from the next log sequence, without repeating lines", async () => {
    const server = await fakeControlPlane((request, response) => {
      openEventStream(response);
      if (logSequenceOf(request) === 0) {
        response.end(logEvent(logLine(0, "a")) + logEvent(logLine(1, "b")));
      } else {
        // A server may repeat what the client already has; the SDK delivers each line once.
        response.end(logEvent(logLine(1, "b")) + logEvent(logLine(2, "c")) + statusEvent(0, 3));
      }
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    const events = await collect(client.streamScript("web-01", "t1"));

    expect(events.map((event) => (event.type === "log" ? event.line.text : `exit ${event.status.exitCode}`))).toEqual([
      "a",
      "b",
      "c",
      "exit 0",
    ]);
    expect(server.requests.map(logSequenceOf)).toEqual([0, 2]);
  });

  it("starts from the requested log sequence", async () => {
    const server = await fakeControlPlane((_request, response) => {
      openEventStream(response);
      response.end(logEvent(logLine(4, "e")) + statusEvent(0, 5));
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    const events = await collect(client.streamScript("web-01", "t1", { logSequence: 4 }));

    expect(events).toHaveLength(2);
    expect(logSequenceOf(server.requests[0])).toBe(4);
  });

  it("reopens after an error event and surfaces the HTTP error the reopened stream answers with", async () => {
    const server = await fakeControlPlane((_request, response) => {
      if (server.requests.length === 1) {
        openEventStream(response);
        response.end(logEvent(logLine(0, "a")) + `event: error\ndata: {"error":{"code":"unknown_script","message":"gone"}}\n\n`);
      } else {
        json(response, 404, { error: { code: "unknown_script", message: "Script t1 is not known." } });
      }
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });
    const seen: ScriptEvent[] = [];

    const error = await (async () => {
      for await (const event of client.streamScript("web-01", "t1")) seen.push(event);
    })().catch((caught: unknown) => caught);

    expect(seen).toHaveLength(1);
    expect(error).toMatchObject({ status: 404, code: "unknown_script" });
    expect(logSequenceOf(server.requests[1])).toBe(1);
  });

  it("rejects an answer that is not an event stream", async () => {
    const server = await fakeControlPlane((_request, response) => json(response, 200, status()));
    const client = new TendrilClient({ url: server.url, serverToken: token });

    await expect(collect(client.streamScript("web-01", "t1"))).rejects.toThrow(/not an event stream/);
  });

  it("rejects a malformed log event with a protocol error", async () => {
    const server = await fakeControlPlane((_request, response) => {
      openEventStream(response);
      response.end(`event: log\ndata: {"sequence":"zero"}\n\n`);
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    await expect(collect(client.streamScript("web-01", "t1"))).rejects.toThrow(/malformed log event \(sequence:/);
  });

  it("closes the connection when the consumer stops reading", async () => {
    let closed: () => void = () => undefined;
    const connectionClosed = new Promise<void>((resolve) => (closed = resolve));
    const server = await fakeControlPlane((_request, response) => {
      response.on("close", closed);
      openEventStream(response);
      response.write(logEvent(logLine(0, "a"))); // and the stream stays open
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    for await (const event of client.streamScript("web-01", "t1")) {
      expect(event.type).toBe("log");
      break;
    }

    await connectionClosed; // the test's timeout is the deadline
    expect(server.requests).toHaveLength(1);
  });
});

describe("TendrilClient.followScript", () => {
  it("falls back to polling when the stream breaks, continuing after the last delivered line", async () => {
    const server = await fakeControlPlane((request, response) => {
      if (request.url.includes("/stream")) {
        openEventStream(response);
        response.write(logEvent(logLine(0, "from the stream")), () => response.destroy());
        return;
      }
      const from = logSequenceOf(request);
      if (from === 1) {
        // A long log comes in pages; the next page is fetched at once.
        json(response, 200, status({ logs: [logLine(1, "page 1")], nextLogSequence: 2, hasMoreLogs: true }));
      } else if (from === 2) {
        json(response, 200, status({ logs: [logLine(2, "page 2")], nextLogSequence: 3 }));
      } else {
        json(response, 200, status({ state: "complete", exitCode: 7, logs: [logLine(3, "last")], nextLogSequence: 4 }));
      }
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });
    const fallbacks: unknown[] = [];

    const events = await collect(client.followScript("web-01", "t1", { onFallback: (error) => fallbacks.push(error) }));

    expect(events.map((event) => (event.type === "log" ? event.line.text : `exit ${event.status.exitCode}`))).toEqual([
      "from the stream",
      "page 1",
      "page 2",
      "last",
      "exit 7",
    ]);
    expect(fallbacks).toHaveLength(1);
    expect(fallbacks[0]).toBeInstanceOf(TendrilNetworkError);
    expect((fallbacks[0] as Error).message).toContain(`${server.url}/api/v1/machines/web-01/scripts/t1/stream`);
    expect(server.requests.slice(1).map(logSequenceOf)).toEqual([1, 2, 3]);
    expect(events.at(-1)).toEqual({ type: "status", status: status({ state: "complete", exitCode: 7, nextLogSequence: 4 }) });
  });

  it("falls back to polling when the stream route answers with an error, and surfaces polling's own errors", async () => {
    const server = await fakeControlPlane((_request, response) =>
      json(response, 401, { error: { code: "unauthorized", message: "Wrong server token." } }),
    );
    const client = new TendrilClient({ url: server.url, serverToken: "wrong" });

    await expect(collect(client.followScript("web-01", "t1"))).rejects.toMatchObject({ status: 401, code: "unauthorized" });
    expect(server.requests.map((request) => request.url)).toEqual([
      "/api/v1/machines/web-01/scripts/t1/stream?logSequence=0",
      "/api/v1/machines/web-01/scripts/t1?logSequence=0",
    ]);
  });

  it("stops following with the signal's reason when its signal aborts", async () => {
    const server = await fakeControlPlane((_request, response) => {
      openEventStream(response);
      response.write(": open\n\n");
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });
    const controller = new AbortController();

    const reason = new Error("stop now");

    const following = collect(client.followScript("web-01", "t1", { signal: controller.signal }));
    controller.abort(reason);

    await expect(following).rejects.toBe(reason);
  });
});

describe("TendrilClient.executeScript", () => {
  it("starts with a generated ticket, delivers every line once, deletes the completed script and returns its exit code", async () => {
    const server = await fakeControlPlane((request, response) => {
      if (request.method === "POST") json(response, 201, status({ state: "pending" }));
      else if (request.url.includes("/stream")) {
        openEventStream(response);
        response.end(logEvent(logLine(0, "hello")) + statusEvent(0, 1));
      } else if (request.method === "DELETE") {
        json(response, 200, status({ state: "complete", exitCode: 0, logs: [logLine(0, "hello")], nextLogSequence: 1 }));
      }
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });
    const lines: string[] = [];

    const outcome = await client.executeScript("web-01", { scriptBody: "echo hello" }, { onLog: (line) => lines.push(line.text) });

    expect(outcome).toMatchObject({ created: true, exitCode: 0, outcome: "completed" });
    expect(outcome.status).toEqual(status({ ticket: "t1", state: "complete", exitCode: 0, nextLogSequence: 1 }));
    expect(outcome.ticket).toMatch(/^[0-9a-f-]{36}$/);
    expect(lines).toEqual(["hello"]);
    expect(JSON.parse(server.requests[0]?.body ?? "")).toEqual({ scriptBody: "echo hello", ticket: outcome.ticket });
    expect(server.requests.map((r) => r.method)).toEqual(["POST", "GET", "DELETE"]);
    expect(server.requests[2]?.url).toBe(`/api/v1/machines/web-01/scripts/${outcome.ticket}?logSequence=1`);
  });

  it("abandons at once when the abandon signal aborts, without reading the machine's capabilities", async () => {
    let stream: ServerResponse | undefined;
    const server = await fakeControlPlane((request, response) => {
      if (request.url.endsWith("/scripts")) json(response, 201, status({ state: "running" }));
      else if (request.url.includes("/stream")) {
        stream = response;
        openEventStream(response);
        response.write(logEvent(logLine(0, "working")));
      } else if (request.url.endsWith("/cancel")) {
        json(response, 200, status());
        stream?.write(logEvent(logLine(1, "sent SIGTERM to the process group", "debug")));
      } else if (request.url.endsWith("/abandon")) {
        json(response, 200, status({ state: "complete", exitCode: -48 }));
        stream?.end(statusEvent(-48, 2));
      } else if (request.method === "DELETE") {
        json(response, 200, status({ state: "complete", exitCode: -48, nextLogSequence: 2 }));
      }
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });
    const cancel = new AbortController();
    const abandon = new AbortController();

    const outcome = await client.executeScript(
      "web-01",
      { ticket: "deploy-1", scriptBody: "sleep 1000" },
      {
        signal: cancel.signal,
        abandonSignal: abandon.signal,
        abandonAfterMs: 5_000,
        killProcessOnAbandon: true,
        // Each escalation follows what the previous one made visible, like a person pressing Ctrl-C.
        onLog: (line) => (line.sequence === 0 ? cancel.abort() : abandon.abort()),
      },
    );

    expect(outcome).toEqual({
      ticket: "deploy-1",
      created: true,
      exitCode: -48,
      outcome: "abandoned",
      status: status({ state: "complete", exitCode: -48, nextLogSequence: 2 }),
    });
    const escalations = server.requests.filter((r) => r.method === "POST" && !r.url.endsWith("/scripts"));
    expect(escalations.map((r) => [r.url, JSON.parse(r.body)])).toEqual([
      ["/api/v1/machines/web-01/scripts/deploy-1/cancel", { abandonAfterMs: 5_000 }],
      ["/api/v1/machines/web-01/scripts/deploy-1/abandon", { killProcess: true }],
    ]);
    expect(server.requests.some((r) => r.url === "/api/v1/machines/web-01")).toBe(false);
  });

  it("returns the result with the delete error when deleting the completed script fails", async () => {
    const server = await fakeControlPlane((request, response) => {
      if (request.method === "POST") json(response, 200, status({ state: "complete", exitCode: 2 }));
      else if (request.url.includes("/stream")) {
        openEventStream(response);
        response.end(statusEvent(2, 0));
      } else json(response, 409, { error: { code: "not_complete", message: "Not complete." } });
    });
    const client = new TendrilClient({ url: server.url, serverToken: token });

    const outcome = await client.executeScript("web-01", { ticket: "t1", scriptBody: "exit 2" });

    expect(outcome).toMatchObject({ ticket: "t1", created: false, exitCode: 2 });
    expect(outcome.deleteError).toMatchObject({ code: "not_complete" });
  });
});

/** A fake control plane running one script, `deploy-1` on `web-01`, whose stream stays open until `finish`. */
interface RunningScript {
  server: FakeControlPlane;
  /** Completes the script: the open stream sends its final status and ends. */
  finish(exitCode: number): void;
  /** The calls the escalation made (cancel, machine view, abandon), as `METHOD path`. */
  escalations(): string[];
  /** The body of the first request to a path ending with `suffix`. */
  bodyOf(suffix: string): unknown;
}

/**
 * `capabilities` is what the machine view says its runner supports; `onCancel` is what the "runner"
 * does with a cancel: nothing (a process that will not die) or complete the script with an exit code.
 */
async function runningScript(options: { capabilities: string[]; onCancel: "ignore" | { exitCode: number } }): Promise<RunningScript> {
  let stream: ServerResponse | undefined;
  let finalExitCode: number | undefined;
  const finish = (exitCode: number) => {
    if (finalExitCode !== undefined) return;
    finalExitCode = exitCode;
    stream?.end(statusEvent(exitCode, 1));
  };
  const complete = () => status({ ticket: "deploy-1", state: "complete", exitCode: finalExitCode ?? null, nextLogSequence: 1 });
  const server = await fakeControlPlane((request, response) => {
    if (request.method === "POST" && request.url.endsWith("/scripts")) {
      json(response, 201, status({ ticket: "deploy-1", state: "running" }));
    } else if (request.url.includes("/stream")) {
      stream = response;
      openEventStream(response);
      response.write(logEvent(logLine(0, "working")));
    } else if (request.url.endsWith("/cancel")) {
      json(response, 200, status({ ticket: "deploy-1", state: "running" }));
      const onCancel = options.onCancel;
      if (onCancel !== "ignore") setTimeout(() => finish(onCancel.exitCode), 20);
    } else if (request.url === "/api/v1/machines/web-01") {
      json(response, 200, machineView("web-01", options.capabilities));
    } else if (request.url.endsWith("/abandon")) {
      finish(-48);
      json(response, 200, complete());
    } else if (request.method === "DELETE") {
      json(response, 200, complete());
    } else {
      json(response, 404, { error: { code: "not_found", message: `No route ${request.method} ${request.url}.` } });
    }
  });
  const isEscalation = (r: SeenRequest) => r.url.endsWith("/cancel") || r.url.endsWith("/abandon") || r.url === "/api/v1/machines/web-01";
  return {
    server,
    finish,
    escalations: () => server.requests.filter(isEscalation).map((r) => `${r.method} ${r.url}`),
    bodyOf: (suffix) => JSON.parse(server.requests.find((r) => r.url.endsWith(suffix))?.body ?? "null"),
  };
}

const CANCEL = "POST /api/v1/machines/web-01/scripts/deploy-1/cancel";
const MACHINE = "GET /api/v1/machines/web-01";
const ABANDON = "POST /api/v1/machines/web-01/scripts/deploy-1/abandon";

/**
 * Runs `deploy-1` on `web-01` through the SDK against `script`'s fake and interrupts it at its first log line, as
 * a Ctrl-C would: its signal aborts. Resolves with the result and every escalation event (also passed on to
 * `options.onEscalation`).
 */
async function executeInterrupted(
  script: RunningScript,
  scriptBody: string,
  options: ExecuteScriptOptions = {},
): Promise<{ result: ExecutedScript; events: EscalationEvent[] }> {
  const client = new TendrilClient({ url: script.server.url, serverToken: token });
  const stop = new AbortController();
  const events: EscalationEvent[] = [];
  const result = await client.executeScript(
    "web-01",
    { ticket: "deploy-1", scriptBody },
    {
      ...options,
      signal: stop.signal,
      onLog: () => stop.abort(),
      onEscalation: (event) => {
        events.push(event);
        options.onEscalation?.(event);
      },
    },
  );
  return { result, events };
}

describe("TendrilClient.executeScript escalation", () => {
  it("sends the cancel when its signal aborts, with the control plane's own deadline in the body", async () => {
    const script = await runningScript({ capabilities: ["script.v1", "script.abandon"], onCancel: { exitCode: -43 } });

    const { result, events } = await executeInterrupted(script, "sleep 1000", { abandonAfterMs: 120_000 });

    expect(script.escalations()).toEqual([CANCEL]);
    expect(script.bodyOf("/cancel")).toEqual({ abandonAfterMs: 120_000 });
    expect(events).toEqual([{ type: "cancel_sent", status: status({ ticket: "deploy-1", state: "running" }) }]);
    expect(result).toMatchObject({ exitCode: -43, outcome: "cancelled", status: { state: "complete", exitCode: -43 } });
  });

  it("abandons a script still not complete abandonAfterCancelMs after the cancel when the runner advertises script.abandon", async () => {
    const script = await runningScript({ capabilities: ["script.v1", "script.abandon"], onCancel: "ignore" });

    const { result, events } = await executeInterrupted(script, "trap '' TERM; sleep 1000", { abandonAfterCancelMs: 100, killProcessOnAbandon: true });

    expect(script.escalations()).toEqual([CANCEL, MACHINE, ABANDON]);
    expect(script.bodyOf("/cancel")).toEqual({});
    expect(script.bodyOf("/abandon")).toEqual({ killProcess: true });
    expect(events.map((event) => (event.type === "abandon_sent" ? `${event.type}:${event.trigger}` : event.type))).toEqual([
      "cancel_sent",
      "abandon_sent:deadline",
    ]);
    expect(result).toEqual({
      ticket: "deploy-1",
      created: true,
      exitCode: -48,
      outcome: "abandoned",
      status: status({ ticket: "deploy-1", state: "complete", exitCode: -48, nextLogSequence: 1 }),
    });
  });

  it("does not abandon a script that completes before the threshold, and reports it cancelled", async () => {
    const script = await runningScript({ capabilities: ["script.v1", "script.abandon"], onCancel: { exitCode: -43 } });

    const { result } = await executeInterrupted(script, "sleep 1000", { abandonAfterCancelMs: 200 });
    await new Promise((resolve) => setTimeout(resolve, 300)); // past the threshold: nothing may follow

    expect(result).toMatchObject({ exitCode: -43, outcome: "cancelled" });
    expect(script.escalations()).toEqual([CANCEL]);
  });

  it("reports a cancelled script that had already exited with its own exit code", async () => {
    const script = await runningScript({ capabilities: ["script.v1", "script.abandon"], onCancel: { exitCode: 0 } });

    const { result } = await executeInterrupted(script, "true");

    expect(result).toMatchObject({ exitCode: 0, outcome: "cancelled" });
  });

  it("does not abandon when the runner does not advertise script.abandon: it reports that and keeps following", async () => {
    const script = await runningScript({ capabilities: ["script.v1"], onCancel: "ignore" });

    const { result, events } = await executeInterrupted(script, "trap '' TERM; sleep 1000", {
      abandonAfterCancelMs: 50,
      onEscalation: (event) => {
        // The process dies in the end (e.g. the runner's SIGKILL after its grace period).
        if (event.type === "abandon_unavailable") setTimeout(() => script.finish(-43), 100);
      },
    });

    expect(script.escalations()).toEqual([CANCEL, MACHINE]);
    expect(events.at(-1)).toEqual({
      type: "abandon_unavailable",
      runner: { connected: true, draining: false, version: "0.1.0", connectedAt: null, lastSeenAt: null, capabilities: ["script.v1"] },
    });
    expect(result).toMatchObject({ exitCode: -43, outcome: "cancelled" });
  });

  it("reports a failed machine read as an abandon error and keeps following", async () => {
    const script = await runningScript({ capabilities: ["script.v1", "script.abandon"], onCancel: "ignore" });
    const client = new TendrilClient({ url: script.server.url, serverToken: token });
    const stop = new AbortController();
    const errors: Array<[string, unknown]> = [];

    const result = await client.executeScript(
      "other-machine", // the fake knows only web-01, so the machine view answers 404
      { ticket: "deploy-1", scriptBody: "sleep 1000" },
      {
        signal: stop.signal,
        abandonAfterCancelMs: 50,
        onLog: () => stop.abort(),
        onEscalationError: (action, error) => {
          errors.push([action, error]);
          script.finish(-43);
        },
      },
    );

    expect(errors).toHaveLength(1);
    expect(errors[0]?.[0]).toBe("abandon");
    expect(errors[0]?.[1]).toBeInstanceOf(TendrilApiError);
    expect(result).toMatchObject({ exitCode: -43, outcome: "cancelled" });
  });

  it("ends with outcome completed and sends nothing when its signal never aborts", async () => {
    const script = await runningScript({ capabilities: ["script.v1", "script.abandon"], onCancel: "ignore" });
    const client = new TendrilClient({ url: script.server.url, serverToken: token });
    const stop = new AbortController();

    const result = await client.executeScript(
      "web-01",
      { ticket: "deploy-1", scriptBody: "exit 3" },
      { signal: stop.signal, abandonAfterCancelMs: 10, onLog: () => script.finish(3) },
    );
    stop.abort(); // after completion: ignored

    expect(result).toMatchObject({ exitCode: 3, outcome: "completed", status: { state: "complete", exitCode: 3 } });
    expect(script.escalations()).toEqual([]);
  });

  it("clears the abandon timer once the script completes, so that no timer keeps the process alive", async () => {
    const script = await runningScript({ capabilities: ["script.v1", "script.abandon"], onCancel: { exitCode: -43 } });
    const setTimeoutSpy = vi.spyOn(globalThis, "setTimeout");
    const clearTimeoutSpy = vi.spyOn(globalThis, "clearTimeout");
    try {
      await executeInterrupted(script, "sleep 1000");

      const escalationTimers = setTimeoutSpy.mock.calls
        .map((call, index) => ({ delay: call[1], timer: setTimeoutSpy.mock.results[index]?.value }))
        .filter((call) => call.delay === DEFAULTS.abandonAfterCancelMs);
      expect(escalationTimers).toHaveLength(1);
      expect(clearTimeoutSpy.mock.calls.map((call) => call[0])).toContain(escalationTimers[0]?.timer);
    } finally {
      setTimeoutSpy.mockRestore();
      clearTimeoutSpy.mockRestore();
    }
  });

  it("rejects a negative abandonAfterCancelMs before starting anything", async () => {
    const script = await runningScript({ capabilities: [], onCancel: "ignore" });
    const client = new TendrilClient({ url: script.server.url, serverToken: token });

    await expect(
      client.executeScript("web-01", { ticket: "deploy-1", scriptBody: "true" }, { abandonAfterCancelMs: -1 }),
    ).rejects.toBeInstanceOf(RangeError);
    expect(script.server.requests).toHaveLength(0);
  });
});
