/**
 * The HTTP API's validation rules (docs/api.md, "Scripts / Start"): the start request schema with its
 * defaults and limits, the error sentence built from a zod error, query integers, and the one place
 * that maps completion reasons to exit codes.
 */
import { describe, expect, it } from "vitest";
import { z } from "zod";
import {
  AbandonRequest,
  CancelRequest,
  DEFAULT_MUTEX_NAME,
  LIMITS,
  StartScriptRequest,
  describeZodError,
  parseQueryInt,
} from "../../shared/api.js";
import { ExitCode, exitCodeFor, type CompletionReason } from "../../shared/exit-codes.js";

/** Parses a start request that must be valid and returns the result. */
function valid(body: unknown): StartScriptRequest {
  const parsed = StartScriptRequest.safeParse(body);
  if (!parsed.success) throw new Error(`expected a valid request, got: ${describeZodError(parsed.error)}`);
  return parsed.data;
}

/** The error sentence for a start request that must be invalid. */
function invalid(body: unknown): string {
  const parsed = StartScriptRequest.safeParse(body);
  if (parsed.success) throw new Error(`expected ${JSON.stringify(body)?.slice(0, 200)} to be rejected`);
  return describeZodError(parsed.error);
}

/** A minimal valid request with `extra` merged in. */
function body(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { scriptBody: "echo hello", ...extra };
}

function file(name: string, contents = ""): { name: string; contents: string } {
  return { name, contents };
}

describe("StartScriptRequest defaults", () => {
  it("applies every default of the contract to a request with only a scriptBody", () => {
    const parsed = valid({ scriptBody: "echo hello" });
    expect(parsed).toStrictEqual({
      scriptBody: "echo hello",
      shell: "bash",
      arguments: [],
      environment: {},
      files: [],
      isolation: "full",
      mutexName: "RunningScript",
      mutexTimeoutMs: 0,
      runTimeoutMs: 0,
      waitMs: 0,
    });
    expect(DEFAULT_MUTEX_NAME).toBe("RunningScript");
  });

  it("leaves ticket and taskId absent rather than inventing them", () => {
    const parsed = valid({ scriptBody: "x" });
    expect(Object.keys(parsed)).not.toContain("ticket");
    expect(Object.keys(parsed)).not.toContain("taskId");
  });

  it("keeps every field a caller gives", () => {
    const request = {
      ticket: "deploy-42.v1_a",
      scriptBody: "echo $1",
      shell: "pwsh",
      arguments: ["a", "b c", ""],
      environment: { NAME: "value", EMPTY: "", "lower.case-name": "x=y" },
      files: [file("config.json", "eyJhIjoxfQ=="), file(".env", "")],
      isolation: "none",
      mutexName: "Deploy",
      mutexTimeoutMs: 60_000,
      runTimeoutMs: 3_600_000,
      taskId: "ServerTasks-1",
      waitMs: 2500,
    };
    expect(valid(request)).toStrictEqual(request);
  });

  it.each(["bash", "sh", "pwsh"])("accepts the shell %s", (shell) => {
    expect(valid(body({ shell })).shell).toBe(shell);
  });

  it.each(["full", "none"])("accepts the isolation %s", (isolation) => {
    expect(valid(body({ isolation })).isolation).toBe(isolation);
  });

  it("accepts an empty scriptBody", () => {
    expect(valid({ scriptBody: "" }).scriptBody).toBe("");
  });

  it("accepts waitMs 30000, the largest allowed", () => {
    expect(LIMITS.waitMs).toBe(30_000);
    expect(valid(body({ waitMs: 30_000 })).waitMs).toBe(30_000);
  });

  it("accepts a large mutexTimeoutMs", () => {
    expect(valid(body({ mutexTimeoutMs: 7 * 24 * 3_600_000 })).mutexTimeoutMs).toBe(604_800_000);
  });

  it("accepts a mutexTimeoutMs of exactly 30 days, the longest allowed", () => {
    expect(LIMITS.durationMs).toBe(2_592_000_000);
    expect(valid(body({ mutexTimeoutMs: 2_592_000_000 })).mutexTimeoutMs).toBe(2_592_000_000);
  });

  it("accepts integral numbers written with a fraction part, as JSON cannot tell them apart", () => {
    expect(valid(JSON.parse('{"scriptBody":"x","waitMs":5.0}')).waitMs).toBe(5);
  });
});

describe("StartScriptRequest rejections", () => {
  it.each([
    ["a missing scriptBody", {}, "scriptBody: "],
    ["a numeric scriptBody", { scriptBody: 5 }, "scriptBody: "],
    ["a null scriptBody", { scriptBody: null }, "scriptBody: "],
    ["an unknown shell", body({ shell: "zsh" }), "shell: "],
    ["a shell in the wrong case", body({ shell: "Bash" }), "shell: "],
    ["an unknown isolation", body({ isolation: "partial" }), "isolation: "],
    ["arguments that are a string", body({ arguments: "a b" }), "arguments: "],
    ["a numeric argument", body({ arguments: ["a", 1] }), "arguments.1: "],
    ["an argument with NUL", body({ arguments: ["a\u0000b"] }), "arguments.0: "],
    ["an environment that is an array", body({ environment: [] }), "environment: "],
    ["a numeric environment value", body({ environment: { NAME: 5 } }), "environment.NAME: "],
    ["a null environment value", body({ environment: { NAME: null } }), "environment.NAME: "],
    ["a boolean environment value", body({ environment: { NAME: true } }), "environment.NAME: "],
    ["an object environment value", body({ environment: { NAME: { nested: "x" } } }), "environment.NAME: "],
    ["an environment value with NUL", body({ environment: { NAME: "a\u0000" } }), "environment.NAME: "],
    ["an environment name with '='", body({ environment: { "A=B": "v" } }), "environment.A=B: "],
    ["an environment name with NUL", body({ environment: { "A\u0000": "v" } }), "environment.A\u0000: "],
    ["an empty environment name", body({ environment: { "": "v" } }), "environment."],
    ["files that are an object", body({ files: {} }), "files: "],
    ["a file without contents", body({ files: [{ name: "a" }] }), "files.0.contents: "],
    ["a file without a name", body({ files: [{ contents: "" }] }), "files.0.name: "],
    ["numeric file contents", body({ files: [file("a"), { name: "b", contents: 12 }] }), "files.1.contents: "],
    ["an empty mutexName", body({ mutexName: "" }), "mutexName: "],
    ["a 257-character mutexName", body({ mutexName: "m".repeat(257) }), "mutexName: "],
    ["an empty taskId", body({ taskId: "" }), "taskId: "],
    ["a 257-character taskId", body({ taskId: "t".repeat(257) }), "taskId: "],
    ["a null taskId", body({ taskId: null }), "taskId: "],
  ])("rejects %s, naming the field", (_name, request, prefix) => {
    expect(invalid(request).startsWith(prefix), invalid(request)).toBe(true);
  });

  it("rejects a scriptBody containing NUL", () => {
    expect(invalid({ scriptBody: "echo a\u0000b" })).toBe("scriptBody: scriptBody must not contain NUL characters.");
  });

  it.each([
    ["a negative mutexTimeoutMs", { mutexTimeoutMs: -1 }, "mutexTimeoutMs: Too small: expected number to be >=0."],
    ["a non-integer mutexTimeoutMs", { mutexTimeoutMs: 1.5 }, "mutexTimeoutMs: Invalid input: expected int, received number."],
    ["a string mutexTimeoutMs", { mutexTimeoutMs: "1000" }, "mutexTimeoutMs: Invalid input: expected number, received string."],
    ["an unsafe-integer mutexTimeoutMs", { mutexTimeoutMs: 2 ** 53 }, "mutexTimeoutMs: Too big: expected int to be <=9007199254740991."],
    ["a null mutexTimeoutMs", { mutexTimeoutMs: null }, "mutexTimeoutMs: Invalid input: expected number, received null."],
    ["a negative waitMs", { waitMs: -1 }, "waitMs: Too small: expected number to be >=0."],
    ["a non-integer waitMs", { waitMs: 0.5 }, "waitMs: Invalid input: expected int, received number."],
    ["a string waitMs", { waitMs: "100" }, "waitMs: Invalid input: expected number, received string."],
    ["waitMs 30001", { waitMs: 30_001 }, "waitMs: Too big: expected number to be <=30000."],
    ["a boolean waitMs", { waitMs: true }, "waitMs: Invalid input: expected number, received boolean."],
  ])("rejects %s", (_name, extra, message) => {
    expect(invalid(body(extra))).toBe(message);
  });

  it.each([
    ["an empty ticket", ""],
    ["a ticket with a space", "a b"],
    ["a ticket with a slash", "a/b"],
    ["a ticket of '..' and a slash", "../x"],
    ["a ticket with a non-ASCII letter", "tï"],
    ["a 129-character ticket", "t".repeat(129)],
  ])("rejects %s", (_name, ticket) => {
    expect(invalid(body({ ticket }))).toBe("ticket: must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-' (and not '.' or '..').");
  });

  it("rejects a numeric ticket", () => {
    expect(invalid(body({ ticket: 42 }))).toBe("ticket: Invalid input: expected string, received number.");
  });

  it("accepts a ticket of 128 characters", () => {
    expect(valid(body({ ticket: "T".repeat(128) })).ticket).toBe("T".repeat(128));
  });

  it.each([
    ["an array", []],
    ["null", null],
    ["a string", "echo hello"],
    ["a number", 7],
  ])("rejects a body that is %s", (_name, request) => {
    expect(invalid(request).startsWith("body: Invalid input: expected object, received ")).toBe(true);
  });
});

describe("durations past the range of a date (bug 4)", () => {
  it.each([2_592_000_001, 9_007_199_254_740_991])("rejects a mutexTimeoutMs of %i ms, over 30 days, naming the limit", (mutexTimeoutMs) => {
    expect(invalid(body({ mutexTimeoutMs }))).toBe("mutexTimeoutMs: must be at most 2592000000 ms (30 days).");
  });

  it.each([2_592_000_001, 9_007_199_254_740_991])("rejects a cancel's abandonAfterMs of %i ms, over 30 days", (abandonAfterMs) => {
    const parsed = CancelRequest.safeParse({ abandonAfterMs });
    expect(parsed.success).toBe(false);
    if (!parsed.success) expect(describeZodError(parsed.error)).toBe("abandonAfterMs: must be at most 2592000000 ms (30 days).");
  });

  it("accepts a cancel's abandonAfterMs of exactly 30 days", () => {
    expect(CancelRequest.parse({ abandonAfterMs: 2_592_000_000 })).toStrictEqual({ abandonAfterMs: 2_592_000_000 });
  });
});

describe("StartScriptRequest unknown fields", () => {
  it("rejects an unknown top-level field", () => {
    expect(invalid(body({ priority: 1 }))).toBe("Unknown field(s) in the request: priority.");
  });

  it("lists every unknown top-level field", () => {
    expect(invalid(body({ a: 1, b: 2 }))).toBe("Unknown field(s) in the request: a, b.");
  });

  it("rejects a field that differs from a known one only by case", () => {
    expect(invalid(body({ WaitMs: 5 }))).toBe("Unknown field(s) in the request: WaitMs.");
  });

  it("rejects an unknown field inside a file entry", () => {
    expect(invalid(body({ files: [file("a"), { name: "b", contents: "", mode: 493 }] }))).toBe("Unknown field(s) in files.1: mode.");
  });

  it("rejects an undefined-valued unknown field, as JSON cannot carry it but a JS caller can", () => {
    expect(invalid(body({ extra: undefined }))).toBe("Unknown field(s) in the request: extra.");
  });
});

describe("StartScriptRequest base64 file contents", () => {
  it.each([
    ["empty contents", ""],
    ["four characters, no padding", "YWJj"],
    ["one padding character", "YWI="],
    ["two padding characters", "YQ=="],
    ["eight characters ending in two padding characters", "YWJjZA=="],
    ["'+' and '/'", "+/+/"],
    ["a long block", "QUJD".repeat(1000)],
  ])("accepts %s", (_name, contents) => {
    expect(valid(body({ files: [file("f", contents)] })).files).toEqual([file("f", contents)]);
  });

  it.each([
    ["a character outside the alphabet", "YW$j"],
    ["URL-safe characters", "-_-_"],
    ["a space", "YW Jj"],
    ["a trailing newline", "YWJj\n"],
    ["wrapped lines", "YWJj\nYWJj"],
    ["padding alone", "===="],
    ["three padding characters", "Y==="],
    ["a padding character too few", "YQ="],
    ["padding in the middle", "YQ==YWJj"],
    ["a length of 3", "YWJ"],
    ["a length of 5", "YWJjZ"],
    ["a single character", "Y"],
    ["a non-ASCII letter", "YWJé"],
  ])("rejects %s", (_name, contents) => {
    expect(invalid(body({ files: [file("f", contents)] }))).toBe("files.0.contents: must be valid base64.");
  });
});

describe("StartScriptRequest file names and limits", () => {
  const plainName = "files.0.name: must be a plain file name (no '/', '\\', NUL, '.' or '..').";

  it.each([
    ["a slash", "dir/file"],
    ["a leading slash", "/etc"],
    ["'..'", ".."],
    ["'.'", "."],
    ["a backslash", "dir\\file"],
    ["a NUL", "file\u0000.txt"],
    ["a traversal path", "../../etc/passwd"],
  ])("rejects a file name with %s", (_name, name) => {
    expect(invalid(body({ files: [file(name)] }))).toBe(plainName);
  });

  it("rejects an empty file name", () => {
    expect(invalid(body({ files: [file("")] }))).toBe("files.0.name: Too small: expected string to have >=1 characters.");
  });

  it("rejects a 256-character file name", () => {
    expect(invalid(body({ files: [file("n".repeat(256))] }))).toBe("files.0.name: Too big: expected string to have <=255 characters.");
  });

  it.each([
    ["a dot file", ".env"],
    ["two leading dots", "..config"],
    ["dots inside", "a..b"],
    ["spaces", "my file.txt"],
    ["255 characters", "n".repeat(255)],
  ])("accepts a file name with %s", (_name, name) => {
    expect(valid(body({ files: [file(name)] })).files[0]?.name).toBe(name);
  });

  it("rejects duplicate file names", () => {
    expect(invalid(body({ files: [file("a.txt"), file("b.txt"), file("a.txt")] }))).toBe("files: file names must be unique.");
  });

  it("accepts exactly 100 files", () => {
    const files = Array.from({ length: 100 }, (_, i) => file(`f${i}`));
    expect(valid(body({ files })).files).toHaveLength(100);
  });

  it("rejects more than 100 files", () => {
    const files = Array.from({ length: 101 }, (_, i) => file(`f${i}`));
    expect(invalid(body({ files }))).toBe("files: at most 100 files.");
  });
});

describe("CancelRequest and AbandonRequest", () => {
  it("accepts an empty cancel body and an abandonAfterMs", () => {
    expect(CancelRequest.parse({})).toStrictEqual({});
    expect(CancelRequest.parse({ abandonAfterMs: 120_000 })).toStrictEqual({ abandonAfterMs: 120_000 });
  });

  it.each([
    ["a negative abandonAfterMs", { abandonAfterMs: -1 }, "abandonAfterMs: "],
    ["a non-integer abandonAfterMs", { abandonAfterMs: 1.5 }, "abandonAfterMs: "],
    ["an unknown field", { abandonAfter: 5 }, "Unknown field(s) in the request: abandonAfter."],
  ])("rejects a cancel body with %s", (_name, request, prefix) => {
    const parsed = CancelRequest.safeParse(request);
    expect(parsed.success).toBe(false);
    if (!parsed.success) expect(describeZodError(parsed.error).startsWith(prefix)).toBe(true);
  });

  it("accepts an abandon body with or without killProcess", () => {
    expect(AbandonRequest.parse({})).toStrictEqual({});
    expect(AbandonRequest.parse({ killProcess: true })).toStrictEqual({ killProcess: true });
  });

  it("rejects an abandon body with a string killProcess or an unknown field", () => {
    expect(AbandonRequest.safeParse({ killProcess: "yes" }).success).toBe(false);
    expect(AbandonRequest.safeParse({ kill: true }).success).toBe(false);
  });
  it("takes a reason of up to 500 characters and a requestedBy of up to 200, on cancel and abandon alike", () => {
    for (const schema of [CancelRequest, AbandonRequest]) {
      expect(schema.parse({ reason: "r".repeat(500), requestedBy: "b".repeat(200) })).toStrictEqual({ reason: "r".repeat(500), requestedBy: "b".repeat(200) });
      for (const bad of [{ reason: "r".repeat(501) }, { requestedBy: "b".repeat(201) }, { reason: "" }, { requestedBy: 7 }]) {
        expect(schema.safeParse(bad).success, JSON.stringify(bad).slice(0, 40)).toBe(false);
      }
    }
  });

  it("takes a runTimeoutMs of at most 30 days, 0 meaning no limit", () => {
    expect(valid(body({ runTimeoutMs: 2_592_000_000 })).runTimeoutMs).toBe(2_592_000_000);
    expect(valid(body({})).runTimeoutMs).toBe(0);
    expect(invalid(body({ runTimeoutMs: 2_592_000_001 }))).toMatch(/^runTimeoutMs: /);
    expect(invalid(body({ runTimeoutMs: -1 }))).toMatch(/^runTimeoutMs: /);
  });
});

describe("describeZodError", () => {
  it("names a nested field by its dotted path and ends the sentence with a period", () => {
    expect(invalid(body({ environment: { HOME: 1 } }))).toBe("environment.HOME: Invalid input: expected string, received number.");
  });

  it("names the array index of a bad file", () => {
    expect(invalid(body({ files: [file("ok"), file("bad", "!")] }))).toBe("files.1.contents: must be valid base64.");
  });

  it("says 'body' when the whole body is wrong", () => {
    expect(invalid([])).toBe("body: Invalid input: expected object, received array.");
  });

  it("falls back to a generic sentence when there is no issue", () => {
    expect(describeZodError(new z.ZodError([]))).toBe("The request is invalid.");
  });

  it("describes only the first of several issues", () => {
    expect(invalid({ scriptBody: 1, waitMs: -1 })).toBe("scriptBody: Invalid input: expected string, received number.");
  });

  it("explains why an environment variable name is invalid instead of only 'Invalid key in record'", () => {
    const message = invalid(body({ environment: { "A=B": "v" } }));
    expect(message).toContain("A=B");
    expect(message).toContain("must not contain '='");
  });
});

describe("parseQueryInt", () => {
  it("returns undefined for an absent parameter", () => {
    expect(parseQueryInt(undefined, "limit", 10_000)).toBeUndefined();
  });

  it.each([
    ["0", 0],
    ["7", 7],
    ["007", 7],
    ["10000", 10_000],
  ])("accepts %s as %i", (raw, value) => {
    expect(parseQueryInt(raw, "limit", 10_000)).toBe(value);
  });

  it("accepts a 15-digit value when there is no maximum", () => {
    expect(parseQueryInt("999999999999999", "logSequence")).toBe(999_999_999_999_999);
  });

  it.each([
    ["-1"],
    ["1.5"],
    ["abc"],
    [""],
    [" 1"],
    ["1 "],
    ["+1"],
    ["1e3"],
    ["0x10"],
    ["１"],
    ["1234567890123456"],
    ["Infinity"],
    ["NaN"],
  ])("rejects %j", (raw) => {
    expect(parseQueryInt(raw, "logSequence")).toEqual({ error: "logSequence must be a non-negative integer" });
  });

  it("rejects a value over the maximum, naming the parameter and the maximum", () => {
    expect(parseQueryInt("10001", "limit", 10_000)).toEqual({ error: "limit must be at most 10000" });
  });

  it("accepts a value equal to the maximum", () => {
    expect(parseQueryInt("10000", "limit", LIMITS.logPageLines)).toBe(10_000);
  });
});

describe("exitCodeFor", () => {
  it.each<[string, CompletionReason, number]>([
    ["a process's own exit code 0", { kind: "exited", code: 0 }, 0],
    ["a process's own exit code 3", { kind: "exited", code: 3 }, 3],
    ["a process's own exit code 255", { kind: "exited", code: 255 }, 255],
    ["a foreign SIGKILL as 128 + 9", { kind: "signaled", signal: "SIGKILL", number: 9 }, 137],
    ["a foreign SIGTERM as 128 + 15", { kind: "signaled", signal: "SIGTERM", number: 15 }, 143],
    ["a foreign SIGHUP as 128 + 1", { kind: "signaled", signal: "SIGHUP", number: 1 }, 129],
    ["a runner failure as -41", { kind: "failed", message: "spawn bash ENOENT" }, -41],
    ["a cancellation as -43", { kind: "cancelled" }, -43],
    ["a mutex timeout as -44", { kind: "mutex_timeout" }, -44],
    ["a lost script as -46", { kind: "lost" }, -46],
    ["an abandoned script as -48", { kind: "abandoned" }, -48],
  ])("maps %s", (_name, reason, code) => {
    expect(exitCodeFor(reason)).toBe(code);
  });

  it("keeps the contract's named exit codes", () => {
    expect(ExitCode).toStrictEqual({ Fatal: -41, Cancelled: -43, MutexTimeout: -44, Unknown: -46, Abandoned: -48 });
  });

  it("throws on a reason kind it does not know rather than inventing a code", () => {
    expect(() => exitCodeFor({ kind: "vanished" } as unknown as CompletionReason)).toThrow(/unknown completion reason/);
  });
});
