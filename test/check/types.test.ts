// The type check is part of the test suite: `npm test` (and so CI) fails on a type error, and `.ci/run`'s
// "N passed, N failed" line counts it as a failed test, while every other test still runs and is counted.
import { describe, expect, it } from "vitest";
import { checkedTsconfigs, typeCheck } from "../helpers/typecheck.js";

describe("type check (npm run check)", () => {
  it.each(checkedTsconfigs())("finds no type errors in the code %s covers", async (tsconfig) => {
    const result = await typeCheck(tsconfig);
    expect(result.output, `tsc -p ${tsconfig} reported type errors`).toBe("");
    expect(result.code).toBe(0);
  }, 180_000);
});
