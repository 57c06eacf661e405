/**
 * Human durations for command-line flags: a number with a unit of `ms`, `s`, `m`, `h` or `d` (`500ms`, `30s`,
 * `2m`, `1h`, `2d`), combinations such as `1h30m`, and a plain number meaning milliseconds (the API's unit).
 */
import parse from "parse-duration";

// The accepted grammar is checked here, strictly; parse-duration only does the arithmetic. On its own it
// accepts far more ("1 hour", "1e3", "-1h", "2 weeks"), none of which the documentation promises.
const GRAMMAR = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/;
const PLAIN_MILLISECONDS = /^\d+$/;

/** Parses a duration into whole milliseconds; throws an Error that says what is accepted. */
export function parseDuration(input: string): number {
  const text = input.trim();
  if (PLAIN_MILLISECONDS.test(text)) return checked(Number(text), input);
  if (!GRAMMAR.test(text)) throw invalid(input);
  const ms = parse(text);
  if (ms === null) throw invalid(input);
  return checked(ms, input);
}

/** Formats milliseconds for messages: `500ms`, `30s`, `2m`, `1h30m`, `2d`. */
export function formatDuration(ms: number): string {
  if (ms < 1_000 || ms % 1_000 !== 0) return `${ms}ms`;
  let rest = ms / 1_000;
  const days = Math.floor(rest / 86_400);
  rest -= days * 86_400;
  const hours = Math.floor(rest / 3_600);
  rest -= hours * 3_600;
  const minutes = Math.floor(rest / 60);
  const seconds = rest - minutes * 60;
  return `${days ? `${days}d` : ""}${hours ? `${hours}h` : ""}${minutes ? `${minutes}m` : ""}${seconds ? `${seconds}s` : ""}`;
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
    `invalid duration ${JSON.stringify(input)}: use a number with a unit (ms, s, m, h or d), e.g. 500ms, 30s, 2m, 1h, 2d ` +
      "or 1h30m (a plain number is milliseconds)",
  );
}
