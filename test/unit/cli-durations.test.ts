// Issue 9, bug 5: the documented `--retention 2d` was refused. Every duration flag of the command line takes
// ms, s, m, h and d, and compounds such as 1h30m, and refuses anything else with an error saying what is accepted.
import { InvalidArgumentError, type Command } from "commander";
import { describe, expect, it } from "vitest";
import { buildProgram } from "../../client/cli/main.js";

/** Every `<duration>` option of every command, with the parser commander runs on its value. */
function durationFlags(): Array<{ name: string; parse: (value: string) => number }> {
  const program: Command = buildProgram(["node", "tendril"], { code: 0 });
  return program.commands.flatMap((command) =>
    command.options
      .filter((option) => option.flags.includes("<duration>"))
      .map((option) => ({
        name: `${command.name()} ${option.long}`,
        parse: (value: string) => option.parseArg!<unknown>(value, undefined) as number,
      })),
  );
}

describe("duration flags (bug 5)", () => {
  const flags = durationFlags();

  it("covers every duration flag of the command line", () => {
    expect(flags.map((flag) => flag.name).sort()).toEqual([
      "cancel --abandon-after",
      "control-plane --audit-retention",
      "control-plane --retention",
      "run --abandon-after",
      "run --mutex-timeout",
      "runner --kill-grace",
    ]);
  });

  it.each(flags)("$name accepts days, as in the documented `--retention 2d`", ({ parse }) => {
    expect(parse("2d")).toBe(2 * 24 * 3_600_000);
  });

  it.each(flags)("$name accepts every unit and compounds such as 1h30m", ({ parse }) => {
    expect(parse("500ms")).toBe(500);
    expect(parse("30s")).toBe(30_000);
    expect(parse("2m")).toBe(120_000);
    expect(parse("1h30m")).toBe(5_400_000);
    expect(parse("1d12h")).toBe(129_600_000);
    expect(parse("1.5s")).toBe(1_500);
  });

  it.each(flags)("$name reads a plain number as milliseconds", ({ parse }) => {
    expect(parse("1500")).toBe(1_500);
  });

  it.each(flags)("$name refuses what the grammar does not allow, saying what is accepted", ({ parse }) => {
    for (const value of ["1 hour", "1e3", "-1h", "2w", "1y", "1h 30m", "soon", ""]) {
      expect(() => parse(value), value).toThrow(InvalidArgumentError);
      expect(() => parse(value), value).toThrow(/invalid duration .*\(ms, s, m, h or d\), e\.g\. 500ms, 30s, 2m, 1h, 2d or 1h30m/);
    }
  });
});
