// The audit trail on the real Worker: every action that changes a script's course — asked for (cancel, abandon,
// kill-requested) or decided by the control plane itself (auto-abandon, mutex-timeout, run-timeout, runner-lost) —
// and every administrative action (runner tokens, machine removal, operators) is recorded with its actor, time and
// reason: in the script's status (`events`), as a `debug` line of its log, and in the fleet-wide feed, which keeps
// them after the scripts are deleted. Runner connections are driven by hand so that nothing here depends on timing.
import { describe, expect, it } from "vitest";
import { call } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { handRunner } from "../helpers/hand-runner.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

type Event = { at: string; action: string; actor: string; reason: string | null };
type FeedEvent = Event & { machineId: string | null; ticket: string | null };

/** A script's events as `action actor reason`. */
async function eventsOf(m: string, ticket: string): Promise<string[]> {
  const status = await f.api("GET", `/api/v1/machines/${m}/scripts/${ticket}?limit=1`);
  expect(status.status).toBe(200);
  return status.body.events.map((e: Event) => `${e.action} ${e.actor} ${e.reason ?? "-"}`);
}

/** Every event of the feed (newest first), paged with `limit`, optionally for one machine. */
async function feed(machineId: string | null, limit = 500): Promise<FeedEvent[]> {
  const events: FeedEvent[] = [];
  let cursor: string | null = null;
  for (;;) {
    const query: URLSearchParams = new URLSearchParams({ limit: String(limit), ...(machineId ? { machineId } : {}), ...(cursor ? { cursor } : {}) });
    const page: { status: number; body: { events: FeedEvent[]; nextCursor: string | null } } = await f.api("GET", `/api/v1/audit?${query}`);
    expect(page.status).toBe(200);
    events.push(...page.body.events);
    cursor = page.body.nextCursor;
    if (cursor === null) return events;
  }
}

/** Waits until the feed holds `count` events of `machineId` matching `match`; returns them. */
async function inFeed(machineId: string | null, match: (e: FeedEvent) => boolean, count = 1): Promise<FeedEvent[]> {
  return waitFor(
    async () => {
      const found = (await feed(machineId)).filter(match);
      return found.length >= count ? found : undefined;
    },
    { what: `${count} matching event(s) in the feed` },
  );
}

describe("the audit trail of a script", () => {
  it("records every action that changes a script's course, asked for or automatic, with actor, time and reason, as a log line too", async () => {
    const m = f.machine("audit");
    const token = await f.register(m);
    const operator = (await f.api("POST", "/api/v1/operators", { name: `op-${m}`, role: "operator" })).body.token;
    const runner = await handRunner(f.cp, m, token, "runner-1", { killGraceMs: 0 });
    const start = (ticket: string, extra: Record<string, unknown> = {}) =>
      f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket, scriptBody: "sleep 600", isolation: "none", ...extra });
    const before = Date.now();

    // cancel, on behalf of someone, with a reason; the runner then reports the cancelled exit.
    await start("cancelled");
    const cancelDispatch = await runner.dispatchOf("cancelled");
    const cancelled = await f.api("POST", `/api/v1/machines/${m}/scripts/cancelled/cancel`, { reason: "stuck in AV scan", requestedBy: "alice (ServerTasks-42)" });
    expect(cancelled.body.events).toEqual([{ at: expect.any(String), action: "cancel", actor: "server:alice (ServerTasks-42)", reason: "stuck in AV scan" }]);
    expect(Date.parse(cancelled.body.events[0].at)).toBeGreaterThanOrEqual(before - 1_000);
    expect(cancelled.body.logs).toContainEqual(expect.objectContaining({ source: "debug", text: "Cancel requested by server:alice (ServerTasks-42): stuck in AV scan" }));
    runner.send({ type: "exit", ticket: "cancelled", fence: cancelDispatch.fence, lineCount: 0, outcome: { kind: "cancelled", signals: ["SIGTERM"] } });
    await f.completed(m, "cancelled");
    // A cancel that changes nothing records nothing.
    await f.api("POST", `/api/v1/machines/${m}/scripts/cancelled/cancel`, { reason: "again" });
    expect(await eventsOf(m, "cancelled")).toEqual(["cancel server:alice (ServerTasks-42) stuck in AV scan"]);

    // abandon with killProcess, by an operator.
    await start("abandoned");
    await runner.dispatchOf("abandoned");
    const abandoned = await call(f.cp, "POST", `/api/v1/machines/${m}/scripts/abandoned/abandon`, { killProcess: true, reason: "will not die" }, { token: operator });
    expect(abandoned.body.exitCode).toBe(-48);
    expect(await eventsOf(m, "abandoned")).toEqual([`abandon operator:op-${m} will not die`, `kill-requested operator:op-${m} will not die`]);
    const abandonLines = abandoned.body.logs.map((l: { text: string }) => l.text);
    expect(abandonLines).toContain(`Abandon requested by operator:op-${m}: will not die`);
    expect(abandonLines).toContain(`Kill of its process tree requested by operator:op-${m}: will not die`);

    // auto-abandon: a cancel's abandonAfterMs passes while the runner does nothing.
    await start("overdue");
    await runner.dispatchOf("overdue");
    await f.api("POST", `/api/v1/machines/${m}/scripts/overdue/cancel`, { abandonAfterMs: 300 });
    expect((await f.completed(m, "overdue")).exitCode).toBe(-48);
    expect(await eventsOf(m, "overdue")).toEqual(["cancel server -", "auto-abandon control-plane still running when the abandon deadline set by its cancel passed"]);

    // run-timeout: the control plane cancels a script that runs past its runTimeoutMs (the runner gets the cancel).
    await start("slow", { runTimeoutMs: 300 });
    const slowDispatch = await runner.dispatchOf("slow");
    await waitFor(() => runner.messages.some((msg) => msg.type === "cancel" && msg.ticket === "slow"), { what: "the run timeout's cancel" });
    expect(await eventsOf(m, "slow")).toEqual(["run-timeout control-plane ran longer than its run timeout of 300 ms"]);
    runner.send({ type: "exit", ticket: "slow", fence: slowDispatch.fence, lineCount: 0, outcome: { kind: "cancelled", signals: ["SIGTERM"] } });
    expect((await f.completed(m, "slow")).exitCode).toBe(-43);

    // mutex-timeout: a waiter gives up.
    await start("holder", { mutexName: "Exclusive", isolation: "full" });
    await start("waiter", { mutexName: "Exclusive", isolation: "full", mutexTimeoutMs: 200 });
    expect((await f.completed(m, "waiter")).exitCode).toBe(-44);
    expect(await eventsOf(m, "waiter")).toEqual(['mutex-timeout control-plane waited its mutexTimeoutMs of 200 ms for the mutex "Exclusive"']);

    // runner-lost: another runner process connects without the running scripts.
    await runner.close();
    const successor = await handRunner(f.cp, m, token, "runner-2");
    const lost = await f.completed(m, "holder");
    expect(lost.exitCode).toBe(-46);
    expect(await eventsOf(m, "holder")).toEqual(["runner-lost control-plane the runner reconnected without this script (it was restarted)"]);
    expect(lost.logs.map((l: { text: string }) => l.text)).toContain("The runner reconnected without this script (it was restarted); the script's result is unknown.");
    await successor.close();

    // Every action kind is in the fleet feed too, with the machine and ticket.
    const recorded = await inFeed(m, (e) => e.ticket === "holder" && e.action === "runner-lost");
    expect(recorded[0]).toMatchObject({ machineId: m, ticket: "holder", actor: "control-plane" });
    const kinds = new Set((await feed(m)).map((e) => `${e.ticket ?? "-"} ${e.action}`));
    for (const kind of ["cancelled cancel", "abandoned abandon", "abandoned kill-requested", "overdue cancel", "overdue auto-abandon", "slow run-timeout", "waiter mutex-timeout", "holder runner-lost", "- runner-token-issued"]) {
      expect(kinds, kind).toContain(kind);
    }
  }, 60_000);

  it("carries an empty events list for a script nobody acted on", async () => {
    const m = f.machine("quiet");
    await f.register(m);
    const started = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "t", scriptBody: "true" });
    expect(started.body.events).toEqual([]);
  });
});

describe("the fleet-wide audit feed", () => {
  it("records the administrative actions with ticket null: runner tokens issued and revoked, a machine removed, operators added and removed", async () => {
    const m = f.machine("admin");
    await f.register(m);
    await f.register(m);
    expect((await f.api("DELETE", `/api/v1/machines/${m}/runner-token`)).status).toBe(200);
    expect((await f.api("DELETE", `/api/v1/machines/${m}`)).status).toBe(200);
    const name = `admin-op-${process.pid}`;
    await f.api("POST", "/api/v1/operators", { name, role: "viewer", expiresInDays: 7 });
    await f.api("DELETE", `/api/v1/operators/${name}`);
    const machineEvents = await inFeed(m, (e) => e.action === "machine-removed");
    expect(machineEvents[0]).toMatchObject({ machineId: m, ticket: null, actor: "server", reason: null });
    const own = (await feed(m)).map((e) => `${e.action} ${e.ticket}`);
    expect(own).toEqual(["machine-removed null", "runner-token-revoked null", "runner-token-issued null", "runner-token-issued null"]);
    const operators = (await feed(null)).filter((e) => e.reason?.startsWith(name));
    expect(operators.map((e) => [e.action, e.machineId, e.ticket, e.actor])).toEqual([
      ["operator-removed", null, null, "server"],
      ["operator-added", null, null, "server"],
    ]);
    expect(operators[1]!.reason).toMatch(new RegExp(`^${name}: role viewer, token expires `));
  });

  it("keeps a script's events after the script is deleted, newest first, paged by cursor", async () => {
    const m = f.machine("kept");
    await f.register(m);
    for (const ticket of ["one", "two", "three"]) {
      await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket, scriptBody: "true", mutexName: ticket });
      await f.api("POST", `/api/v1/machines/${m}/scripts/${ticket}/cancel`, { reason: `reason ${ticket}` });
      expect((await f.api("DELETE", `/api/v1/machines/${m}/scripts/${ticket}`)).status).toBe(200);
      expect((await f.api("GET", `/api/v1/machines/${m}/scripts/${ticket}`)).status).toBe(404);
    }
    await inFeed(m, (e) => e.action === "cancel", 3);
    // Page by page, one event at a time: the same events as one page, each once, newest first.
    const byOne = await feed(m, 1);
    const whole = await feed(m, 500);
    expect(byOne).toEqual(whole);
    expect(whole.map((e) => `${e.action} ${e.ticket} ${e.reason}`)).toEqual(["cancel three reason three", "cancel two reason two", "cancel one reason one", "runner-token-issued null null"]);
    const times = whole.map((e) => Date.parse(e.at));
    expect([...times].sort((a, b) => b - a)).toEqual(times);
    // A ticket used again after its script was deleted starts with no events.
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "one", scriptBody: "true" });
    expect(await eventsOf(m, "one")).toEqual([]);
    // The cursor is the control plane's: anything else is refused.
    expect((await f.api("GET", "/api/v1/audit?cursor=not-a-cursor")).status).toBe(400);
    expect((await f.api("GET", "/api/v1/audit?limit=0")).status).toBe(400);
    expect((await f.api("GET", "/api/v1/audit?limit=501")).status).toBe(400);
  });
});
