/** The machine's timing and housekeeping policy: liveness of the runner, retention batches, the one alarm. */
import { describe, expect, it } from "vitest";
import { DEAD_AFTER_MS, PRUNE_BYTES, PRUNE_SCRIPTS, checkLiveness, nextAlarm, pruneBatch, retentionCutoff } from "../../control-plane/machine/core/policy.js";

describe("checkLiveness", () => {
  it("declares a runner dead after 25 s of silence and otherwise says when to look again", () => {
    expect(checkLiveness(1_000, 1_000 + DEAD_AFTER_MS)).toEqual({ dead: true, silentMs: DEAD_AFTER_MS });
    expect(checkLiveness(1_000, 1_000 + DEAD_AFTER_MS - 1)).toEqual({ dead: false, nextCheckAt: 1_000 + DEAD_AFTER_MS });
  });
});

describe("retention", () => {
  it("expires what completed at or before now minus the retention", () => {
    expect(retentionCutoff(10_000, 3_000)).toBe(7_000);
  });

  it("prunes at most 200 scripts and stops before passing 256 MiB of output, but always prunes one", () => {
    const many = Array.from({ length: 300 }, (_, i) => ({ ticket: `t${i}`, logBytes: 10 }));
    expect(pruneBatch(many)).toHaveLength(PRUNE_SCRIPTS);
    const big = [{ ticket: "a", logBytes: PRUNE_BYTES }, { ticket: "b", logBytes: 1 }];
    expect(pruneBatch(big)).toEqual(["a"]);
    expect(pruneBatch([{ ticket: "huge", logBytes: PRUNE_BYTES * 4 }])).toEqual(["huge"]);
    expect(pruneBatch([])).toEqual([]);
  });
});

describe("nextAlarm", () => {
  it("is the earliest of the core's deadline, the liveness check and the retention of the oldest completion", () => {
    expect(nextAlarm({ coreDeadline: null, heartbeatCheckAt: null, oldestCompletion: null, retentionMs: 5 })).toBeNull();
    expect(nextAlarm({ coreDeadline: 50, heartbeatCheckAt: 40, oldestCompletion: 30, retentionMs: 5 })).toBe(35);
    expect(nextAlarm({ coreDeadline: 20, heartbeatCheckAt: 40, oldestCompletion: null, retentionMs: 5 })).toBe(20);
  });
});
