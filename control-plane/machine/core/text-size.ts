/**
 * How many bytes a text takes, without encoding it: as UTF-8 (what the output cap and stored-byte counts
 * measure) and as a JSON string literal (what a status page's size limit measures). JavaScript strings count
 * UTF-16 code units, which undercounts every character outside ASCII.
 */

const ASCII_ONLY = /^[\x00-\x7f]*$/;
/** Printable ASCII that JSON writes as it is (no `"`, no `\`, no control character). */
const JSON_PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/** True when the code unit at `i` starts a surrogate pair (a character outside the BMP). */
function pairAt(text: string, i: number): boolean {
  const c = text.charCodeAt(i);
  return c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
}

/** UTF-8 bytes of `text`; a lone surrogate counts as the U+FFFD an encoder writes for it. */
export function utf8Length(text: string): number {
  if (ASCII_ONLY.test(text)) return text.length;
  let bytes = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (pairAt(text, i)) {
      bytes += 4;
      i += 1;
    } else bytes += 3;
  }
  return bytes;
}

/** UTF-8 bytes of the code unit at `i` written in a JSON string, and how many code units it took. */
function jsonUnit(text: string, i: number): [bytes: number, units: number] {
  const c = text.charCodeAt(i);
  if (c === 0x22 || c === 0x5c) return [2, 1];
  if (c < 0x20) return [c === 0x08 || c === 0x09 || c === 0x0a || c === 0x0c || c === 0x0d ? 2 : 6, 1];
  if (c < 0x80) return [1, 1];
  if (c < 0x800) return [2, 1];
  if (pairAt(text, i)) return [4, 2];
  // JSON.stringify escapes a lone surrogate as \udxxx.
  if (c >= 0xd800 && c <= 0xdfff) return [6, 1];
  return [3, 1];
}

/** UTF-8 bytes of `JSON.stringify(text)`, quotes included. */
export function jsonStringLength(text: string): number {
  if (JSON_PLAIN.test(text)) return text.length + 2;
  let bytes = 2;
  for (let i = 0; i < text.length; ) {
    const [size, units] = jsonUnit(text, i);
    bytes += size;
    i += units;
  }
  return bytes;
}

/**
 * The longest prefix of `text`, in code units, whose JSON string (quotes included) takes at most `maxBytes`;
 * never splits a surrogate pair.
 */
export function jsonPrefixLength(text: string, maxBytes: number): number {
  if (JSON_PLAIN.test(text)) return Math.max(0, Math.min(text.length, maxBytes - 2));
  let bytes = 2;
  let i = 0;
  while (i < text.length) {
    const [size, units] = jsonUnit(text, i);
    if (bytes + size > maxBytes) break;
    bytes += size;
    i += units;
  }
  return i;
}
