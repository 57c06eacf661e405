/**
 * The runner protocol (see PROTOCOL.md): one zod discriminated union per direction, the close codes
 * that name each violation, and the heartbeat frames. Both ends parse every frame with these.
 */
import { z } from "zod";
import { Ticket } from "./ids.js";
import { ScriptPayload } from "./api.js";

/** The protocol version both ends speak. */
export const PROTOCOL_VERSION = 1;

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

/** One line of output as the runner reports it. */
export const OutputLine = z.strictObject({
  source: z.enum(["stdout", "stderr", "debug"]),
  text: z.string(),
  occurred: Iso,
});
/** One output line. */
export type OutputLine = z.infer<typeof OutputLine>;

/** How the process ended, as the runner saw it. */
export const Outcome = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("exited"), code: z.int().min(0).max(255) }),
  z.strictObject({ kind: z.literal("signaled"), signal: z.string().min(1).max(32), number: z.int().min(1).max(64) }),
  z.strictObject({ kind: z.literal("failed"), message: z.string().max(4096) }),
  z.strictObject({ kind: z.literal("cancelled"), signals: z.array(z.string().min(1).max(32)).max(8) }),
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
    /** Every script this runner process still tracks. */
    inventory: z
      .array(z.strictObject({ ticket: Ticket, fence: Fence, nextSequence: Sequence, exited: z.boolean() }))
      .max(10_000),
  }),
  z.strictObject({ type: z.literal("started"), ticket: Ticket, fence: Fence, pid: z.int().min(1) }),
  z.strictObject({
    type: z.literal("output"),
    ticket: Ticket,
    fence: Fence,
    /** The runner-side sequence of the first line; lines are numbered consecutively from 0 per script. */
    sequence: Sequence,
    lines: z.array(OutputLine).min(1).max(100_000),
  }),
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
      z.strictObject({ ticket: Ticket, fence: Fence, action: ResumeAction, nextSequence: Sequence }),
    ),
    /** Abandoned processes that may still be running: report `abandoned_exit` when each is gone. */
    watch: z.array(z.strictObject({ ticket: Ticket, fence: Fence, pid: z.int().min(1) })).max(10_000),
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

function parseFrame<T>(schema: z.ZodType<T>, data: string | ArrayBuffer): ParseResult<T> {
  if (typeof data !== "string") return { ok: false, code: CloseCode.BadFrame, reason: "binary frames are not part of the protocol" };
  if (utf8Length(data) > MAX_FRAME_BYTES) return { ok: false, code: CloseCode.FrameTooLarge, reason: "frame too large" };
  let json: unknown;
  try {
    json = JSON.parse(data);
  } catch {
    return { ok: false, code: CloseCode.BadFrame, reason: "frame is not valid JSON" };
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
export function parseRunnerMessage(data: string | ArrayBuffer): ParseResult<RunnerMessage> {
  return parseFrame(RunnerMessage, data);
}

/** Parses a frame the runner received from the control plane. */
export function parseControlMessage(data: string | ArrayBuffer): ParseResult<ControlMessage> {
  return parseFrame(ControlMessage, data);
}
