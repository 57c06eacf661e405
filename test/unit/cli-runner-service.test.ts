// The text of the systemd service `tendril runner install` writes (client/cli/runner-service.ts): the unit's settings
// that keep scripts alive across a runner restart, the environment file the unit reads, and the values refused
// because they would mean something else to systemd or sh.
import { describe, expect, it } from "vitest";
import { INSTALL_PATHS, checkServiceSettings, envFileText, parseEnvFileText, unitFileText, type ServiceSettings } from "../../client/cli/runner-service.js";

const SETTINGS: ServiceSettings = {
  url: "https://tendril.example.com",
  machineId: "web-01",
  token: "trt_AbC-123_xyz",
  workDir: INSTALL_PATHS.defaultWorkDir,
  user: "tendril",
  node: "/usr/bin/node",
};

/** The `Key=value` lines of one section of a unit file. */
function section(unit: string, name: string): Map<string, string[]> {
  const lines = unit.split("\n");
  const start = lines.indexOf(`[${name}]`);
  expect(start, `section [${name}]`).toBeGreaterThanOrEqual(0);
  const settings = new Map<string, string[]>();
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith("[")) break;
    const match = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (match) settings.set(match[1]!, [...(settings.get(match[1]!) ?? []), match[2]!]);
  }
  return settings;
}

describe("the runner's systemd unit", () => {
  const service = section(unitFileText(SETTINGS), "Service");
  const one = (key: string) => service.get(key)?.join(" | ");

  it("runs the one-file runner with the Node.js it was given, as the given user, with the environment file", () => {
    expect(one("ExecStart")).toBe(`/usr/bin/node ${INSTALL_PATHS.runnerFile}`);
    expect(one("User")).toBe("tendril");
    expect(one("EnvironmentFile")).toBe(INSTALL_PATHS.envFile);
    expect(one("WorkingDirectory")).toBe(INSTALL_PATHS.stateDir);
    expect(one("StateDirectory")).toBe("tendril");
  });

  it("keeps each run's own files on a tmpfs of its own that outlives a stop or restart of the runner", () => {
    expect(one("RuntimeDirectory")).toBe("tendril");
    expect(one("RuntimeDirectoryMode")).toBe("0700");
    // "restart" would empty it on a stop: the scripts a stopped runner leaves could not be re-attached by the next.
    expect(one("RuntimeDirectoryPreserve")).toBe("yes");
    expect(one("Environment")).toBe("TENDRIL_RUNTIME_DIR=%t/tendril");
  });

  it("signals only the runner on stop, so that the scripts it leaves survive for the next runner to re-attach", () => {
    expect(one("KillMode")).toBe("process");
    expect(one("Delegate")).toBe("yes");
  });

  it("restarts the runner after a crash but not after a bad setting or a revoked token", () => {
    expect(one("Restart")).toBe("always");
    expect(one("RestartSec")).toMatch(/^\d+s$/);
    expect(one("RestartPreventExitStatus")).toBe("2 3");
    expect(one("TimeoutStopSec")).toMatch(/^\d+s$/);
  });

  it("sets no sandboxing that would reach the scripts it runs", () => {
    // Scripts are the runner's children: a mount namespace, a seccomp filter or NoNewPrivileges would constrain every
    // deployment (writing /etc or /usr, sudo), and ProtectControlGroups would take the script cgroups away.
    for (const key of ["ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "ProtectControlGroups", "SystemCallFilter", "ReadOnlyPaths"]) {
      expect(service.has(key), key).toBe(false);
    }
    expect(one("TasksMax")).toBe("infinity");
    expect(one("OOMPolicy")).toBe("continue");
  });

  it("is wanted by multi-user.target and starts after the network is up", () => {
    expect(section(unitFileText(SETTINGS), "Install").get("WantedBy")).toEqual(["multi-user.target"]);
    expect(section(unitFileText(SETTINGS), "Unit").get("After")).toEqual(["network-online.target"]);
  });
});

describe("the runner's environment file", () => {
  it("holds the URL, the machine, the work dir and the token the runner reads from its environment", () => {
    expect(parseEnvFileText(envFileText(SETTINGS))).toEqual({
      TENDRIL_URL: SETTINGS.url,
      TENDRIL_MACHINE: "web-01",
      TENDRIL_WORK_DIR: INSTALL_PATHS.defaultWorkDir,
      TENDRIL_RUNNER_TOKEN: SETTINGS.token,
    });
  });

  it("leaves the token out when asked to (for --print)", () => {
    const shown = envFileText(SETTINGS, { redactToken: true });
    expect(shown).not.toContain(SETTINGS.token);
    expect(parseEnvFileText(shown).TENDRIL_RUNNER_TOKEN).toBe("<the token, not shown>");
  });
});

describe("the values a service may be made of", () => {
  it("accepts a plain setup", () => {
    expect(checkServiceSettings(SETTINGS)).toEqual([]);
    expect(checkServiceSettings({ ...SETTINGS, url: "http://127.0.0.1:8787", user: "root", workDir: "/srv/tendril-work" })).toEqual([]);
  });

  it("refuses values that systemd or sh would read differently: spaces, quotes, $, %, relative or .. paths", () => {
    const bad: Array<Partial<ServiceSettings>> = [
      { url: "https://tendril.example.com/a b" },
      { url: "https://x.example.com/$(id)" },
      { url: "ftp://tendril.example.com" },
      { url: "https://x.example.com/?a=1&b=2" },
      { token: "trt_a b" },
      { token: "~trt" },
      { token: 'trt_"x' },
      { workDir: "relative/work" },
      { workDir: "/var/lib/../../etc" },
      { workDir: "/var/lib/tendril %h" },
      { node: "/opt/my node/bin/node" },
      { user: "bad user" },
      { user: "nobody" },
      { machineId: "web 01" },
    ];
    for (const change of bad) expect(checkServiceSettings({ ...SETTINGS, ...change }), JSON.stringify(change)).toHaveLength(1);
  });
});
