import { describe, expect, it } from "vitest";
import { displayUrl, environmentSecrets, redact, redactingLogger } from "../../runner/redact.js";

describe("redaction of the runner's log", () => {
  it("replaces every occurrence of every secret, longer ones first", () => {
    expect(redact("token abc-123 and abc-123456 again abc-123", ["abc-123", "abc-123456"])).toBe("token [redacted] and [redacted] again [redacted]");
    expect(redact("nothing here", [])).toBe("nothing here");
    expect(redact("empty secrets change nothing", [""])).toBe("empty secrets change nothing");
  });

  it("treats environment values of at least 4 characters as secrets", () => {
    expect(environmentSecrets({ A: "1", B: "on", C: "hunter2", D: "abcd" })).toEqual(["hunter2", "abcd"]);
  });

  it("wraps a logger so that nothing it writes carries a secret", () => {
    const lines: string[] = [];
    const logger = redactingLogger({ info: (m) => lines.push(m), warn: (m) => lines.push(m), error: (m) => lines.push(m) }, ["tok-1"]);
    logger.info("a tok-1");
    logger.warn("b tok-1");
    logger.error("c tok-1");
    expect(lines).toEqual(["a [redacted]", "b [redacted]", "c [redacted]"]);
  });

  it("shows a URL without user name, password, query or fragment", () => {
    expect(displayUrl("https://user:pass@tendril.example.com/base?token=x#y")).toBe("https://tendril.example.com/base");
    expect(displayUrl("not a url")).toBe("(an invalid URL)");
  });
});
