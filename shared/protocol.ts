/**
 * The runner protocol (see PROTOCOL.md): one zod discriminated union per direction, the close codes
 * that name each violation, and the heartbeat frames. Both ends parse every frame with these.
 */
import { z } from "zod";
import { Ticket } from "./ids.js";
import { ScriptPayload } from "./api.js";

/**
 * The newest protocol version this code speaks. Version 2 adds, on top of version 1: `killGraceMs` and each
 * inventory entry's `reattached` in `hello`; `startTime` and `bootId` in `started`; the `lost` outcome; the
 * `draining` message; `killProcess` in `welcome` resume answers and `startTime`, `bootId`, `kill` in its watch
 * entries. A runner offers its newest version in `hello`; a control plane answers with the version it will speak,
 * and a runner refused during the handshake (4426, or 4400 from a control plane that knows no version 2 field)
 * says `hello` again in version 1 (see PROTOCOL.md, "Versions").
 */
export const PROTOCOL_VERSION = 2;

/** Every protocol version this code can speak, oldest first. */
export const SUPPORTED_PROTOCOLS: readonly number[] = [1, 2];

/** Heartbeat: the runner sends this text frame; the control plane answers `HEARTBEAT_PONG` without waking up. */
export const HEARTBEAT_PING = "ping";
/** The control plane's answer to a heartbeat ping. */
export const HEARTBEAT_PONG = "pong";

/** Largest frame either side accepts, in bytes (a dispatch carries up to an 8 MiB request). */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

/** Capabilities a runner may advertise. */
export const CAPABILITIES = ["script.v1", "script.abandon"] as const;

/** Close codes; each names why a connection was closed (4xxx are application codes). */
export enum CloseCode {
  /** The runner is shutting down, or the control plane closed the socket after the runner did. */
  Normal = 1000,
  /** The control plane could not store a change (storage failed); the runner reconnects and resumes. */
  StorageFailure = 1011,
  /** A newer connection for the same machine replaced this one. */
  Replaced = 4000,
  /** The runner token this connection used was revoked. */
  TokenRevoked = 4001,
  /** No heartbeat within the allowed time. */
  HeartbeatTimeout = 4002,
  /** A frame that is not valid JSON or does not match the schema. */
  BadFrame = 4400,
  /** A frame other than `hello` before the handshake, or a second `hello`. */
  HandshakeRequired = 4403,
  /** A sequence gap, or an exit before all of its output. */
  OutOfOrder = 4409,
  /** A frame larger than `MAX_FRAME_BYTES`. */
  FrameTooLarge = 4413,
  /** The runner speaks a protocol version the control plane does not. */
  UnsupportedProtocol = 4426,
}

const Fence = z.int().min(1);
const Sequence = z.int().min(0);
const Iso = z.string().min(1).max(64);

/** Where a line of output came from: the process's two streams, or the runner itself. */
const OutputSource = z.enum(["stdout", "stderr", "debug"]);

/** One line of output as the runner reports it. */
export const OutputLine = z.strictObject({
  source: OutputSource,
  text: z.string(),
  occurred: Iso,
});
/** One output line. */
export type OutputLine = z.infer<typeof OutputLine>;

/** Most lines one output frame may carry, in `lines` or in all of its blocks together. */
export const MAX_FRAME_LINES = 100_000;

/**
 * Consecutive lines of one source that arrived at the same moment, as one text: the lines joined with `\n`
 * (a line never contains `\n`), `count` of them. A runner sends its output as blocks of bytes in binary frames
 * (`encodeOutputFrame`), one block per pipe read rather than one object per line; parsed, they are these.
 */
export const OutputBlock = z
  .strictObject({
    source: OutputSource,
    occurred: Iso,
    count: z.int().min(1).max(MAX_FRAME_LINES),
    text: z.string(),
  })
  .refine((block) => countNewlines(block.text) === block.count - 1, { message: "count must be one more than the newlines in text" });
/** A block of output lines. */
export type OutputBlock = z.infer<typeof OutputBlock>;

/** How many `\n` a text holds. */
export function countNewlines(text: string): number {
  let count = 0;
  for (let at = text.indexOf("\n"); at !== -1; at = text.indexOf("\n", at + 1)) count += 1;
  return count;
}

/** Where the line after the first `lines` lines of a block's text begins. */
function lineStart(text: string, lines: number): number {
  let at = 0;
  for (let i = 0; i < lines; i += 1) at = text.indexOf("\n", at) + 1;
  return at;
}

/** Splits a block after its first `lines` lines (0 < lines < count). */
export function splitBlock(block: OutputBlock, lines: number): [OutputBlock, OutputBlock] {
  const at = lineStart(block.text, lines);
  return [
    { source: block.source, occurred: block.occurred, count: lines, text: block.text.slice(0, at - 1) },
    { source: block.source, occurred: block.occurred, count: block.count - lines, text: block.text.slice(at) },
  ];
}

/**
 * A block as the runner holds and sends it: the lines' raw bytes (UTF-8 as the process wrote them, joined with
 * `\n`), not yet decoded. The control plane decodes them (invalid bytes become U+FFFD).
 */
export interface ByteBlock {
  source: OutputBlock["source"];
  occurred: string;
  count: number;
  bytes: Uint8Array;
}

/** Splits a byte block after its first `lines` lines (0 < lines < count). */
export function splitByteBlock(block: ByteBlock, lines: number): [ByteBlock, ByteBlock] {
  let at = 0;
  for (let i = 0; i < lines; i += 1) at = block.bytes.indexOf(NEWLINE_BYTE, at) + 1;
  return [
    { source: block.source, occurred: block.occurred, count: lines, bytes: block.bytes.subarray(0, at - 1) },
    { source: block.source, occurred: block.occurred, count: block.count - lines, bytes: block.bytes.subarray(at) },
  ];
}

const NEWLINE_BYTE = 0x0a;
const utf8Decoder = new TextDecoder();
const utf8Encoder = new TextEncoder();

/** A byte block's text. */
export function decodeByteBlock(block: ByteBlock): OutputBlock {
  return { source: block.source, occurred: block.occurred, count: block.count, text: utf8Decoder.decode(block.bytes) };
}

/** The header of a binary output frame: the `output` message with each block's byte length instead of its text. */
const BinaryOutputHeader = z.strictObject({
  type: z.literal("output"),
  ticket: Ticket,
  fence: Fence,
  sequence: Sequence,
  blocks: z
    .array(z.strictObject({ source: OutputSource, occurred: Iso, count: z.int().min(1).max(MAX_FRAME_LINES), bytes: z.int().min(0) }))
    .min(1)
    .max(MAX_FRAME_LINES),
});

/**
 * Encodes an `output` message as a binary frame: a 4-byte big-endian header length, the header (JSON), then
 * every block's bytes in order. Bulk output goes this way because JSON would escape every newline on one side
 * and unescape it on the other. Returns the frame's parts, to be sent as one message (concatenated, in order).
 */
export function encodeOutputFrame(frame: { ticket: string; fence: number; sequence: number; blocks: readonly ByteBlock[] }): Uint8Array[] {
  const header = utf8Encoder.encode(
    JSON.stringify({
      type: "output",
      ticket: frame.ticket,
      fence: frame.fence,
      sequence: frame.sequence,
      blocks: frame.blocks.map((block) => ({ source: block.source, occurred: block.occurred, count: block.count, bytes: block.bytes.length })),
    }),
  );
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, header.length);
  return [length, header, ...frame.blocks.map((block) => block.bytes)];
}

/** Decodes a binary frame into the `output` message it carries (still to be checked against the schema). */
function decodeOutputFrame(data: ArrayBuffer | Uint8Array): { ok: true; json: unknown } | { ok: false; reason: string } {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.length < 4) return { ok: false, reason: "binary frame without a header" };
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(0);
  if (headerLength > bytes.length - 4) return { ok: false, reason: "binary frame shorter than its header" };
  let json: unknown;
  try {
    json = JSON.parse(utf8Decoder.decode(bytes.subarray(4, 4 + headerLength)));
  } catch {
    return { ok: false, reason: "binary frame header is not valid JSON" };
  }
  const header = BinaryOutputHeader.safeParse(json);
  if (!header.success) {
    const issue = header.error.issues[0];
    const where = ["header", ...(issue?.path ?? [])].join(".");
    return { ok: false, reason: `${where}: ${issue?.message ?? "invalid"}` };
  }
  let at = 4 + headerLength;
  const blocks: OutputBlock[] = [];
  for (const block of header.data.blocks) {
    if (block.bytes > bytes.length - at) return { ok: false, reason: "binary frame shorter than its blocks" };
    blocks.push({ source: block.source, occurred: block.occurred, count: block.count, text: utf8Decoder.decode(bytes.subarray(at, at + block.bytes)) });
    at += block.bytes;
  }
  if (at !== bytes.length) return { ok: false, reason: "binary frame longer than its blocks" };
  return { ok: true, json: { ...header.data, blocks } };
}

/** The lines of blocks, one object each. */
export function blockLines(blocks: readonly OutputBlock[]): OutputLine[] {
  return blocks.flatMap((block) => block.text.split("\n").map((text) => ({ source: block.source, text, occurred: block.occurred })));
}

/** The lines an output frame carries, whichever of its two forms it uses. */
export function outputLines(message: { lines?: OutputLine[] | undefined; blocks?: OutputBlock[] | undefined }): OutputLine[] {
  return message.lines ?? blockLines(message.blocks ?? []);
}

/** How many lines an output frame carries. */
export function outputLineCount(message: { lines?: OutputLine[] | undefined; blocks?: OutputBlock[] | undefined }): number {
  if (message.lines) return message.lines.length;
  let count = 0;
  for (const block of message.blocks ?? []) count += block.count;
  return count;
}

/** `/proc/sys/kernel/random/boot_id`: tells a process of this boot from one of an earlier boot. */
export const BootId = z.string().min(1).max(64);

/**
 * One OS process, named for good: its pid, and where known its start time (`/proc/<pid>/stat` field 22, clock
 * ticks after boot) and the boot it belongs to. A pid alone may name an unrelated process after a reuse or a reboot.
 */
export const ProcessRef = z.strictObject({
  pid: z.int().min(1),
  startTime: z.int().min(0).optional(),
  bootId: BootId.optional(),
});
/** A process named by pid, start time and boot. */
export type ProcessRef = z.infer<typeof ProcessRef>;

/** Most surviving processes one `lost` outcome lists. */
export const MAX_SURVIVORS = 1_000;

/** Longest `failed` outcome message the protocol accepts. */
export const MAX_FAILURE_MESSAGE = 4096;

/** `message` cut to `MAX_FAILURE_MESSAGE`, with an ellipsis when it was cut. */
export function clampFailureMessage(message: string): string {
  return message.length > MAX_FAILURE_MESSAGE ? `${message.slice(0, MAX_FAILURE_MESSAGE - 1)}…` : message;
}

/** How the process ended, as the runner saw it. */
export const Outcome = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("exited"), code: z.int().min(0).max(255) }),
  z.strictObject({ kind: z.literal("signaled"), signal: z.string().min(1).max(32), number: z.int().min(1).max(64) }),
  z.strictObject({ kind: z.literal("failed"), message: z.string().max(MAX_FAILURE_MESSAGE) }),
  z.strictObject({ kind: z.literal("cancelled"), signals: z.array(z.string().min(1).max(32)).max(8) }),
  /**
   * The runner lost the script: a new runner process found it left by its predecessor and could not re-attach
   * to it, so it stopped it as a cancel would (`signals`, none when nothing was left alive). `survivors` are the
   * processes that would not die: the control plane lists them as abandoned-maybe-running (-46).
   */
  z.strictObject({
    kind: z.literal("lost"),
    signals: z.array(z.string().min(1).max(32)).max(8),
    survivors: z.array(ProcessRef).max(MAX_SURVIVORS),
  }),
]);
/** How the process ended. */
export type Outcome = z.infer<typeof Outcome>;

/** Runner → control plane. */
export const RunnerMessage = z.discriminatedUnion("type", [
  z.strictObject({
    type: z.literal("hello"),
    protocol: z.int(),
    runnerId: z.string().min(1).max(64),
    version: z.string().min(1).max(64),
    capabilities: z.array(z.string().min(1).max(64)).max(32),
    /** How long this runner waits after SIGTERM before SIGKILL when it cancels: the control plane's run timeout allows for it. */
    killGraceMs: z.int().min(0).max(24 * 60 * 60 * 1000).optional(),
    /** Every script this runner process still tracks. */
    inventory: z
      .array(
        z.strictObject({
          ticket: Ticket,
          fence: Fence,
          nextSequence: Sequence,
          exited: z.boolean(),
          /** Version 2: this runner process re-attached to the script, which an earlier runner process started. */
          reattached: z.boolean().optional(),
        }),
      )
      .max(10_000),
  }),
  z.strictObject({
    type: z.literal("started"),
    ticket: Ticket,
    fence: Fence,
    pid: z.int().min(1),
    /** With the pid, names the process for good (see `ProcessRef`). */
    startTime: z.int().min(0).optional(),
    bootId: BootId.optional(),
  }),
  z
    .strictObject({
      type: z.literal("output"),
      ticket: Ticket,
      fence: Fence,
      /** The runner-side sequence of the first line; lines are numbered consecutively from 0 per script. */
      sequence: Sequence,
      /** The lines one by one; or, instead, */
      lines: z.array(OutputLine).min(1).max(MAX_FRAME_LINES).optional(),
      /** the lines in blocks. A frame carries exactly one of the two. */
      blocks: z.array(OutputBlock).min(1).max(MAX_FRAME_LINES).optional(),
    })
    .refine((frame) => (frame.lines === undefined) !== (frame.blocks === undefined), {
      message: "an output frame carries either lines or blocks",
      path: ["lines"],
    })
    .refine((frame) => outputLineCount(frame) <= MAX_FRAME_LINES, { message: `an output frame carries at most ${MAX_FRAME_LINES} lines`, path: ["blocks"] }),
  z.strictObject({
    type: z.literal("exit"),
    ticket: Ticket,
    fence: Fence,
    /** How many lines the script produced in all; the control plane must have them all first. */
    lineCount: Sequence,
    outcome: Outcome,
  }),
  /** An abandoned process (one the control plane asked the runner to watch) has exited. */
  z.strictObject({ type: z.literal("abandoned_exit"), ticket: Ticket, fence: Fence, pid: z.int().min(1) }),
  /**
   * Version 2: the runner was asked to stop (SIGTERM) and takes no new scripts; it is about to close the connection,
   * leaving its running scripts for the next runner process to re-attach to. The control plane holds dispatches.
   */
  z.strictObject({ type: z.literal("draining") }),
]);
/** Runner → control plane. */
export type RunnerMessage = z.infer<typeof RunnerMessage>;

/** What the control plane wants done with a script the runner listed in its inventory. */
export const ResumeAction = z.enum(["continue", "cancel", "abandon", "forget"]);
/** A resume action. */
export type ResumeAction = z.infer<typeof ResumeAction>;

/** Control plane → runner. */
export const ControlMessage = z.discriminatedUnion("type", [
  z.strictObject({
    type: z.literal("welcome"),
    protocol: z.int(),
    machineId: z.string(),
    connectionId: z.string(),
    /** How often the runner should send `ping`. */
    heartbeatMs: z.int().min(1),
    /** One answer per inventory entry. */
    resume: z.array(
      z.strictObject({
        ticket: Ticket,
        fence: Fence,
        action: ResumeAction,
        nextSequence: Sequence,
        /** With `abandon`: the abandon asked for a kill of the process tree (sent while the runner was away). */
        killProcess: z.boolean().optional(),
      }),
    ),
    /**
     * Abandoned processes that may still be running: report `abandoned_exit` when each is gone. `startTime` and
     * `bootId`, when known, keep a reused pid from being taken for the process; `kill` asks for a best-effort
     * kill that was requested while no runner was connected.
     */
    watch: z
      .array(
        z.strictObject({
          ticket: Ticket,
          fence: Fence,
          pid: z.int().min(1),
          startTime: z.int().min(0).optional(),
          bootId: BootId.optional(),
          kill: z.boolean().optional(),
        }),
      )
      .max(10_000),
  }),
  z.strictObject({ type: z.literal("dispatch"), ticket: Ticket, fence: Fence, script: ScriptPayload }),
  z.strictObject({ type: z.literal("ack"), ticket: Ticket, fence: Fence, nextSequence: Sequence }),
  z.strictObject({ type: z.literal("exit_ack"), ticket: Ticket, fence: Fence }),
  z.strictObject({ type: z.literal("cancel"), ticket: Ticket, fence: Fence }),
  z.strictObject({ type: z.literal("abandon"), ticket: Ticket, fence: Fence, killProcess: z.boolean() }),
  z.strictObject({ type: z.literal("delete_workspace"), ticket: Ticket }),
]);
/** Control plane → runner. */
export type ControlMessage = z.infer<typeof ControlMessage>;

/** The result of parsing a frame: the message, or the close code and reason to close with. */
export type ParseResult<T> = { ok: true; message: T } | { ok: false; code: CloseCode; reason: string };

function parseFrame<T>(schema: z.ZodType<T>, data: string | ArrayBuffer | Uint8Array, binaryOutput: boolean): ParseResult<T> {
  let json: unknown;
  if (typeof data !== "string") {
    if (!binaryOutput) return { ok: false, code: CloseCode.BadFrame, reason: "binary frames are not part of the protocol here" };
    if (data.byteLength > MAX_FRAME_BYTES) return { ok: false, code: CloseCode.FrameTooLarge, reason: "frame too large" };
    const decoded = decodeOutputFrame(data);
    if (!decoded.ok) return { ok: false, code: CloseCode.BadFrame, reason: closeReason(decoded.reason) };
    json = decoded.json;
  } else {
    if (utf8Length(data) > MAX_FRAME_BYTES) return { ok: false, code: CloseCode.FrameTooLarge, reason: "frame too large" };
    try {
      json = JSON.parse(data);
    } catch {
      return { ok: false, code: CloseCode.BadFrame, reason: "frame is not valid JSON" };
    }
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? issue.path.join(".") : "frame";
    return { ok: false, code: CloseCode.BadFrame, reason: closeReason(`${where}: ${issue?.message ?? "invalid"}`) };
  }
  return { ok: true, message: parsed.data };
}

/** UTF-8 length of a string, without encoding it when the answer is clear from its length alone. */
function utf8Length(text: string): number {
  if (text.length * 3 <= MAX_FRAME_BYTES) return text.length; // under the limit whatever its characters
  return new TextEncoder().encode(text).byteLength;
}

/** Cuts a close reason to the 123 UTF-8 bytes WebSocket allows, on whole characters. */
export function closeReason(text: string): string {
  let bytes = 0;
  let out = "";
  for (const ch of text) {
    const size = new TextEncoder().encode(ch).byteLength;
    if (bytes + size > 123) break;
    bytes += size;
    out += ch;
  }
  return out;
}

/** Parses a frame the control plane received from a runner. */
export function parseRunnerMessage(data: string | ArrayBuffer | Uint8Array): ParseResult<RunnerMessage> {
  // A binary frame is an `output` message (`encodeOutputFrame`).
  return parseFrame(RunnerMessage, data, true);
}

/** Parses a frame the runner received from the control plane. */
export function parseControlMessage(data: string | ArrayBuffer): ParseResult<ControlMessage> {
  return parseFrame(ControlMessage, data, false);
}
