// The operations commands against the real control plane (they need its operators, audit, fleet-list and machine
// removal routes): operator tokens in --server-token, reasons in the audit feed, abandoned pids in `tendril machines`,
// and a busy machine's removal refused until its scripts are complete.
import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { pidFrom, startTendril } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** Runs `tendril <args>` to its end (bounded) with the URL and `token` in the environment. */
async function tendril(args: string[], token = f.cp.serverToken): Promise<{ code: number | null; stdout: string; output: string }> {
  const proc = startTendril(args, { TENDRIL_URL: f.cp.url, TENDRIL_SERVER_TOKEN: token, NO_COLOR: "1" });
  try {
    const { code } = await Promise.race([
      proc.exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`tendril ${args.join(" ")} did not finish:\n${proc.output()}`)), 30_000)),
    ]);
    return { code, stdout: proc.stdout(), output: proc.output() };
  } finally {
    await proc.stop();
  }
}

/** Starts a script through the API; a machine without a runner keeps it pending. */
async function startScript(machineId: string, ticket: string, scriptBody = "true"): Promise<void> {
  const started = await f.api("POST", `/api/v1/machines/${machineId}/scripts`, { ticket, scriptBody });
  expect(started.status, JSON.stringify(started.body)).toBe(201);
}

describe("operator tokens from the command line", () => {
  it("work in --server-token for what their role allows, and get a 403 that says what each role may do for the rest", async () => {
    const m = f.machine("ops");
    await f.register(m);
    await startScript(m, "held");

    const viewer = await tendril(["operator", "add", `${m}-viewer`, "--role", "viewer"]);
    expect(viewer.code, viewer.output).toBe(0);
    const viewerToken = viewer.stdout.trim();
    expect(viewerToken).toMatch(/^\S+$/);
    const operator = (await tendril(["operator", "add", `${m}-op`, "--role", "operator", "--expires-in-days", "7"])).stdout.trim();

    const listed = await tendril(["machines", "--prefix", m], viewerToken);
    expect(listed.code, listed.output).toBe(0);
    expect(listed.stdout).toContain(`fleet: 1 machine whose id starts with ${m}`);

    const refused = await tendril(["cancel", m, "held", "--reason", "viewer tries"], viewerToken);
    expect(refused.code).toBe(2);
    expect(refused.output).toMatch(/\(forbidden, HTTP 403\): .*viewer only reads/);

    const cancelled = await tendril(["cancel", m, "held", "--reason", "operator cancels"], operator);
    expect(cancelled.code, cancelled.output).toBe(0);
    expect(cancelled.stdout).toContain("held is complete: exit code -43 (cancelled)");

    const notForOperators = await tendril(["operator", "list"], operator);
    expect(notForOperators.code).toBe(2);
    expect(notForOperators.output).toMatch(/forbidden, HTTP 403/);

    const names = await tendril(["operator", "list"]);
    expect(names.stdout).toMatch(new RegExp(`\\n${m}-op +operator +`));
    expect(names.stdout).not.toContain(operator);
    expect((await tendril(["operator", "remove", `${m}-op`])).code).toBe(0);
    const revoked = await tendril(["machines"], operator);
    expect(revoked.code).toBe(2);
    expect(revoked.output).toMatch(/unauthorized, HTTP 401/);
  });
});

describe("reasons in the audit trail", () => {
  it("records cancel and abandon with their reason and actor, shown by tendril audit and tendril status", async () => {
    const m = f.machine("audit");
    await f.register(m);
    await startScript(m, "first");
    await startScript(m, "second");

    expect((await tendril(["cancel", m, "first", "--reason", "wrong release", "--requested-by", "alice (ST-1)"])).code).toBe(0);
    expect((await tendril(["abandon", m, "second", "--reason", "superseded"])).code).toBe(0);

    const audit = await tendril(["audit", "--machine", m]);
    expect(audit.code, audit.output).toBe(0);
    const rows = audit.stdout.split("\n").filter((line) => line.includes(m));
    // Newest first; the machine's registration comes last.
    expect(rows[0]).toMatch(new RegExp(`${m} +second +abandon +server +superseded$`));
    expect(rows[1]).toMatch(new RegExp(`${m} +first +cancel +server:alice \\(ST-1\\) +wrong release$`));
    expect(rows.at(-1)).toMatch(/runner-token-issued +server +-$/);

    const paged = await tendril(["audit", "--machine", m, "--limit", "1"]);
    expect(paged.stdout.split("\n").filter((line) => line.includes(m))).toHaveLength(1);
    expect(paged.output).toMatch(/older events: tendril audit --machine \S+ --limit 1 --cursor \S+/);
    const all = await tendril(["audit", "--machine", m, "--limit", "1", "--all", "--json"]);
    expect(JSON.parse(all.stdout).events.map((event: { action: string }) => event.action)).toEqual(["abandon", "cancel", "runner-token-issued"]);

    const status = await tendril(["status", m, "first"]);
    expect(status.stdout).toMatch(/cancel by server:alice \(ST-1\): wrong release/);
  });
});

describe("abandoned processes and machine removal", () => {
  it("lists an abandoned process's pid in tendril machines and machine show, and removes the machine only once nothing is pending or running", async () => {
    const m = f.machine("stuck");
    const runner = await f.runner(m);
    const pidFile = join(f.scratch, `${m}.pid`);
    await startScript(m, "hung", `echo $$ > '${pidFile}'; sleep 600`);
    await pidFrom(pidFile);
    await startScript(m, "queued");

    const busy = await tendril(["machine", "remove", m]);
    expect(busy.code).toBe(2);
    expect(busy.output).toMatch(new RegExp(`machine ${m} was not removed: .*queued \\(pending\\).*hung \\(running\\).*tendril cancel ${m}`));

    expect((await tendril(["abandon", m, "hung", "--reason", "will not die"])).code).toBe(0);
    const view = await waitFor(
      async () => {
        const answer = await f.api("GET", `/api/v1/machines/${m}`);
        return answer.body.abandoned[0]?.pid ? answer.body : undefined;
      },
      { what: "the abandoned process's pid" },
    );
    const pid = String(view.abandoned[0].pid);
    const listed = await tendril(["machines", "--prefix", m, "--status", "stuck"]);
    expect(listed.code, listed.output).toBe(0);
    expect(listed.stdout).toMatch(new RegExp(`\\n${m} +hung +${pid} +\\d{4}-`));
    expect((await tendril(["machine", "show", m])).stdout).toMatch(new RegExp(`hung +${pid} +\\d{4}-`));

    await f.completed(m, "queued");
    const removed = await tendril(["machine", "remove", m]);
    expect(removed.code, removed.output).toBe(0);
    expect((await f.api("GET", `/api/v1/machines/${m}`)).status).toBe(404);
    await runner.stop(); // its token is revoked; the abandoned `sleep` is stopped here, by PID
  });
});
