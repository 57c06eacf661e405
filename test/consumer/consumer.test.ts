// The package as its consumers get it: a project folder that installs this repository and imports only
// `tendril/sdk` and `tendril/testing` — their declarations type-checked strictly under each module resolution a
// TypeScript project uses, and their code driving a real script through a real runner, leaving no process behind.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../helpers/processes.js";
import { consumerFolder, expectNoProcessWith, TSC, type ConsumerFolder } from "./consumer-folder.js";

let project: ConsumerFolder;

beforeAll(async () => {
  project = await consumerFolder("consumer", { template: join(ROOT, "test", "consumer", "project"), typescript: true });
}, 180_000);

afterAll(async () => {
  await project?.remove();
});

describe("a project that installs the repository", () => {
  it("type-checks its use of tendril/sdk and tendril/testing, strict, under node16, nodenext and bundler resolution", async () => {
    const node16 = await project.run(process.execPath, [TSC, "-p", "tsconfig.json"], { timeoutMs: 120_000 });
    expect(node16.output).toBe("");
    expect(node16.code).toBe(0);
    const others = await Promise.all(
      [["NodeNext", "NodeNext"], ["ESNext", "Bundler"]].map(async ([module, resolution]) => ({
        resolution,
        result: await project.run(process.execPath, [TSC, "-p", "tsconfig.json", "--noEmit", "--module", module!, "--moduleResolution", resolution!], {
          timeoutMs: 120_000,
        }),
      })),
    );
    for (const { resolution, result } of others) {
      expect(result.output, resolution).toBe("");
      expect(result.code, resolution).toBe(0);
    }
  }, 300_000);

  it("starts a real Tendril from tendril/testing, runs scripts through tendril/sdk, and stop() leaves no process behind", async () => {
    const mark = randomBytes(8).toString("hex");
    const checked = await project.run(process.execPath, [join("build", "check.js")], { env: { CONSUMER_MARK: mark }, timeoutMs: 120_000 });

    expect(checked.code, checked.output).toBe(0);
    const seen = JSON.parse(checked.stdout.trim().split("\n").at(-1) ?? "{}");
    // Between stdout and stderr, lines come in the order the runner read them.
    expect([...seen.lines].sort()).toEqual(["stderr:two", "stdout:one"]);
    expect(seen).toEqual({
      lines: expect.any(Array),
      exitCode: 3,
      afterDisposal: "unknown_script",
      cancelled: true,
      executed: { exitCode: 0, outcome: "completed", lines: ["executed"] },
      leftRunning: "running",
      connected: true,
      sameClient: true,
    });
    // The control plane, workerd, the runners and the script left running all inherited the mark.
    await expectNoProcessWith("CONSUMER_MARK", mark);
  }, 180_000);

  it("kills everything it started when the test process ends without calling stop()", async () => {
    const mark = randomBytes(8).toString("hex");
    const ended = await project.run(process.execPath, [join("build", "forgets-stop.js")], { env: { CONSUMER_MARK: mark }, timeoutMs: 120_000 });

    expect(ended.code, ended.output).toBe(0);
    expect(ended.stdout).toMatch(/^started \S+$/m);
    await expectNoProcessWith("CONSUMER_MARK", mark);
  }, 180_000);
});
