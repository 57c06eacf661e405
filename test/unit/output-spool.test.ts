import { describe, expect, it } from "vitest";
import { OutputSpool, type OutputBatch } from "../../runner/output-spool.js";

/** A transport that records every batch and can be switched off. */
function recorder() {
  const batches: OutputBatch[] = [];
  const transport = {
    batches,
    online: true,
    send: (batch: OutputBatch) => {
      if (!transport.online) return false;
      batches.push({ sequence: batch.sequence, lines: [...batch.lines] });
      return true;
    },
    /** Every sent line as `sequence:text`. */
    sent: () => batches.flatMap((batch) => batch.lines.map((line, index) => `${batch.sequence + index}:${line.text}`)),
  };
  return transport;
}

const nextTick = () => new Promise<void>((resolve) => setImmediate(resolve));
const OCCURRED = "2026-01-01T00:00:00.000Z";

describe("OutputSpool", () => {
  it("numbers stdout, stderr and debug lines in one sequence from 0", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    expect(spool.append("stdout", "a", OCCURRED)).toBe(0);
    expect(spool.append("stderr", "b", OCCURRED)).toBe(1);
    expect(spool.append("debug", "c", OCCURRED)).toBe(2);
    expect(spool.nextSequence).toBe(3);
    spool.dispose();
  });

  it("sends the lines added in one tick as one batch at the end of the tick", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    spool.append("stdout", "one", OCCURRED);
    spool.append("stderr", "two", OCCURRED);
    expect(transport.batches).toHaveLength(0);
    await nextTick();
    expect(transport.batches).toEqual([
      {
        sequence: 0,
        lines: [
          { source: "stdout", text: "one", occurred: OCCURRED },
          { source: "stderr", text: "two", occurred: OCCURRED },
        ],
      },
    ]);
    spool.append("stdout", "three", OCCURRED);
    await nextTick();
    expect(transport.sent()).toEqual(["0:one", "1:two", "2:three"]);
    spool.dispose();
  });

  it("sends at once when a batch reaches the line limit", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send, maxBatchLines: 3 });
    for (let i = 0; i < 7; i++) spool.append("stdout", `l${i}`, OCCURRED);
    expect(transport.batches.map((batch) => [batch.sequence, batch.lines.length])).toEqual([
      [0, 3],
      [3, 3],
    ]);
    spool.flush();
    expect(transport.batches.at(-1)).toMatchObject({ sequence: 6 });
    spool.dispose();
  });

  it("sends at once when a batch reaches 64 KiB of text by default", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    const big = "x".repeat(16 * 1024);
    for (let i = 0; i < 4; i++) spool.append("stdout", big, OCCURRED);
    expect(transport.batches).toHaveLength(1);
    expect(transport.batches[0]?.lines).toHaveLength(4);
    spool.dispose();
  });

  it("cuts a long backlog into batches of at most 5,000 lines by default", () => {
    const transport = recorder();
    transport.online = false;
    const spool = new OutputSpool({ send: transport.send });
    for (let i = 0; i < 12_000; i++) spool.append("stdout", String(i), OCCURRED);
    transport.online = true;
    spool.resendFrom(0);
    expect(transport.batches.map((batch) => [batch.sequence, batch.lines.length])).toEqual([
      [0, 5_000],
      [5_000, 5_000],
      [10_000, 2_000],
    ]);
    spool.dispose();
  });

  it("keeps lines until they are acknowledged", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    for (const text of ["a", "b", "c", "d"]) spool.append("stdout", text, OCCURRED);
    await nextTick();
    expect(spool.firstUnacknowledged).toBe(0);
    spool.ack(3);
    expect(spool.firstUnacknowledged).toBe(3);
    expect(spool.nextSequence).toBe(4);
    spool.dispose();
  });

  it("ignores an acknowledgement beyond what it has or below what was acknowledged", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    spool.append("stdout", "a", OCCURRED);
    spool.append("stdout", "b", OCCURRED);
    await nextTick();
    spool.ack(10);
    expect(spool.firstUnacknowledged).toBe(2);
    spool.ack(1);
    expect(spool.firstUnacknowledged).toBe(2);
    spool.dispose();
  });

  it("reports whether every line has been handed to the transport", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    expect(spool.allSent).toBe(true);
    spool.append("stdout", "a", OCCURRED);
    expect(spool.allSent).toBe(false);
    await nextTick();
    expect(spool.allSent).toBe(true);
    spool.dispose();
  });

  it("keeps lines the transport refused and stops retrying until a resend", async () => {
    const transport = recorder();
    let attempts = 0;
    const counting = new OutputSpool({
      send: (batch) => {
        attempts++;
        return transport.send(batch);
      },
      maxBatchLines: 2,
    });
    transport.online = false;
    for (let i = 0; i < 10; i++) counting.append("stdout", `l${i}`, OCCURRED);
    await nextTick();
    // One refused attempt, then it waits for `resendFrom` instead of trying on every line.
    expect(attempts).toBe(1);
    expect(counting.allSent).toBe(false);
    transport.online = true;
    counting.resendFrom(0);
    expect(transport.sent()).toEqual(Array.from({ length: 10 }, (_, i) => `${i}:l${i}`));
    counting.dispose();
  });

  it("resends exactly the unacknowledged lines from the sequence the control plane names", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    for (const text of ["a", "b", "c", "d", "e"]) spool.append("stdout", text, OCCURRED);
    await nextTick();
    spool.ack(1);
    transport.batches.length = 0;
    // The control plane stored a, b and c, but the acknowledgement of the last two was lost.
    spool.resendFrom(3);
    expect(transport.sent()).toEqual(["3:d", "4:e"]);
    expect(spool.firstUnacknowledged).toBe(3);
    spool.dispose();
  });

  it("resends lines that were sent on a connection that went away", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    spool.append("stdout", "a", OCCURRED);
    spool.append("stdout", "b", OCCURRED);
    await nextTick();
    transport.online = false;
    spool.append("stdout", "c", OCCURRED);
    await nextTick();
    transport.online = true;
    transport.batches.length = 0;
    spool.resendFrom(0);
    expect(transport.sent()).toEqual(["0:a", "1:b", "2:c"]);
    spool.dispose();
  });

  it("sends nothing after it was disposed", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    spool.append("stdout", "a", OCCURRED);
    spool.dispose();
    await nextTick();
    expect(transport.batches).toHaveLength(0);
    expect(() => spool.append("stdout", "b", OCCURRED)).toThrow();
  });
});
