/**
 * `tendril run`, `cancel` and `abandon` as real processes against a small fake control plane
 * (node:http): signals sent with kill (not a terminal's Ctrl-C) escalate cancel → abandon → stop
 * waiting, and the command exits 1 naming the outcome. The CLI is bundled from the sources first, so
 * these tests never run a stale dist/.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ScriptStatus } from "../../shared/api.js";
import { buildCli, type BuiltCli } from "../helpers/built-cli.js";
import { closeServer, listenLocally } from "../helpers/http-server.js";
import { waitFor } from "../helpers/wait.js";

let cli: BuiltCli;

beforeAll(async () => {
  // Built like dist/: split at the lazy imports, so that each process loads only what `run` needs.
  cli = await buildCli();
});

afterAll(() => cli?.remove());

const servers: Server[] = [];
const children: Array<{ kill(signal: NodeJS.Signals): boolean; exitCode: number | null }> = [];

afterEach(async () => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill("SIGKILL");
  for (const server of servers.splice(0)) await closeServer(server);
});

/** One request as the fake saw it. */
interface Seen {
  method: string;
  url: string;
  body: string;
}

const SCRIPT = "/api/v1/machines/web-01/scripts/deploy-1";

function status(overrides: Partial<ScriptStatus> = {}): ScriptStatus {
  return { ticket: "deploy-1", state: "running", exitCode: null, logs: [], nextLogSequence: 0, hasMoreLogs: false, events: [], ...overrides };
}

/**
 * A control plane running `deploy-1` on `web-01`: its stream prints `working` and stays open until the
 * script completes. `onCancel`: what the "runner" does with a cancel; `onAbandon`: `complete` answers
 * like the contract (-48 at once), `ignore` leaves the script running.
 */
async function fakeControlPlane(options: {
  capabilities: string[];
  onCancel: "ignore" | { exitCode: number };
  onAbandon?: "complete" | "ignore";
}): Promise<{ url: string; requests: Seen[]; calls(): string[] }> {
  const requests: Seen[] = [];
  let stream: ServerResponse | undefined;
  let exitCode: number | null = null;
  const finish = (code: number) => {
    if (exitCode !== null) return;
    exitCode = code;
    const { logs: _logs, ...final } = status({ state: "complete", exitCode: code, nextLogSequence: 1 });
    stream?.end(`event: status\ndata: ${JSON.stringify(final)}\n\n`);
  };
  const json = (response: ServerResponse, code: number, body: unknown) => {
    response.writeHead(code, { "content-type": "application/json" });
    response.end(JSON.stringify(body));
  };
  const current = () => (exitCode === null ? status() : status({ state: "complete", exitCode, nextLogSequence: 1 }));
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk: Buffer) => (body += chunk.toString()));
    req.on("end", () => {
      const seen = { method: req.method ?? "", url: req.url ?? "", body };
      requests.push(seen);
      const path = seen.url.split("?")[0];
      if (seen.method === "POST" && path === "/api/v1/machines/web-01/scripts") json(res, 201, status());
      else if (path === `${SCRIPT}/stream`) {
        stream = res;
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(`event: log\ndata: ${JSON.stringify({ sequence: 0, source: "stdout", text: "working", occurred: "2026-01-01T00:00:00Z" })}\n\n`);
      } else if (path === `${SCRIPT}/cancel`) {
        json(res, 200, current());
        const onCancel = options.onCancel;
        if (onCancel !== "ignore") setTimeout(() => finish(onCancel.exitCode), 20);
      } else if (path === `${SCRIPT}/abandon`) {
        if ((options.onAbandon ?? "complete") === "complete") finish(-48);
        json(res, 200, current());
      } else if (path === "/api/v1/machines/web-01") {
        json(res, 200, {
          machineId: "web-01",
          runner: { connected: true, draining: false, version: "0.1.0", connectedAt: null, lastSeenAt: null, capabilities: options.capabilities },
          mutexes: [],
          abandoned: [],
        });
      } else if (seen.method === "DELETE" && path === SCRIPT) json(res, 200, current());
      else json(res, 404, { error: { code: "not_found", message: "No such route." } });
    });
  });
  servers.push(server);
  return {
    url: await listenLocally(server),
    requests,
    calls: () =>
      requests
        .filter((r) => /\/(cancel|abandon)$/.test(r.url) || r.url === "/api/v1/machines/web-01")
        .map((r) => `${r.method} ${r.url.replace(SCRIPT, "<script>")}${r.body && r.body !== "{}" ? ` ${r.body}` : ""}`),
  };
}

/** Starts `tendril <args>` from the fresh bundle; its output is collected as it arrives. */
function tendril(url: string, args: string[]) {
  const cwd = mkdtempSync(join(tmpdir(), "tendril-cli-cwd-"));
  const child = spawn(process.execPath, [cli.bin, ...args], {
    cwd,
    env: { ...process.env, TENDRIL_URL: url, TENDRIL_SERVER_TOKEN: "server-token-1", NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => {
      rmSync(cwd, { recursive: true, force: true });
      resolve(code);
    }),
  );
  return {
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    signal: (signal: NodeJS.Signals) => child.kill(signal),
  };
}

const RUN = ["run", "--machine", "web-01", "--ticket", "deploy-1", "--", "sleep", "1000"];

describe("tendril run and signals", () => {
  it("cancels on the first SIGINT and exits 1 saying `cancelled (-43)`", async () => {
    const cp = await fakeControlPlane({ capabilities: ["script.v1", "script.abandon"], onCancel: { exitCode: -43 } });
    const run = tendril(cp.url, RUN);
    await waitFor(() => run.stdout().includes("working"), { what: "the script's output" });

    run.signal("SIGINT");

    expect(await run.exited).toBe(1);
    expect(run.stderr()).toContain("Cancelling deploy-1… (press Ctrl-C again to abandon)");
    expect(run.stderr()).toContain("cancelled (-43)");
    expect(cp.calls()).toEqual(['POST <script>/cancel {"reason":"Ctrl-C in tendril run"}']);
  });

  it("treats SIGTERM like SIGINT", async () => {
    const cp = await fakeControlPlane({ capabilities: ["script.v1"], onCancel: { exitCode: -43 } });
    const run = tendril(cp.url, RUN);
    await waitFor(() => run.stdout().includes("working"), { what: "the script's output" });

    run.signal("SIGTERM");

    expect(await run.exited).toBe(1);
    expect(run.stderr()).toContain("cancelled (-43)");
  });

  it("abandons on the second SIGINT and exits 1 saying `abandoned (-48)`", async () => {
    // The explicit abandon does not depend on what the runner advertises.
    const cp = await fakeControlPlane({ capabilities: ["script.v1"], onCancel: "ignore" });
    const run = tendril(cp.url, RUN);
    await waitFor(() => run.stdout().includes("working"), { what: "the script's output" });

    run.signal("SIGINT");
    await waitFor(() => cp.calls().length === 1, { what: "the cancel" });
    run.signal("SIGINT");

    expect(await run.exited).toBe(1);
    expect(run.stderr()).toMatch(/Abandoning deploy-1: its mutex is released now .* may still be running on machine web-01/);
    expect(run.stderr()).toContain("abandoned (-48): the process may still be running on machine web-01");
    expect(cp.calls()).toEqual(['POST <script>/cancel {"reason":"Ctrl-C in tendril run"}', 'POST <script>/abandon {"reason":"Ctrl-C in tendril run"}']);
  });

  it("stops waiting at once on the third SIGINT, exiting 130", async () => {
    const cp = await fakeControlPlane({ capabilities: ["script.v1", "script.abandon"], onCancel: "ignore", onAbandon: "ignore" });
    const run = tendril(cp.url, RUN);
    await waitFor(() => run.stdout().includes("working"), { what: "the script's output" });

    run.signal("SIGINT");
    await waitFor(() => cp.calls().length === 1, { what: "the cancel" });
    run.signal("SIGINT");
    await waitFor(() => cp.calls().length === 2, { what: "the abandon" });
    run.signal("SIGINT");

    expect(await run.exited).toBe(130);
    expect(run.stderr()).toContain("stopped waiting; see the script with: tendril status web-01 deploy-1");
  });

  it("with --abandon-after, abandons by itself when the script is still running that long after the cancel", async () => {
    const cp = await fakeControlPlane({ capabilities: ["script.v1", "script.abandon"], onCancel: "ignore" });
    const run = tendril(cp.url, ["run", "--machine", "web-01", "--ticket", "deploy-1", "--abandon-after", "300ms", "--", "sleep", "1000"]);
    await waitFor(() => run.stdout().includes("working"), { what: "the script's output" });

    run.signal("SIGINT");

    expect(await run.exited).toBe(1);
    // The deadline also goes to the control plane, so that it holds if this command is stopped.
    expect(cp.calls()).toEqual(['POST <script>/cancel {"reason":"Ctrl-C in tendril run","abandonAfterMs":300}', "GET /api/v1/machines/web-01", 'POST <script>/abandon {"reason":"Ctrl-C in tendril run"}']);
    expect(run.stderr()).toContain("abandoned automatically if still not complete after 300ms");
    expect(run.stderr()).toContain("was still not complete 300ms after the cancel: abandoning it");
    expect(run.stderr()).toContain("abandoned (-48)");
  });

  it("with --abandon-after, does not abandon by itself when the runner does not advertise script.abandon", async () => {
    const cp = await fakeControlPlane({ capabilities: ["script.v1"], onCancel: "ignore" });
    const run = tendril(cp.url, ["run", "--machine", "web-01", "--ticket", "deploy-1", "--abandon-after", "100ms", "--", "sleep", "1000"]);
    await waitFor(() => run.stdout().includes("working"), { what: "the script's output" });

    run.signal("SIGINT");
    await waitFor(() => run.stderr().includes("does not support abandon"), { what: "the abandon-unavailable note" });
    expect(cp.calls()).toEqual(['POST <script>/cancel {"reason":"Ctrl-C in tendril run","abandonAfterMs":100}', "GET /api/v1/machines/web-01"]);
    expect(run.stderr()).toContain("press Ctrl-C again to abandon it anyway");

    run.signal("SIGINT"); // the person decides: abandon anyway
    expect(await run.exited).toBe(1);
    expect(cp.calls().at(-1)).toBe('POST <script>/abandon {"reason":"Ctrl-C in tendril run"}');
  });
});

describe("tendril cancel and abandon", () => {
  it("cancel sends --abandon-after as the control plane's deadline and prints the resulting status", async () => {
    const cp = await fakeControlPlane({ capabilities: [], onCancel: "ignore" });
    const cancel = tendril(cp.url, ["cancel", "web-01", "deploy-1", "--abandon-after", "2m"]);

    expect(await cancel.exited).toBe(0);
    expect(cp.calls()).toEqual(['POST <script>/cancel {"abandonAfterMs":120000}']);
    expect(cancel.stdout()).toBe(
      "cancel requested for deploy-1 (now running); the control plane abandons it if still not complete after 2m\n",
    );
  });

  it("abandon sends --kill-process and prints the resulting status", async () => {
    const cp = await fakeControlPlane({ capabilities: [], onCancel: "ignore" });
    const abandon = tendril(cp.url, ["abandon", "web-01", "deploy-1", "--kill-process"]);

    expect(await abandon.exited).toBe(0);
    expect(cp.calls()).toEqual(['POST <script>/abandon {"killProcess":true}']);
    expect(abandon.stdout()).toBe(
      "deploy-1 is complete: exit code -48 (abandoned: the process may still be running)\n" +
        "its mutex is released; the process may still be running on machine web-01 (a best-effort kill was requested)" +
        " (see its pid: tendril machine show web-01)\n",
    );
  });
});
