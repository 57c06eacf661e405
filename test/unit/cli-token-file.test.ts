// Issue 9, bug 9: the runner token was visible to other users in `ps` (`--token`). `tendril runner` takes it from
// `--token-file` (refused when its group or other users can read it) or TENDRIL_RUNNER_TOKEN; `--token` warns.
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { readTokenFile, resolveRunnerToken } from "../../client/cli/token-file.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "tendril-token-"));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

/** Writes a token file with exactly this mode. */
async function tokenFile(contents: string, mode: number): Promise<string> {
  const path = join(dir, "runner-token");
  await writeFile(path, contents);
  await chmod(path, mode);
  return path;
}

describe("the runner token file (bug 9)", () => {
  it("reads the token from a file only its owner can read, without the trailing newline", async () => {
    expect(await readTokenFile(await tokenFile("trt_abc\n", 0o600))).toBe("trt_abc");
    expect(await readTokenFile(await tokenFile("trt_def", 0o400))).toBe("trt_def");
  });

  it.each([
    [0o640, "its group", "0640"],
    [0o604, "other users", "0604"],
    [0o644, "its group and other users", "0644"],
  ])("refuses a token file with mode %o, saying who can read it and to chmod 600", async (mode, who, shown) => {
    const path = await tokenFile("trt_abc\n", mode);
    const refusal = `runner token file ${path} is readable by ${who} (mode ${shown}); make it readable by its owner only: chmod 600 ${path}`;
    await expect(readTokenFile(path)).rejects.toThrow(refusal);
  });

  it("refuses a missing, empty or malformed token file with a clear error", async () => {
    await expect(readTokenFile(join(dir, "absent"))).rejects.toThrow(/does not exist; write the output of `tendril register <machine>` into it/);
    await expect(readTokenFile(await tokenFile("\n", 0o600))).rejects.toThrow(/is empty/);
    await expect(readTokenFile(await tokenFile("trt_a trt_b\n", 0o600))).rejects.toThrow(/must hold only the token/);
    await expect(readTokenFile(dir)).rejects.toThrow(/not a regular file/);
  });

  it("takes the file before the flag and the flag before the environment, and refuses both file and flag", async () => {
    const path = await tokenFile("trt_file\n", 0o600);
    expect(await resolveRunnerToken({ tokenFile: path, environment: "trt_env" })).toEqual({ token: "trt_file", source: "file" });
    expect(await resolveRunnerToken({ token: "trt_flag", environment: "trt_env" })).toEqual({ token: "trt_flag", source: "flag" });
    expect(await resolveRunnerToken({ environment: "trt_env" })).toEqual({ token: "trt_env", source: "environment" });
    expect(await resolveRunnerToken({})).toBeUndefined();
    await expect(resolveRunnerToken({ tokenFile: path, token: "trt_flag" })).rejects.toThrow(/--token-file or --token, not both/);
    await expect(resolveRunnerToken({ token: " ", environment: "trt_env" })).rejects.toThrow(/--token is empty/);
  });
});
