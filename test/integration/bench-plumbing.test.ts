// The benchmark's plumbing on tiny sizes, so that `npm run bench` and `npm run bench:floor` cannot rot. It checks that
// every figure is measured and reported, with the fixed cost and stage breakdown of dispatch and handoff (and the
// handoff's CPU per script), and that `--check` fails exactly when a target is missed; not the targets themselves
// (those belong to the real benchmark run).
import { describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, pidsInGroup, startProcess } from "../helpers/processes.js";

describe("npm run bench", () => {
  it("measures every figure on tiny sizes and writes the table, the stage breakdowns and results.json; --check fails when a target is missed", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tendril-bench-test-"));
    const out = join(dir, "results.json");
    const bench = startProcess(process.execPath, [join(ROOT, "bench", "run.mjs"), "--tiny", "--check", "--out", out]);
    try {
      const { code } = await bench.exited;
      const results = JSON.parse(readFileSync(out, "utf8"));
      const allMet = results.rows.every((r: { met: boolean }) => r.met);
      expect(code, bench.output()).toBe(allMet ? 0 : 1);
      if (!allMet) expect(bench.output()).toContain("bench --check:");
      expect(results.mode).toBe("tiny");
      const figures = results.rows.map((r: { figure: string }) => r.figure).join("\n");
      for (const name of ["dispatch p50", "dispatch p95", "mutex handoff", "abandon", "output:", "runner peak RSS", "queue depth", "connect storm", "fleet: dispatch", "idle CPU", "fleet list: first page", "fleet list: dispatch", "fleet list: summary reaches", "runner RSS, idle", "concurrent sleep"]) {
        expect(figures).toContain(name);
      }
      for (const r of results.rows) {
        expect(typeof r.value, r.figure).toBe("number");
        expect(Number.isFinite(r.value), r.figure).toBe(true);
        expect(typeof r.met).toBe("boolean");
      }
      expect(bench.stdout()).toMatch(/\| figure +\| value .*\| fixed cost/);
      // Dispatch and handoff: Tendril's time above the baseline's, and where it goes, stage by stage.
      for (const name of ["dispatch p50", "mutex handoff"]) {
        const row = results.rows.find((r: { figure: string }) => r.figure.startsWith(name));
        expect(Number.isFinite(row.fixedCost), name).toBe(true);
        expect(row.breakdown.length, name).toBeGreaterThanOrEqual(5);
        for (const stage of row.breakdown) expect(Number.isFinite(stage.ms), `${name}: ${stage.stage}`).toBe(true);
        expect(bench.stdout()).toContain(`Where the time of ${name} goes`);
      }
      // Handoff: where the CPU goes, per script, with the baseline's beside it.
      const handoff = results.rows.find((r: { figure: string }) => r.figure.startsWith("mutex handoff"));
      expect(handoff.cpuBreakdown.map((part: { part: string }) => part.part)).toEqual(expect.arrayContaining(["control plane (workerd)", "in all, both cores"]));
      // On tiny sizes a few 10 ms ticks decide each part, so only that each is a number.
      for (const part of handoff.cpuBreakdown) expect(Number.isFinite(part.ms), part.part).toBe(true);
      expect(bench.stdout()).toContain("Where the CPU of mutex handoff goes");
    } finally {
      await bench.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);

  it("measures the floor of the design and whose the fixed cost is (npm run bench:floor) on tiny sizes, and leaves no process", async () => {
    const floor = startProcess(process.execPath, [join(ROOT, "bench", "floor.mjs"), "3", "8"]);
    try {
      const { code } = await floor.exited;
      expect(code, floor.output()).toBe(0);
      for (const stack of ["design, Node spawns", "design, a waiting sh spawns", "Tendril's control plane, lean runner", "Tendril as shipped"]) {
        for (const figure of ["dispatch p50", "dispatch p95", "handoff"]) {
          const line = floor.stdout().split("\n").find((l) => l.startsWith(`| ${stack}: ${figure} |`));
          expect(line, `${stack}: ${figure}\n${floor.output()}`).toBeDefined();
          const ratio = /\| ([\d.]+)× \|$/.exec(line!)?.[1];
          expect(Number(ratio), line).toBeGreaterThan(0);
        }
      }
      // Its runners, helpers and workerd were its own children: none outlives it.
      expect(pidsInGroup(floor.pid)).toEqual([]);
    } finally {
      await floor.stop();
    }
  }, 180_000);
});
