/**
 * The machine-readable contract: the OpenAPI 3.1 document of every `/api/v1` route, generated from the route
 * declarations (shared/routes.ts) and their zod schemas, which are the ones that validate requests. Schemas named
 * with `.meta({ id })` become components.
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import { StreamStatus } from "../../shared/api.js";
import type { AppEnv } from "./routing.js";

/** Info for the document's header. */
const INFO = {
  title: "Tendril control plane",
  version: "1",
  description: [
    "Run deployment scripts on a fleet of machines, one isolation mutex per machine, with cancel and abandon.",
    "",
    "Every error is `{\"error\": {\"code\", \"message\"}}` with a 4xx status (503 `storage_unavailable` when a machine's storage",
    "could not take a change, 503 `unavailable` when the platform reset or throttled its object). Checks happen in this order: authentication (401), permission (403), the request (400/413/415),",
    "existence (404). The server token may call everything; an operator token reads (role `viewer`) and also cancels and",
    "abandons (role `operator`).",
    "Unknown JSON fields are rejected at every depth.",
    "",
    "Exit codes: the process's own code (0–255; 128 + n when killed by a signal Tendril did not send), -41 the runner could",
    "not run the script, -43 cancelled, -44 timed out waiting for the isolation mutex, -46 result unknown (the runner lost",
    "track of it), -48 abandoned (its process may still be running).",
    "",
    "The human reference is docs/api.md in the repository.",
  ].join("\n"),
};

const documents = new WeakMap<object, Map<string, unknown>>();

/** The document for a server at `origin`, built once per app and origin. */
export function openApiDocument(app: OpenAPIHono<AppEnv>, origin: string): unknown {
  let byOrigin = documents.get(app);
  if (!byOrigin) {
    byOrigin = new Map();
    documents.set(app, byOrigin);
    app.openAPIRegistry.registerComponent("securitySchemes", "serverToken", {
      type: "http",
      scheme: "bearer",
      description: "The control plane's server token (a Worker secret, `SERVER_TOKEN`).",
    });
    app.openAPIRegistry.registerComponent("securitySchemes", "runnerToken", {
      type: "http",
      scheme: "bearer",
      description: "A machine's runner token, from `POST /api/v1/machines/{machineId}/runner-token`; only for that machine's runner socket.",
    });
    app.openAPIRegistry.registerComponent("securitySchemes", "operatorToken", {
      type: "http",
      scheme: "bearer",
      description: "An operator's token (`POST /api/v1/operators`): role `viewer` for the read calls, role `operator` also for cancel and abandon.",
    });
    // The final event of a live stream carries it; named here so that clients can generate its type.
    app.openAPIRegistry.register("StreamStatus", StreamStatus);
  }
  let document = byOrigin.get(origin);
  if (!document) {
    document = app.getOpenAPI31Document({
      openapi: "3.1.0",
      info: INFO,
      servers: [{ url: origin }],
      tags: [
        { name: "Machines", description: "Registering machines and reading their state." },
        { name: "Scripts", description: "Starting, following, cancelling, abandoning and deleting scripts." },
        { name: "Operators", description: "People who watch and act without the server token." },
        { name: "Audit", description: "Who did what, when and why." },
        { name: "Runners", description: "The runners' WebSocket." },
        { name: "Health", description: "Liveness and this document." },
      ],
    });
    byOrigin.set(origin, document);
  }
  return document;
}
