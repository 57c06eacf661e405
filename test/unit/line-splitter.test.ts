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
