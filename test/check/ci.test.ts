// Issue 9, bug 13: CI never type-checked, so type errors in either tsconfig reached main. `npm test` (which
// `.ci/run` runs) now includes the type check of every tsconfig `npm run check` covers, as tests of their own.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";
import { createVitest } from "vitest/node";
import { ROOT } from "../helpers/processes.js";
import { checkedTsconfigs, typeCheck } from "../helpers/typecheck.js";

describe("npm test and CI type-check the code (bug 13)", () => {
  it("type-checks every tsconfig that npm run check covers: the Node code, the Worker and the console's browser script", () => {
    expect(checkedTsconfigs()).toEqual(["tsconfig.json", "control-plane/tsconfig.json", "control-plane/console/browser/tsconfig.json"]);
  });

  it("runs the type check as part of the suite that npm test runs", async () => {
    // The suite as vitest's own configuration selects it for `vitest run` with no file filter (`npm test`).
    const vitest = await createVitest("test", { root: ROOT, config: join(ROOT, "vitest.config.ts"), watch: false, reporters: [] });
    try {
      const files = (await vitest.globTestSpecifications()).map((spec) => relative(ROOT, spec.moduleId));
      expect(files).toContain(join("test", "check", "types.test.ts"));
    } finally {
      await vitest.close();
    }
  });

  it("fails the type-check test on a type error", async () => {
    // A project of its own with one type error, checked the way the suite checks the real tsconfigs.
    const dir = await mkdtemp(join(tmpdir(), "tendril-typecheck-"));
    try {
      await writeFile(join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions: { strict: true, noEmit: true, types: [] }, include: ["*.ts"] }));
      await writeFile(join(dir, "wrong.ts"), 'export const port: number = "8787";\n');
      const result = await typeCheck("tsconfig.json", { cwd: dir });
      expect(result.code).not.toBe(0);
      expect(result.output).toMatch(/wrong\.ts\(1,14\): error TS2322/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
