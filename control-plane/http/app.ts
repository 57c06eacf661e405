/**
 * The HTTP edge (Hono): authentication, validation and routing to the machine's object. Nothing here is
 * stateful; every decision about a machine is taken by its Durable Object.
 */
import { Hono, type Context } from "hono";
import { AbandonRequest, CancelRequest, LIMITS, StartScriptRequest, describeZodError, parseQueryInt } from "../../shared/api.js";
import { isMachineId, isTicket } from "../../shared/ids.js";
import { bearerToken, sha256Hex } from "../crypto.js";
import type { Env } from "../env.js";
import type { RpcResult } from "../machine/results.js";
import { requireServerToken } from "./auth.js";
import { ApiError, errorJson, invalid, readJsonBody } from "./errors.js";

type AppEnv = { Bindings: Env };
type Ctx = Context<AppEnv>;

/** How long one stream page waits in the object before the edge sends a keep-alive comment. */
const STREAM_POLL_MS = 15_000;
/** Machine views fetched at once for the machine list. */
const LIST_CONCURRENCY = 50;

const MACHINE = "/api/v1/machines/:machineId";
const SCRIPT = `${MACHINE}/scripts/:ticket`;

/** Builds the Worker's Hono app. */
export function createApp(): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.get("/healthz", (c) => c.json({ ok: true }));

  // The runner socket authenticates with its own token: the registry refuses a bad one before any machine
  // object is woken (so a bad token learns nothing of which machines exist); the object checks it again.
  app.get(`${MACHINE}/runner`, async (c) => {
    const machineId = c.req.param("machineId") ?? "";
    const presented = bearerToken(c.req.header("authorization"));
    const tokenHash = presented && isMachineId(machineId) ? await sha256Hex(presented) : null;
    const verdict = tokenHash ? await registry(c).checkRunnerToken(machineId, tokenHash) : "refused";
    if (!tokenHash || verdict === "refused") {
      return errorJson(c, 401, "unauthorized", "Missing or invalid runner token for this machine (Authorization: Bearer <runner token>).");
    }
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
      return errorJson(c, 400, "invalid_request", "The runner endpoint only accepts WebSocket upgrades.");
    }
    const url = new URL(c.req.url);
    url.searchParams.set("machineId", machineId);
    const response = await machineStub(c, machineId).fetch(new Request(url.toString(), c.req.raw));
    // A machine registered before the registry kept token hashes: its object accepted the token, so record it.
    if (verdict === "unverified" && response.status === 101) await registry(c).adoptRunnerToken(machineId, tokenHash);
    return response;
  });
  app.all(`${MACHINE}/runner`, methodNotAllowed);

  app.use("/api/v1/*", async (c, next) => {
    if (/^\/api\/v1\/machines\/[^/]+\/runner$/.test(c.req.path)) return next();
    return requireServerToken()(c, next);
  });

  app.post(`${MACHINE}/runner-token`, async (c) => {
    const machineId = machineIdParam(c);
    await readJsonBody(c, 64 * 1024, true).then((body) => {
      if (body !== undefined && !(typeof body === "object" && body !== null && !Array.isArray(body) && Object.keys(body).length === 0)) {
        throw invalid("runner-token takes no body fields.");
      }
    });
    // The machine object first: it is the authority, and issuing there revokes the old token at once. Should
    // the registry then fail, it still holds the old hash, which no longer works: the machine refuses every
    // runner until the token is issued again (fail closed), and the caller is told to do so.
    const issued = await machineStub(c, machineId).issueRunnerToken(machineId);
    if (!issued.ok) return respond(c, issued);
    try {
      await registry(c).setRunnerToken(machineId, await sha256Hex(issued.value.runnerToken));
    } catch (error) {
      console.error("registry: could not record the runner token of", machineId, error);
      return errorJson(c, 503, "storage_unavailable", "The runner token was issued but could not be recorded, so no runner can connect with it; issue it again.");
    }
    return c.json(issued.value, 201);
  });
  app.all(`${MACHINE}/runner-token`, methodNotAllowed);

  app.get("/api/v1/machines", async (c) => {
    const ids = await registry(c).list();
    const machines = [];
    for (let i = 0; i < ids.length; i += LIST_CONCURRENCY) {
      const batch = await Promise.all(ids.slice(i, i + LIST_CONCURRENCY).map((id) => machineStub(c, id).view(id, false)));
      for (const result of batch) if (result.ok) machines.push(result.value);
    }
    return c.json({ machines });
  });
  app.all("/api/v1/machines", methodNotAllowed);

  app.get(MACHINE, async (c) => {
    const machineId = machineIdParam(c);
    return respond(c, await machineStub(c, machineId).view(machineId, true));
  });
  app.all(MACHINE, methodNotAllowed);

  app.post(`${MACHINE}/scripts`, async (c) => {
    const machineId = machineIdParam(c);
    const body = await readJsonBody(c, LIMITS.requestBytes);
    const parsed = StartScriptRequest.safeParse(body);
    if (!parsed.success) throw invalid(describeZodError(parsed.error));
    const request = parsed.data;
    if (new TextEncoder().encode(request.scriptBody).byteLength > LIMITS.scriptBodyBytes) {
      throw new ApiError(413, "too_large", `scriptBody is larger than ${LIMITS.scriptBodyBytes} bytes.`);
    }
    const payload = {
      scriptBody: request.scriptBody,
      shell: request.shell,
      arguments: request.arguments,
      environment: Object.fromEntries(Object.entries(request.environment).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
      files: request.files,
    };
    const payloadJson = JSON.stringify(payload);
    const identity = JSON.stringify({
      payload,
      isolation: request.isolation,
      mutexName: request.mutexName,
      mutexTimeoutMs: request.mutexTimeoutMs,
      taskId: request.taskId ?? null,
    });
    const result = await machineStub(c, machineId).startScript(machineId, {
      ticket: request.ticket ?? crypto.randomUUID(),
      requestHash: await sha256Hex(identity),
      payloadJson,
      isolation: request.isolation,
      mutexName: request.mutexName,
      mutexTimeoutMs: request.mutexTimeoutMs,
      taskId: request.taskId ?? null,
      waitMs: request.waitMs,
    });
    if (!result.ok) return respond(c, result);
    return c.json(result.value.status, result.value.created ? 201 : 200);
  });
  app.all(`${MACHINE}/scripts`, methodNotAllowed);

  app.get(SCRIPT, async (c) => {
    const machineId = machineIdParam(c);
    const ticket = ticketParam(c);
    const logSequence = queryInt(c, "logSequence") ?? 0;
    const limit = queryInt(c, "limit", LIMITS.logPageLines) ?? LIMITS.logPageLines;
    if (limit < 1) throw invalid("limit must be between 1 and 10000.");
    return respond(c, await machineStub(c, machineId).getStatus(machineId, ticket, logSequence, limit));
  });
  app.delete(SCRIPT, async (c) => {
    const machineId = machineIdParam(c);
    const ticket = ticketParam(c);
    // The same page rules as GET: an answer is never larger than a page, whatever the script printed.
    const logSequence = queryInt(c, "logSequence") ?? 0;
    const limit = queryInt(c, "limit", LIMITS.logPageLines) ?? LIMITS.logPageLines;
    if (limit < 1) throw invalid("limit must be between 1 and 10000.");
    return respond(c, await machineStub(c, machineId).completeScript(machineId, ticket, logSequence, limit));
  });
  app.all(SCRIPT, methodNotAllowed);

  app.post(`${SCRIPT}/cancel`, async (c) => {
    const machineId = machineIdParam(c);
    const ticket = ticketParam(c);
    const raw = await readJsonBody(c, 64 * 1024, true);
    const body = CancelRequest.safeParse(raw === undefined ? {} : raw);
    if (!body.success) throw invalid(describeZodError(body.error));
    return respond(c, await machineStub(c, machineId).cancelScript(machineId, ticket, body.data.abandonAfterMs ?? null));
  });
  app.all(`${SCRIPT}/cancel`, methodNotAllowed);

  app.post(`${SCRIPT}/abandon`, async (c) => {
    const machineId = machineIdParam(c);
    const ticket = ticketParam(c);
    const raw = await readJsonBody(c, 64 * 1024, true);
    const body = AbandonRequest.safeParse(raw === undefined ? {} : raw);
    if (!body.success) throw invalid(describeZodError(body.error));
    return respond(c, await machineStub(c, machineId).abandonScript(machineId, ticket, body.data.killProcess ?? false));
  });
  app.all(`${SCRIPT}/abandon`, methodNotAllowed);

  app.get(`${SCRIPT}/stream`, async (c) => {
    const machineId = machineIdParam(c);
    const ticket = ticketParam(c);
    const from = queryInt(c, "logSequence") ?? 0;
    const stub = machineStub(c, machineId);
    const first = await stub.streamPage(machineId, ticket, from, 0);
    if (!first.ok) return respond(c, first);
    return new Response(sseBody(stub, machineId, ticket, first.value), {
      headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" },
    });
  });
  app.all(`${SCRIPT}/stream`, methodNotAllowed);

  app.notFound((c) => errorJson(c, 404, "not_found", `No route ${c.req.method} ${c.req.path}.`));
  app.onError((error, c) => {
    if (error instanceof ApiError) return errorJson(c, error.status, error.code, error.message);
    console.error("unhandled error", c.req.method, c.req.path, error);
    return errorJson(c, 500, "internal", "The control plane failed to handle this request.");
  });
  return app;
}

type MachineStub = DurableObjectStub<import("../machine/machine-object.js").MachineObject>;
type StreamPageValue = Extract<Awaited<ReturnType<MachineStub["streamPage"]>>, { ok: true }>["value"];

/** Writes log events, then one status event, then ends; keep-alive comments while nothing happens. */
function sseBody(stub: MachineStub, machineId: string, ticket: string, first: StreamPageValue): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  let page: StreamPageValue | null = first;
  let done = false;
  let nextSequence = first.nextLogSequence;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (done) return;
      if (!page) {
        const result = await stub.streamPage(machineId, ticket, nextSequence, STREAM_POLL_MS);
        if (!result.ok) {
          controller.enqueue(encoder.encode(`event: error\ndata: ${JSON.stringify({ error: { code: result.code, message: result.message } })}\n\n`));
          done = true;
          controller.close();
          return;
        }
        page = result.value;
      }
      let text = "";
      for (const line of page.logs) text += `event: log\ndata: ${JSON.stringify(line)}\n\n`;
      nextSequence = page.nextLogSequence;
      if (page.final) {
        const { logs: _logs, ...status } = page.final;
        text += `event: status\ndata: ${JSON.stringify(status)}\n\n`;
        done = true;
      } else if (page.logs.length === 0) {
        text += ": keep-alive\n\n";
      }
      page = null;
      controller.enqueue(encoder.encode(text));
      if (done) controller.close();
    },
  });
}

function machineIdParam(c: Ctx): string {
  const machineId = c.req.param("machineId") ?? "";
  if (!isMachineId(machineId)) throw invalid("machineId must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-' (and not '.' or '..').");
  return machineId;
}

function ticketParam(c: Ctx): string {
  const ticket = c.req.param("ticket") ?? "";
  if (!isTicket(ticket)) throw invalid("ticket must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-' (and not '.' or '..').");
  return ticket;
}

function queryInt(c: Ctx, name: string, max?: number): number | undefined {
  const parsed = parseQueryInt(c.req.query(name), name, max);
  if (typeof parsed === "object") throw invalid(`${parsed.error}.`);
  return parsed;
}

function machineStub(c: Ctx, machineId: string): MachineStub {
  return c.env.MACHINE.get(c.env.MACHINE.idFromName(machineId));
}

function registry(c: Ctx) {
  return c.env.REGISTRY.get(c.env.REGISTRY.idFromName("registry"));
}

function respond<T>(c: Ctx, result: RpcResult<T>, status: 200 | 201 = 200): Response {
  if (!result.ok) return errorJson(c, result.status, result.code, result.message);
  return c.json(result.value as object, status);
}

function methodNotAllowed(c: Ctx): Response {
  return errorJson(c, 405, "method_not_allowed", `${c.req.method} is not allowed on ${c.req.path}.`);
}

