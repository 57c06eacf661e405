import { describe, expect, it } from "vitest";
import { LINE_OVERHEAD_BYTES, OutputSpool, PAGE_BYTES, type OutputBatch } from "../../runner/output-spool.js";
import { blockLines, decodeByteBlock, type OutputLine } from "../../shared/protocol.js";

/** A recorded batch, its blocks expanded into lines. */
interface LineBatch {
  sequence: number;
  lines: OutputLine[];
}

/** A transport that records every batch and can be switched off. */
function recorder() {
  const batches: LineBatch[] = [];
  const transport = {
    batches,
    online: true,
    send: (batch: OutputBatch) => {
      if (!transport.online) return false;
      batches.push({ sequence: batch.sequence, lines: blockLines(batch.blocks.map(decodeByteBlock)) });
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

  it("sends at once when a batch reaches 960 KiB of output by default", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    const big = "x".repeat(64 * 1024);
    for (let i = 0; i < 14; i++) spool.append("stdout", big, OCCURRED);
    expect(transport.batches).toHaveLength(0);
    spool.append("stdout", big, OCCURRED);
    expect(transport.batches).toHaveLength(1);
    expect(transport.batches[0]?.lines).toHaveLength(15);
    spool.dispose();
  });

  it("never lets a batch grow past its byte limit with the block that would cross it", () => {
    const transport = recorder();
    transport.online = false;
    const spool = new OutputSpool({ send: transport.send, maxBatchChars: 1000, maxUnackedBytes: 64 * 1024 });
    for (const size of [600, 600, 300, 100]) spool.append("stdout", "x".repeat(size), OCCURRED);
    transport.online = true;
    spool.resendFrom(0);
    expect(transport.batches.map((batch) => batch.lines.map((line) => line.text.length))).toEqual([[600], [600, 300, 100]]);
    spool.dispose();
  });

  it("cuts a long backlog into batches of at most 50,000 lines by default", () => {
    const transport = recorder();
    transport.online = false;
    // Room for the whole backlog in flight: only the batch size limits it here.
    const spool = new OutputSpool({ send: transport.send, maxUnackedBytes: 64 * 1024 * 1024 });
    for (let i = 0; i < 120_000; i++) spool.append("stdout", String(i), OCCURRED);
    transport.online = true;
    spool.resendFrom(0);
    expect(transport.batches.map((batch) => [batch.sequence, batch.lines.length])).toEqual([
      [0, 50_000],
      [50_000, 50_000],
      [100_000, 20_000],
    ]);
    spool.dispose();
  });

  it("splits a block longer than a batch, so that every batch holds whole blocks", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send, maxBatchLines: 4 });
    const text = Array.from({ length: 10 }, (_, i) => `l${i}`).join("\n");
    expect(spool.appendBlock({ source: "stdout", occurred: OCCURRED, count: 10, bytes: Buffer.from(text) })).toBe(0);
    expect(transport.batches.map((batch) => [batch.sequence, batch.lines.length])).toEqual([
      [0, 4],
      [4, 4],
      [8, 2],
    ]);
    expect(transport.sent()).toEqual(Array.from({ length: 10 }, (_, i) => `${i}:l${i}`));
    expect(spool.nextSequence).toBe(10);
    spool.dispose();
  });

  it("numbers a block's lines and a single line that follows it in one sequence", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    expect(spool.appendBlock({ source: "stdout", occurred: OCCURRED, count: 3, bytes: Buffer.from("a\n\nc") })).toBe(0);
    expect(spool.append("stderr", "d", OCCURRED)).toBe(3);
    spool.flush();
    expect(transport.batches).toEqual([
      {
        sequence: 0,
        lines: [
          { source: "stdout", text: "a", occurred: OCCURRED },
          { source: "stdout", text: "", occurred: OCCURRED },
          { source: "stdout", text: "c", occurred: OCCURRED },
          { source: "stderr", text: "d", occurred: OCCURRED },
        ],
      },
    ]);
    spool.dispose();
  });

  it("keeps the rest of a block acknowledged up to a line inside it, and resends exactly that rest", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send });
    spool.appendBlock({ source: "stdout", occurred: OCCURRED, count: 5, bytes: Buffer.from("l0\nl1\nl2\nl3\nl4") });
    spool.appendBlock({ source: "stderr", occurred: OCCURRED, count: 2, bytes: Buffer.from("e5\ne6") });
    spool.flush();
    spool.ack(3);
    expect(spool.stats).toMatchObject({ heldLines: 4, firstUnacknowledged: 3, heldBytes: "l3\nl4".length + "e5\ne6".length + 2 * LINE_OVERHEAD_BYTES });
    transport.batches.length = 0;
    spool.resendFrom(4);
    expect(transport.sent()).toEqual(["4:l4", "5:e5", "6:e6"]);
    spool.ack(7);
    expect(spool.stats).toMatchObject({ heldLines: 0, heldBytes: 0, inFlightBytes: 0 });
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

  it("counts each line as its text plus a fixed overhead, so that a flood of empty lines counts too", () => {
    const transport = recorder();
    transport.online = false;
    const spool = new OutputSpool({ send: transport.send });
    spool.append("stdout", "abc", OCCURRED);
    spool.append("stdout", "", OCCURRED);
    expect(spool.stats).toMatchObject({ heldBytes: 3 + 2 * LINE_OVERHEAD_BYTES, heldLines: 2, inFlightBytes: 0 });
    spool.dispose();
  });

  it("asks to stop reading once held output passes maxUnackedBytes, and to go on at half of it after acknowledgements", async () => {
    const transport = recorder();
    const pressure: boolean[] = [];
    const line = "x".repeat(100 - LINE_OVERHEAD_BYTES); // 100 bytes each
    const spool = new OutputSpool({ send: transport.send, maxUnackedBytes: 1_000, pressure: (paused) => pressure.push(paused) });
    for (let i = 0; i < 10; i++) spool.append("stdout", line, OCCURRED);
    expect(pressure).toEqual([]);
    spool.append("stdout", line, OCCURRED);
    expect(pressure).toEqual([true]);
    expect(spool.isPaused).toBe(true);
    // More lines may still come (the rest of a pipe read): no second call.
    spool.append("stdout", line, OCCURRED);
    await nextTick();
    spool.ack(5); // 700 bytes held: still above half
    expect(pressure).toEqual([true]);
    spool.ack(7); // 500 bytes held: half
    expect(pressure).toEqual([true, false]);
    expect(spool.stats).toMatchObject({ heldBytes: 500, peakHeldBytes: 1_200, paused: false });
    spool.dispose();
  });

  it("holds output while disconnected until the mark, then asks to stop reading; a resend brings it back down", () => {
    const transport = recorder();
    transport.online = false;
    const pressure: boolean[] = [];
    const spool = new OutputSpool({ send: transport.send, maxUnackedBytes: 2_000, pressure: (paused) => pressure.push(paused) });
    for (let i = 0; i < 40; i++) spool.append("stdout", `line ${i}`, OCCURRED);
    expect(pressure).toEqual([true]);
    transport.online = true;
    // The control plane had stored 30 of them on the earlier connection.
    spool.resendFrom(30);
    expect(pressure).toEqual([true, false]);
    expect(transport.sent()[0]).toBe("30:line 30");
    spool.dispose();
  });

  it("sends at most maxInFlightBytes ahead of the acknowledgements, and more as acknowledgements come back", async () => {
    const transport = recorder();
    const line = "y".repeat(100 - LINE_OVERHEAD_BYTES);
    const spool = new OutputSpool({ send: transport.send, maxBatchLines: 2, maxUnackedBytes: 10_000, maxInFlightBytes: 400 });
    for (let i = 0; i < 20; i++) spool.append("stdout", line, OCCURRED);
    await nextTick();
    // Batches of 2 lines (200 bytes): two batches fill the window.
    expect(transport.batches.map((batch) => batch.sequence)).toEqual([0, 2]);
    expect(spool.stats.inFlightBytes).toBe(400);
    expect(spool.allSent).toBe(false);
    spool.ack(2);
    expect(transport.batches.map((batch) => batch.sequence)).toEqual([0, 2, 4]);
    spool.ack(6);
    expect(transport.batches.map((batch) => batch.sequence)).toEqual([0, 2, 4, 6, 8]);
    for (let next = 10; next <= 20; next += 2) spool.ack(next);
    expect(spool.allSent).toBe(true);
    expect(transport.sent()).toHaveLength(20);
    spool.dispose();
  });

  it("resends a backlog after a reconnect window by window, as acknowledgements come back", () => {
    const transport = recorder();
    transport.online = false;
    const spool = new OutputSpool({ send: transport.send, maxBatchLines: 10, maxUnackedBytes: 1_000_000, maxInFlightBytes: 1_000 });
    for (let i = 0; i < 100; i++) spool.append("stdout", `${i}`.padStart(36, "0"), OCCURRED); // 100 bytes each
    transport.online = true;
    spool.resendFrom(0);
    expect(transport.batches.map((batch) => batch.sequence)).toEqual([0]);
    spool.ack(10);
    expect(transport.batches.map((batch) => batch.sequence)).toEqual([0, 10]);
    for (let next = 20; next <= 100; next += 10) spool.ack(next);
    expect(transport.sent()).toEqual(Array.from({ length: 100 }, (_, i) => `${i}:${`${i}`.padStart(36, "0")}`));
    expect(spool.stats).toMatchObject({ heldBytes: 0, heldLines: 0, inFlightBytes: 0 });
    spool.dispose();
  });

  it("sends nothing on an acknowledgement while the transport refuses, until flushed again", async () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send, maxBatchLines: 1 });
    spool.append("stdout", "a", OCCURRED);
    transport.online = false;
    spool.append("stdout", "b", OCCURRED);
    spool.append("stdout", "c", OCCURRED);
    transport.online = true;
    spool.ack(1);
    expect(transport.sent()).toEqual(["0:a"]);
    spool.flush();
    expect(transport.sent()).toEqual(["0:a", "1:b", "2:c"]);
    spool.dispose();
  });

  it("ends a pause it asked for when disposed", () => {
    const pressure: boolean[] = [];
    const spool = new OutputSpool({ send: () => false, maxUnackedBytes: 100, pressure: (paused) => pressure.push(paused) });
    spool.append("stdout", "z".repeat(200), OCCURRED);
    spool.dispose();
    expect(pressure).toEqual([true, false]);
  });

  it("keeps its numbering across many acknowledgements of a long stream", () => {
    const transport = recorder();
    const spool = new OutputSpool({ send: transport.send, maxBatchLines: 100 });
    for (let i = 0; i < 50_000; i++) {
      spool.append("stdout", String(i), OCCURRED);
      if (i % 1_000 === 999) spool.ack(i - 500);
    }
    spool.flush();
    spool.ack(49_990);
    expect(spool.firstUnacknowledged).toBe(49_990);
    transport.batches.length = 0;
    spool.resendFrom(49_995);
    expect(transport.sent()).toEqual(["49995:49995", "49996:49996", "49997:49997", "49998:49998", "49999:49999"]);
    spool.dispose();
  });

  describe("pages", () => {
    /** A transport that keeps the raw blocks of every batch (what a `send` sees, before anything copies them). */
    function rawRecorder() {
      const blocks: Uint8Array[] = [];
      return { blocks, send: (batch: OutputBatch) => (blocks.push(...batch.blocks.map((block) => block.bytes)), true) };
    }

    /** A block of whole lines whose bytes are a view of `buffer`, as a block read from a pipe is. */
    function blockIn(buffer: Buffer, lines: string[]) {
      const length = buffer.write(lines.join("\n"));
      return { source: "stdout" as const, occurred: OCCURRED, count: lines.length, bytes: buffer.subarray(0, length) };
    }

    it("copies a block's bytes, so that the buffer it was read into can be read into again", () => {
      const transport = recorder();
      const spool = new OutputSpool({ send: transport.send });
      const readBuffer = Buffer.alloc(64);
      spool.appendBlock(blockIn(readBuffer, ["first", "second"]));
      readBuffer.fill("x");
      spool.resendFrom(0);
      expect(transport.sent()).toEqual(["0:first", "1:second"]);
      spool.dispose();
    });

    it("gives a page back for reuse once every block in it was acknowledged, and not before", () => {
      const first = rawRecorder();
      const second = rawRecorder();
      const third = rawRecorder();
      const held = new OutputSpool({ send: first.send });
      const other = new OutputSpool({ send: second.send });
      const later = new OutputSpool({ send: third.send });
      held.append("stdout", "held", OCCURRED);
      held.flush();
      // Another spool never writes into a page a block of this one is held in.
      other.append("stdout", "other", OCCURRED);
      other.flush();
      expect(second.blocks[0]!.buffer).not.toBe(first.blocks[0]!.buffer);
      held.ack(1);
      later.append("stdout", "later", OCCURRED);
      later.flush();
      expect(third.blocks[0]!.buffer).toBe(first.blocks[0]!.buffer);
      for (const spool of [held, other, later]) spool.dispose();
    });

    it("keeps a page while the rest of a block acknowledged up to a line inside it is held there", () => {
      const transport = recorder();
      const spool = new OutputSpool({ send: transport.send });
      const fill = (byte: string) => ({ source: "stdout" as const, occurred: OCCURRED, count: 1, bytes: Buffer.alloc(64 * 1024, byte) });
      // Three big blocks, then two lines, then a block that does not fit: the two lines are the last in their page.
      for (let i = 0; i < 3; i++) spool.appendBlock(fill("a"));
      spool.appendBlock(blockIn(Buffer.alloc(64), ["first", "second"]));
      spool.appendBlock(fill("b"));
      spool.flush();
      spool.ack(4);
      // Another spool that fills a page of its own must not get that one.
      const other = new OutputSpool({ send: () => true });
      for (let i = 0; i < 4; i++) other.appendBlock(fill("y"));
      transport.batches.length = 0;
      spool.resendFrom(4);
      expect(transport.sent()[0]).toBe("4:second");
      other.dispose();
      spool.dispose();
    });

    it("holds a block larger than a page's share as it came", () => {
      const transport = rawRecorder();
      const spool = new OutputSpool({ send: transport.send });
      const long = Buffer.alloc(PAGE_BYTES, "a");
      spool.appendBlock({ source: "stdout", occurred: OCCURRED, count: 1, bytes: long });
      spool.flush();
      expect(transport.blocks[0]!.buffer).toBe(long.buffer);
      spool.dispose();
    });

    it("keeps every held line intact while pages are written again, through random appends, acknowledgements, resends and disposals", () => {
      // A fixed seed: the same steps on every run.
      let seed = 14;
      const random = (below: number) => {
        seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
        return seed % below;
      };
      // Lines of 14 to 160 bytes: megabytes in all, so that pages fill and are written again many times.
      const lineText = (id: number, sequence: number) => `s${id}-line-${sequence}-${"x".repeat(sequence % 150)}`;
      // One read buffer for every block of every spool, written again before each block, as a stream's reads are.
      const readBuffer = Buffer.alloc(64 * 1024);
      const make = (id: number) => {
        const transport = recorder();
        return { id, transport, spool: new OutputSpool({ send: transport.send, maxBatchLines: 500 }), acked: 0 };
      };
      let spools = [make(0), make(1), make(2)];
      const all = [...spools];
      for (let step = 0; step < 1_500; step++) {
        const entry = spools[random(spools.length)]!;
        const action = random(10);
        if (action < 6) {
          const first = entry.spool.nextSequence;
          const lines = Array.from({ length: 1 + random(200) }, (_, index) => lineText(entry.id, first + index));
          entry.spool.appendBlock(blockIn(readBuffer, lines));
          if (random(2) === 0) entry.spool.flush();
        } else if (action < 8) {
          entry.acked += random(entry.spool.nextSequence - entry.acked + 1);
          entry.spool.ack(entry.acked);
        } else if (action < 9) {
          entry.spool.resendFrom(entry.acked);
        } else {
          entry.spool.dispose();
          spools = spools.filter((other) => other !== entry);
          spools.push(make(all.length));
          all.push(spools.at(-1)!);
        }
      }
      for (const { spool } of spools) spool.resendFrom(0);
      for (const { id, transport, spool } of all) {
        for (const batch of transport.batches) {
          batch.lines.forEach((line, index) => expect(line.text).toBe(lineText(id, batch.sequence + index)));
        }
        spool.dispose();
      }
    });
  });
});
