/**
 * The operations commands — cancel/abandon with a reason, `audit`, `machines` pages, `machine show|remove`, `operator
 * add|list|remove` — as real `tendril` processes against a fake control plane (test/unit/sdk-fake.ts): what each sends,
 * and what it prints on stdout (the data) and stderr (the next page, what to do). The real control plane answers
 * the same commands in test/integration/cli-operations.test.ts.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { buildCli } from "../helpers/built-cli.js";
import { fakeControlPlane, json, machineView, status, type SeenRequest } from "./sdk-fake.js";

const children: ChildProcess[] = [];

afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

/** Runs `tendril <args>` from the fresh build against `url` to its end (bounded); its exit code, stdout and stderr. */
async function tendril(url: string, args: string[], token = "server-token-1"): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { bin } = await buildCli();
  const cwd = mkdtempSync(join(tmpdir(), "tendril-ops-cwd-"));
  const child = spawn(process.execPath, [bin, ...args], {
    cwd,
    env: { ...process.env, TENDRIL_URL: url, TENDRIL_SERVER_TOKEN: token, NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  try {
    const code = await Promise.race([
      new Promise<number | null>((resolve) => child.on("exit", (exitCode) => resolve(exitCode))),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`tendril ${args.join(" ")} did not finish:\n${stdout}${stderr}`)), 20_000)),
    ]);
    return { code, stdout, stderr };
  } finally {
    rmSync(cwd, { recursive: true, force: true });
  }
}

/** The path and the decoded query of a request. */
function query(request: SeenRequest): { path: string; params: Record<string, string> } {
  const url = new URL(request.url, "http://fake");
  return { path: url.pathname, params: Object.fromEntries(url.searchParams) };
}

const counts = (total: number) => ({ total, connected: total, disconnected: 0, busy: 1, stuck: 1 });

/** A fleet-list summary. */
function summary(machineId: string, overrides: Record<string, unknown> = {}) {
  return {
    machineId,
    runner: { connected: true, draining: false, version: "0.1.0", lastSeenAt: "2026-12-02T10:00:00.000Z" },
    holders: [],
    heldSince: null,
    waiting: 0,
    abandoned: 0,
    updatedAt: "2026-12-02T10:00:00.000Z",
    ...overrides,
  };
}

/** An audit feed event. */
function feedEvent(at: string, action: string, actor: string, reason: string | null, ticket: string | null = "deploy-1") {
  return { at, machineId: "web-01", ticket, action, actor, reason };
}

describe("tendril cancel and abandon with a reason", () => {
  it("send --reason and --requested-by in the call's body", async () => {
    const cp = await fakeControlPlane((_request, response) => json(response, 200, status({ ticket: "deploy-1" })));
    const cancelled = await tendril(cp.url, ["cancel", "web-01", "deploy-1", "--reason", "wrong release", "--requested-by", "alice (ServerTasks-42)"]);
    const abandoned = await tendril(cp.url, ["abandon", "web-01", "deploy-1", "--kill-process", "--reason", "stuck in AV scan"]);

    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(abandoned.code, abandoned.stderr).toBe(0);
    expect(cp.requests.map((r) => `${r.method} ${r.url} ${r.body}`)).toEqual([
      'POST /api/v1/machines/web-01/scripts/deploy-1/cancel {"reason":"wrong release","requestedBy":"alice (ServerTasks-42)"}',
      'POST /api/v1/machines/web-01/scripts/deploy-1/abandon {"killProcess":true,"reason":"stuck in AV scan"}',
    ]);
  });

  it("refuses a reason longer than the control plane takes, before calling it", async () => {
    const cp = await fakeControlPlane((_request, response) => json(response, 200, status()));
    const result = await tendril(cp.url, ["cancel", "web-01", "deploy-1", "--reason", "x".repeat(501)]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/at most 500 characters/);
    expect(cp.requests).toEqual([]);
  });

  it("says what an operator token may do when the control plane answers 403 forbidden", async () => {
    const cp = await fakeControlPlane((_request, response) =>
      json(response, 403, { error: { code: "forbidden", message: "A viewer may only read." } }),
    );
    const result = await tendril(cp.url, ["cancel", "web-01", "deploy-1", "--reason", "x"], "top_viewer");
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^error: A viewer may only read\. \(forbidden, HTTP 403\): .*viewer only reads.*operator also cancels and abandons.*server token\n$/);
  });
});

describe("tendril audit", () => {
  it("prints a page as a table, newest first, and names the next page's cursor on stderr", async () => {
    const cp = await fakeControlPlane((_request, response) =>
      json(response, 200, {
        events: [
          feedEvent("2026-12-02T10:15:30.123Z", "abandon", "operator:alice", "stuck in\nAV scan"),
          feedEvent("2026-12-02T10:14:00.000Z", "runner-token-issued", "server", null, null),
        ],
        nextCursor: "c2",
      }),
    );
    const result = await tendril(cp.url, ["audit", "--machine", "web-01", "--limit", "2"]);
    expect(result.code, result.stderr).toBe(0);
    expect(query(cp.requests[0]!)).toEqual({ path: "/api/v1/audit", params: { machineId: "web-01", limit: "2" } });
    expect(result.stdout.split("\n")).toEqual([
      "TIME (UTC)           MACHINE  TICKET    ACTION               ACTOR           REASON",
      "2026-12-02 10:15:30  web-01   deploy-1  abandon              operator:alice  stuck in AV scan",
      "2026-12-02 10:14:00  web-01   -         runner-token-issued  server          -",
      "",
    ]);
    expect(result.stderr).toContain("older events: tendril audit --machine web-01 --limit 2 --cursor c2");
  });

  it("with --all follows the cursor to the oldest page and prints every event", async () => {
    const cp = await fakeControlPlane((request, response) => {
      const second = query(request).params.cursor === "c2";
      json(response, 200, {
        events: [feedEvent(second ? "2026-12-01T00:00:00.000Z" : "2026-12-02T00:00:00.000Z", second ? "cancel" : "abandon", "server", null)],
        nextCursor: second ? null : "c2",
      });
    });
    const result = await tendril(cp.url, ["audit", "--all", "--json"]);
    expect(result.code, result.stderr).toBe(0);
    expect(cp.requests.map((r) => query(r).params.cursor ?? "-")).toEqual(["-", "c2"]);
    const printed = JSON.parse(result.stdout) as { events: Array<{ action: string }>; nextCursor: string | null };
    expect(printed.events.map((event) => event.action)).toEqual(["abandon", "cancel"]);
    expect(printed.nextCursor).toBeNull();
    expect(result.stderr).toBe("");
  });
});

describe("tendril machines", () => {
  it("prints the fleet's counts, one page, and the pids of the abandoned processes of its machines", async () => {
    const cp = await fakeControlPlane((request, response) => {
      const { path } = query(request);
      if (path === "/api/v1/machines") {
        json(response, 200, {
          machines: [summary("web-01", { holders: ["deploy-9"], heldSince: new Date(Date.now() - 3 * 60_000).toISOString(), waiting: 2 }), summary("web-02", { abandoned: 1 })],
          nextCursor: "web-02",
          counts: counts(3),
        });
      } else if (path === "/api/v1/machines/web-02") {
        json(response, 200, { ...machineView("web-02", []), abandoned: [{ ticket: "deploy-7", pid: 4242, abandonedAt: "2026-12-02T09:00:00.000Z" }] });
      } else json(response, 404, { error: { code: "not_found", message: "No such route." } });
    });
    const result = await tendril(cp.url, ["machines", "--prefix", "web-", "--status", "busy", "--limit", "2"]);
    expect(result.code, result.stderr).toBe(0);
    expect(query(cp.requests[0]!).params).toEqual({ prefix: "web-", status: "busy", limit: "2" });
    // Only the machine with abandoned processes has its view read.
    expect(cp.requests.map((r) => query(r).path)).toEqual(["/api/v1/machines", "/api/v1/machines/web-02"]);
    const lines = result.stdout.split("\n");
    expect(lines[0]).toBe("fleet: 3 machines whose id starts with web-: 3 connected, 0 disconnected, 1 busy, 1 stuck");
    expect(lines[1]).toMatch(/^MACHINE +RUNNER +VERSION +HELD BY +HELD FOR +WAITING +ABANDONED$/);
    expect(lines[2]).toMatch(/^web-01 +connected +0\.1\.0 +deploy-9 +3m +2 +0$/);
    expect(lines[3]).toMatch(/^web-02 +connected +0\.1\.0 +- +- +0 +1$/);
    expect(result.stdout).toContain("abandoned processes that may still be running:");
    expect(result.stdout).toMatch(/\nweb-02 +deploy-7 +4242 +2026-12-02 09:00:00\n/);
    expect(result.stderr).toContain("more machines: tendril machines --prefix web- --status busy --limit 2 --cursor web-02");
  });

  it("with --all follows the cursor to the last page", async () => {
    const cp = await fakeControlPlane((request, response) => {
      const second = query(request).params.cursor === "m-1";
      json(response, 200, { machines: [summary(second ? "m-2" : "m-1")], nextCursor: second ? null : "m-1", counts: counts(2) });
    });
    const result = await tendril(cp.url, ["machines", "--all", "--limit", "1"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/\nm-1 .*\nm-2 /);
    expect(result.stderr).toBe("");
  });
});

describe("tendril machine", () => {
  it("show lists the runner, each mutex's holders and queue, the scripts and the abandoned processes with their pids", async () => {
    const cp = await fakeControlPlane((_request, response) =>
      json(response, 200, {
        ...machineView("web-01", ["script.v1", "script.abandon"]),
        mutexes: [{ name: "RunningScript", mode: "exclusive", holders: ["deploy-2"], waiting: ["deploy-3", "deploy-4"] }],
        scripts: [
          { ticket: "deploy-2", state: "running", isolation: "full", mutexName: "RunningScript", runnerRestarts: 0, createdAt: "2026-12-02T10:00:00.000Z", startedAt: "2026-12-02T10:00:01.000Z" },
        ],
        abandoned: [{ ticket: "deploy-1", pid: 4242, abandonedAt: "2026-12-02T09:00:00.000Z" }],
      }),
    );
    const result = await tendril(cp.url, ["machine", "show", "web-01"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("RunningScript (exclusive): held by deploy-2; waiting, in order: deploy-3, deploy-4");
    expect(result.stdout).toMatch(/deploy-2 +running +- +- +RunningScript \(full\)/);
    expect(result.stdout).toMatch(/abandoned processes that may still be running\n +TICKET +PID +ABANDONED \(UTC\)\n +deploy-1 +4242 +2026-12-02 09:00:00/);
  });

  it("remove of a busy machine names its pending and running scripts and says to cancel them first", async () => {
    const cp = await fakeControlPlane((request, response) => {
      if (request.method === "DELETE") json(response, 409, { error: { code: "machine_busy", message: "A script is pending or running on machine web-01." } });
      else {
        json(response, 200, {
          ...machineView("web-01", []),
          scripts: [
            { ticket: "deploy-3", state: "pending", isolation: "full", mutexName: "RunningScript", runnerRestarts: 0, createdAt: "2026-12-02T10:00:00.000Z" },
            { ticket: "deploy-2", state: "running", isolation: "full", mutexName: "RunningScript", runnerRestarts: 0, createdAt: "2026-12-02T10:00:00.000Z" },
            { ticket: "deploy-1", state: "complete", isolation: "full", mutexName: "RunningScript", runnerRestarts: 0, createdAt: "2026-12-02T09:00:00.000Z", exitCode: 0 },
          ],
        });
      }
    });
    const result = await tendril(cp.url, ["machine", "remove", "web-01"]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^error: machine web-01 was not removed: a script is still pending or running on it: deploy-3 \(pending\), deploy-2 \(running\)\. Cancel it first \(tendril cancel web-01 <ticket>/);
    expect(result.stdout).toBe("");
  });
});

describe("tendril operator", () => {
  it("add prints the token alone on stdout, and on stderr that it is shown once and how it is used", async () => {
    const cp = await fakeControlPlane((_request, response) =>
      json(response, 201, { name: "alice", role: "operator", token: "top_secret-1", expiresAt: "2027-03-02T10:00:00.000Z" }),
    );
    const result = await tendril(cp.url, ["operator", "add", "alice", "--role", "operator", "--expires-in-days", "90"]);
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(cp.requests[0]!.body)).toEqual({ name: "alice", role: "operator", expiresInDays: 90 });
    expect(result.stdout).toBe("top_secret-1\n");
    expect(result.stderr).toMatch(/shown only this once/);
    expect(result.stderr).toMatch(/expires 2027-03-02 10:00:00 UTC/);
    expect(result.stderr).toMatch(/TENDRIL_SERVER_TOKEN=<token> tendril machines/);
  });

  it("add refuses a role other than viewer or operator, and a missing one", async () => {
    const cp = await fakeControlPlane((_request, response) => json(response, 500, {}));
    for (const args of [["--role", "admin"], []]) {
      const result = await tendril(cp.url, ["operator", "add", "alice", ...args]);
      expect(result.code, args.join(" ")).toBe(2);
      expect(result.stderr).toMatch(/--role/);
    }
    expect(cp.requests).toEqual([]);
  });

  it("list prints each operator's role and dates, never a token; remove revokes by name", async () => {
    const cp = await fakeControlPlane((request, response) => {
      if (request.method === "DELETE") json(response, 200, { name: "alice", removed: true });
      else {
        json(response, 200, {
          operators: [{ name: "alice", role: "viewer", createdAt: "2026-12-01T00:00:00.000Z", expiresAt: "2027-03-01T00:00:00.000Z", lastUsedAt: null }],
        });
      }
    });
    const listed = await tendril(cp.url, ["operator", "list"]);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(/^NAME +ROLE +CREATED \(UTC\) +EXPIRES \(UTC\) +LAST USED \(UTC\)\nalice +viewer +2026-12-01 00:00:00 +2027-03-01 00:00:00 +never\n$/);
    const removed = await tendril(cp.url, ["operator", "remove", "alice"]);
    expect(removed.code, removed.stderr).toBe(0);
    expect(removed.stdout).toMatch(/operator alice removed/);
    expect(cp.requests.map((r) => `${r.method} ${r.url}`)).toEqual(["GET /api/v1/operators", "DELETE /api/v1/operators/alice"]);
  });
});

describe("help", () => {
  it("every operations command prints help with examples", async () => {
    for (const command of [
      ["audit"],
      ["machines"],
      ["machine", "show"],
      ["machine", "remove"],
      ["machine", "revoke-token"],
      ["operator", "add"],
      ["operator", "list"],
      ["operator", "remove"],
      ["cancel"],
      ["abandon"],
      ["runner"],
      ["runner", "install"],
    ]) {
      const result = await tendril("http://127.0.0.1:9", [...command, "--help"]);
      expect(result.code, command.join(" ")).toBe(0);
      expect(result.stdout, command.join(" ")).toMatch(/Usage: tendril[\s\S]*Examples:\n {2}\$ \S/);
    }
  });
});
