/**
 * A thin HTTP helper for integration tests: raw status and JSON body, so that tests see exactly what the API says.
 * Every JSON answer is also checked against the declared response of its route (`expectDeclaredResponse`), so the
 * OpenAPI document, which is generated from those declarations, cannot drift from what the Worker sends.
 */
import WebSocket from "ws";
import { expectDeclaredResponse } from "./contract.js";

/** A response as a test sees it. */
export interface ApiResponse<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

/** Calls the control plane with the server token (unless `token` overrides it; null sends none). */
export async function call<T = any>(
  base: { url: string; serverToken: string },
  method: string,
  path: string,
  body?: unknown,
  { token, rawBody, headers = {} }: { token?: string | null; rawBody?: string; headers?: Record<string, string> } = {},
): Promise<ApiResponse<T>> {
  const all: Record<string, string> = { ...headers };
  if (token !== null) all.authorization = `Bearer ${token ?? base.serverToken}`;
  if ((body !== undefined || rawBody !== undefined) && !("content-type" in all)) all["content-type"] = "application/json";
  const response = await fetch(`${base.url}${path}`, {
    method,
    headers: all,
    body: rawBody ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // not JSON (the SSE stream)
  }
  if ((response.headers.get("content-type") ?? "").startsWith("application/json")) {
    expectDeclaredResponse(method, new URL(`${base.url}${path}`).pathname, response.status, parsed);
  }
  return { status: response.status, body: parsed as T, headers: response.headers };
}

/** The HTTP status a machine's runner socket upgrade gets with this runner token (101 when accepted; null sends none). */
export function runnerUpgradeStatus(base: { url: string }, machineId: string, token: string | null): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${base.url.replace("http", "ws")}/api/v1/machines/${machineId}/runner`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    ws.on("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.on("open", () => {
      resolve(101);
      ws.close();
    });
    ws.on("error", () => undefined);
  });
}

/** A runner socket a test drives by hand: every JSON message it received, how it closed, and a JSON send. */
export interface TestRunnerSocket {
  ws: WebSocket;
  messages: any[];
  closed: Promise<number>;
  send(message: unknown): void;
}

/** Opens a machine's runner socket with `ws` and this runner token; rejects when the upgrade is refused. */
export async function openRunnerSocket(base: { url: string }, machineId: string, token: string): Promise<TestRunnerSocket> {
  const ws = new WebSocket(`${base.url.replace("http", "ws")}/api/v1/machines/${machineId}/runner`, { headers: { authorization: `Bearer ${token}` } });
  const messages: any[] = [];
  ws.on("message", (data) => messages.push(JSON.parse(data.toString())));
  ws.on("error", () => undefined);
  const closed = new Promise<number>((resolve) => ws.on("close", (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    ws.on("open", () => resolve());
    ws.on("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
  });
  return { ws, messages, closed, send: (message: unknown) => ws.send(JSON.stringify(message)) };
}
