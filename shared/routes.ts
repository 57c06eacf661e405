/**
 * Every route of the HTTP API, declared once: method, path, who may call it, its inputs and every answer it can
 * give. The control plane validates requests with these declarations and generates its OpenAPI document
 * (`GET /api/v1/openapi.json`) from them; the SDK and the integration tests check every answer against them. A new
 * route joins the document, the validation and the SDK's checks by being declared here. See docs/api.md.
 */
import { z } from "zod";
import {
  AbandonRequest,
  AddOperatorRequest,
  AddedOperator,
  ApiErrorBody,
  AuditFeed,
  CancelRequest,
  FleetStatus,
  Health,
  LIMITS,
  MachineList,
  MachineView,
  OperatorList,
  OperatorName,
  RegisteredMachine,
  ScriptStatus,
  StartScriptRequest,
} from "./api.js";
import { MachineId, Ticket } from "./ids.js";

/**
 * Who may call a route: `public` needs no token; `runner` takes a machine's runner token (the WebSocket upgrade);
 * `server` only the server token; `read` and `act` also take operator tokens (any role, and role `operator`).
 */
export type Access = "public" | "runner" | "server" | "read" | "act";

/** The media types an answer can have. */
export type MediaType = "application/json" | "text/event-stream";

/** One answer a route can give. */
export interface ResponseDecl {
  description: string;
  /** The body's schema (JSON), or a description of the stream's events. */
  schema?: z.ZodType;
  mediaType?: MediaType;
}

/** A route as declared. */
export interface RouteDecl {
  /** The OpenAPI `operationId`. */
  name: string;
  method: "get" | "post" | "delete";
  /** The path with `{param}` placeholders, as OpenAPI writes it. */
  path: string;
  summary: string;
  description?: string;
  tag: string;
  access: Access;
  params?: z.ZodObject;
  /** Query parameters: integers are sent as decimal digits and checked strictly (no sign, exponent or space). */
  query?: z.ZodObject;
  body?: { schema: z.ZodType; required: boolean; maxBytes: number };
  responses: Record<number, ResponseDecl>;
}

const MachineParams = z.object({ machineId: MachineId.meta({ description: "The machine's id.", example: "web-01" }) });
const ScriptParams = MachineParams.extend({ ticket: Ticket.meta({ description: "The script's ticket.", example: "deploy-42" }) });
const LogSequence = z.int().min(0).max(Number.MAX_SAFE_INTEGER).meta({ description: "First log line to return (default 0)." });
const LogPage = z.object({
  logSequence: LogSequence.optional(),
  limit: z
    .int()
    .min(1)
    .max(LIMITS.logPageLines)
    .optional()
    .meta({ description: `Most log lines to return (1–${LIMITS.logPageLines}, default ${LIMITS.logPageLines}); the page is also cut to keep the answer under 4 MiB.` }),
});
/** A page of a list: `limit` 1–500 (default 100) and the opaque cursor of the previous page. */
const PageLimit = z.int().min(1).max(500).optional().meta({ description: "Most items to return (1–500, default 100)." });
const Cursor = z.string().min(1).max(512).optional().meta({ description: "The `nextCursor` of the previous page (opaque)." });
/** Small bodies (cancel, abandon, runner-token) may be at most this large. */
const SMALL_BODY_BYTES = 64 * 1024;

const json = (description: string, schema: z.ZodType): ResponseDecl => ({ description, schema, mediaType: "application/json" });
const error = (description: string): ResponseDecl => json(description, ApiErrorBody);

/** The error answers every route of its kind can give, added to what each route declares (the route's own type kept). */
function withErrors<const R extends RouteDecl>(route: R): R {
  const responses: Record<number, ResponseDecl> = {};
  const machineScoped = route.path.includes("{machineId}");
  if (route.params || route.query || route.body) {
    responses[400] = error("The request is invalid (`invalid_request`): a bad id, a bad query parameter, or a body that does not match its schema.");
  }
  if (route.access !== "public") responses[401] = error("Missing or invalid token (`unauthorized`).");
  if (route.access === "server") responses[403] = error("An operator token may not make this call (`forbidden`): it needs the server token.");
  if (route.access === "act") responses[403] = error("A `viewer` operator may not make this call, and an operator token may not send `requestedBy` (`forbidden`).");
  if (machineScoped && route.access !== "runner") {
    responses[404] = error("The machine was never registered (`unknown_machine`), or the ticket is unknown on it (`unknown_script`).");
  }
  if (route.body) {
    responses[413] = error(`The body is larger than ${route.body.maxBytes} bytes, or \`scriptBody\` is over 1 MiB (\`too_large\`).`);
    responses[415] = error("The body was not sent as `application/json` (`unsupported_media_type`).");
  }
  if (machineScoped && route.access !== "runner") {
    responses[503] = error(
      "The machine's storage could not take the change (`storage_unavailable`; nothing was kept), or the platform reset or throttled its object (`unavailable`); retry.",
    );
  }
  return { ...route, responses: { ...responses, ...route.responses } } as R;
}

/** Every route of the API, by name. */
export const ROUTES = {
  health: withErrors({
    name: "health",
    method: "get",
    path: "/healthz",
    summary: "Liveness of the control plane",
    tag: "Health",
    access: "public",
    responses: { 200: json("The control plane answers.", Health) },
  }),
  openapi: withErrors({
    name: "openapi",
    method: "get",
    path: "/api/v1/openapi.json",
    summary: "This document",
    tag: "Health",
    access: "public",
    responses: { 200: json("The OpenAPI 3.1 document of every `/api/v1` route.", z.record(z.string(), z.unknown())) },
  }),
  registerMachine: withErrors({
    name: "registerMachine",
    method: "post",
    path: "/api/v1/machines/{machineId}/runner-token",
    summary: "Register a machine and issue its runner token",
    description:
      "Creates the machine if it is new and issues a fresh runner token, revoking the previous one (a runner connected with it is disconnected). The token is shown once.",
    tag: "Machines",
    access: "server",
    params: MachineParams,
    body: { schema: z.strictObject({}).meta({ description: "No fields; the body may be empty." }), required: false, maxBytes: SMALL_BODY_BYTES },
    responses: { 201: json("The machine's new runner token.", RegisteredMachine) },
  }),
  listMachines: withErrors({
    name: "listMachines",
    method: "get",
    path: "/api/v1/machines",
    summary: "List the fleet, a page at a time",
    description:
      "Answered from the registry's summary row per machine (pushed by each machine as its runner, holders, queue or abandoned list change), in one query whatever the fleet's size. Ordered by machine id; `counts` are the fleet's (within `prefix`, if given).",
    tag: "Machines",
    access: "read",
    query: z.object({
      limit: PageLimit,
      cursor: Cursor,
      prefix: z.string().min(1).max(64).regex(/^[A-Za-z0-9._-]+$/, "must be characters of A-Z, a-z, 0-9, '.', '_' or '-'").optional().meta({ description: "Only machines whose id starts with it." }),
      status: FleetStatus.optional(),
    }),
    responses: { 200: json("One page of machine summaries, the cursor of the next one, and the counts.", MachineList) },
  }),
  removeMachine: withErrors({
    name: "removeMachine",
    method: "delete",
    path: "/api/v1/machines/{machineId}",
    summary: "Remove a decommissioned machine",
    description: "Refused while a script is pending or running. Otherwise deletes its state, logs and summary, and revokes its runner token (its runner is disconnected). Its audit events stay in the feed.",
    tag: "Machines",
    access: "server",
    params: MachineParams,
    responses: {
      200: json("Removed.", z.object({ machineId: z.string(), removed: z.literal(true) }).meta({ id: "RemovedMachine" })),
      409: error("A script is pending or running on it (`machine_busy`)."),
    },
  }),
  revokeRunnerToken: withErrors({
    name: "revokeRunnerToken",
    method: "delete",
    path: "/api/v1/machines/{machineId}/runner-token",
    summary: "Revoke a machine's runner token without issuing a new one",
    description: "Its runner is disconnected (close code 4001) and can no longer connect until a new token is issued.",
    tag: "Machines",
    access: "server",
    params: MachineParams,
    responses: { 200: json("Revoked.", z.object({ machineId: z.string(), revoked: z.literal(true) }).meta({ id: "RevokedRunnerToken" })) },
  }),
  getMachine: withErrors({
    name: "getMachine",
    method: "get",
    path: "/api/v1/machines/{machineId}",
    summary: "One machine: its runner, mutexes, scripts and abandoned processes",
    tag: "Machines",
    access: "read",
    params: MachineParams,
    responses: { 200: json("The machine view.", MachineView) },
  }),
  startScript: withErrors({
    name: "startScript",
    method: "post",
    path: "/api/v1/machines/{machineId}/scripts",
    summary: "Start a script",
    description:
      "Idempotent by `ticket`: the same ticket with the same body answers 200 with the script's current status and runs it once. The script runs once it holds its mutex (`full` isolation: exclusive, `none`: shared) and the machine's runner is connected; until then it is `pending`. `waitMs` holds the answer until the script completes or the time passes.",
    tag: "Scripts",
    access: "server",
    params: MachineParams,
    body: { schema: StartScriptRequest, required: true, maxBytes: LIMITS.requestBytes },
    responses: {
      200: json("The ticket already named this very script: its current status.", ScriptStatus),
      201: json("Created: its status (complete already if `waitMs` sufficed).", ScriptStatus),
      409: error("The ticket already names a different script on this machine (`ticket_conflict`)."),
    },
  }),
  getScript: withErrors({
    name: "getScript",
    method: "get",
    path: "/api/v1/machines/{machineId}/scripts/{ticket}",
    summary: "A script's status with one page of its logs",
    tag: "Scripts",
    access: "read",
    params: ScriptParams,
    query: LogPage,
    responses: { 200: json("The status with the lines from `logSequence`.", ScriptStatus) },
  }),
  streamScript: withErrors({
    name: "streamScript",
    method: "get",
    path: "/api/v1/machines/{machineId}/scripts/{ticket}/stream",
    summary: "Follow a script's output live (Server-Sent Events)",
    description:
      "An `event: log` per line (its data is one `LogLine` as JSON), then one `event: status` whose data is the final `StreamStatus` once the script is complete, then the stream ends. Comments (`: keep-alive`) keep idle connections open. Reconnect with `logSequence` set to one past the last line received to resume without gaps or repeats.",
    tag: "Scripts",
    access: "read",
    params: ScriptParams,
    query: z.object({ logSequence: LogSequence.optional() }),
    responses: {
      200: {
        description: "A text/event-stream of `log` events (data: `LogLine`) and one final `status` event (data: `StreamStatus`).",
        schema: z.string().meta({ example: 'event: log\ndata: {"sequence":0,"source":"stdout","text":"hello","occurred":"2026-12-02T10:15:30.000Z"}\n\n' }),
        mediaType: "text/event-stream",
      },
    },
  }),
  cancelScript: withErrors({
    name: "cancelScript",
    method: "post",
    path: "/api/v1/machines/{machineId}/scripts/{ticket}/cancel",
    summary: "Cancel a script",
    description:
      "Answers at once. A pending script completes with -43 and never runs; a running one is stopped by its runner (SIGTERM to its process group, SIGKILL after the runner's grace) and completes with -43, or its own code if it had already exited. A complete script is left as it is. `abandonAfterMs` lets the control plane abandon it by itself if it is still not complete that long after.",
    tag: "Scripts",
    access: "act",
    params: ScriptParams,
    body: { schema: CancelRequest, required: false, maxBytes: SMALL_BODY_BYTES },
    responses: { 200: json("The script's status now (the cancel proceeds asynchronously).", ScriptStatus) },
  }),
  abandonScript: withErrors({
    name: "abandonScript",
    method: "post",
    path: "/api/v1/machines/{machineId}/scripts/{ticket}/abandon",
    summary: "Abandon a script whose process will not die",
    description:
      "A running script completes with -48 at once and its mutex goes to the next waiter, even with no runner connected; the log says that the process may still be running. The runner stops tracking the process and does not kill it unless `killProcess` is true. A pending script completes with -43; a complete one keeps its real exit code.",
    tag: "Scripts",
    access: "act",
    params: ScriptParams,
    body: { schema: AbandonRequest, required: false, maxBytes: SMALL_BODY_BYTES },
    responses: { 200: json("The script's status, complete.", ScriptStatus) },
  }),
  completeScript: withErrors({
    name: "completeScript",
    method: "delete",
    path: "/api/v1/machines/{machineId}/scripts/{ticket}",
    summary: "Delete a complete script, answering its final status",
    description:
      "Answers the final status with one page of logs from `logSequence` (the same `limit` and size cut as a GET), then deletes the script and its logs and tells the runner to delete its workspace.",
    tag: "Scripts",
    access: "server",
    params: ScriptParams,
    query: LogPage,
    responses: {
      200: json("The final status, with one page of logs.", ScriptStatus),
      409: error("The script is not complete yet (`not_complete`)."),
    },
  }),
  listOperators: withErrors({
    name: "listOperators",
    method: "get",
    path: "/api/v1/operators",
    summary: "List the operators (never their tokens)",
    tag: "Operators",
    access: "server",
    responses: { 200: json("Every operator.", OperatorList) },
  }),
  addOperator: withErrors({
    name: "addOperator",
    method: "post",
    path: "/api/v1/operators",
    summary: "Add an operator, or give an existing one a new token",
    description:
      "`viewer` may read (machines, scripts, streams, the audit feed); `operator` may also cancel and abandon. The token is shown once and stored hashed; the same name again replaces its token and role (its open console sessions end).",
    tag: "Operators",
    access: "server",
    body: { schema: AddOperatorRequest, required: true, maxBytes: SMALL_BODY_BYTES },
    responses: { 201: json("The operator and its token.", AddedOperator) },
  }),
  removeOperator: withErrors({
    name: "removeOperator",
    method: "delete",
    path: "/api/v1/operators/{name}",
    summary: "Revoke an operator at once",
    description: "Its token stops working at once, and its open console sessions end.",
    tag: "Operators",
    access: "server",
    params: z.object({ name: OperatorName }),
    responses: {
      200: json("Removed.", z.object({ name: z.string(), removed: z.literal(true) }).meta({ id: "RemovedOperator" })),
      404: error("No operator has that name (`unknown_operator`)."),
    },
  }),
  audit: withErrors({
    name: "audit",
    method: "get",
    path: "/api/v1/audit",
    summary: "The fleet-wide audit feed, newest first",
    description:
      "Every action that changed a script's course and every administrative action, with who, when and why. Kept for 90 days (`AUDIT_RETENTION_MS`), also after the scripts are deleted.",
    tag: "Audit",
    access: "read",
    query: z.object({ machineId: MachineId.optional().meta({ description: "Only this machine's events." }), limit: PageLimit, cursor: Cursor }),
    responses: { 200: json("One page of events and the cursor of the next (older) one.", AuditFeed) },
  }),
  runnerSocket: withErrors({
    name: "runnerSocket",
    method: "get",
    path: "/api/v1/machines/{machineId}/runner",
    summary: "The runner's WebSocket",
    description:
      "A runner opens this WebSocket (`Upgrade: websocket`) with its machine's runner token and keeps it open; the messages are the runner protocol (PROTOCOL.md in the repository), not HTTP. A bad token, or a machine that was never registered, gets 401 before any machine is looked at.",
    tag: "Runners",
    access: "runner",
    params: MachineParams,
    responses: {
      101: { description: "Switching protocols: the runner protocol follows on the WebSocket." },
      400: error("Not a WebSocket upgrade, or a bad machine id (`invalid_request`)."),
    },
  }),
} as const satisfies Record<string, RouteDecl>;

/** The name of a declared route. */
export type RouteName = keyof typeof ROUTES;

/** Every declared route. */
export const ALL_ROUTES: readonly RouteDecl[] = Object.values(ROUTES);

/** The declared route a method and a concrete path (no query) belong to, or undefined. */
export function findRoute(method: string, path: string): RouteDecl | undefined {
  const wanted = method.toLowerCase();
  return ALL_ROUTES.find((route) => route.method === wanted && pathPattern(route.path).test(path));
}

const patterns = new Map<string, RegExp>();

/** A route path as a regular expression over concrete paths (a parameter is one non-empty segment). */
function pathPattern(path: string): RegExp {
  let pattern = patterns.get(path);
  if (!pattern) {
    const source = path
      .split(/(\{[^}]+\})/)
      .map((part) => (part.startsWith("{") ? "[^/]+" : part.replace(/[.*+?^$()|[\]\\]/g, "\\$&")))
      .join("");
    pattern = new RegExp(`^${source}$`);
    patterns.set(path, pattern);
  }
  return pattern;
}

/** The declared schema of an answer, or undefined when the route does not declare that status (or it has no JSON body). */
export function responseSchema(route: RouteDecl, status: number): z.ZodType | undefined {
  const response = route.responses[status];
  return response?.mediaType === "application/json" ? response.schema : undefined;
}
