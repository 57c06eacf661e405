// The fleet list at scale on the real Worker: 1,000 registered machines paged by cursor, filtered by prefix and
// status, with the fleet's counts, all answered from the registry's summary rows (each machine pushes its own as its
// runner, holders, queue or abandoned list change). And a summary the registry lost heals: the machine re-sends it
// from its alarm. The lost write is made by editing the stopped control plane's persisted registry.
import { describe, expect, it } from "vitest";
import { rmSync } from "node:fs";
import { call } from "../helpers/api.js";
import { startControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { useControlPlane } from "../helpers/fixture.js";
import { handRunner, type HandRunner } from "../helpers/hand-runner.js";
import { editMachine, editRegistry } from "../helpers/persisted-sqlite.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

type Summary = { machineId: string; runner: { connected: boolean }; holders: string[]; waiting: number; abandoned: number };
type Page = { machines: Summary[]; nextCursor: string | null; counts: { total: number; connected: number; disconnected: number; busy: number; stuck: number } };

/** Every machine the list gives for `query`, page by page; and the counts of the first page. */
async function listAll(base: { url: string; serverToken: string }, query: Record<string, string>): Promise<{ ids: string[]; pages: number; counts: Page["counts"]; machines: Summary[] }> {
  const machines: Summary[] = [];
  let cursor: string | null = null;
  let pages = 0;
  let counts: Page["counts"] | null = null;
  for (;;) {
    const params: URLSearchParams = new URLSearchParams({ ...query, ...(cursor ? { cursor } : {}) });
    const page: { status: number; body: Page } = await call<Page>(base, "GET", `/api/v1/machines?${params}`);
    expect(page.status, JSON.stringify(page.body)).toBe(200);
    counts ??= page.body.counts;
    pages += 1;
    machines.push(...page.body.machines);
    cursor = page.body.nextCursor;
    if (cursor === null) return { ids: machines.map((s) => s.machineId), pages, counts: counts!, machines };
  }
}

/** Runs `task` over `items`, `width` at a time. */
async function inBatches<T>(items: T[], width: number, task: (item: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += width) await Promise.all(items.slice(i, i + width).map(task));
}

describe("GET /api/v1/machines with 1,000 machines", () => {
  it("pages every machine once by cursor, in id order, with prefix and status filters and the fleet's counts", async () => {
    const group = (name: string) => Array.from({ length: 500 }, (_, i) => `fl${process.pid}-${name}-${String(i).padStart(3, "0")}`);
    const a = group("a");
    const b = group("b");
    const tokens = new Map<string, string>();
    await inBatches([...a, ...b], 25, async (id) => tokens.set(id, await f.register(id)));

    // Five of group a connect; ten hold a mutex (no runner: they stay pending as holders); one has an abandoned process.
    const runners: HandRunner[] = [];
    try {
      for (const id of a.slice(0, 5)) runners.push(await handRunner(f.cp, id, tokens.get(id)!, `runner-${id}`));
      await inBatches(a.slice(10, 20), 10, (id) => f.api("POST", `/api/v1/machines/${id}/scripts`, { ticket: "busy", scriptBody: "true" }));
      await f.api("POST", `/api/v1/machines/${a[0]}/scripts`, { ticket: "gone", scriptBody: "sleep 600" });
      await runners[0]!.dispatchOf("gone");
      expect((await f.api("POST", `/api/v1/machines/${a[0]}/scripts/gone/abandon`)).body.exitCode).toBe(-48);

      const prefixA = `fl${process.pid}-a-`;
      const expected = { total: 500, connected: 5, disconnected: 495, busy: 10, stuck: 1 };
      await waitFor(async () => JSON.stringify((await call<Page>(f.cp, "GET", `/api/v1/machines?prefix=${prefixA}&limit=1`)).body.counts) === JSON.stringify(expected), {
        timeoutMs: 30_000,
        what: "the summaries to reach the registry",
      });

      // The whole fleet, 100 at a time: each machine once, in id order, in 10+ pages.
      const all = await listAll(f.cp, { limit: "100" });
      expect(all.ids).toEqual([...all.ids].sort());
      expect(new Set(all.ids).size).toBe(all.ids.length);
      for (const id of [...a, ...b]) expect(all.ids.includes(id), id).toBe(true);
      expect(all.pages).toBe(Math.ceil(all.ids.length / 100));
      expect(all.counts.total).toBe(all.ids.length);
      expect(all.counts.connected + all.counts.disconnected).toBe(all.counts.total);

      // A prefix: its machines only, with its own counts.
      const onlyA = await listAll(f.cp, { prefix: prefixA, limit: "500" });
      expect(onlyA.ids).toEqual(a);
      expect(onlyA.pages).toBe(1);
      expect(onlyA.counts).toEqual(expected);
      const onlyB = await listAll(f.cp, { prefix: `fl${process.pid}-b-`, limit: "77" });
      expect(onlyB.ids).toEqual(b);
      expect(onlyB.counts).toEqual({ total: 500, connected: 0, disconnected: 500, busy: 0, stuck: 0 });

      // Status filters, with and without a prefix.
      expect((await listAll(f.cp, { prefix: prefixA, status: "connected", limit: "2" })).ids).toEqual(a.slice(0, 5));
      expect((await listAll(f.cp, { prefix: prefixA, status: "busy" })).ids).toEqual(a.slice(10, 20));
      expect((await listAll(f.cp, { prefix: prefixA, status: "stuck" })).ids).toEqual([a[0]]);
      expect((await listAll(f.cp, { prefix: prefixA, status: "disconnected", limit: "500" })).ids).toEqual(a.slice(5));
      expect((await listAll(f.cp, { status: "connected" })).ids).toEqual(expect.arrayContaining(a.slice(0, 5)));

      // What a summary says.
      const [stuck, busy] = [(await listAll(f.cp, { prefix: a[0]! })).machines[0]!, (await listAll(f.cp, { prefix: a[10]! })).machines[0]!];
      expect(stuck).toMatchObject({ machineId: a[0], runner: { connected: true, draining: false, version: "0.1.0" }, holders: [], waiting: 0, abandoned: 1 });
      expect(busy).toEqual({
        machineId: a[10],
        runner: { connected: false, draining: false, version: null, lastSeenAt: null },
        holders: ["busy"],
        heldSince: expect.any(String),
        waiting: 0,
        abandoned: 0,
        updatedAt: expect.any(String),
      });
    } finally {
      for (const runner of runners) await runner.close();
    }
  }, 180_000);

  it("refuses a bad limit, status, prefix or cursor with 400", async () => {
    for (const query of ["limit=0", "limit=501", "limit=-1", "status=asleep", "prefix=a%2Fb", "cursor=nope", `cursor=${"x".repeat(600)}`]) {
      const response = await f.api("GET", `/api/v1/machines?${query}`);
      expect(response.status, query).toBe(400);
      expect(response.body.error.code).toBe("invalid_request");
    }
  });
});

describe("a summary the registry lost", () => {
  it("heals at the machine's next alarm, which re-sends its summary", async () => {
    let cp: TestControlPlane | undefined = await startControlPlane();
    const { stateDir, serverToken } = cp;
    try {
      const m = `heal-${process.pid}`;
      expect((await call(cp, "POST", `/api/v1/machines/${m}/runner-token`)).status).toBe(201);
      await call(cp, "POST", `/api/v1/machines/${m}/scripts`, { ticket: "held", scriptBody: "true" });
      await call(cp, "POST", `/api/v1/machines/${m}/scripts`, { ticket: "queued", scriptBody: "true" });
      const busy = async (base: TestControlPlane) => (await call<Page>(base, "GET", `/api/v1/machines?prefix=${m}`)).body;
      const live = cp;
      await waitFor(async () => (await busy(live)).machines[0]?.waiting === 1, { what: "the summary to reach the registry" });
      await cp.stop({ keepState: true });
      cp = undefined;

      // The registry lost the last write: its row is back at the first summary (nothing held), and its counters agree.
      await editRegistry(stateDir, (storage) => {
        storage.db.run(
          `UPDATE machines SET report_version = 1, holders = '[]', busy = 0, waiting = 0, held_since = NULL, stuck_at = NULL,
             summary_json = json_set(summary_json, '$.holders', json('[]'), '$.waiting', 0, '$.heldSince', NULL) WHERE machine_id = ?`,
          [m],
        );
        storage.db.run("UPDATE fleet_counts SET busy = 0");
      });
      // The machine itself believes the registry has it; five minutes on, its alarm re-sends it anyway.
      await editMachine(stateDir, m, (storage) => {
        const accepted = JSON.parse(String(storage.db.exec("SELECT value FROM meta WHERE key = 'report_accepted'")[0]!.values[0]![0]));
        storage.db.run("UPDATE meta SET value = ? WHERE key = 'report_accepted'", [JSON.stringify({ ...accepted, at: accepted.at - 5 * 60_000 })]);
      });

      cp = await startControlPlane({ stateDir, serverToken });
      const restarted = cp;
      const stale = await busy(restarted);
      expect(stale.machines[0]).toMatchObject({ machineId: m, holders: [], waiting: 0 });
      expect(stale.counts.busy).toBe(0);
      // Anything that wakes the machine (here a read, which changes nothing) brings its alarm due; it heals the row.
      expect((await call(restarted, "GET", `/api/v1/machines/${m}`)).body.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["held"], waiting: ["queued"] }]);
      const healed = await waitFor(
        async () => {
          const page = await busy(restarted);
          return page.machines[0]?.holders.length === 1 ? page : undefined;
        },
        { timeoutMs: 20_000, what: "the summary to heal" },
      );
      expect(healed.machines[0]).toMatchObject({ machineId: m, holders: ["held"], waiting: 1 });
      expect(healed.counts).toMatchObject({ total: 1, busy: 1 });
    } finally {
      await cp?.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 90_000);
});
