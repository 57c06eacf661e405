import { describe, expect, it } from "vitest";
import { formatDuration, parseDuration } from "../../client/durations.js";

describe("parseDuration", () => {
  it("reads milliseconds, seconds, minutes, hours and days", () => {
    expect(parseDuration("500ms")).toBe(500);
    expect(parseDuration("30s")).toBe(30_000);
    expect(parseDuration("2m")).toBe(120_000);
    expect(parseDuration("1h")).toBe(3_600_000);
    expect(parseDuration("2d")).toBe(172_800_000);
  });

  it("reads a plain number as milliseconds, the API's unit", () => {
    expect(parseDuration("1500")).toBe(1_500);
    expect(parseDuration("0")).toBe(0);
  });

  it("adds up combined units and accepts decimals that make whole milliseconds", () => {
    expect(parseDuration("1m30s")).toBe(90_000);
    expect(parseDuration("1h2m3s4ms")).toBe(3_723_004);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("1d12h")).toBe(129_600_000);
    expect(parseDuration("1.5s")).toBe(1_500);
    expect(parseDuration("1.1s")).toBe(1_100);
  });

  it("ignores surrounding whitespace", () => {
    expect(parseDuration(" 10s ")).toBe(10_000);
  });

  it.each(["", "abc", "-1s", "-1h", "5w", "1y", "1mo", "s", "10 s", "1 hour", "1h 30m", "2 days", "1.5ms", "1e3", "1e3s", ".5s", "1H", "ms10", "2m x", "99999999999999999999h"])(
    "refuses %j with a message that says what is accepted",
    (input) => {
      expect(() => parseDuration(input)).toThrow(/invalid duration .*\(ms, s, m, h or d\), e\.g\. 500ms, 30s, 2m, 1h, 2d or 1h30m/);
    },
  );
});

describe("formatDuration", () => {
  it("prints the largest units that describe the value exactly", () => {
    expect(formatDuration(500)).toBe("500ms");
    expect(formatDuration(30_000)).toBe("30s");
    expect(formatDuration(120_000)).toBe("2m");
    expect(formatDuration(5_400_000)).toBe("1h30m");
    expect(formatDuration(1_500)).toBe("1500ms");
    expect(formatDuration(172_800_000)).toBe("2d");
    expect(formatDuration(90_000_000)).toBe("1d1h");
  });

  it("round-trips through parseDuration", () => {
    for (const ms of [0, 1, 999, 1_000, 61_000, 3_723_000, 90_061_000]) expect(parseDuration(formatDuration(ms))).toBe(ms);
  });
});
