/**
 * Run folders: every dispatch's own folder with its record, script file and working directory, written so that
 * nothing a process may read is rewritten, removed only once nothing holds it, and found again by a later runner.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ScriptPayload } from "../../shared/api.js";
import { RECORD_FILE, RunFolders, WORK_DIR_FILE, newRunRecord, readRecord, type RunOwner } from "../../runner/run-folder.js";
import { ownStartTime } from "../../runner/containment.js";
import { removeDir, tempDir } from "../helpers/processes.js";
import { waitFor } from "./fake-control-plane.js";

let workDir: string;
let runs: RunFolders;

beforeEach(async () => {
  workDir = await tempDir("runs");
  runs = new RunFolders(workDir);
  runs.prepare();
});

afterEach(() => removeDir(workDir));

const OWNER: RunOwner = { runnerId: "runner-1", pid: 4242, startTime: 99 };
const MARKER = "0123456789abcdef0123456789abcdef";

function payload(scriptBody: string, extra: Partial<ScriptPayload> = {}): ScriptPayload {
  return { scriptBody, shell: "bash", arguments: [], environment: {}, files: [], ...extra };
}

describe("a run folder", () => {
  it("holds the script outside its working directory, the request's files inside it, and no temporary file", () => {
    const run = runs.create("t1", 7, payload("echo hi", { files: [{ name: "script.sh", contents: Buffer.from("not the script").toString("base64") }] }));
    expect(run.dir).toBe(join(workDir, "runs", run.id));
    expect(run.id).toMatch(/^7-[0-9a-f]{12}$/);
    expect(readdirSync(run.dir).sort()).toEqual(["script.sh", "work"]);
    expect(readFileSync(run.scriptPath, "utf8")).toBe("echo hi");
    // A request's file of the same name lands in the working directory and cannot replace the script.
    expect(readFileSync(join(run.cwd, "script.sh"), "utf8")).toBe("not the script");
    expect(runs.create("t2", 8, payload("Write-Output hi", { shell: "pwsh" })).scriptPath).toMatch(/script\.ps1$/);
  });

  it("is new for every run of a ticket, so the script file an earlier run's process reads is never rewritten (bug 1)", () => {
    const first = runs.create("t1", 1, payload("echo one"));
    const inode = statSync(first.scriptPath).ino;
    const second = runs.create("t1", 1, payload("echo two"));
    expect(second.dir).not.toBe(first.dir);
    expect(readFileSync(first.scriptPath, "utf8")).toBe("echo one");
    expect(statSync(first.scriptPath).ino).toBe(inode);
  });

  it("writes its record under a temporary name and renames it into place, and reads it back", () => {
    const run = runs.create("t1", 3, payload("true"));
    expect(readRecord(run.dir)).toBeUndefined();
    const record = newRunRecord(run, "bash", OWNER, "boot-1", { marker: MARKER, cgroup: "/sys/fs/cgroup/tendril/r-1-2/s-x" });
    runs.write(run, record);
    runs.update(run, { process: { pid: 77, startTime: 123 } });
    expect(readdirSync(run.dir).sort()).toEqual([RECORD_FILE, "script.sh", "work"]);
    expect(readRecord(run.dir)).toEqual({
      version: 1,
      runId: run.id,
      ticket: "t1",
      fence: 3,
      createdAt: record.createdAt,
      owner: OWNER,
      bootId: "boot-1",
      shell: "bash",
      marker: MARKER,
      cgroup: "/sys/fs/cgroup/tendril/r-1-2/s-x",
      process: { pid: 77, startTime: 123 },
    });
  });

  it("reads a record a later version wrote with fields it does not know, and refuses one that is not a record", () => {
    const run = runs.create("t1", 3, payload("true"));
    const record = newRunRecord(run, "sh", OWNER, undefined, { marker: MARKER, cgroup: undefined, pid: 5, startTime: 6 });
    writeFileSync(join(run.dir, RECORD_FILE), JSON.stringify({ ...record, output: { spool: "output.spool", position: 12 } }));
    expect(readRecord(run.dir)).toEqual(record);
    writeFileSync(join(run.dir, RECORD_FILE), JSON.stringify({ ...record, marker: "../../etc" }));
    expect(readRecord(run.dir)).toBeUndefined();
    writeFileSync(join(run.dir, RECORD_FILE), "{");
    expect(readRecord(run.dir)).toBeUndefined();
  });
});

describe("removing run folders", () => {
  it("removes a ticket's runs once nothing holds them, now or later, and leaves other tickets' alone", async () => {
    const idle = runs.create("t1", 1, payload("true"));
    const busy = runs.create("t1", 2, payload("true"));
    const other = runs.create("t2", 3, payload("true"));
    runs.hold(busy, "script");
    runs.requestDelete("t1");
    await waitFor(() => !existsSync(idle.dir), "the idle run to be removed");
    expect(existsSync(busy.dir)).toBe(true);
    runs.hold(busy, "watch:9");
    runs.let(busy, "script");
    expect(existsSync(busy.dir)).toBe(true);
    runs.let(busy, "watch:9");
    await waitFor(() => !existsSync(busy.dir), "the run to be removed once nothing holds it");
    expect(existsSync(other.dir)).toBe(true);
    expect(runs.find("t1", 2)).toBeUndefined();
    expect(runs.find("t2", 3)).toBe(other);
  });

  it("makes the runs folder again when it was removed while the runner ran", async () => {
    await removeDir(runs.root);
    const run = runs.create("t1", 1, payload("echo again"));
    expect(readFileSync(run.scriptPath, "utf8")).toBe("echo again");
  });
});

describe("what an earlier runner left", () => {
  it("is adopted as it is accepted, with or without a record, and removed once let go", async () => {
    const earlier = new RunFolders(workDir);
    const recorded = earlier.create("t1", 1, payload("true"));
    earlier.write(recorded, newRunRecord(recorded, "bash", OWNER, "boot-1", { marker: MARKER, cgroup: undefined }));
    const unrecorded = earlier.create("t2", 2, payload("true"));
    const foreign = earlier.create("t3", 3, payload("true"));
    earlier.write(foreign, newRunRecord(foreign, "bash", { ...OWNER, runnerId: "still-alive" }, "boot-1", { marker: MARKER, cgroup: undefined }));

    const found = runs.adoptLeftovers((record) => record?.owner.runnerId !== "still-alive");
    expect(found.map(({ run, record }) => [run.id, record?.ticket])).toEqual(
      expect.arrayContaining([
        [recorded.id, "t1"],
        [unrecorded.id, undefined],
      ]),
    );
    expect(found).toHaveLength(2);
    for (const { run } of found) runs.let(run, "found");
    await waitFor(() => !existsSync(recorded.dir) && !existsSync(unrecorded.dir), "the adopted runs to be removed");
    expect(existsSync(foreign.dir)).toBe(true);
  });
});

describe("with a runtime dir of its own", () => {
  let runtimeDir: string;
  let split: RunFolders;

  beforeEach(async () => {
    runtimeDir = await tempDir("runtime");
    split = new RunFolders(workDir, undefined, runtimeDir);
    split.prepare();
  });

  afterEach(() => removeDir(runtimeDir));

  it("keeps the run's own files there and only its working directory in the work dir, and removes both", async () => {
    const run = split.create("t1", 4, payload("echo hi", { files: [{ name: "data.txt", contents: Buffer.from("data").toString("base64") }] }));
    split.write(run, newRunRecord(run, "bash", OWNER, "boot-1", { marker: MARKER, cgroup: undefined }));
    expect(run.dir).toBe(join(runtimeDir, "runs", run.id));
    expect(readdirSync(run.dir).sort()).toEqual([RECORD_FILE, "script.sh"]);
    expect(run.cwd).toBe(join(workDir, "runs", run.id, "work"));
    expect(readFileSync(join(run.cwd, "data.txt"), "utf8")).toBe("data");
    expect(split.slotsDir).toBe(join(runtimeDir, "slots"));
    split.requestDelete("t1");
    await waitFor(() => !existsSync(run.dir) && !existsSync(join(workDir, "runs", run.id)), "both of the run's folders to be removed");
  });

  it("finds a predecessor's runs there, whole run folders a runner without one left in the work dir, and removes workspaces whose run folder is gone", async () => {
    const earlier = new RunFolders(workDir, undefined, runtimeDir);
    const current = earlier.create("t1", 1, payload("true"));
    earlier.write(current, newRunRecord(current, "bash", OWNER, "boot-1", { marker: MARKER, cgroup: undefined }));
    const foreign = earlier.create("t2", 2, payload("true"));
    earlier.write(foreign, newRunRecord(foreign, "bash", { ...OWNER, runnerId: "still-alive" }, "boot-1", { marker: MARKER, cgroup: undefined }));
    // A runner of the same work dir without a runtime dir of its own (before an upgrade that gave it one).
    const before = new RunFolders(workDir);
    const legacy = before.create("t3", 3, payload("true"));
    before.write(legacy, newRunRecord(legacy, "bash", OWNER, "boot-1", { marker: MARKER, cgroup: undefined }));
    // A workspace whose run folder went with a reboot.
    const orphan = earlier.create("t4", 4, payload("true"));
    await removeDir(orphan.dir);

    const found = split.adoptLeftovers((record) => record?.owner.runnerId !== "still-alive");
    const byId = new Map(found.map(({ run, record }) => [run.id, { run, record }]));
    expect([...byId.keys()].sort()).toEqual([current.id, legacy.id, orphan.id].sort());
    expect(byId.get(current.id)!.run).toMatchObject({ dir: current.dir, cwd: current.cwd });
    expect(byId.get(current.id)!.record?.ticket).toBe("t1");
    expect(byId.get(legacy.id)!.run).toMatchObject({ dir: join(workDir, "runs", legacy.id), cwd: join(workDir, "runs", legacy.id, "work") });
    expect(byId.get(legacy.id)!.record?.ticket).toBe("t3");
    expect(byId.get(orphan.id)!.record).toBeUndefined();
    for (const { run } of found) split.let(run, "found");
    await waitFor(
      () => [current.dir, current.cwd, legacy.dir, join(workDir, "runs", orphan.id)].every((path) => !existsSync(path)),
      "the adopted runs and the orphaned workspace to be removed",
    );
    // A live runner's run keeps both of its folders.
    expect(existsSync(foreign.dir) && existsSync(foreign.cwd)).toBe(true);
  });

  it("removes the slot folders of gone runner processes, there and in the work dir, and keeps a live one's", () => {
    const live = `${process.pid}-${ownStartTime()}-0a1b`;
    const gone = `${process.pid}-${ownStartTime() + 1}-0a1b`;
    for (const slots of [split.slotsDir, join(workDir, "slots")]) {
      for (const name of [live, gone]) mkdirSync(join(slots, name), { recursive: true });
    }
    split.pruneSlots();
    expect(readdirSync(split.slotsDir)).toEqual([live]);
    expect(readdirSync(join(workDir, "slots"))).toEqual([live]);
  });

  it("is refused to a second work dir, with a sentence naming both, and nothing of it changes", async () => {
    const otherWorkDir = await tempDir("other-work");
    try {
      const marker = readFileSync(join(runtimeDir, WORK_DIR_FILE), "utf8");
      expect(marker).toBe(workDir);
      const other = new RunFolders(otherWorkDir, undefined, runtimeDir);
      expect(() => other.prepare()).toThrow(`The runtime dir ${runtimeDir} belongs to the work dir ${workDir}, not ${otherWorkDir}`);
      expect(readFileSync(join(runtimeDir, WORK_DIR_FILE), "utf8")).toBe(marker);
      expect(readdirSync(otherWorkDir)).toEqual([]);
      // The work dir it serves is taken again, by a runner restarted with the same settings.
      expect(() => new RunFolders(workDir, undefined, runtimeDir).prepare()).not.toThrow();
    } finally {
      await removeDir(otherWorkDir);
    }
  });
});
