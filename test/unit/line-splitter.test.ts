import { describe, expect, it } from "vitest";
import { LineSplitter, MAX_LINE_BYTES } from "../../runner/line-splitter.js";

/** Feeds every chunk, then ends the stream; returns all lines. */
function split(chunks: Array<Buffer | string>, splitter = new LineSplitter()): string[] {
  const lines: string[] = [];
  for (const chunk of chunks) lines.push(...splitter.push(chunk));
  lines.push(...splitter.end());
  return lines;
}

describe("LineSplitter", () => {
  it("splits a chunk into its lines", () => {
    expect(split(["a\nbb\nccc\n"])).toEqual(["a", "bb", "ccc"]);
  });

  it("returns lines as soon as their newline arrives", () => {
    const splitter = new LineSplitter();
    expect(splitter.push("hel")).toEqual([]);
    expect(splitter.push("lo\nwor")).toEqual(["hello"]);
    expect(splitter.push("ld\n")).toEqual(["world"]);
    expect(splitter.end()).toEqual([]);
  });

  it("flushes an unterminated final line at the end of the stream", () => {
    expect(split(["one\ntwo"])).toEqual(["one", "two"]);
  });

  it("produces nothing for an empty stream", () => {
    expect(split([])).toEqual([]);
    expect(split([Buffer.alloc(0)])).toEqual([]);
  });

  it("keeps empty lines", () => {
    expect(split(["\n\na\n\n"])).toEqual(["", "", "a", ""]);
  });

  it("strips one carriage return before a newline and keeps the others", () => {
    expect(split(["crlf\r\n", "two\r\r\n", "progress 1\rprogress 2\n"])).toEqual(["crlf", "two\r", "progress 1\rprogress 2"]);
  });

  it("strips a carriage return split from its newline across chunks", () => {
    expect(split(["line\r", "\nnext\n"])).toEqual(["line", "next"]);
  });

  it("never breaks a multibyte character split across chunks", () => {
    const bytes = Buffer.from("héllo 世界 🎉\n", "utf8");
    // Split at every byte: each character arrives in pieces.
    const chunks = [...bytes].map((byte) => Buffer.from([byte]));
    expect(split(chunks)).toEqual(["héllo 世界 🎉"]);
  });

  it("replaces invalid UTF-8 with the replacement character", () => {
    expect(split([Buffer.from([0x61, 0xff, 0x62, 0x0a])])).toEqual(["a\uFFFDb"]);
  });

  it("keeps a line of exactly the maximum length whole", () => {
    const line = "x".repeat(MAX_LINE_BYTES);
    const lines = split([`${line}\r\n`, "after\n"]);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toBe(line);
    expect(lines[1]).toBe("after");
  });

  it("cuts a line longer than 1 MiB into 1 MiB pieces", () => {
    const total = MAX_LINE_BYTES * 2 + 10;
    const lines = split([Buffer.alloc(total, "y"), "\nnext\n"]);
    expect(lines.map((line) => line.length)).toEqual([MAX_LINE_BYTES, MAX_LINE_BYTES, 10, 4]);
    expect(lines.slice(0, 3).join("")).toBe("y".repeat(total));
  });

  it("cuts long lines arriving in small chunks the same way", () => {
    const splitter = new LineSplitter(8);
    const lines: string[] = [];
    for (const char of "abcdefghijklmnopqrst\nuv\n") lines.push(...splitter.push(char));
    lines.push(...splitter.end());
    expect(lines).toEqual(["abcdefgh", "ijklmnop", "qrst", "uv"]);
  });

  it("never cuts a multibyte character in half when cutting a long line", () => {
    // 'é' is two bytes: a 9-byte limit falls in the middle of the fifth one.
    const lines = split(["éééééééééé\n"], new LineSplitter(9));
    expect(lines.join("")).toBe("éééééééééé");
    for (const line of lines) {
      expect(line).not.toContain("\uFFFD");
      expect(Buffer.byteLength(line)).toBeLessThanOrEqual(9);
    }
  });

  it("holds at most maxLineBytes + 1 bytes of an endless line, however it arrives", () => {
    const splitter = new LineSplitter(1_000);
    let emitted = 0;
    let largest = 0;
    for (let i = 0; i < 500; i++) {
      for (const line of splitter.push(Buffer.alloc(333 + (i % 7), "z"))) emitted += line.length;
      largest = Math.max(largest, splitter.bufferedBytes);
    }
    emitted += splitter.end().join("").length;
    expect(largest).toBeLessThanOrEqual(1_001);
    expect(splitter.bufferedBytes).toBe(0);
    let total = 0;
    for (let i = 0; i < 500; i++) total += 333 + (i % 7);
    expect(emitted).toBe(total);
  });
});

describe("LineSplitter.pushBlocks", () => {
  /** A tiny deterministic generator, so that a failure can be replayed from its seed. */
  function random(seed: number): () => number {
    let state = seed >>> 0 || 1;
    return () => {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) / 2 ** 32;
    };
  }

  /** Bytes that exercise every rule: newlines, carriage returns, multi-byte characters, invalid bytes. */
  const PIECES = [[0x0a], [0x0d], [0x0d, 0x0a], [0x61], [0x62, 0x63], [0xc3, 0xa9], [0xe2, 0x82, 0xac], [0xf0, 0x9f, 0x98, 0x80], [0xff], [0xe2, 0x82]];

  function chunksFor(next: () => number, count: number): Buffer[] {
    const bytes: number[] = [];
    for (let i = 0; i < count; i += 1) bytes.push(...PIECES[Math.floor(next() * PIECES.length)]!);
    const chunks: Buffer[] = [];
    for (let at = 0; at < bytes.length; ) {
      const size = 1 + Math.floor(next() * 40);
      chunks.push(Buffer.from(bytes.slice(at, at + size)));
      at += size;
    }
    return chunks;
  }

  it("returns the held line, the chunk's whole lines as a view of it, and nothing of an unfinished line", () => {
    const splitter = new LineSplitter();
    const blocks = (chunk: Buffer) => splitter.pushBlocks(chunk).map(({ bytes, count }) => [bytes.toString("utf8"), count]);
    expect(blocks(Buffer.from("par"))).toEqual([]);
    const chunk = Buffer.from("tial\nb\n\nc\r\nd");
    expect(blocks(chunk)).toEqual([
      ["partial", 1],
      ["b\n\nc", 3],
    ]);
    expect(blocks(Buffer.from("\n"))).toEqual([["d", 1]]);
    expect(splitter.end()).toEqual([]);
  });

  it("passes whole lines on without copying them", () => {
    const splitter = new LineSplitter();
    const chunk = Buffer.from("a\nb\nc\n");
    const [, middle] = splitter.pushBlocks(chunk);
    expect(middle?.bytes.buffer).toBe(chunk.buffer);
  });

  it("gives exactly the lines `push` gives, for any bytes cut into any chunks", () => {
    for (let seed = 1; seed <= 300; seed += 1) {
      const next = random(seed);
      const chunks = chunksFor(next, 20 + Math.floor(next() * 200));
      const maxLineBytes = seed % 3 === 0 ? MAX_LINE_BYTES : 4 + (seed % 13);
      const byLine = new LineSplitter(maxLineBytes);
      const byBlock = new LineSplitter(maxLineBytes);
      const expected: string[] = [];
      const actual: string[] = [];
      for (const chunk of chunks) {
        expected.push(...byLine.push(chunk));
        for (const block of byBlock.pushBlocks(chunk)) {
          // Decoded the way the control plane decodes a block.
          const lines = new TextDecoder().decode(block.bytes).split("\n");
          expect(lines).toHaveLength(block.count);
          actual.push(...lines);
        }
      }
      expected.push(...byLine.end());
      actual.push(...byBlock.end());
      expect(actual, `seed ${seed}`).toEqual(expected);
    }
  });
});
