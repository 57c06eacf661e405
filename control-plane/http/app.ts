/**
 * The HTTP edge (Hono): authentication, validation and routing to the machine's object, for the routes declared in
 * shared/routes.ts (each mounted with its checks by routing.ts). Nothing here is stateful; every decision about a
 * machine is taken by its Durable Object.
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import { LIMITS } from "../../shared/api.js";
import { isMachineId } from "../../shared/ids.js";
import { ALL_ROUTES, ROUTES } from "../../shared/routes.js";
import { createConsole } from "../console/app.js";
import { registryStub } from "../env.js";
import { bearerToken, randomToken, sha256Hex } from "../crypto.js";
import type { RpcResult } from "../machine/results.js";
import { parseFeedCursor, parseMachineCursor } from "../registry/cursors.js";
import { actorOf, OPERATOR_TOKEN_PREFIX } from "./callers.js";
import { ApiError, errorJson, invalid, isObjectUnavailable } from "./errors.js";
import { openApiDocument } from "./openapi.js";
import { fallbacks, mount, type AppEnv, type Ctx } from "./routing.js";
import { traceStage } from "../trace.js";

/** How long one stream page waits in the object before the edge sends a keep-alive comment. */
const STREAM_POLL_MS = 15_000;
/** A page's size when the request names none (fleet list, audit feed). */
const DEFAULT_PAGE = 100;
const DAY_MS = 24 * 60 * 60 * 1000;

/** Builds the Worker's Hono app. */
export function createApp(): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>();

  mount(app, ROUTES.health, (c) => c.json({ ok: true as const }));
  mount(app, ROUTES.openapi, (c) => c.json(openApiDocument(app, new URL(c.req.url).origin)));

  // The runner socket authenticates with its own token: the registry refuses a bad one before any machine
  // object is woken (so a bad token learns nothing of which machines exist); the object checks it again.
  mount(app, ROUTES.runnerSocket, async (c) => {
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

  mount(app, ROUTES.registerMachine, async (c, { params: { machineId } }) => {
    // The machine object first: it is the authority, and issuing there revokes the old token at once. Should
    // the registry then fail, it still holds the old hash, which no longer works: the machine refuses every
    // runner until the token is issued again (fail closed), and the caller is told to do so.
    const issued = await machineStub(c, machineId).issueRunnerToken(machineId, actorOf(c.get("caller")));
    if (!issued.ok) return respond(c, issued);
    try {
      await registry(c).setRunnerToken(machineId, await sha256Hex(issued.value.runnerToken), issued.value.incarnation);
    } catch (error) {
      console.error("registry: could not record the runner token of", machineId, error);
      return errorJson(c, 503, "storage_unavailable", "The runner token was issued but could not be recorded, so no runner can connect with it; issue it again.");
    }
    return c.json({ machineId: issued.value.machineId, runnerToken: issued.value.runnerToken }, 201);
  });

  // The machine object first, as for issuing: once it has dropped the token no runner gets in, whatever the registry
  // says. Should the registry then fail, the edge still lets that token reach the object, which refuses it.
  mount(app, ROUTES.revokeRunnerToken, async (c, { params: { machineId } }) => {
    const revoked = await machineStub(c, machineId).revokeRunnerToken(machineId, actorOf(c.get("caller")));
    if (!revoked.ok) return respond(c, revoked);
    try {
      await registry(c).revokeRunnerToken(machineId);
    } catch (error) {
      console.error("registry: could not revoke the runner token of", machineId, error);
      return errorJson(c, 503, "storage_unavailable", "The machine refuses its runner token now, but the registry could not record the revocation; revoke it again.");
    }
    return c.json({ machineId, revoked: true as const });
  });

  // The object deletes its own storage (or refuses: 409 machine_busy); then the registry forgets the machine and
  // records the removal. A removal whose registry step failed is completed by calling it again: the object then
  // answers unknown_machine, and the registry still has the row.
  mount(app, ROUTES.removeMachine, async (c, { params: { machineId } }) => {
    const actor = actorOf(c.get("caller"));
    const removed = await machineStub(c, machineId).removeMachine(machineId);
    if (!removed.ok && removed.code !== "unknown_machine") return respond(c, removed);
    let known: boolean;
    try {
      known = await registry(c).removeMachine(machineId, actor, removed.ok ? removed.value : null);
    } catch (error) {
      console.error("registry: could not forget the removed machine", machineId, error);
      return errorJson(c, 503, "storage_unavailable", "The machine's state was deleted, but the registry could not record the removal; call again to finish it.");
    }
    if (!removed.ok && !known) return respond(c, removed);
    return c.json({ machineId, removed: true as const });
  });

  mount(app, ROUTES.listMachines, async (c, { query }) => {
    const after = query.cursor === undefined ? null : parseMachineCursor(query.cursor);
    if (query.cursor !== undefined && after === null) throw invalid("cursor is not a cursor this control plane gave out.");
    const page = await registry(c).listMachines({ limit: query.limit ?? DEFAULT_PAGE, after, prefix: query.prefix ?? null, status: query.status ?? null });
    return c.body(page, 200, { "content-type": "application/json" });
  });

  mount(app, ROUTES.audit, async (c, { query }) => {
    const before = query.cursor === undefined ? null : parseFeedCursor(query.cursor);
    if (query.cursor !== undefined && before === null) throw invalid("cursor is not a cursor this control plane gave out.");
    return c.json(await registry(c).feed({ machineId: query.machineId ?? null, limit: query.limit ?? DEFAULT_PAGE, before }));
  });

  mount(app, ROUTES.addOperator, async (c, { body }) => {
    const token = randomToken(OPERATOR_TOKEN_PREFIX);
    const expiresAt = Date.now() + body.expiresInDays * DAY_MS;
    const operator = await registry(c).addOperator({ name: body.name, role: body.role, tokenHash: await sha256Hex(token), expiresAt }, actorOf(c.get("caller")));
    return c.json({ name: operator.name, role: operator.role, token, expiresAt: operator.expiresAt }, 201);
  });

  mount(app, ROUTES.listOperators, async (c) => c.json({ operators: await registry(c).listOperators() }));

  mount(app, ROUTES.removeOperator, async (c, { params: { name } }) => {
    if (!(await registry(c).removeOperator(name, actorOf(c.get("caller"))))) {
      return errorJson(c, 404, "unknown_operator", `No operator is named ${name}.`);
    }
    return c.json({ name, removed: true as const });
  });

  mount(app, ROUTES.getMachine, async (c, { params: { machineId } }) => respond(c, await machineStub(c, machineId).view(machineId, true)));

  mount(app, ROUTES.startScript, async (c, { params: { machineId }, body: request }) => {
    if (request.ticket !== undefined) traceStage(c.env, request.ticket, "edge");
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
      // Only when set, so that scripts started before run timeouts existed keep their identity.
      ...(request.runTimeoutMs > 0 ? { runTimeoutMs: request.runTimeoutMs } : {}),
    });
    const result = await machineStub(c, machineId).startScript(machineId, {
      ticket: request.ticket ?? crypto.randomUUID(),
      requestHash: await sha256Hex(identity),
      payloadJson,
      isolation: request.isolation,
      mutexName: request.mutexName,
      mutexTimeoutMs: request.mutexTimeoutMs,
      runTimeoutMs: request.runTimeoutMs,
      taskId: request.taskId ?? null,
      waitMs: request.waitMs,
    });
    if (!result.ok) return respond(c, result);
    traceStage(c.env, result.value.status.ticket, "answer");
    return c.json(result.value.status, result.value.created ? 201 : 200);
  });

  mount(app, ROUTES.getScript, async (c, { params: { machineId, ticket }, query }) =>
    respond(c, await machineStub(c, machineId).getStatus(machineId, ticket, query.logSequence ?? 0, query.limit ?? LIMITS.logPageLines)),
  );

  // The same page rules as GET: an answer is never larger than a page, whatever the script printed.
  mount(app, ROUTES.completeScript, async (c, { params: { machineId, ticket }, query }) =>
    respond(c, await machineStub(c, machineId).completeScript(machineId, ticket, query.logSequence ?? 0, query.limit ?? LIMITS.logPageLines)),
  );

  mount(app, ROUTES.cancelScript, async (c, { params: { machineId, ticket }, body }) => {
    const by = { actor: actorOf(c.get("caller"), body.requestedBy), reason: body.reason ?? null };
    return respond(c, await machineStub(c, machineId).cancelScript(machineId, ticket, body.abandonAfterMs ?? null, by));
  });

  mount(app, ROUTES.abandonScript, async (c, { params: { machineId, ticket }, body }) => {
    const by = { actor: actorOf(c.get("caller"), body.requestedBy), reason: body.reason ?? null };
    return respond(c, await machineStub(c, machineId).abandonScript(machineId, ticket, body.killProcess ?? false, by));
  });

  mount(app, ROUTES.streamScript, async (c, { params: { machineId, ticket }, query }) => {
    const stub = machineStub(c, machineId);
    const first = await stub.streamPage(machineId, ticket, query.logSequence ?? 0, 0);
    if (!first.ok) return respond(c, first);
    return new Response(sseBody(stub, machineId, ticket, first.value), {
      headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" },
    });
  });

  // The operators' console: its own pages and session cookie, outside /api/v1 (which never reads the cookie).
  app.route("/", createConsole());

  fallbacks(app, ALL_ROUTES);
  app.notFound((c) => errorJson(c, 404, "not_found", `No route ${c.req.method} ${c.req.path}.`));
  app.onError((error, c) => {
    if (error instanceof ApiError) return errorJson(c, error.status, error.code, error.message);
    if (isObjectUnavailable(error)) {
      console.error("object unavailable", c.req.method, c.req.path, error);
      c.header("retry-after", "1");
      return errorJson(c, 503, "unavailable", "The machine's object could not take this call just now (the platform reset or throttled it); try again.");
    }
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

function machineStub(c: Ctx, machineId: string): MachineStub {
  return c.env.MACHINE.get(c.env.MACHINE.idFromName(machineId));
}

function registry(c: Ctx) {
  return registryStub(c.env);
}

function respond<T>(c: Ctx, result: RpcResult<T>, status: 200 | 201 = 200): Response {
  if (!result.ok) return errorJson(c, result.status, result.code, result.message);
  return c.json(result.value as object, status);
}
