/** How the command line turns script exit codes into its own exit code and words. */
import { describe, expect, it } from "vitest";
import { CLI_EXIT, describeExitCode, runExitFor } from "../../client/cli/exit-codes.js";

describe("runExitFor", () => {
  it("passes a script's own exit code through without a message", () => {
    expect(runExitFor(0)).toEqual({ code: 0 });
    expect(runExitFor(7)).toEqual({ code: 7 });
    expect(runExitFor(255)).toEqual({ code: 255 });
  });

  it("exits 1 for a cancelled script and says `cancelled (-43)`", () => {
    expect(runExitFor(-43, "web-01")).toEqual({ code: CLI_EXIT.scriptFailed, message: "cancelled (-43)" });
  });

  it("exits 1 for an abandoned script and says `abandoned (-48)`, naming the machine its process may still run on", () => {
    expect(runExitFor(-48, "web-01")).toEqual({
      code: 1,
      message: "abandoned (-48): the process may still be running on machine web-01",
    });
  });

  it("names the other Tendril codes", () => {
    expect(runExitFor(-44).message).toBe("timed out waiting for the isolation mutex (-44)");
    expect(runExitFor(-41).message).toBe("failed (-41): the runner could not run the script");
    expect(runExitFor(-46).message).toBe("result unknown (-46): the runner lost track of the script");
  });

  it("exits 1 for a code that does not fit a process exit code", () => {
    expect(runExitFor(256)).toEqual({ code: 1, message: "the script exited with 256, which is outside 0-255" });
    expect(runExitFor(-7).code).toBe(1);
  });
});

describe("describeExitCode", () => {
  it("shows a dash while there is no exit code, and the meaning of Tendril's codes", () => {
    expect(describeExitCode(null)).toBe("-");
    expect(describeExitCode(0)).toBe("0");
    expect(describeExitCode(-43)).toBe("-43 (cancelled)");
    expect(describeExitCode(-48)).toBe("-48 (abandoned: the process may still be running)");
  });
});
