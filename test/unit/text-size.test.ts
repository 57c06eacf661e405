/** Byte sizes without encoding: UTF-8 length and JSON string length, checked against Node's own encoders. */
import { describe, expect, it } from "vitest";
import { jsonPrefixLength, jsonStringLength, utf8Length } from "../../control-plane/machine/core/text-size.js";
import { prng } from "./core-fixtures.js";

/** Random strings mixing ASCII, escapes, 2-, 3- and 4-byte characters and lone surrogates. */
function samples(): string[] {
  const random = prng(7);
  const pieces = ["a", "Z", " ", '"', "\\", "\n", "\t", "\u0001", "\u001f", "é", "€", "😀", "\ud800", "\udfff", "\u2028", "~", "\u007f"];
  const out = ["", "plain ascii", "\ud83d", "x\ude00y"];
  for (let i = 0; i < 300; i += 1) {
    let text = "";
    const length = Math.floor(random() * 40);
    for (let k = 0; k < length; k += 1) text += pieces[Math.floor(random() * pieces.length)];
    out.push(text);
  }
  return out;
}

describe("utf8Length", () => {
  it("equals the length of the UTF-8 encoding, lone surrogates counted as the U+FFFD they become", () => {
    for (const text of samples()) expect(utf8Length(text), JSON.stringify(text)).toBe(Buffer.byteLength(text, "utf8"));
  });
});

describe("jsonStringLength", () => {
  it("equals the UTF-8 length of JSON.stringify", () => {
    for (const text of samples()) expect(jsonStringLength(text), JSON.stringify(text)).toBe(Buffer.byteLength(JSON.stringify(text), "utf8"));
  });
});

describe("jsonPrefixLength", () => {
  it("finds the longest prefix whose JSON fits, never splitting a surrogate pair", () => {
    for (const text of samples()) {
      for (const budget of [2, 3, 7, 20]) {
        const at = jsonPrefixLength(text, budget);
        expect(jsonStringLength(text.slice(0, at))).toBeLessThanOrEqual(Math.max(budget, 2));
        if (at < text.length) expect(jsonStringLength(text.slice(0, at + (/[\ud800-\udbff]/.test(text[at]!) ? 2 : 1)))).toBeGreaterThan(budget);
      }
    }
  });
});
