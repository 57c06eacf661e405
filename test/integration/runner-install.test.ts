// `tendril runner install` (and the same command of the one-file runner) writing a systemd service under --root: exactly
// the one-file runner, the unit and the environment file, with their modes; refusing a root runner unless asked for by
// name and a token file others can read; keeping the token when installed again; --print writing nothing; and the unit
// passing `systemd-analyze verify` where that is installed. No control plane is needed: nothing is started.
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { INSTALL_PATHS, parseEnvFileText } from "../../client/cli/runner-service.js";
import { ROOT, removeDir, startProcess, startTendril, tempDir, type TestProcess } from "../helpers/processes.js";

const RUNNER_FILE = join(ROOT, "dist", "tendril-runner.mjs");
const TOKEN = "trt_install-test_0123456789";

let dir: string;
let root: string;
let tokenFile: string;

beforeEach(async () => {
  dir = await tempDir("install");
  root = join(dir, "root");
  tokenFile = join(dir, "runner-token");
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
});

afterEach(() => removeDir(dir));

/** Runs a process to its end (bounded) and returns its exit code and output. */
async function finished(proc: TestProcess): Promise<{ code: number | null; stdout: string; output: string }> {
  try {
    const { code } = await Promise.race([
      proc.exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`did not finish:\n${proc.output()}`)), 30_000)),
    ]);
    return { code, stdout: proc.stdout(), output: proc.output() };
  } finally {
    await proc.stop();
  }
}

/** `tendril runner install <args>` from the built command line. */
function install(args: string[]) {
  return finished(startTendril(["runner", "install", ...args]));
}

/** Every file under `folder`, relative, with its permission bits. */
function filesUnder(folder: string): Record<string, string> {
  const found: Record<string, string> = {};
  const walk = (at: string) => {
    for (const entry of readdirSync(at, { withFileTypes: true })) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) walk(path);
      else found[`/${relative(folder, path)}`] = (statSync(path).mode & 0o777).toString(8);
    }
  };
  if (existsSync(folder)) walk(folder);
  return found;
}

const BASE = () => ["--url", "http://127.0.0.1:8787", "--machine", "web-01", "--token-file", tokenFile, "--root", root];

describe("tendril runner install --root", () => {
  it("writes exactly the one-file runner (0755), the unit (0644) and the environment file with the token (0600), and starts nothing", async () => {
    const result = await install([...BASE(), "--user", "deployer", "--work-dir", "/srv/tendril-work"]);
    expect(result.code, result.output).toBe(0);
    expect(filesUnder(root)).toEqual({
      [INSTALL_PATHS.runnerFile]: "755",
      [INSTALL_PATHS.unitFile]: "644",
      [INSTALL_PATHS.envFile]: "600",
    });
    expect(readFileSync(join(root, INSTALL_PATHS.runnerFile)).equals(readFileSync(RUNNER_FILE))).toBe(true);
    const unit = readFileSync(join(root, INSTALL_PATHS.unitFile), "utf8");
    expect(unit).toContain(`\nExecStart=${process.execPath} ${INSTALL_PATHS.runnerFile}\n`);
    expect(unit).toContain("\nUser=deployer\n");
    expect(unit).toContain("\nKillMode=process\n");
    expect(unit).toContain(`\nEnvironmentFile=${INSTALL_PATHS.envFile}\n`);
    expect(parseEnvFileText(readFileSync(join(root, INSTALL_PATHS.envFile), "utf8"))).toEqual({
      TENDRIL_URL: "http://127.0.0.1:8787",
      TENDRIL_MACHINE: "web-01",
      TENDRIL_WORK_DIR: "/srv/tendril-work",
      TENDRIL_RUNNER_TOKEN: TOKEN,
    });
    expect(result.stdout).toMatch(/Nothing was started \(--root\)/);
    expect(result.output).not.toContain(TOKEN);
  });

  it.runIf(process.getuid?.() === 0)("refuses, as root, a runner that runs scripts as root unless --user root is given", async () => {
    const refused = await install(BASE());
    expect(refused.code).toBe(2);
    expect(refused.output).toMatch(/refusing to install a runner that runs scripts as root.*--user <name>.*--user root/s);
    expect(filesUnder(root)).toEqual({});

    const asked = await install([...BASE(), "--user", "root"]);
    expect(asked.code, asked.output).toBe(0);
    expect(readFileSync(join(root, INSTALL_PATHS.unitFile), "utf8")).toContain("\nUser=root\n");
  });

  it("with --print shows the three files, without the token, and writes nothing", async () => {
    const result = await install([...BASE(), "--user", "tendril", "--print"]);
    expect(result.code, result.output).toBe(0);
    for (const path of [INSTALL_PATHS.runnerFile, INSTALL_PATHS.unitFile, INSTALL_PATHS.envFile]) expect(result.stdout).toContain(`# ${join(root, path)}`);
    expect(result.stdout).toContain("KillMode=process");
    expect(result.stdout).toContain("TENDRIL_RUNNER_TOKEN=<the token, not shown>");
    expect(result.output).not.toContain(TOKEN);
    expect(existsSync(root)).toBe(false);
  });

  it("keeps the token of the installed environment file when installed again for the same machine without --token-file", async () => {
    expect((await install([...BASE(), "--user", "tendril"])).code).toBe(0);
    const again = await install(["--url", "https://tendril.example.com", "--machine", "web-01", "--root", root, "--user", "tendril"]);
    expect(again.code, again.output).toBe(0);
    const env = parseEnvFileText(readFileSync(join(root, INSTALL_PATHS.envFile), "utf8"));
    expect(env.TENDRIL_RUNNER_TOKEN).toBe(TOKEN);
    expect(env.TENDRIL_URL).toBe("https://tendril.example.com");

    const other = await install(["--url", "https://tendril.example.com", "--machine", "web-02", "--root", root, "--user", "tendril"]);
    expect(other.code).toBe(2);
    expect(other.output).toMatch(/needs --token-file.*holds the token of machine web-01/);
  });

  it("refuses a token file that its group or other users can read, and writes nothing", async () => {
    chmodSync(tokenFile, 0o644);
    const result = await install([...BASE(), "--user", "tendril"]);
    expect(result.code).toBe(2);
    expect(result.output).toMatch(/readable by its group and other users.*chmod 600/);
    expect(filesUnder(root)).toEqual({});
  });

  it("refuses a URL, a work dir or a Node.js path the unit could not hold as written", async () => {
    for (const [flag, value] of [
      ["--url", "https://x.example.com/a b"],
      ["--work-dir", "relative/work"],
      ["--node", "/opt/my node/bin/node"],
    ] as const) {
      const base = BASE();
      const args = flag === "--url" ? [...base.slice(2), "--url", value] : [...base, flag, value];
      const result = await install([...args, "--user", "tendril"]);
      expect(result.code, `${flag} ${value}`).toBe(2);
      expect(result.output).toContain(flag);
    }
    expect(filesUnder(root)).toEqual({});
  });

  it("from the one-file runner itself (node tendril-runner.mjs runner install), copies that very file", async () => {
    const copy = join(dir, "elsewhere", "tendril-runner.mjs");
    mkdirSync(dirname(copy));
    copyFileSync(RUNNER_FILE, copy);
    const result = await finished(startProcess(process.execPath, [copy, "runner", "install", ...BASE(), "--user", "tendril"], {}, dir));
    expect(result.code, result.output).toBe(0);
    expect(readFileSync(join(root, INSTALL_PATHS.runnerFile)).equals(readFileSync(copy))).toBe(true);
    expect(filesUnder(root)).toEqual({ [INSTALL_PATHS.runnerFile]: "755", [INSTALL_PATHS.unitFile]: "644", [INSTALL_PATHS.envFile]: "600" });
  });

  it("writes a unit that systemd-analyze verify accepts without a warning (skipped where systemd-analyze is not installed)", async (ctx) => {
    const available = spawnSync("systemd-analyze", ["--version"], { stdio: "ignore" }).status === 0;
    if (!available) ctx.skip("systemd-analyze is not installed on this machine: the unit was not verified");
    expect((await install([...BASE(), "--user", "tendril"])).code).toBe(0);
    const unit = join(root, INSTALL_PATHS.unitFile);
    const verify = spawnSync("systemd-analyze", ["verify", unit], { encoding: "utf8", timeout: 30_000 });
    expect(verify.status, verify.stderr).toBe(0);
    // verify exits 0 even for unknown keys or bad values; it says so on stderr, naming the file and line.
    expect(verify.stderr.split("\n").filter((line) => line.includes("tendril-runner.service"))).toEqual([]);
  });
});
