// A newcomer's copy-paste: the code blocks of the README's SDK section, run as the README says — in a project that
// installed the repository, next to `npx --no-install tendril start`, JavaScript with `node`, TypeScript compiled by
// `npx --no-install tsc` with the README's tsconfig — each must run to the end and print what its comments promise.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, startProcess, type TestProcess } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";
import { consumerFolder, expectNoProcessWith, type ConsumerFolder } from "./consumer-folder.js";

/** A fenced code block of the README. */
interface Block {
  language: string;
  code: string;
}

/** The fenced blocks of the README's section `heading`, in order. */
function blocksOf(heading: string): Block[] {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const start = readme.indexOf(`\n${heading}\n`);
  if (start < 0) throw new Error(`README.md has no section ${heading}`);
  const end = readme.indexOf("\n## ", start + heading.length + 2);
  const section = readme.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/^```(\w+)\n([\s\S]*?)^```$/gm)].map((match) => ({ language: match[1]!, code: match[2]! }));
}

/** What each snippet must print, recognised by what it does. */
function expectedOutput(code: string): RegExp[] {
  if (code.includes("startTendril")) return [/^0$/m];
  if (code.includes("await using")) return [/^exit code -43$/m];
  if (code.includes("executeScript")) return [/^deploying$/m, /^deployed$/m, /^completed 0$/m];
  if (code.includes("machine.start")) return [/^hello from \S+$/m, /^done$/m, /^exit code 0$/m];
  throw new Error(`no expectation for this README snippet; add one to readme.test.ts:\n${code}`);
}

const blocks = blocksOf("## The SDK");
const mark = randomBytes(8).toString("hex");
let project: ConsumerFolder;
let tendril: TestProcess | undefined;

beforeAll(async () => {
  project = await consumerFolder("readme", { typescript: true });
  // What the README says to run in a project: the same as `npm start` in the clone, on a free port here.
  tendril = startProcess("npx", ["--no-install", "tendril", "start", "--port", "0"], { CONSUMER_MARK: mark, npm_config_update_notifier: "false", npm_config_local_prefix: undefined }, project.dir);
  await waitFor(() => existsSync(join(project.dir, ".tendril", "local.json")) && /runner connected/.test(tendril!.stdout()), {
    timeoutMs: 90_000,
    what: `tendril start to be ready:\n${tendril.output()}`,
  });
}, 240_000);

afterAll(async () => {
  await tendril?.stop(15_000);
  await expectNoProcessWith("CONSUMER_MARK", mark);
  await project?.remove();
}, 60_000);

describe("the README's SDK section", () => {
  it("imports tendril/sdk and tendril/testing by name from a file in the clone itself", () => {
    // A module in the package's own folder resolves the package's name through its `exports` (self-reference).
    const imported = execFileSync(process.execPath, ["--input-type=module", "-e", 'const sdk = await import("tendril/sdk"); const testing = await import("tendril/testing"); console.log(typeof sdk.TendrilClient, typeof testing.startTendril)'], { cwd: ROOT, encoding: "utf8" });
    expect(imported.trim()).toBe("function function");
  });

  it("has JavaScript and TypeScript snippets and one tsconfig to compile the TypeScript with", () => {
    expect(blocks.filter((block) => block.language === "js").length).toBeGreaterThan(0);
    expect(blocks.filter((block) => block.language === "ts").length).toBeGreaterThan(0);
    expect(blocks.filter((block) => block.language === "json")).toHaveLength(1);
    expect(blocks.every((block) => ["js", "ts", "json"].includes(block.language))).toBe(true);
  });

  it("runs every snippet as written against tendril start in a project that installed the repository", async () => {
    const tsconfig = blocks.find((block) => block.language === "json")!.code;
    await writeFile(join(project.dir, "tsconfig.json"), tsconfig);
    const snippets = blocks.filter((block) => block.language !== "json").map((block, index) => ({ ...block, name: `snippet-${index}` }));
    for (const snippet of snippets) await writeFile(join(project.dir, `${snippet.name}.${snippet.language === "ts" ? "mts" : "mjs"}`), snippet.code);

    const compiled = await project.run("npx", ["--no-install", "tsc"], { timeoutMs: 120_000 });
    expect(compiled.output).toBe("");
    expect(compiled.code).toBe(0);

    for (const snippet of snippets) {
      const ran = await project.run(process.execPath, [`${snippet.name}.mjs`], { timeoutMs: 120_000 });
      expect(ran.code, `${snippet.code}\n${ran.output}`).toBe(0);
      for (const expected of expectedOutput(snippet.code)) expect(ran.stdout, snippet.code).toMatch(expected);
    }
  }, 300_000);
});
