/**
 * The output log a runner writes ahead (output-log.ts) and the output it rebuilds (script-output.ts): replaying the
 * logged events through fresh line splitters and a fresh spool gives the very same lines with the very same numbers
 * and times; segments start with a checkpoint, and one is deleted once the next one's checkpoint is acknowledged; a
 * record cut short at the end is dropped. Files in a temporary folder; no processes.
 */
import { appendFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { StringDecoder } from "node:string_decoder";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { LineSplitter } from "../../runner/line-splitter.js";
import { OutputLog, type Checkpoint } from "../../runner/output-log.js";
import type { OutputBatch } from "../../runner/output-spool.js";
import { ScriptOutput } from "../../runner/script-output.js";
import { removeDir, tempDir } from "../helpers/processes.js";

let dir: string;

beforeEach(async () => {
  dir = await tempDir("output-log");
});

afterEach(() => removeDir(dir));

/** A seeded random source (mulberry32), so that a failure can be replayed. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Bytes that exercise a splitter: text, newlines, CRs, multibyte characters cut anywhere, invalid UTF-8, long runs. */
function awkwardBytes(next: () => number, length: number): Buffer {
  const pieces = [Buffer.from("a"), Buffer.from("\n"), Buffer.from("\r"), Buffer.from("é"), Buffer.from("😀"), Buffer.from([0xff]), Buffer.from([0x80]), Buffer.from([0xe2, 0x82]), Buffer.from("x".repeat(9))];
  const out: Buffer[] = [];
  let size = 0;
  while (size < length) {
    const piece = pieces[Math.floor(next() * pieces.length)]!;
    out.push(piece);
    size += piece.length;
  }
  return Buffer.concat(out);
}

/** `bytes` cut into chunks of random sizes (cutting through characters). */
function chunksOf(next: () => number, bytes: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  for (let at = 0; at < bytes.length; ) {
    const size = 1 + Math.floor(next() * 20);
    chunks.push(bytes.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

/** An output whose spool hands every batch to `lines` as `sequence:source:occurred:text`. */
function recordedOutput(make: (spool: { send: (batch: OutputBatch) => boolean }) => ScriptOutput): { output: ScriptOutput; lines: string[] } {
  const lines: string[] = [];
  const send = (batch: OutputBatch) => {
    let sequence = batch.sequence;
    for (const block of batch.blocks) {
      for (const text of Buffer.from(block.bytes).toString("utf8").split("\n")) lines.push(`${sequence++}:${block.source}:${block.occurred}:${text}`);
    }
    return true;
  };
  return { output: make({ send }), lines };
}

function freshCheckpoint(sequence = 0): Checkpoint {
  return {
    sequence,
    splitters: { stdout: new LineSplitter().snapshot(), stderr: new LineSplitter().snapshot() },
    ended: { stdout: false, stderr: false },
    positions: { stdout: 0, stderr: 0 },
  };
}

describe("a line splitter's snapshot", () => {
  it("restores a splitter that gives exactly the lines the original gives, wherever it was taken, whatever the bytes", () => {
    for (let seed = 1; seed <= 40; seed++) {
      const next = random(seed);
      const chunks = chunksOf(next, awkwardBytes(next, 400));
      const original = new LineSplitter(8);
      for (const [index, chunk] of chunks.entries()) {
        original.push(chunk);
        if (index % 3 !== 0) continue;
        const copy = LineSplitter.restore(original.snapshot(), 8);
        const rest = chunks.slice(index + 1);
        const probe = LineSplitter.restore(original.snapshot(), 8);
        expect(rest.flatMap((each) => copy.push(each)).concat(copy.end()), `seed ${seed}, after chunk ${index}`).toEqual(
          rest.flatMap((each) => probe.push(each)).concat(probe.end()),
        );
      }
    }
  });

  it("decodes a cut over-long line as a StringDecoder carried across the pieces would", () => {
    for (let seed = 1; seed <= 40; seed++) {
      const next = random(seed);
      const bytes = awkwardBytes(next, 300);
      const splitter = new LineSplitter(8);
      const lines = [...chunksOf(next, bytes).flatMap((chunk) => splitter.push(chunk)), ...splitter.end()];
      // The same text: what one decoder makes of the whole stream, less the line breaks and the dropped CRs.
      const decoder = new StringDecoder("utf8");
      const whole = (decoder.write(bytes) + decoder.end()).replace(/\r?\n/g, "\n").replace(/\r$/, "");
      expect(lines.join("").replaceAll("\n", ""), `seed ${seed}`).toBe(whole.replaceAll("\n", ""));
    }
  });
});

describe("the output log", () => {
  it("replays into the same numbered lines, sources and times as the output that wrote it", () => {
    const next = random(7);
    const original = recordedOutput((spool) => new ScriptOutput(spool));
    original.output.attachLog((checkpoint) => OutputLog.create(dir, "output", checkpoint));
    let at = Date.parse("2026-01-01T00:00:00.000Z");
    original.output.debug("before the process", at++);
    for (const chunk of chunksOf(next, awkwardBytes(next, 3_000))) original.output.chunk(next() < 0.5 ? "stdout" : "stderr", chunk, at++);
    original.output.debug("a debug line", at++);
    original.output.end("stdout", at++);
    original.output.end("stderr", at++);
    original.output.finished({ kind: "exited", code: 3 }, at++);
    original.output.spool.flush();
    original.output.close();

    const logged = OutputLog.read(dir, "output");
    if (typeof logged === "string") throw new Error(logged);
    const replayed = recordedOutput((spool) => ScriptOutput.replay(logged, undefined, spool));
    replayed.output.spool.flush();
    expect(replayed.lines).toEqual(original.lines);
    expect(replayed.output.outcome).toEqual({ kind: "exited", code: 3 });
    expect(replayed.output.ended).toEqual({ stdout: true, stderr: true });
    expect(replayed.output.spool.nextSequence).toBe(original.output.spool.nextSequence);
  });

  it("starts a new segment with a checkpoint once one is full, and replays from the oldest segment left to the same lines", () => {
    const next = random(11);
    const original = recordedOutput((spool) => new ScriptOutput(spool));
    original.output.attachLog((checkpoint) => OutputLog.create(dir, "output", checkpoint, { segmentBytes: 1_000 }));
    for (const chunk of chunksOf(next, awkwardBytes(next, 20_000))) original.output.chunk("stdout", chunk, 1);
    original.output.spool.flush();
    const segments = () => readdirSync(dir).filter((name) => name.endsWith(".log")).sort();
    const before = segments();
    expect(before.length).toBeGreaterThan(10);
    expect(before[0]).toBe("output.000001.log");

    // Acknowledged up to the middle: the segments whose successor's checkpoint is acknowledged go.
    const middle = Math.floor(original.output.spool.nextSequence / 2);
    original.output.ack(middle);
    const after = segments();
    expect(after.length).toBeLessThan(before.length);
    expect(after.at(-1)).toBe(before.at(-1));
    original.output.close();

    const logged = OutputLog.read(dir, "output");
    if (typeof logged === "string") throw new Error(logged);
    expect(logged.checkpoint.sequence).toBeLessThanOrEqual(middle);
    const replayed = recordedOutput((spool) => ScriptOutput.replay(logged, undefined, spool));
    replayed.output.spool.flush();
    // Every line from the oldest checkpoint on, numbered as before.
    const from = original.lines.findIndex((line) => line.startsWith(`${logged.checkpoint.sequence}:`));
    expect(from).toBeGreaterThan(0);
    expect(replayed.lines).toEqual(original.lines.slice(from));
  });

  it("keeps a segment until the next one's checkpoint is acknowledged, and always the newest", () => {
    const output = new ScriptOutput({ send: () => true });
    // A checkpoint record takes about 170 bytes, a chunk's 134: one chunk per segment.
    output.attachLog((checkpoint) => OutputLog.create(dir, "output", checkpoint, { segmentBytes: 250 }));
    const count = () => readdirSync(dir).filter((name) => name.endsWith(".log")).length;
    for (let i = 0; i < 3; i++) output.chunk("stdout", Buffer.from(`${"x".repeat(120)}\n`), 1);
    expect(count()).toBe(3);
    output.ack(1);
    // Segment 2 starts at line 1: segment 1 goes; segment 3 starts at line 2, not acknowledged yet.
    expect(count()).toBe(2);
    output.ack(3);
    expect(count()).toBe(1);
    output.close();
  });

  it("drops a record cut short at the end of the newest segment, and appends after it", () => {
    const first = new ScriptOutput({ send: () => true });
    first.attachLog((checkpoint) => OutputLog.create(dir, "output", checkpoint));
    first.chunk("stdout", Buffer.from("one\ntwo\n"), 1);
    first.close();
    // What a write that ran out of disk space leaves: half a header.
    appendFileSync(join(dir, "output.000001.log"), Buffer.from([1, 0, 0, 0]));
    const logged = OutputLog.read(dir, "output");
    if (typeof logged === "string") throw new Error(logged);
    expect(logged.events).toHaveLength(1);
    const log = OutputLog.resume(dir, "output");
    const second = ScriptOutput.replay(logged, log, { send: () => true });
    second.chunk("stdout", Buffer.from("three\n"), 2);
    second.close();
    const again = OutputLog.read(dir, "output");
    if (typeof again === "string") throw new Error(again);
    expect(again.events.map((event) => (event.type === "chunk" ? event.bytes.toString() : event.type))).toEqual(["one\ntwo\n", "three\n"]);
  });

  it("says why it cannot be used: no log, a missing segment, a segment without its checkpoint", () => {
    expect(OutputLog.read(dir, "output")).toMatch(/^no output log in /);
    const log = OutputLog.create(dir, "output", freshCheckpoint(), { segmentBytes: 10 });
    for (let i = 0; i < 3; i++) log.append({ type: "debug", at: 1, text: "a line long enough" }, () => freshCheckpoint(i + 1));
    log.close();
    rmSync(join(dir, "output.000002.log"));
    expect(OutputLog.read(dir, "output")).toBe("segment 2 of the output log is missing");
    writeFileSync(join(dir, "output.000002.log"), "not a record");
    expect(OutputLog.read(dir, "output")).toMatch(/output\.000002\.log does not start with a checkpoint$/);
  });
});
