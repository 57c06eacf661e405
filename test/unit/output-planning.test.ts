/**
 * Output planning as a pure function: `planOutput(position, frame, cap)` decides which lines of a runner's frame
 * are new, which are stored (blocks whole when they fit), where the output cap cuts with its one truncation
 * line, and what may be acknowledged. Sizes are UTF-8 bytes.
 */
import { describe, expect, it } from "vitest";
import { planOutput, truncationLine, type OutputPosition } from "../../control-plane/machine/core/output.js";
import type { OutputBlock, OutputLine } from "../../shared/protocol.js";

const OCCURRED = "2026-12-02T08:00:00.000Z";
const START: OutputPosition = { logNext: 0, runnerNext: 0, logBytes: 0, truncated: false };
const MiB = 1024 * 1024;

const line = (text: string, source: OutputLine["source"] = "stdout"): OutputLine => ({ source, text, occurred: OCCURRED });
const block = (texts: string[], source: OutputBlock["source"] = "stdout"): OutputBlock => ({ source, occurred: OCCURRED, count: texts.length, text: texts.join("\n") });

describe("planOutput", () => {
  it("stores a frame's blocks whole, numbers them from the log's next sequence and acknowledges every line", () => {
    const at: OutputPosition = { logNext: 7, runnerNext: 3, logBytes: 10, truncated: false };
    const plan = planOutput(at, { sequence: 3, blocks: [block(["a", "bb"]), block(["ccc"], "stderr")] }, MiB);
    expect(plan).toEqual({
      kind: "append",
      first: 7,
      pieces: [
        { kind: "block", block: block(["a", "bb"]) },
        { kind: "block", block: block(["ccc"], "stderr") },
      ],
      position: { logNext: 10, runnerNext: 6, logBytes: 16, truncated: false },
    });
  });

  it("skips the lines a resend repeats, even from inside a block, and stores only the rest", () => {
    const at: OutputPosition = { logNext: 5, runnerNext: 5, logBytes: 10, truncated: false };
    const plan = planOutput(at, { sequence: 2, blocks: [block(["l2", "l3"]), block(["l4", "l5", "l6"])] }, MiB);
    expect(plan).toMatchObject({ kind: "append", first: 5, pieces: [{ kind: "block", block: block(["l5", "l6"]) }], position: { logNext: 7, runnerNext: 7 } });
    const lines = planOutput(at, { sequence: 4, lines: [line("l4"), line("l5")] }, MiB);
    expect(lines).toMatchObject({ pieces: [{ kind: "lines", lines: [line("l5")] }], position: { logNext: 6, runnerNext: 6 } });
  });

  it("stores nothing and moves nothing for a frame the log already has whole", () => {
    const at: OutputPosition = { logNext: 9, runnerNext: 4, logBytes: 20, truncated: false };
    expect(planOutput(at, { sequence: 1, lines: [line("x"), line("y")] }, MiB)).toEqual({ kind: "append", first: 9, pieces: [], position: at });
  });

  it("reports a gap when the frame starts past the next line the log expects", () => {
    expect(planOutput({ ...START, runnerNext: 4 }, { sequence: 5, lines: [line("x")] }, MiB)).toEqual({ kind: "gap", expected: 4 });
  });

  it("cuts at the cap inside a block with one truncation line, and counts the lines past it without storing them", () => {
    const plan = planOutput(START, { sequence: 0, blocks: [block(["12345", "67890", "abcde"])] }, 12);
    expect(plan).toEqual({
      kind: "append",
      first: 0,
      pieces: [{ kind: "lines", lines: [line("12345"), line("67890"), line(truncationLine(12), "debug")] }],
      position: { logNext: 3, runnerNext: 3, logBytes: 10, truncated: true },
    });
    // Later frames are acknowledged and stored no more: the truncation line is written once.
    const later = planOutput(plan.kind === "append" ? plan.position : START, { sequence: 3, blocks: [block(["more"])] }, 12);
    expect(later).toEqual({ kind: "append", first: 3, pieces: [], position: { logNext: 3, runnerNext: 4, logBytes: 10, truncated: true } });
  });

  it("counts the cap in UTF-8 bytes, not UTF-16 code units (bug 12)", () => {
    // "é" is one code unit and two bytes; "😀" is two code units and four bytes.
    const plan = planOutput(START, { sequence: 0, lines: [line("éé"), line("😀"), line("é")] }, 8);
    expect(plan).toMatchObject({
      pieces: [{ kind: "lines", lines: [line("éé"), line("😀"), line(truncationLine(8), "debug")] }],
      position: { logBytes: 8, truncated: true },
    });
    const blocks = planOutput(START, { sequence: 0, blocks: [block(["€€€", "€"])] }, 11);
    expect(blocks).toMatchObject({ position: { logBytes: 9, truncated: true } });
    const fits = planOutput(START, { sequence: 0, blocks: [block(["€€€", "€"])] }, 12);
    expect(fits).toMatchObject({ pieces: [{ kind: "block" }], position: { logBytes: 12, truncated: false } });
  });

  it("keeps a block that exactly reaches the cap whole", () => {
    expect(planOutput(START, { sequence: 0, blocks: [block(["abc", "de"])] }, 5)).toMatchObject({
      pieces: [{ kind: "block", block: block(["abc", "de"]) }],
      position: { logBytes: 5, truncated: false },
    });
  });
});
