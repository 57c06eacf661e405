// An outside client proves the contract: TypeScript types generated from the served OpenAPI document with
// openapi-typescript, and openapi-fetch for the calls, with no Tendril code on the client side
// (test/fixtures/outside-client/client.ts). The client type-checks under `strict` and drives a real control plane
// with a live runner: register a machine, start a script, read its paged logs, cancel one script, abandon another.
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { copyFile, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { build } from "esbuild";
import { call } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { ROOT } from "../helpers/processes.js";

const f = useControlPlane();

/** Runs `node <args>` in `cwd`; resolves with its exit code and output, or kills it by pid after `timeoutMs`. */
function node(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("a client generated from the OpenAPI document", () => {
  it("type-checks under strict and registers, starts, pages logs, cancels and abandons against a real control plane", async () => {
    const m = f.machine("outside");
    await f.runner(m);
    const dir = await mkdtemp(join(tmpdir(), "tendril-outside-client-"));
    try {
      // Only the served document and openapi-fetch: node_modules is there for openapi-fetch and the compiler.
      await symlink(join(ROOT, "node_modules"), join(dir, "node_modules"));
      await copyFile(join(ROOT, "test", "fixtures", "outside-client", "client.ts"), join(dir, "client.ts"));
      const document = await call(f.cp, "GET", "/api/v1/openapi.json", undefined, { token: null });
      expect(document.status).toBe(200);
      await writeFile(join(dir, "openapi.json"), JSON.stringify(document.body));

      // Request fields with a default (shell, isolation, …) are optional; openapi-typescript would make them
      // required unless told that a default does not make a field non-optional.
      const generated = await node([join(ROOT, "node_modules", "openapi-typescript", "bin", "cli.js"), "openapi.json", "--output", "api.d.ts", "--default-non-nullable", "false"], dir);
      expect(generated.code, generated.stderr).toBe(0);

      await writeFile(
        join(dir, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: { strict: true, noEmit: true, target: "es2022", module: "nodenext", moduleResolution: "nodenext", types: ["node"], skipLibCheck: false, noUncheckedIndexedAccess: true },
          files: ["client.ts", "api.d.ts"],
        }),
      );
      await writeFile(join(dir, "package.json"), JSON.stringify({ type: "module", private: true }));
      const typeCheck = await node([join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json", "--pretty", "false"], dir);
      expect(typeCheck.stdout + typeCheck.stderr).toBe("");
      expect(typeCheck.code).toBe(0);

      await build({ entryPoints: [join(dir, "client.ts")], outfile: join(dir, "client.mjs"), bundle: true, platform: "node", format: "esm", target: "node20", logLevel: "warning" });
      const ran = await node(["client.mjs"], dir, { TENDRIL_URL: f.cp.url, TENDRIL_SERVER_TOKEN: f.cp.serverToken, TENDRIL_MACHINE: m });
      expect(ran.stderr).toBe("");
      expect(ran.code).toBe(0);
      const summary = JSON.parse(ran.stdout) as Record<string, unknown>;
      expect(summary).toEqual({
        registered: expect.stringMatching(/^outside-/),
        lines: 2500,
        pages: 3,
        cancelledExitCode: -43,
        abandonedExitCode: -48,
        abandonedState: "complete",
        runnerConnected: true,
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 180_000);
});
