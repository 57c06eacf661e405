/**
 * Human durations for command-line flags: `500ms`, `30s`, `2m`, `1h`, combinations such as `1m30s`,
 * and a plain number meaning milliseconds (the API's unit).
 */

const UNIT_MS = new Map<string, number>([
  ["ms", 1],
  ["s", 1_000],
  ["m", 60_000],
  ["h", 3_600_000],
]);

// `ms` comes before `m` in the alternation so that `500ms` reads as milliseconds, not minutes and a stray `s`.
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;

/** Parses a duration into whole milliseconds; throws an Error that says what is accepted. */
export function parseDuration(input: string): number {
  const text = input.trim();
  if (/^\d+$/.test(text)) return checked(Number(text), input);

  let total = 0;
  let position = 0;
  while (position < text.length) {
    PART.lastIndex = position;
    const match = PART.exec(text);
    const unitMs = match?.[2] === undefined ? undefined : UNIT_MS.get(match[2]);
    if (!match || unitMs === undefined) throw invalid(input);
    total += Number(match[1]) * unitMs;
    position = PART.lastIndex;
  }
  if (position === 0) throw invalid(input);
  return checked(total, input);
}

/** Formats milliseconds for messages: `500ms`, `30s`, `2m`, `1h30m`. */
export function formatDuration(ms: number): string {
  if (ms < 1_000 || ms % 1_000 !== 0) return `${ms}ms`;
  let rest = ms / 1_000;
  const hours = Math.floor(rest / 3_600);
  rest -= hours * 3_600;
  const minutes = Math.floor(rest / 60);
  const seconds = rest - minutes * 60;
  return `${hours ? `${hours}h` : ""}${minutes ? `${minutes}m` : ""}${seconds ? `${seconds}s` : ""}`;
}

/** The API wants whole milliseconds; `0.5ms` or an overflowing value is a typo, not a request. */
function checked(ms: number, input: string): number {
  // Decimal units such as 1.5s are fine; floating-point noise (1.1 * 1000) is rounded away.
  const rounded = Math.round(ms);
  if (Math.abs(rounded - ms) > 1e-6 || !Number.isSafeInteger(rounded)) throw invalid(input);
  return rounded;
}

function invalid(input: string): Error {
  return new Error(
    `invalid duration ${JSON.stringify(input)}: use a number with a unit, e.g. 500ms, 30s, 2m, 1h or 1m30s (a plain number is milliseconds)`,
  );
}
