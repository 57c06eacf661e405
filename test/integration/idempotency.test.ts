// Start is idempotent by ticket, even under a burst of identical concurrent calls.
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";

const f = useControlPlane();

describe("idempotent start", () => {
  it("runs a script exactly once under 1,000 concurrent identical start calls", async () => {
    const m = f.machine();
    await f.runner(m);
    const marker = join(f.scratch, `${m}-runs`);
    const body = { ticket: "once", scriptBody: `echo run >> '${marker}'`, environment: { B: "2", A: "1" } };
    const responses = await Promise.all(Array.from({ length: 1000 }, () => f.api("POST", `/api/v1/machines/${m}/scripts`, body)));
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s === 200)).toHaveLength(999);
    for (const response of responses) expect(response.body.ticket).toBe("once");
    expect((await f.completed(m, "once")).exitCode).toBe(0);
    expect(readFileSync(marker, "utf8")).toBe("run\n");
    // The same body again, with its environment in another order and a waitMs, is still the same script.
    const again = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ...body, environment: { A: "1", B: "2" }, waitMs: 100 });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ state: "complete", exitCode: 0 });
    expect(readFileSync(marker, "utf8")).toBe("run\n");
  });

  it("answers 409 ticket_conflict when a ticket is reused with a different body, and changes nothing", async () => {
    const m = f.machine();
    await f.register(m);
    const first = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "t", scriptBody: "echo one" });
    expect(first.status).toBe(201);
    for (const different of [
      { ticket: "t", scriptBody: "echo two" },
      { ticket: "t", scriptBody: "echo one", isolation: "none" },
      { ticket: "t", scriptBody: "echo one", arguments: ["x"] },
      { ticket: "t", scriptBody: "echo one", mutexName: "other" },
    ]) {
      const conflict = await f.api("POST", `/api/v1/machines/${m}/scripts`, different);
      expect(conflict.status).toBe(409);
      expect(conflict.body.error.code).toBe("ticket_conflict");
      expect(conflict.body.error.message).toEqual(expect.any(String));
    }
    const view = await f.api("GET", `/api/v1/machines/${m}`);
    expect(view.body.scripts).toHaveLength(1);
    expect(view.body.mutexes[0]).toMatchObject({ holders: ["t"], waiting: [] });
  });

  it("generates distinct tickets when none is given", async () => {
    const m = f.machine();
    await f.register(m);
    const a = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "true", isolation: "none" });
    const b = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "true", isolation: "none" });
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    expect(a.body.ticket).toMatch(/^[A-Za-z0-9._-]{1,128}$/);
    expect(a.body.ticket).not.toBe(b.body.ticket);
  });
});
