// A ticket started again after its earlier run was abandoned and deleted, end to end: real runner, real control
// plane. The abandoned process keeps its own script file and workspace; it never runs the new run's lines.
import { describe, expect, it } from "vitest";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { useControlPlane } from "../helpers/fixture.js";
import { isAlive, killScript, pidFrom } from "../helpers/processes.js";
import { runFoldersOf } from "../helpers/run-folders.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

describe("a ticket started again after its abandoned run was deleted", () => {
  it("runs its new script in a fresh workspace and script file, and the abandoned process takes none of its steps (bug 1)", async () => {
    const m = f.machine();
    const runner = await f.runner(m);
    const steps = join(f.scratch, `${m}.steps`);
    const release = join(f.scratch, `${m}.release`);
    const pidFile = join(f.scratch, `${m}.pid`);
    // The first run waits, then takes one more step; bash reads its script file as it goes.
    const first = [`echo $$ > '${pidFile}'`, `while [ ! -e '${release}' ]; do sleep 0.02; done`, `echo "old-step $$ $PWD" >> '${steps}'`].join("\n");
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "deploy", scriptBody: first })).status).toBe(201);
    const old = await pidFrom(pidFile);
    try {
      const abandoned = await f.api("POST", `/api/v1/machines/${m}/scripts/deploy/abandon`);
      expect(abandoned.body).toMatchObject({ state: "complete", exitCode: -48 });
      expect((await f.api("DELETE", `/api/v1/machines/${m}/scripts/deploy`)).status).toBe(200);

      // The same ticket again, with a different, longer script: every line a deployment step that says who took it
      // (no quotes: a shell that starts reading it in the middle of a line still runs the lines after).
      const second = Array.from({ length: 200 }, () => `echo deploy-step $$ >> ${steps}`).join("\n");
      const again = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "deploy", scriptBody: `${second}\necho $$`, waitMs: 20_000 });
      expect(again.body).toMatchObject({ state: "complete", exitCode: 0 });
      const fresh = Number(again.body.logs.find((line: { source: string }) => line.source === "stdout").text);
      expect(isAlive(old)).toBe(true);

      writeFileSync(release, "");
      await waitFor(() => !isAlive(old), { what: "the abandoned process to finish on its own" });
      const lines = readFileSync(steps, "utf8").trim().split("\n");
      const byOld = lines.filter((line) => line.split(" ")[1] === String(old));
      expect(byOld).toHaveLength(1);
      expect(byOld[0]).toMatch(new RegExp(`^old-step ${old} /`));
      // It ran in its own workspace to the end, which still existed then.
      const workspace = byOld[0]!.split(" ")[2]!;
      expect(lines.filter((line) => line === `deploy-step ${fresh}`)).toHaveLength(200);
      // Once it is gone, its leftovers go too (the ticket's script was deleted).
      await waitFor(() => !existsSync(workspace), { what: "the abandoned run's workspace to be removed" });
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.abandoned.length === 0, { what: "the abandoned process to leave the machine view" });
      // The new run keeps its own until its script is deleted in turn.
      expect(runFoldersOf(runner.workDir, "deploy")).toHaveLength(1);
      expect((await f.api("DELETE", `/api/v1/machines/${m}/scripts/deploy`)).status).toBe(200);
      await waitFor(() => runFoldersOf(runner.workDir, "deploy").length === 0, { what: "the new run's folder to be removed" });
    } finally {
      killScript(old);
    }
  });
});
