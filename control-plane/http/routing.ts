/**
 * Mounts the declared routes (shared/routes.ts) on the Hono app: for each one, the checks in the contract's order —
 * authentication (401), permission (403), the request (400/413/415) — then the handler with typed, validated inputs,
 * and the route's entry in the OpenAPI registry. A route is declared once; its validation and its documentation
 * both come from that declaration.
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import type { Context, MiddlewareHandler } from "hono";
import type { z } from "zod";
import { describeZodError, parseQueryInt } from "../../shared/api.js";
import type { RouteDecl } from "../../shared/routes.js";
import type { Env } from "../env.js";
import { requireAccess } from "./auth.js";
import type { Caller } from "./callers.js";
import { ApiError, errorJson, invalid, readJsonBody } from "./errors.js";

/** The app's environment: the Worker's bindings, and who is calling (set by authentication). */
export type AppEnv = { Bindings: Env; Variables: { caller: Caller } };
/** A request's context. */
export type Ctx = Context<AppEnv>;

type Infer<S> = S extends z.ZodType ? z.infer<S> : Record<string, never>;

/** What a handler of route `R` receives, validated. */
export interface Inputs<R extends RouteDecl> {
  params: Infer<R["params"]>;
  query: Infer<R["query"]>;
  body: R["body"] extends { schema: infer S } ? Infer<S> : undefined;
}

/** Handles a declared route once its request has passed every check. */
export type Handler<R extends RouteDecl> = (c: Ctx, input: Inputs<R>) => Response | Promise<Response>;

/** Adds a declared route to the app and to its OpenAPI document. */
export function mount<R extends RouteDecl>(app: OpenAPIHono<AppEnv>, route: R, handler: Handler<R>): void {
  const honoPath = route.path.replace(/\{([^}]+)\}/g, ":$1");
  const checks: MiddlewareHandler<AppEnv>[] = [];
  // The runner socket checks its own token (against the registry) before it looks at anything else.
  if (route.access !== "public" && route.access !== "runner") checks.push(requireAccess(route.access));
  app.on([route.method.toUpperCase()], [honoPath], ...checks, async (c: Ctx) => handler(c, await validate(c, route)));
  app.openAPIRegistry.registerPath(openApiPath(route));
}

/**
 * Answers 405 for every method a declared path does not take, and 404 for an unknown `/api/v1` route — both after
 * authentication, as every other answer of the server API (a caller without a token learns nothing of the routes).
 */
export function fallbacks(app: OpenAPIHono<AppEnv>, routes: readonly RouteDecl[]): void {
  const paths = new Map<string, boolean>();
  for (const route of routes) {
    const path = route.path.replace(/\{([^}]+)\}/g, ":$1");
    paths.set(path, (paths.get(path) ?? false) || route.access !== "public");
  }
  for (const [path, guarded] of paths) {
    const notAllowed = (c: Ctx) => errorJson(c, 405, "method_not_allowed", `${c.req.method} is not allowed on ${c.req.path}.`);
    if (guarded) app.all(path, requireAccess("read"), notAllowed);
    else app.all(path, notAllowed);
  }
  app.all("/api/v1/*", requireAccess("read"), (c) => errorJson(c, 404, "not_found", `No route ${c.req.method} ${c.req.path}.`));
}

/**
 * Checks the path parameters, the query and the body of a request against its route; throws a 4xx ApiError. The body
 * is read first: a permission that depends on it (an operator token may not send `requestedBy`) is a 403, which
 * comes before every 400 once the body is JSON.
 */
async function validate<R extends RouteDecl>(c: Ctx, route: R): Promise<Inputs<R>> {
  const raw = route.body ? await readJsonBody(c, route.body.maxBytes, !route.body.required) : undefined;
  if (route.access === "act" && c.get("caller")?.kind === "operator" && typeof raw === "object" && raw !== null && "requestedBy" in raw) {
    throw new ApiError(403, "forbidden", "An operator token may not send requestedBy: an operator acts as itself (only the server token acts on behalf of someone).");
  }
  const params = route.params && route.access !== "runner" ? parse(route.params, c.req.param()) : {};
  const query = route.query ? parse(route.query, queryValues(c, route.query)) : {};
  const body = route.body ? parse(route.body.schema, raw === undefined ? {} : raw) : undefined;
  return { params, query, body } as Inputs<R>;
}

function parse(schema: z.ZodType, value: unknown): unknown {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw invalid(describeZodError(parsed.error));
  return parsed.data;
}

/**
 * The query parameters a route declares, integers converted strictly: decimal digits only, so that `1e3`, `-1`,
 * ` 5` or an empty value are refused rather than read as numbers. Parameters a route does not declare are ignored.
 */
function queryValues(c: Ctx, schema: z.ZodObject): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(schema.shape)) {
    const raw = c.req.query(name);
    if (raw === undefined) continue;
    if (!isNumber(field as z.ZodType)) {
      values[name] = raw;
      continue;
    }
    const parsed = parseQueryInt(raw, name);
    if (typeof parsed === "object") throw invalid(`${parsed.error}.`);
    values[name] = parsed;
  }
  return values;
}

/** True when a (possibly optional) schema takes a number. */
function isNumber(schema: z.ZodType): boolean {
  let def = schema._zod.def as { type: string; innerType?: z.ZodType };
  while ((def.type === "optional" || def.type === "default" || def.type === "nullable") && def.innerType) def = def.innerType._zod.def as typeof def;
  return def.type === "number";
}

/** The route as the OpenAPI registry takes it. */
function openApiPath(route: RouteDecl): Parameters<OpenAPIHono["openAPIRegistry"]["registerPath"]>[0] {
  const responses: Record<string, { description: string; content?: Record<string, { schema: z.ZodType }> }> = {};
  for (const [status, response] of Object.entries(route.responses)) {
    responses[status] = response.schema
      ? { description: response.description, content: { [response.mediaType ?? "application/json"]: { schema: response.schema } } }
      : { description: response.description };
  }
  return {
    method: route.method,
    path: route.path,
    operationId: route.name,
    summary: route.summary,
    ...(route.description ? { description: route.description } : {}),
    tags: [route.tag],
    security: securityOf(route.access),
    request: {
      ...(route.params ? { params: route.params } : {}),
      ...(route.query ? { query: route.query } : {}),
      ...(route.body
        ? { body: { required: route.body.required, content: { "application/json": { schema: route.body.schema } } } }
        : {}),
    },
    responses,
  } as Parameters<OpenAPIHono["openAPIRegistry"]["registerPath"]>[0];
}

/** The security requirement of an access level (empty: no token needed). */
function securityOf(access: RouteDecl["access"]): Array<Record<string, string[]>> {
  switch (access) {
    case "public":
      return [];
    case "runner":
      return [{ runnerToken: [] }];
    case "server":
      return [{ serverToken: [] }];
    case "read":
    case "act":
      return [{ serverToken: [] }, { operatorToken: [] }];
    default: {
      const unreachable: never = access;
      throw new Error(`unknown access ${String(unreachable)}`);
    }
  }
}
