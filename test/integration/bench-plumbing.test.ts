// The benchmark's plumbing on tiny sizes, so that `npm run bench` cannot rot. It checks that every
// figure is measured and reported, not the targets (those belong to the real benchmark run).
import { describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, startProcess } from "../helpers/processes.js";

describe("npm run bench", () => {
  it("measures every figure on tiny sizes and writes the table and results.json", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tendril-bench-test-"));
    const out = join(dir, "results.json");
    const bench = startProcess(process.execPath, [join(ROOT, "bench", "run.mjs"), "--tiny", "--out", out]);
    try {
      const { code } = await bench.exited;
      expect(code, bench.output()).toBe(0);
      const results = JSON.parse(readFileSync(out, "utf8"));
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
      expect(bench.stdout()).toMatch(/\| figure +\| value/);
    } finally {
      await bench.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);
});
