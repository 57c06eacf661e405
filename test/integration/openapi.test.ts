// The machine-readable contract: the control plane serves an OpenAPI 3.1 document of every route it serves, without a
// token, generated from the same declarations (shared/routes.ts) that validate requests, and `@redocly/cli lint`
// accepts it with no error.
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ALL_ROUTES } from "../../shared/routes.js";
import { call } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { ROOT } from "../helpers/processes.js";

const f = useControlPlane();

/** Runs `redocly lint` on a file with the project's redocly.yaml; resolves with its exit code and output. */
function redoclyLint(file: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, "node_modules", "@redocly", "cli", "bin", "cli.js"), "lint", file, "--config", join(ROOT, "redocly.yaml"), "--format", "stylish"], {
      cwd: ROOT,
      env: { ...process.env, REDOCLY_TELEMETRY: "off", REDOCLY_SUPPRESS_UPDATE_NOTICE: "true" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

describe("GET /api/v1/openapi.json", () => {
  it("serves an OpenAPI 3.1 document without a token, which redocly lint accepts with no error", async () => {
    const response = await call(f.cp, "GET", "/api/v1/openapi.json", undefined, { token: null });
    expect(response.status).toBe(200);
    expect(response.body.openapi).toBe("3.1.0");
    const file = join(f.scratch, "openapi.json");
    await writeFile(file, JSON.stringify(response.body));
    const lint = await redoclyLint(file);
    expect(lint.code, lint.output).toBe(0);
  });

  it("documents every declared route with every status it can answer, its auth scheme and named schemas", async () => {
    const document = (await call(f.cp, "GET", "/api/v1/openapi.json", undefined, { token: null })).body;
    for (const route of ALL_ROUTES) {
      const operation = document.paths[route.path]?.[route.method];
      expect(operation, `${route.method} ${route.path}`).toBeDefined();
      expect(operation.operationId).toBe(route.name);
      expect(Object.keys(operation.responses).sort()).toEqual(Object.keys(route.responses).sort());
      if (route.access === "public") expect(operation.security).toEqual([]);
      else expect(operation.security.length).toBeGreaterThan(0);
    }
    expect(Object.keys(document.components.securitySchemes).sort()).toEqual(["operatorToken", "runnerToken", "serverToken"]);
    for (const name of ["ScriptStatus", "StreamStatus", "LogLine", "MachineView", "StartScriptRequest", "Error"]) {
      expect(document.components.schemas[name], name).toBeDefined();
    }
    // Requests refuse unknown fields, and the document says so.
    expect(document.components.schemas.StartScriptRequest.additionalProperties).toBe(false);
    // The error shape is what every 4xx answers.
    const start = document.paths["/api/v1/machines/{machineId}/scripts"].post;
    expect(start.responses["409"].content["application/json"].schema).toEqual({ $ref: "#/components/schemas/Error" });
    // The live stream is described as a stream of events, not JSON.
    expect(Object.keys(document.paths["/api/v1/machines/{machineId}/scripts/{ticket}/stream"].get.responses["200"].content)).toEqual(["text/event-stream"]);
  });

  it("routes exactly the declared paths: every other /api/v1 path is 404 and every other method 405, after authentication", async () => {
    expect((await call(f.cp, "GET", "/api/v1/nothing-here")).status).toBe(404);
    expect((await call(f.cp, "GET", "/api/v1/nothing-here", undefined, { token: null })).status).toBe(401);
    expect((await call(f.cp, "PUT", "/api/v1/machines/x/scripts")).status).toBe(405);
    expect((await call(f.cp, "PUT", "/api/v1/machines/x/scripts", undefined, { token: null })).status).toBe(401);
    expect((await call(f.cp, "POST", "/api/v1/openapi.json", undefined, { token: null })).status).toBe(405);
  });
});
