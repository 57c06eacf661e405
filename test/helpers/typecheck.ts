/**
 * The type check as the test suite runs it: exactly the tsconfigs that `npm run check` names, each checked by the
 * project's pinned TypeScript, so that `npm test` (and CI) fail on a type error in either of them.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./processes.js";

/** The project's pinned TypeScript compiler. */
const TSC = join(ROOT, "node_modules", "typescript", "bin", "tsc");

/** The tsconfigs `npm run check` type-checks (each `-p <path>` of package.json's `check` script), relative to the project. */
export function checkedTsconfigs(): string[] {
  const packageJson = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts?: Record<string, string> };
  const check = packageJson.scripts?.check ?? "";
  return [...check.matchAll(/(?:^|\s)(?:-p|--project)\s+(\S+)/g)].map((match) => match[1]!);
}

/** What `tsc --noEmit -p <tsconfig>` said. */
export interface TypeCheckResult {
  /** tsc's exit code: 0 when there are no errors. */
  code: number | null;
  /** Its diagnostics, one per line. */
  output: string;
}

/** Runs `tsc --noEmit -p <tsconfig>` (a path relative to `cwd`, the project by default); kills it by pid past `timeoutMs`. */
export function typeCheck(tsconfig: string, { cwd = ROOT, timeoutMs = 150_000 }: { cwd?: string; timeoutMs?: number } = {}): Promise<TypeCheckResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [TSC, "--noEmit", "--pretty", "false", "-p", tsconfig], { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
      reject(new Error(`tsc -p ${tsconfig} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, output: output.trim() });
    });
  });
}
