/**
 * A fake control plane for the SDK's unit tests: a real HTTP server (node:http on 127.0.0.1, port 0) whose answers
 * each test writes, recording every request. It checks how the SDK builds requests and reads answers; the real
 * control plane is the integration tests' business. Servers are closed after each test.
 */
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from "node:http";
import { afterEach } from "vitest";
import type { LogLine, ScriptStatus } from "../../shared/api.js";
import { closeServer, listenLocally } from "../helpers/http-server.js";

/** One request as the fake control plane saw it. */
export interface SeenRequest {
  method: string;
  /** Path and query exactly as sent (still URL-encoded). */
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** Answers one request. */
export type Handler = (request: SeenRequest, response: ServerResponse) => void | Promise<void>;

/** A running fake. */
export interface FakeControlPlane {
  url: string;
  requests: SeenRequest[];
  close(): Promise<void>;
}

const servers: Server[] = [];

afterEach(async () => {
  for (const server of servers.splice(0)) await closeServer(server);
});

/** Starts a fake that answers every request with `handler`. */
export async function fakeControlPlane(handler: Handler): Promise<FakeControlPlane> {
  const requests: SeenRequest[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const seen = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks).toString() };
      requests.push(seen);
      Promise.resolve(handler(seen, res)).catch((error: unknown) => {
        res.statusCode = 500;
        res.end(String(error));
      });
    });
  });
  servers.push(server);
  return { url: await listenLocally(server), requests, close: () => closeServer(server) };
}

/** Answers JSON. */
export function json(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(JSON.stringify(body));
}

/** Starts an event-stream answer. */
export function openEventStream(response: ServerResponse): void {
  response.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" });
  response.flushHeaders();
}

/** A stdout (or other) log line. */
export function logLine(sequence: number, text: string, source: LogLine["source"] = "stdout"): LogLine {
  return { sequence, source, text, occurred: "2026-01-01T00:00:00.000Z" };
}

/** A script status (running, no logs) with overrides. */
export function status(overrides: Partial<ScriptStatus> = {}): ScriptStatus {
  return { ticket: "t1", state: "running", exitCode: null, logs: [], nextLogSequence: 0, hasMoreLogs: false, events: [], ...overrides };
}

/** A valid machine view whose runner advertises `capabilities`. */
export function machineView(machineId: string, capabilities: string[]) {
  return {
    machineId,
    runner: { connected: true, draining: false, version: "0.1.0", connectedAt: null, lastSeenAt: null, capabilities },
    mutexes: [],
    scripts: [],
    abandoned: [],
  };
}

/** One `log` event. */
export function logEvent(line: LogLine): string {
  return `event: log\ndata: ${JSON.stringify(line)}\n\n`;
}

/** The final `status` event (a status without its logs). */
export function statusEvent(exitCode: number, nextLogSequence: number): string {
  const { logs: _logs, ...rest } = status({ state: "complete", exitCode, nextLogSequence });
  return `event: status\ndata: ${JSON.stringify(rest)}\n\n`;
}

