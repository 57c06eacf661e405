import { getHeapSpaceStatistics } from "node:v8";
import { describe, expect, it } from "vitest";
import { YoungGarbagePacer, collectYoungGarbage } from "../../runner/young-garbage.js";
import { waitFor } from "../helpers/wait.js";

describe("young-generation collections", () => {
  it("are asked for once every so many bytes sent, counting across sends", () => {
    let collections = 0;
    const pacer = new YoungGarbagePacer(1_000, () => (collections += 1));
    pacer.sent(600);
    expect(collections).toBe(0);
    pacer.sent(600);
    expect(collections).toBe(1);
    pacer.sent(999);
    expect(collections).toBe(1);
    pacer.sent(1);
    expect(collections).toBe(2);
  });

  it("collect the young generation at once, and with it the buffers that died there", async () => {
    // Like the copies `ws` masks frames into: 32 MiB of 64 KiB buffers, each dead once written to.
    const baseline = process.memoryUsage().arrayBuffers;
    let checksum = 0;
    for (let i = 0; i < 512; i++) checksum += Buffer.allocUnsafe(64 * 1024).fill(i + 1)[0]!;
    expect(checksum).toBeGreaterThan(0);
    const youngBefore = youngGenerationBytes();
    expect(collectYoungGarbage()).toBe(true);
    // A scavenge runs synchronously: what is left in the young generation is what survived it.
    expect(youngGenerationBytes()).toBeLessThan(youngBefore / 2);
    // The buffers' memory is given back by V8's sweeper, which may run on a thread of its own: wait for it.
    await waitFor(() => process.memoryUsage().arrayBuffers < baseline + 8 * 1024 * 1024, { timeoutMs: 10_000, what: "the dead buffers freed" });
  });
});

/** Bytes in use in V8's young generation. */
function youngGenerationBytes(): number {
  return getHeapSpaceStatistics().find((space) => space.space_name === "new_space")!.space_used_size;
}
