// A newcomer's first command: `npm install` on a fresh clone builds the package (its `prepare` script) and leaves
// `git status` clean — nothing it writes is tracked, and the lockfile is already what npm would write. The clone is
// of the working tree as it would be committed (tracked files and new ones git does not ignore), so the test checks
// the change under test, not the last commit.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT, removeDir, startProcess, tempDir } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

let clone: string | undefined;

afterAll(async () => {
  if (clone) await removeDir(clone);
}, 60_000);

/** Runs git in `cwd` and returns its stdout. */
function git(cwd: string, args: string[]): string {
  return execFileSync("git", ["-c", "user.name=fresh-clone", "-c", "user.email=fresh-clone@example.invalid", ...args], { cwd, encoding: "utf8" });
}

describe("npm install on a fresh clone", () => {
  it("builds dist/ (the package entry points with their declarations) and leaves git status clean", async () => {
    clone = await tempDir("fresh-clone");
    const files = git(ROOT, ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]).split("\0").filter((file) => file !== "");
    for (const file of files) {
      const source = join(ROOT, file);
      if (!existsSync(source) || !statSync(source).isFile()) continue; // deleted in the working tree
      mkdirSync(dirname(join(clone, file)), { recursive: true });
      copyFileSync(source, join(clone, file));
    }
    git(clone, ["init", "-q"]);
    git(clone, ["add", "-A"]);
    git(clone, ["commit", "-q", "-m", "the working tree"]);

    // Offline when npm's cache has every package (as after any install here); the registry otherwise.
    const install = startProcess("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund"], { npm_config_update_notifier: "false", npm_config_local_prefix: undefined }, clone);
    let exit: { code: number | null } | undefined;
    void install.exited.then((ended) => (exit = ended));
    try {
      await waitFor(() => exit !== undefined, { timeoutMs: 400_000, intervalMs: 200, what: "npm install to finish" });
    } finally {
      if (exit === undefined) await install.stop(1_000);
    }

    expect(exit?.code, install.output()).toBe(0);
    for (const built of ["dist/cli.js", "dist/worker.js", "dist/sdk.js", "dist/sdk.d.ts", "dist/testing.js", "dist/testing.d.ts"]) {
      expect(existsSync(join(clone, built)), built).toBe(true);
    }
    expect(git(clone, ["status", "--porcelain"])).toBe("");
  }, 480_000);

  it("packs what an install from git needs: the bin, dist/ with the entry points and their declarations, wrangler.toml", () => {
    // `npm install github:<owner>/tendril` runs `prepare` in its clone and installs what `npm pack` takes from it.
    expect(clone).toBeDefined();
    const packed = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
      cwd: clone!,
      encoding: "utf8",
      env: { ...process.env, npm_config_local_prefix: undefined },
    })) as Array<{ files: Array<{ path: string }> }>;
    const paths = packed[0]?.files.map((file) => file.path) ?? [];
    for (const needed of ["bin/tendril.js", "dist/cli.js", "dist/worker.js", "dist/sdk.js", "dist/sdk.d.ts", "dist/testing.js", "dist/testing.d.ts", "dist/types/client/sdk.d.ts", "wrangler.toml", "package.json"]) {
      expect(paths, needed).toContain(needed);
    }
    expect(paths.filter((path) => path.startsWith("node_modules/") || path.startsWith("test/"))).toEqual([]);
  });
});
