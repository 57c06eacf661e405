/**
 * The runner protocol's edge: every frame either side receives goes through parseRunnerMessage or
 * parseControlMessage. Valid frames come back unchanged; every malformed one gets the close code that
 * names the violation and a close reason that fits a WebSocket close frame (≤ 123 bytes of UTF-8).
 */
import { describe, expect, it } from "vitest";
import {
  CloseCode,
  HEARTBEAT_PING,
  HEARTBEAT_PONG,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  countNewlines,
  encodeOutputFrame,
  outputLineCount,
  outputLines,
  parseControlMessage,
  parseRunnerMessage,
  splitBlock,
  splitByteBlock,
  type ByteBlock,
  type ControlMessage,
  type ParseResult,
  type RunnerMessage,
} from "../../shared/protocol.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const OCCURRED = "2026-04-26T10:00:00.000Z";
const utf8 = new TextEncoder();

function bytes(text: string): number {
  return utf8.encode(text).byteLength;
}

/** A fresh copy of a JSON value, so tests can mutate freely. */
function copy<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

/** Sets (or with `undefined`, deletes) the value at a dotted path of a copy of `base`. */
function withValue(base: object, path: string, value: Json | undefined): Json {
  const out = copy(base) as Json;
  const keys = path.split(".");
  let node = out as Record<string, Json>;
  for (const key of keys.slice(0, -1)) node = node[key] as Record<string, Json>;
  const last = keys[keys.length - 1]!;
  if (value === undefined) delete node[last];
  else node[last] = value;
  return out;
}

function runner(frame: unknown): ParseResult<RunnerMessage> {
  return parseRunnerMessage(typeof frame === "string" ? frame : JSON.stringify(frame));
}

function control(frame: unknown): ParseResult<ControlMessage> {
  return parseControlMessage(typeof frame === "string" ? frame : JSON.stringify(frame));
}

/** A close reason must fit a close frame: at most 123 bytes, and valid UTF-8 (no split surrogate pair). */
function expectSendableReason(reason: string): void {
  expect(bytes(reason), `close reason of ${bytes(reason)} bytes: ${reason}`).toBeLessThanOrEqual(123);
  expect(new TextDecoder().decode(utf8.encode(reason)), "close reason is not well-formed UTF-16").toBe(reason);
}

/** Asserts a BadFrame rejection whose reason starts with `prefix` (the offending field's path). */
function expectBadFrame(result: ParseResult<unknown>, prefix: string): void {
  expect(result.ok).toBe(false);
  if (result.ok) return;
  expect(result.code).toBe(CloseCode.BadFrame);
  expect(result.reason.startsWith(prefix), `reason "${result.reason}" should start with "${prefix}"`).toBe(true);
  expectSendableReason(result.reason);
}

// ------------------------------------------------------------------ valid runner messages

const hello = {
  type: "hello",
  protocol: PROTOCOL_VERSION,
  runnerId: "runner-7f3a",
  version: "0.1.0",
  capabilities: ["script.v1", "script.abandon"],
  inventory: [
    { ticket: "t1", fence: 3, nextSequence: 12, exited: false },
    { ticket: "t2", fence: 4, nextSequence: 0, exited: true },
  ],
};
const started = { type: "started", ticket: "t1", fence: 3, pid: 4242 };
const output = {
  type: "output",
  ticket: "t1",
  fence: 3,
  sequence: 12,
  lines: [
    { source: "stdout", text: "hello", occurred: OCCURRED },
    { source: "stderr", text: "", occurred: OCCURRED },
    { source: "debug", text: "sent SIGTERM", occurred: OCCURRED },
  ],
};
const exitMessage = { type: "exit", ticket: "t1", fence: 3, lineCount: 15, outcome: { kind: "exited", code: 0 } };
const blockOutput = {
  type: "output",
  ticket: "t1",
  fence: 3,
  sequence: 12,
  blocks: [
    { source: "stdout", occurred: OCCURRED, count: 3, text: "hello\n\nworld" },
    { source: "stderr", occurred: OCCURRED, count: 1, text: "" },
  ],
};

describe("parseRunnerMessage: valid frames", () => {
  it.each([
    ["hello", hello],
    ["hello with an empty inventory and no capabilities", { ...hello, capabilities: [], inventory: [] }],
    ["started", started],
    ["output", output],
    ["output at sequence 0", { ...output, sequence: 0 }],
    ["exit with exited 0", exitMessage],
    ["exit with exited 255", { ...exitMessage, outcome: { kind: "exited", code: 255 } }],
    ["exit with signaled", { ...exitMessage, outcome: { kind: "signaled", signal: "SIGKILL", number: 9 } }],
    ["exit with failed", { ...exitMessage, outcome: { kind: "failed", message: "spawn bash ENOENT" } }],
    ["exit with cancelled", { ...exitMessage, outcome: { kind: "cancelled", signals: ["SIGTERM", "SIGKILL"] } }],
    ["exit with cancelled and no signals", { ...exitMessage, outcome: { kind: "cancelled", signals: [] } }],
    ["exit with lineCount 0", { ...exitMessage, lineCount: 0 }],
    ["abandoned_exit", { type: "abandoned_exit", ticket: "t1", fence: 3, pid: 4242 }],
  ])("accepts %s and returns it unchanged", (_name, message) => {
    expect(runner(message)).toEqual({ ok: true, message });
  });

  it("accepts a ticket of exactly 128 characters from the whole allowed alphabet", () => {
    const ticket = ("Az09._-".repeat(19) + "x").slice(0, 128);
    expect(ticket).toHaveLength(128);
    expect(runner({ ...started, ticket })).toEqual({ ok: true, message: { ...started, ticket } });
  });

  it("accepts the largest safe integer as a fence and a sequence", () => {
    const message = { ...output, fence: Number.MAX_SAFE_INTEGER, sequence: Number.MAX_SAFE_INTEGER };
    expect(runner(message)).toEqual({ ok: true, message });
  });

  it("accepts insignificant whitespace around the JSON", () => {
    expect(runner(`  \n${JSON.stringify(started)}\n `)).toEqual({ ok: true, message: started });
  });
});

// ------------------------------------------------------------------ malformed runner frames

describe("parseRunnerMessage: frames that are not JSON objects", () => {
  it("rejects a binary frame that is not an encoded output frame with BadFrame", () => {
    expect(parseRunnerMessage(utf8.encode(JSON.stringify(started)).buffer as ArrayBuffer)).toEqual({
      ok: false,
      code: CloseCode.BadFrame,
      reason: "binary frame shorter than its header",
    });
  });

  it("rejects an empty binary frame with BadFrame", () => {
    expect(parseRunnerMessage(new ArrayBuffer(0))).toMatchObject({ ok: false, code: CloseCode.BadFrame });
  });

  it.each([
    ["an empty frame", ""],
    ["a truncated object", '{"type":"started"'],
    ["single quotes", "{'type':'started'}"],
    ["a trailing comma", '{"type":"started","ticket":"t1",}'],
    ["plain text", "hello"],
    ["the heartbeat text, which is handled before parsing", HEARTBEAT_PING],
    ["two JSON values", `${JSON.stringify(started)}${JSON.stringify(started)}`],
  ])("rejects %s as invalid JSON with BadFrame", (_name, frame) => {
    expect(parseRunnerMessage(frame)).toEqual({ ok: false, code: CloseCode.BadFrame, reason: "frame is not valid JSON" });
  });

  it.each([
    ["an array", "[]", "array"],
    ["a number", "42", "number"],
    ["null", "null", "null"],
    ["a string", '"started"', "string"],
    ["a boolean", "true", "boolean"],
  ])("rejects JSON that is %s rather than an object", (_name, frame, received) => {
    expect(parseRunnerMessage(frame)).toEqual({
      ok: false,
      code: CloseCode.BadFrame,
      reason: `frame: Invalid input: expected object, received ${received}`,
    });
  });
});

describe("parseRunnerMessage: the message type", () => {
  it.each([
    ["an unknown type", { ...started, type: "launched" }],
    ["a missing type", { ticket: "t1", fence: 3, pid: 1 }],
    ["a numeric type", { ...started, type: 1 }],
    ["a type in the wrong case", { ...started, type: "Started" }],
    ["a control-plane message type", { type: "exit_ack", ticket: "t1", fence: 3 }],
    ["a heartbeat reply wrapped in JSON", { type: HEARTBEAT_PONG }],
  ])("rejects %s with BadFrame naming the type field", (_name, frame) => {
    expectBadFrame(runner(frame), "type: ");
  });
});

describe("parseRunnerMessage: missing fields", () => {
  const bases: Array<[string, Record<string, unknown>]> = [
    ["hello", hello],
    ["started", started],
    ["output", output],
    ["exit", exitMessage],
  ];
  const cases = bases.flatMap(([name, base]) =>
    Object.keys(base)
      .filter((key) => key !== "type")
      .map((key) => [name, key, base] as const),
  );

  it.each(cases)("rejects %s without %s, naming the field", (_name, key, base) => {
    expectBadFrame(runner(withValue(base, key, undefined)), `${key}: `);
  });

  it.each([
    ["an inventory item without its fence", withValue(hello, "inventory.0.fence", undefined), "inventory.0.fence: "],
    ["an inventory item without exited", withValue(hello, "inventory.1.exited", undefined), "inventory.1.exited: "],
    ["a line without its text", withValue(output, "lines.1.text", undefined), "lines.1.text: "],
    ["a line without occurred", withValue(output, "lines.0.occurred", undefined), "lines.0.occurred: "],
    ["an outcome without its kind", withValue(exitMessage, "outcome.kind", undefined), "outcome.kind: "],
    ["an exited outcome without its code", withValue(exitMessage, "outcome.code", undefined), "outcome.code: "],
    ["a signaled outcome without its number", { ...exitMessage, outcome: { kind: "signaled", signal: "SIGKILL" } }, "outcome.number: "],
    ["a failed outcome without its message", { ...exitMessage, outcome: { kind: "failed" } }, "outcome.message: "],
    ["a cancelled outcome without its signals", { ...exitMessage, outcome: { kind: "cancelled" } }, "outcome.signals: "],
  ])("rejects %s", (_name, frame, prefix) => {
    expectBadFrame(runner(frame), prefix);
  });
});

describe("parseRunnerMessage: unknown fields at every depth", () => {
  it.each([
    ["hello", hello],
    ["started", started],
    ["output", output],
    ["exit", exitMessage],
  ])("rejects an extra top-level field on %s", (_name, base) => {
    expect(runner({ ...base, extra: 1 })).toEqual({ ok: false, code: CloseCode.BadFrame, reason: 'frame: Unrecognized key: "extra"' });
  });

  it.each([
    ["an inventory item", withValue(hello, "inventory.1.pid", 12), 'inventory.1: Unrecognized key: "pid"'],
    ["an output line", withValue(output, "lines.2.stream", "x"), 'lines.2: Unrecognized key: "stream"'],
    ["an exited outcome", withValue(exitMessage, "outcome.signal", "SIGTERM"), 'outcome: Unrecognized key: "signal"'],
    ["a signaled outcome", { ...exitMessage, outcome: { kind: "signaled", signal: "SIGKILL", number: 9, code: 137 } }, 'outcome: Unrecognized key: "code"'],
    ["a failed outcome", { ...exitMessage, outcome: { kind: "failed", message: "x", stack: "y" } }, 'outcome: Unrecognized key: "stack"'],
    ["a cancelled outcome", { ...exitMessage, outcome: { kind: "cancelled", signals: [], graceMs: 10 } }, 'outcome: Unrecognized key: "graceMs"'],
  ])("rejects an extra field inside %s", (_name, frame, reason) => {
    expect(runner(frame)).toEqual({ ok: false, code: CloseCode.BadFrame, reason });
  });

  it("rejects a __proto__ key instead of letting it through", () => {
    const frame = JSON.stringify(started).replace(/}$/, ',"__proto__":{"polluted":true}}');
    expect(parseRunnerMessage(frame)).toEqual({ ok: false, code: CloseCode.BadFrame, reason: 'frame: Unrecognized key: "__proto__"' });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe("parseRunnerMessage: wrong types and out-of-range values", () => {
  it.each([
    ["a string fence", withValue(started, "fence", "3"), "fence: "],
    ["fence 0", withValue(started, "fence", 0), "fence: "],
    ["a negative fence", withValue(started, "fence", -1), "fence: "],
    ["a non-integer fence", withValue(started, "fence", 1.5), "fence: "],
    ["a fence past the largest safe integer", withValue(started, "fence", 2 ** 53), "fence: "],
    ["a null fence", withValue(started, "fence", null), "fence: "],
    ["a negative sequence", withValue(output, "sequence", -1), "sequence: "],
    ["a non-integer sequence", withValue(output, "sequence", 0.5), "sequence: "],
    ["a string sequence", withValue(output, "sequence", "0"), "sequence: "],
    ["a negative lineCount", withValue(exitMessage, "lineCount", -1), "lineCount: "],
    ["a non-integer lineCount", withValue(exitMessage, "lineCount", 2.5), "lineCount: "],
    ["a negative inventory nextSequence", withValue(hello, "inventory.0.nextSequence", -3), "inventory.0.nextSequence: "],
    ["inventory fence 0", withValue(hello, "inventory.0.fence", 0), "inventory.0.fence: "],
    ["a string exited flag", withValue(hello, "inventory.0.exited", "false"), "inventory.0.exited: "],
    ["pid 0", withValue(started, "pid", 0), "pid: "],
    ["a non-integer pid", withValue(started, "pid", 12.5), "pid: "],
    ["a string protocol", withValue(hello, "protocol", "1"), "protocol: "],
    ["an empty runnerId", withValue(hello, "runnerId", ""), "runnerId: "],
    ["a 65-character runnerId", withValue(hello, "runnerId", "r".repeat(65)), "runnerId: "],
    ["an empty version", withValue(hello, "version", ""), "version: "],
    ["capabilities that are not an array", withValue(hello, "capabilities", "script.v1"), "capabilities: "],
    ["33 capabilities", withValue(hello, "capabilities", Array.from({ length: 33 }, (_, i) => `cap${i}`)), "capabilities: "],
    ["an empty capability", withValue(hello, "capabilities", [""]), "capabilities.0: "],
    ["an inventory that is an object", withValue(hello, "inventory", {}), "inventory: "],
    ["lines that are a string", withValue(output, "lines", "hello"), "lines: "],
    ["empty lines", withValue(output, "lines", []), "lines: "],
    ["a line from stdin", withValue(output, "lines.0.source", "stdin"), "lines.0.source: "],
    ["a numeric line text", withValue(output, "lines.0.text", 5), "lines.0.text: "],
    ["an empty occurred", withValue(output, "lines.0.occurred", ""), "lines.0.occurred: "],
    ["a 65-character occurred", withValue(output, "lines.0.occurred", "2".repeat(65)), "lines.0.occurred: "],
    ["an unknown outcome kind", withValue(exitMessage, "outcome.kind", "crashed"), "outcome.kind: "],
    ["an outcome that is a string", withValue(exitMessage, "outcome", "exited"), "outcome: "],
    ["exit code 256", withValue(exitMessage, "outcome.code", 256), "outcome.code: "],
    ["exit code -1", withValue(exitMessage, "outcome.code", -1), "outcome.code: "],
    ["signal number 0", { ...exitMessage, outcome: { kind: "signaled", signal: "SIGX", number: 0 } }, "outcome.number: "],
    ["signal number 65", { ...exitMessage, outcome: { kind: "signaled", signal: "SIGX", number: 65 } }, "outcome.number: "],
    ["an empty signal name", { ...exitMessage, outcome: { kind: "signaled", signal: "", number: 9 } }, "outcome.signal: "],
    ["a 4097-character failure message", { ...exitMessage, outcome: { kind: "failed", message: "m".repeat(4097) } }, "outcome.message: "],
    ["nine cancel signals", { ...exitMessage, outcome: { kind: "cancelled", signals: Array(9).fill("SIGTERM") } }, "outcome.signals: "],
  ])("rejects %s with BadFrame", (_name, frame, prefix) => {
    expectBadFrame(runner(frame), prefix);
  });
});

describe("parseRunnerMessage: tickets", () => {
  it.each([
    ["an empty ticket", ""],
    ["a ticket with a slash", "t/1"],
    ["a ticket with a backslash", "t\\1"],
    ["a ticket with a space", "t 1"],
    ["a ticket with a colon", "t:1"],
    ["a ticket with a NUL", "t\u00001"],
    ["a ticket with a non-ASCII letter", "tü"],
    ["a ticket with a trailing newline", "t1\n"],
    ["a 129-character ticket", "t".repeat(129)],
  ])("rejects %s", (_name, ticket) => {
    expectBadFrame(runner({ ...started, ticket }), "ticket: ");
  });

  it("rejects an invalid ticket inside the inventory", () => {
    expectBadFrame(runner(withValue(hello, "inventory.1.ticket", "../etc")), "inventory.1.ticket: ");
  });

  it("rejects a numeric ticket", () => {
    expectBadFrame(runner({ ...started, ticket: 17 }), "ticket: ");
  });
});

describe("frame size", () => {
  /** A valid output frame padded to exactly `size` bytes of ASCII. */
  function outputFrameOfSize(size: number): string {
    const empty = JSON.stringify({ ...output, lines: [{ source: "stdout", text: "", occurred: OCCURRED }] });
    const frame = JSON.stringify({ ...output, lines: [{ source: "stdout", text: "x".repeat(size - empty.length), occurred: OCCURRED }] });
    expect(bytes(frame)).toBe(size);
    return frame;
  }

  it("accepts a frame of exactly MAX_FRAME_BYTES", () => {
    const result = parseRunnerMessage(outputFrameOfSize(MAX_FRAME_BYTES));
    expect(result.ok).toBe(true);
  });

  it("rejects a frame one byte over MAX_FRAME_BYTES with FrameTooLarge", () => {
    expect(parseRunnerMessage(outputFrameOfSize(MAX_FRAME_BYTES + 1))).toEqual({
      ok: false,
      code: CloseCode.FrameTooLarge,
      reason: "frame too large",
    });
  });

  it("rejects an oversized frame with FrameTooLarge before looking at its JSON", () => {
    expect(parseRunnerMessage("{".repeat(MAX_FRAME_BYTES + 1))).toMatchObject({ ok: false, code: CloseCode.FrameTooLarge });
  });

  it("rejects an oversized control frame with FrameTooLarge too", () => {
    expect(parseControlMessage(" ".repeat(MAX_FRAME_BYTES + 1))).toMatchObject({ ok: false, code: CloseCode.FrameTooLarge });
  });

  it("measures the limit in UTF-8 bytes, not UTF-16 code units", () => {
    // Each "é" is one UTF-16 unit but two UTF-8 bytes: this frame is ~16 MiB of characters, ~32 MiB on the wire.
    const text = "é".repeat(MAX_FRAME_BYTES / 2 + 16);
    const frame = JSON.stringify({ ...output, lines: [{ source: "stdout", text, occurred: OCCURRED }] });
    expect(frame.length).toBeLessThanOrEqual(MAX_FRAME_BYTES);
    expect(bytes(frame)).toBeGreaterThan(MAX_FRAME_BYTES);
    expect(parseRunnerMessage(frame)).toEqual({ ok: false, code: CloseCode.FrameTooLarge, reason: "frame too large" });
  });
});

describe("close reasons", () => {
  it("keeps the reason for a long unknown ASCII field name within 123 bytes", () => {
    const result = runner({ ...started, ["x".repeat(500)]: 1 });
    expect(result).toMatchObject({ ok: false, code: CloseCode.BadFrame });
    if (!result.ok) {
      expect(result.reason.startsWith('frame: Unrecognized key: "xxx')).toBe(true);
      expectSendableReason(result.reason);
    }
  });

  it("keeps the reason for a long non-ASCII unknown field name within 123 bytes of UTF-8", () => {
    const result = runner({ ...started, ["é".repeat(200)]: 1 });
    expect(result).toMatchObject({ ok: false, code: CloseCode.BadFrame });
    if (!result.ok) expectSendableReason(result.reason);
  });

  it("never cuts a close reason in the middle of a surrogate pair", () => {
    // The odd "a" shifts the emoji so that a cut at any even code-unit count lands inside a pair.
    const result = runner({ ...started, ["a" + "😀".repeat(100)]: 1 });
    expect(result).toMatchObject({ ok: false, code: CloseCode.BadFrame });
    if (!result.ok) {
      expect(new TextDecoder().decode(utf8.encode(result.reason)), "close reason ends in half a surrogate pair").toBe(result.reason);
      expectSendableReason(result.reason);
    }
  });

  it("keeps the reason for a long non-ASCII environment name in a dispatch within 123 bytes", () => {
    const frame = withValue(dispatch, "script.environment", { ["ü".repeat(150)]: 5 });
    const result = control(frame);
    expect(result).toMatchObject({ ok: false, code: CloseCode.BadFrame });
    if (!result.ok) expectSendableReason(result.reason);
  });

  it("keeps every fixed reason within 123 bytes", () => {
    const reasons = [
      parseRunnerMessage(new ArrayBuffer(1)),
      parseRunnerMessage("{"),
      parseRunnerMessage("x".repeat(MAX_FRAME_BYTES + 1)),
      runner({ type: "nope" }),
      control({ type: "nope" }),
    ];
    for (const result of reasons) {
      expect(result.ok).toBe(false);
      if (!result.ok) expectSendableReason(result.reason);
    }
  });
});

// ------------------------------------------------------------------ control messages

const welcome = {
  type: "welcome",
  protocol: PROTOCOL_VERSION,
  machineId: "web-01",
  connectionId: "c-1",
  heartbeatMs: 10_000,
  resume: [
    { ticket: "t1", fence: 3, action: "continue", nextSequence: 12 },
    { ticket: "t2", fence: 4, action: "cancel", nextSequence: 0 },
    { ticket: "t3", fence: 5, action: "abandon", nextSequence: 1 },
    { ticket: "t4", fence: 6, action: "forget", nextSequence: 2 },
  ],
  watch: [{ ticket: "t0", fence: 2, pid: 4242 }],
};
const dispatch = {
  type: "dispatch",
  ticket: "t1",
  fence: 3,
  script: {
    scriptBody: "echo hello",
    shell: "bash",
    arguments: ["a", "b"],
    environment: { NAME: "value" },
    files: [{ name: "config.json", contents: "e30=" }],
  },
};
const ack = { type: "ack", ticket: "t1", fence: 3, nextSequence: 15 };
const exitAck = { type: "exit_ack", ticket: "t1", fence: 3 };
const cancel = { type: "cancel", ticket: "t1", fence: 3 };
const abandon = { type: "abandon", ticket: "t1", fence: 3, killProcess: false };
const deleteWorkspace = { type: "delete_workspace", ticket: "t1" };

describe("parseControlMessage: valid frames", () => {
  it.each([
    ["welcome", welcome],
    ["welcome with nothing to resume", { ...welcome, resume: [] }],
    ["welcome with nothing to watch", { ...welcome, watch: [] }],
    ["dispatch", dispatch],
    ["dispatch for pwsh with no files", withValue(dispatch, "script", { scriptBody: "", shell: "pwsh", arguments: [], environment: {}, files: [] })],
    ["ack", ack],
    ["exit_ack", exitAck],
    ["cancel", cancel],
    ["abandon", abandon],
    ["abandon that kills the process", { ...abandon, killProcess: true }],
    ["delete_workspace", deleteWorkspace],
  ])("accepts %s and returns it unchanged", (_name, message) => {
    expect(control(message)).toEqual({ ok: true, message });
  });
});

describe("parseControlMessage: malformed frames", () => {
  it("rejects a binary frame with BadFrame", () => {
    expect(parseControlMessage(new ArrayBuffer(8))).toEqual({
      ok: false,
      code: CloseCode.BadFrame,
      reason: "binary frames are not part of the protocol here",
    });
  });

  it("rejects invalid JSON with BadFrame", () => {
    expect(parseControlMessage("{nope")).toEqual({ ok: false, code: CloseCode.BadFrame, reason: "frame is not valid JSON" });
  });

  it.each([
    ["welcome", welcome],
    ["dispatch", dispatch],
    ["ack", ack],
    ["exit_ack", exitAck],
    ["cancel", cancel],
    ["abandon", abandon],
    ["delete_workspace", deleteWorkspace],
  ])("rejects an extra top-level field on %s", (_name, base) => {
    expect(control({ ...base, extra: true })).toEqual({ ok: false, code: CloseCode.BadFrame, reason: 'frame: Unrecognized key: "extra"' });
  });

  const missing = (
    [
      ["welcome", welcome],
      ["dispatch", dispatch],
      ["ack", ack],
      ["exit_ack", exitAck],
      ["cancel", cancel],
      ["abandon", abandon],
      ["delete_workspace", deleteWorkspace],
    ] as Array<[string, Record<string, unknown>]>
  ).flatMap(([name, base]) =>
    Object.keys(base)
      .filter((key) => key !== "type")
      .map((key) => [name, key, base] as const),
  );

  it.each(missing)("rejects %s without %s, naming the field", (_name, key, base) => {
    expectBadFrame(control(withValue(base, key, undefined)), `${key}: `);
  });

  it.each([
    ["a runner message type", { ...hello }, "type: "],
    ["an unknown type", { type: "reboot" }, "type: "],
    ["a resume action that does not exist", withValue(welcome, "resume.0.action", "pause"), "resume.0.action: "],
    ["an extra field in a resume entry", withValue(welcome, "resume.1.pid", 3), 'resume.1: Unrecognized key: "pid"'],
    ["a resume entry with fence 0", withValue(welcome, "resume.2.fence", 0), "resume.2.fence: "],
    ["a resume entry with a negative nextSequence", withValue(welcome, "resume.0.nextSequence", -1), "resume.0.nextSequence: "],
    ["a watch entry with pid 0", withValue(welcome, "watch.0.pid", 0), "watch.0.pid: "],
    ["an extra field in a watch entry", withValue(welcome, "watch.0.extra", 1), 'watch.0: Unrecognized key: "extra"'],
    ["heartbeatMs 0", withValue(welcome, "heartbeatMs", 0), "heartbeatMs: "],
    ["a non-integer heartbeatMs", withValue(welcome, "heartbeatMs", 2.5), "heartbeatMs: "],
    ["an extra field in the script payload", withValue(dispatch, "script.isolation", "full"), 'script: Unrecognized key: "isolation"'],
    ["an extra field in a payload file", withValue(dispatch, "script.files.0.mode", 493), 'script.files.0: Unrecognized key: "mode"'],
    ["a payload file with invalid base64", withValue(dispatch, "script.files.0.contents", "abc"), "script.files.0.contents: "],
    ["a payload file named '..'", withValue(dispatch, "script.files.0.name", ".."), "script.files.0.name: "],
    ["a non-string environment value", withValue(dispatch, "script.environment.NAME", 5), "script.environment.NAME: "],
    ["an unknown shell", withValue(dispatch, "script.shell", "zsh"), "script.shell: "],
    ["a dispatch with fence 0", withValue(dispatch, "fence", 0), "fence: "],
    ["an ack with a non-integer nextSequence", withValue(ack, "nextSequence", 1.5), "nextSequence: "],
    ["an abandon with a string killProcess", withValue(abandon, "killProcess", "true"), "killProcess: "],
    ["a cancel with a negative fence", withValue(cancel, "fence", -2), "fence: "],
    ["a delete_workspace with a fence", { ...deleteWorkspace, fence: 3 }, 'frame: Unrecognized key: "fence"'],
    ["a delete_workspace for an invalid ticket", { ...deleteWorkspace, ticket: "../../home" }, "ticket: "],
    ["an exit_ack with a 129-character ticket", { ...exitAck, ticket: "a".repeat(129) }, "ticket: "],
  ])("rejects %s with BadFrame", (_name, frame, prefix) => {
    expectBadFrame(control(frame), prefix);
  });
});

describe("CloseCode", () => {
  it("keeps the documented numeric values", () => {
    expect({
      Normal: CloseCode.Normal,
      Replaced: CloseCode.Replaced,
      TokenRevoked: CloseCode.TokenRevoked,
      HeartbeatTimeout: CloseCode.HeartbeatTimeout,
      BadFrame: CloseCode.BadFrame,
      HandshakeRequired: CloseCode.HandshakeRequired,
      OutOfOrder: CloseCode.OutOfOrder,
      FrameTooLarge: CloseCode.FrameTooLarge,
      UnsupportedProtocol: CloseCode.UnsupportedProtocol,
      StorageFailure: CloseCode.StorageFailure,
    }).toEqual({
      Normal: 1000,
      StorageFailure: 1011,
      Replaced: 4000,
      TokenRevoked: 4001,
      HeartbeatTimeout: 4002,
      BadFrame: 4400,
      HandshakeRequired: 4403,
      OutOfOrder: 4409,
      FrameTooLarge: 4413,
      UnsupportedProtocol: 4426,
    });
  });

  it("uses only codes an application may send in a close frame", () => {
    const codes = Object.values(CloseCode).filter((v): v is number => typeof v === "number");
    expect(codes).toHaveLength(10);
    // 1000 and 1011 (an endpoint's internal error) are the standard codes an endpoint may send; 4xxx are private.
    for (const code of codes) expect(code === 1000 || code === 1011 || (code >= 4000 && code <= 4999), `code ${code}`).toBe(true);
    expect(new Set(codes).size).toBe(codes.length);
  });
});

describe("output frames in blocks", () => {
  it("accepts lines in blocks and reads them back one by one", () => {
    const parsed = parseRunnerMessage(JSON.stringify(blockOutput));
    expect(parsed.ok).toBe(true);
    if (!parsed.ok || parsed.message.type !== "output") return;
    expect(outputLineCount(parsed.message)).toBe(4);
    expect(outputLines(parsed.message)).toEqual([
      { source: "stdout", text: "hello", occurred: OCCURRED },
      { source: "stdout", text: "", occurred: OCCURRED },
      { source: "stdout", text: "world", occurred: OCCURRED },
      { source: "stderr", text: "", occurred: OCCURRED },
    ]);
  });

  it.each([
    ["a frame with both lines and blocks", { ...blockOutput, lines: output.lines }, "lines: "],
    ["a frame with neither", { ...blockOutput, blocks: undefined }, "lines: "],
    ["empty blocks", withValue(blockOutput, "blocks", []), "blocks: "],
    ["a count that is one too many", withValue(blockOutput, "blocks.0.count", 4), "blocks.0: "],
    ["a count that is one too few", withValue(blockOutput, "blocks.0.count", 2), "blocks.0: "],
    ["a count of 0", withValue(blockOutput, "blocks.1.count", 0), "blocks.1.count: "],
    ["a block from stdin", withValue(blockOutput, "blocks.0.source", "stdin"), "blocks.0.source: "],
    ["a block without occurred", withValue(blockOutput, "blocks.0.occurred", undefined), "blocks.0.occurred: "],
    ["a numeric block text", withValue(blockOutput, "blocks.0.text", 5), "blocks.0.text: "],
    [
      "more lines than a frame may carry",
      withValue(blockOutput, "blocks", [
        { source: "stdout", occurred: OCCURRED, count: 60_000, text: "\n".repeat(59_999) },
        { source: "stdout", occurred: OCCURRED, count: 60_000, text: "\n".repeat(59_999) },
      ]),
      "blocks: ",
    ],
  ])("rejects %s", (_name, frame, prefix) => {
    expectBadFrame(runner(frame), prefix);
  });

  it("splits a block after any of its lines", () => {
    const block = { source: "stdout" as const, occurred: OCCURRED, count: 4, text: "a\n\nbc\nd" };
    expect(splitBlock(block, 1)).toEqual([
      { ...block, count: 1, text: "a" },
      { ...block, count: 3, text: "\nbc\nd" },
    ]);
    expect(splitBlock(block, 2)).toEqual([
      { ...block, count: 2, text: "a\n" },
      { ...block, count: 2, text: "bc\nd" },
    ]);
    expect(splitBlock(block, 3)).toEqual([
      { ...block, count: 3, text: "a\n\nbc" },
      { ...block, count: 1, text: "d" },
    ]);
    expect(countNewlines(block.text)).toBe(3);
  });
});

describe("binary output frames", () => {
  const bytes = (text: string) => utf8.encode(text);
  const blocks: ByteBlock[] = [
    { source: "stdout", occurred: OCCURRED, count: 3, bytes: bytes("hello\n\nwörld") },
    { source: "stderr", occurred: OCCURRED, count: 1, bytes: bytes("") },
  ];
  const frame = { ticket: "t1", fence: 3, sequence: 12, blocks };

  /** An encoded frame with its header replaced. */
  function withHeader(header: unknown, body: Uint8Array = new Uint8Array(0)): Uint8Array {
    const json = bytes(JSON.stringify(header));
    const out = new Uint8Array(4 + json.length + body.length);
    new DataView(out.buffer).setUint32(0, json.length);
    out.set(json, 4);
    out.set(body, 4 + json.length);
    return out;
  }

  const header = { type: "output", ticket: "t1", fence: 3, sequence: 12, blocks: [{ source: "stdout", occurred: OCCURRED, count: 2, bytes: 3 }] };

  it("decodes what encodeOutputFrame encodes into the output message with text blocks", () => {
    expect(parseRunnerMessage(Buffer.concat(encodeOutputFrame(frame)))).toEqual({
      ok: true,
      message: {
        type: "output",
        ticket: "t1",
        fence: 3,
        sequence: 12,
        blocks: [
          { source: "stdout", occurred: OCCURRED, count: 3, text: "hello\n\nwörld" },
          { source: "stderr", occurred: OCCURRED, count: 1, text: "" },
        ],
      },
    });
  });

  it("takes the frame as an ArrayBuffer too, as the Worker receives it", () => {
    const encoded = Buffer.concat(encodeOutputFrame(frame));
    const copy = encoded.buffer.slice(encoded.byteOffset, encoded.byteOffset + encoded.length) as ArrayBuffer;
    expect(parseRunnerMessage(copy).ok).toBe(true);
  });

  it("decodes invalid UTF-8 to U+FFFD, as a line of text would", () => {
    const parsed = parseRunnerMessage(withHeader(header, new Uint8Array([0x61, 0x0a, 0xff])));
    expect(parsed.ok && parsed.message.type === "output" && parsed.message.blocks?.[0]?.text).toBe("a\n\ufffd");
  });

  it.each([
    ["a frame shorter than 4 bytes", new Uint8Array([0, 0, 1]), "binary frame without a header"],
    ["a header length past the end", withHeader(header).subarray(0, 10), "binary frame shorter than its header"],
    ["a header that is not JSON", (() => { const out = withHeader(header); out[4] = 0x7b; out[5] = 0x7b; return out; })(), "binary frame header is not valid JSON"],
    ["a header of another message type", withHeader({ ...header, type: "started" }), "header.type: "],
    ["a header with an unknown field", withHeader({ ...header, lines: [] }), "header: "],
    ["a block with a negative length", withHeader({ ...header, blocks: [{ ...header.blocks[0], bytes: -1 }] }), "header.blocks.0.bytes: "],
    ["blocks longer than the frame", withHeader(header, bytes("a\n")), "binary frame shorter than its blocks"],
    ["bytes after the last block", withHeader(header, bytes("a\nbc")), "binary frame longer than its blocks"],
    ["a count that does not match the newlines", withHeader(header, bytes("abc")), "blocks.0: "],
  ])("rejects %s with BadFrame", (_name, data, prefix) => {
    const parsed = parseRunnerMessage(data);
    expect(parsed.ok).toBe(false);
    if (parsed.ok) return;
    expect(parsed.code).toBe(CloseCode.BadFrame);
    expect(parsed.reason.startsWith(prefix), parsed.reason).toBe(true);
  });

  it("rejects a binary frame over MAX_FRAME_BYTES with FrameTooLarge", () => {
    expect(parseRunnerMessage(new Uint8Array(MAX_FRAME_BYTES + 1))).toMatchObject({ ok: false, code: CloseCode.FrameTooLarge });
  });

  it("splits a byte block after any of its lines", () => {
    const block: ByteBlock = { source: "stdout", occurred: OCCURRED, count: 3, bytes: bytes("a\n\nbc") };
    const text = ([first, second]: [ByteBlock, ByteBlock]) => [first.count, Buffer.from(first.bytes).toString(), second.count, Buffer.from(second.bytes).toString()];
    expect(text(splitByteBlock(block, 1))).toEqual([1, "a", 2, "\nbc"]);
    expect(text(splitByteBlock(block, 2))).toEqual([2, "a\n", 1, "bc"]);
  });
});
