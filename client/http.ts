/**
 * The SDK's one way to call the control plane: a route as shared/routes.ts declares it, plus its inputs. It builds
 * the request (path parameters URL-encoded, integers in the query as decimal digits, a JSON body), sends it with the
 * server token, and reads the answer against that route's declarations: a 4xx/5xx is a `TendrilApiError`; any
 * other status must be one the route declares, with a body that matches the declared schema, or the call fails
 * with a `TendrilProtocolError` — a malformed answer never becomes a silently wrong value. A route added to
 * shared/routes.ts is callable here without new plumbing: its SDK method is a few lines.
 */
import { z } from "zod";
import type { RouteDecl } from "../shared/routes.js";
import { TendrilApiError, TendrilNetworkError, TendrilProtocolError } from "./errors.js";

/** A query value as it goes on the URL; `undefined` leaves the parameter out. */
type QueryValue = string | number | boolean | undefined;

/** The inputs of a call to route `R`: its path parameters, query and body as the route's schemas accept them. */
export type RouteInputs<R extends RouteDecl> = ParamsInput<R> &
  QueryInput<R> &
  BodyInput<R> & {
    /** Aborts the request (and, for a stream, the reading of it). */
    signal?: AbortSignal | undefined;
  };

type ParamsInput<R> = R extends { params: infer P extends z.ZodType } ? { params: z.input<P> } : { params?: undefined };
type QueryInput<R> = R extends { query: infer Q extends z.ZodType } ? { query?: { [K in keyof z.input<Q>]?: z.input<Q>[K] | undefined } } : { query?: undefined };
type BodyInput<R> = R extends { body: { schema: infer B extends z.ZodType; required: true } }
  ? { body: z.input<B> }
  : R extends { body: { schema: infer B extends z.ZodType } }
    ? { body?: z.input<B> }
    : { body?: undefined };

/** A validated JSON answer: its HTTP status (one the route declares) and its body. */
export interface JsonAnswer<T> {
  status: number;
  body: T;
}

/** Where the control plane is and how to reach it. */
export interface Transport {
  /** The base URL, without a trailing slash. */
  url: string;
  /** Sent as `Authorization: Bearer`. */
  serverToken: string;
  /** The fetch to use. */
  fetch: typeof fetch;
}

/**
 * Calls a route that answers JSON and returns its validated answer. The body is validated with the schema the route
 * declares for the status received (the contract); `expected` is the schema the caller reads it as (for its type).
 * It is normally that very schema, parsed once; an SDK-side equivalent of a schema that shared/ does not export is
 * applied after the declared one.
 */
export async function callJson<R extends RouteDecl, S extends z.ZodType>(
  transport: Transport,
  route: R,
  inputs: RouteInputs<R>,
  expected: S,
): Promise<JsonAnswer<z.output<S>>> {
  const { response, what } = await send(transport, route, inputs, "application/json");
  const declared = route.responses[response.status];
  if (declared === undefined) {
    await response.body?.cancel().catch(() => undefined);
    throw new TendrilProtocolError(`${what} answered with HTTP ${response.status}, which its route (${route.name}) does not declare`);
  }
  if (declared.mediaType !== "application/json" || declared.schema === undefined) {
    await response.body?.cancel().catch(() => undefined);
    throw new TendrilProtocolError(`${what} answered with HTTP ${response.status}, which its route (${route.name}) declares without a JSON body`);
  }
  const text = await response.text().catch((error: unknown) => {
    throw new TendrilNetworkError(response.url || what, error);
  });
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new TendrilProtocolError(`${what} answered with HTTP ${response.status} and a body that is not JSON: ${excerpt(text)}`);
  }
  const malformed = `${what} answered with a malformed ${schemaName(declared.schema)}`;
  if (declared.schema !== expected) parseAnswer(declared.schema, value, malformed);
  return { status: response.status, body: parseAnswer(expected, value, malformed) };
}

/**
 * Opens a route that answers a stream of Server-Sent Events and returns the response body once its status is one
 * the route declares as `text/event-stream` and it really is one.
 */
export async function openStream<R extends RouteDecl>(
  transport: Transport,
  route: R,
  inputs: RouteInputs<R>,
): Promise<{ body: ReadableStream<Uint8Array>; url: string }> {
  const { response, what, url } = await send(transport, route, inputs, "text/event-stream");
  const declared = route.responses[response.status];
  const contentType = response.headers.get("content-type") ?? "";
  if (declared?.mediaType !== "text/event-stream" || !contentType.includes("text/event-stream") || !response.body) {
    await response.body?.cancel().catch(() => undefined);
    throw new TendrilProtocolError(
      `${what} answered with HTTP ${response.status} and ${contentType || "no content type"}, not an event stream`,
    );
  }
  return { body: response.body, url };
}

/** Validates `value` with `schema`; a mismatch is a `TendrilProtocolError` that starts with `what` and names the field. */
export function parseAnswer<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue?.path.length ? issue.path.map(String).join(".") : "body";
  throw new TendrilProtocolError(`${what} (${where}: ${issue?.message ?? "invalid"})`);
}

/** The name a schema has in the OpenAPI document (its `.meta({ id })`), or "answer". */
export function schemaName(schema: z.ZodType): string {
  const id = z.globalRegistry.get(schema)?.id;
  return typeof id === "string" ? id : "answer";
}

/** Sends one request of `route`; rejects with TendrilApiError for a 4xx/5xx and TendrilNetworkError when unreachable. */
async function send<R extends RouteDecl>(
  transport: Transport,
  route: R,
  inputs: RouteInputs<R>,
  accept: string,
): Promise<{ response: Response; what: string; url: string }> {
  const url = new URL(`${transport.url}${fillPath(route.path, inputs.params)}`);
  const query: Record<string, QueryValue> = inputs.query ?? {};
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined) url.searchParams.set(name, String(value));
  }
  const method = route.method.toUpperCase();
  const what = `${method} ${url.pathname}`;
  const headers: Record<string, string> = { authorization: `Bearer ${transport.serverToken}`, accept };
  const init: RequestInit = { method, headers };
  // A route with a body gets one even when the caller has nothing to say: the control plane reads `{}` as "no options".
  if (route.body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(inputs.body ?? {});
  }
  if (inputs.signal) init.signal = inputs.signal;
  let response: Response;
  try {
    response = await transport.fetch(url, init);
  } catch (error) {
    if (inputs.signal?.aborted) throw error;
    throw new TendrilNetworkError(url.href, error);
  }
  if (response.status >= 400) throw await TendrilApiError.fromResponse(response, what);
  return { response, what, url: `${url.origin}${url.pathname}` };
}

/** The route's path with each `{name}` replaced by its URL-encoded value. */
function fillPath(path: string, params: Record<string, unknown> | undefined): string {
  return path.replace(/\{([^}]+)\}/g, (_match, name: string) => {
    const value = params?.[name];
    if (typeof value !== "string") throw new TypeError(`missing path parameter ${name} for ${path}`);
    return pathSegment(value, name.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase());
  });
}

function pathSegment(value: string, what: string): string {
  // URL parsers resolve `.` and `..` segments (even as %2E), so such an id would address another route; refuse it
  // rather than send the request somewhere unexpected. Anything else is the control plane's to judge (400).
  if (value === "" || value === "." || value === "..") {
    throw new Error(`invalid ${what} ${JSON.stringify(value)}: it cannot be used in a URL path`);
  }
  return encodeURIComponent(value);
}

function excerpt(text: string): string {
  const short = text.trim().replace(/\s+/g, " ").slice(0, 120);
  return short === "" ? "(empty)" : short;
}
