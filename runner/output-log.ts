/**
 * A run's output log: what the runner read of a script's output, written ahead, so that a new runner process can
 * give every line the very sequence number the old one gave it, and resend what the control plane had not
 * acknowledged when the old one died. Every event is appended before it reaches the line splitters and the spool
 * (one synchronous `writev` per event: a chunk of up to 64 KiB, a debug line, a stream's end, the outcome); the
 * numbering is a function of the events alone, so replaying them through fresh splitters and a fresh spool gives the
 * same lines with the same numbers.
 *
 * The log is cut into segments (`<name>.000001.log`, ...), each starting with a checkpoint: the sequence of the next
 * line and what each line splitter held at that point. A segment is deleted once the next one's checkpoint is
 * acknowledged, so the log holds little more than the unacknowledged output, which the spool's backpressure bounds.
 *
 * A record: kind (1 byte), time (float64, ms since the epoch), payload length (uint32), payload; big-endian. A
 * record cut short (the disk filled up mid-write) ends the log: it is dropped on reading and overwritten.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, readSync, readdirSync, unlinkSync, writevSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { Outcome } from "../shared/protocol.js";
import type { SplitterState } from "./line-splitter.js";

/** The two output streams. */
export type LogStream = "stdout" | "stderr";

/** One thing that happened to a script's output. */
export type LogEvent =
  | { type: "chunk"; stream: LogStream; at: number; bytes: Buffer }
  | { type: "debug"; at: number; text: string }
  | { type: "end"; stream: LogStream; at: number }
  | { type: "outcome"; at: number; outcome: Outcome };

/** Where the output stood when a segment started. */
export interface Checkpoint {
  /** The sequence of the next line. */
  sequence: number;
  splitters: Record<LogStream, SplitterState>;
  /** Streams whose end was logged. */
  ended: Record<LogStream, boolean>;
  /** Bytes of each stream logged before this point: where its spool (spool-tail.ts) is read on from. */
  positions: Record<LogStream, number>;
}

/** Segment size and naming. */
export interface OutputLogOptions {
  /** A segment this long (bytes) is followed by a new one at the next event; default `LOG_DEFAULTS.segmentBytes`. */
  segmentBytes?: number;
}

/** Default segment size: a few MiB, well below the spool's 8 MiB high-water mark. */
export const LOG_DEFAULTS = { segmentBytes: 4 * 1024 * 1024 } as const;

/** What a log holds, read back: the checkpoint of its oldest segment and every event after it, in order. */
export interface LoggedOutput {
  checkpoint: Checkpoint;
  events: LogEvent[];
}

const HEADER_BYTES = 13;

enum Kind {
  StdoutChunk = 1,
  StderrChunk = 2,
  Debug = 3,
  StdoutEnd = 4,
  StderrEnd = 5,
  Outcome = 6,
  Checkpoint = 7,
}

const Base64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/);
const SplitterJson = z.strictObject({ pending: Base64, carry: Base64, started: z.boolean() });
const CheckpointJson = z.strictObject({
  sequence: z.int().min(0),
  splitters: z.strictObject({ stdout: SplitterJson, stderr: SplitterJson }),
  ended: z.strictObject({ stdout: z.boolean(), stderr: z.boolean() }),
  positions: z.strictObject({ stdout: z.int().min(0), stderr: z.int().min(0) }),
});

/** One segment on disk. */
interface Segment {
  number: number;
  path: string;
  /** The sequence its checkpoint names. */
  sequence: number;
}

/** Appends a script's output events to its log, rotates and prunes segments. */
export class OutputLog {
  private fd: number | undefined;
  private size = 0;
  private readonly segmentBytes: number;

  private constructor(
    private readonly dir: string,
    private readonly name: string,
    /** Oldest first; the last is the one written to. */
    private readonly segments: Segment[],
    options: OutputLogOptions,
  ) {
    this.segmentBytes = options.segmentBytes ?? LOG_DEFAULTS.segmentBytes;
  }

  /** Starts a new log in `dir` whose first segment starts at `checkpoint`; throws when the file cannot be made. */
  static create(dir: string, name: string, checkpoint: Checkpoint, options: OutputLogOptions = {}): OutputLog {
    const log = new OutputLog(dir, name, [], options);
    log.startSegment(1, checkpoint);
    return log;
  }

  /**
   * Reads the log a runner process left in `dir`: its oldest checkpoint and every event since; a string saying why
   * when it cannot be used (missing, or not a log this code wrote).
   */
  static read(dir: string, name: string): LoggedOutput | string {
    const found = listSegments(dir, name);
    if (typeof found === "string") return found;
    let checkpoint: Checkpoint | undefined;
    const events: LogEvent[] = [];
    for (const [index, segment] of found.entries()) {
      let bytes: Buffer;
      try {
        bytes = readFileSync(segment.path);
      } catch (error) {
        return `cannot read ${segment.path} (${describe(error)})`;
      }
      const parsed = parseSegment(bytes, index === found.length - 1);
      if (typeof parsed === "string") return `${segment.path}: ${parsed}`;
      checkpoint ??= parsed.checkpoint;
      events.push(...parsed.events);
    }
    return checkpoint === undefined ? "the log has no segment" : { checkpoint, events };
  }

  /**
   * Opens a log `read` found, to append to its newest segment (a record cut short at its end is dropped first).
   * Throws when it cannot be opened.
   */
  static resume(dir: string, name: string, options: OutputLogOptions = {}): OutputLog {
    const found = listSegments(dir, name);
    if (typeof found === "string") throw new Error(found);
    const log = new OutputLog(dir, name, found, options);
    const last = found.at(-1)!;
    const bytes = readFileSync(last.path);
    const whole = wholeRecordsLength(bytes);
    // Appended to: every write goes to the end, after what a truncation left.
    log.fd = openSync(last.path, "a");
    if (whole < bytes.length) ftruncateSync(log.fd, whole);
    log.size = whole;
    return log;
  }

  /** Appends an event; first starts a new segment at `checkpoint()` when the current one is full. */
  append(event: LogEvent, checkpoint: () => Checkpoint): void {
    if (this.fd === undefined) return;
    if (this.size >= this.segmentBytes) {
      const next = this.segments.at(-1)!.number + 1;
      closeSync(this.fd);
      this.fd = undefined;
      this.startSegment(next, checkpoint());
    }
    this.write(encodeEvent(event));
  }

  /** Deletes the oldest segments while the next one's checkpoint is below `acknowledged` (the control plane has those lines). */
  prune(acknowledged: number): void {
    while (this.segments.length > 1 && this.segments[1]!.sequence <= acknowledged) {
      const [oldest] = this.segments.splice(0, 1);
      removeFile(oldest!.path);
    }
  }

  /** Closes the file; the log stays on disk for a later runner process. */
  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  /** Closes and deletes the whole log (its script's exit was acknowledged, or nobody will re-attach to it). */
  remove(): void {
    this.close();
    for (const segment of this.segments.splice(0)) removeFile(segment.path);
  }

  private startSegment(number: number, checkpoint: Checkpoint): void {
    const path = join(this.dir, segmentName(this.name, number));
    // "wx": a segment is never written twice; 0o600: output may hold secrets.
    this.fd = openSync(path, "wx", 0o600);
    this.size = 0;
    this.segments.push({ number, path, sequence: checkpoint.sequence });
    this.write(encodeRecord(Kind.Checkpoint, Date.now(), Buffer.from(JSON.stringify(checkpointJson(checkpoint)), "utf8")));
  }

  private write(parts: Buffer[]): void {
    // One system call: a process killed in the middle never leaves half a record.
    const written = writevSync(this.fd!, parts);
    this.size += written;
  }
}

/** The file name of segment `number`. */
function segmentName(name: string, number: number): string {
  return `${name}.${String(number).padStart(6, "0")}.log`;
}

/** The log's segments in `dir`, oldest first (their checkpoints' sequences read later); a reason when there is none or a gap. */
function listSegments(dir: string, name: string): Segment[] | string {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (error) {
    return `cannot list ${dir} (${describe(error)})`;
  }
  const pattern = new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.(\\d{6})\\.log$`);
  const segments: Segment[] = [];
  for (const entry of names) {
    const match = pattern.exec(entry);
    if (match !== null) segments.push({ number: Number(match[1]), path: join(dir, entry), sequence: 0 });
  }
  segments.sort((a, b) => a.number - b.number);
  if (segments.length === 0) return `no output log in ${dir}`;
  for (let i = 1; i < segments.length; i++) {
    if (segments[i]!.number !== segments[i - 1]!.number + 1) return `segment ${segments[i - 1]!.number + 1} of the output log is missing`;
  }
  for (const segment of segments) {
    const sequence = checkpointSequence(segment.path);
    if (sequence === undefined) return `${segment.path} does not start with a checkpoint`;
    segment.sequence = sequence;
  }
  return segments;
}

/** The sequence of a segment's checkpoint, read from its first record alone. */
function checkpointSequence(path: string): number | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return undefined;
  }
  try {
    const header = Buffer.alloc(HEADER_BYTES);
    if (readSync(fd, header, 0, HEADER_BYTES, 0) !== HEADER_BYTES || header[0] !== Kind.Checkpoint) return undefined;
    const payload = Buffer.alloc(header.readUInt32BE(9));
    if (readSync(fd, payload, 0, payload.length, HEADER_BYTES) !== payload.length) return undefined;
    return parseCheckpoint(payload)?.sequence;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** A segment's checkpoint and events; a record cut short is allowed only at the end of the newest segment. */
function parseSegment(bytes: Buffer, newest: boolean): { checkpoint: Checkpoint; events: LogEvent[] } | string {
  let checkpoint: Checkpoint | undefined;
  const events: LogEvent[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < HEADER_BYTES) return newest ? done() : "a record is cut short";
    const kind = bytes[at]!;
    const time = bytes.readDoubleBE(at + 1);
    const length = bytes.readUInt32BE(at + 9);
    if (bytes.length - at - HEADER_BYTES < length) return newest ? done() : "a record is cut short";
    const payload = bytes.subarray(at + HEADER_BYTES, at + HEADER_BYTES + length);
    at += HEADER_BYTES + length;
    if (checkpoint === undefined) {
      if (kind !== Kind.Checkpoint) return "it does not start with a checkpoint";
      const parsed = parseCheckpoint(payload);
      if (parsed === undefined) return "its checkpoint is not valid";
      checkpoint = parsed;
      continue;
    }
    const event = decodeEvent(kind, time, payload);
    if (event === undefined) return `an unknown record (kind ${kind})`;
    events.push(event);
  }
  return done();

  function done(): { checkpoint: Checkpoint; events: LogEvent[] } | string {
    return checkpoint === undefined ? "it holds no checkpoint" : { checkpoint, events };
  }
}

/** Bytes of each stream the log holds: its oldest checkpoint's positions and every chunk since. */
export function loggedPositions(logged: LoggedOutput): Record<LogStream, number> {
  const positions = { ...logged.checkpoint.positions };
  for (const event of logged.events) if (event.type === "chunk") positions[event.stream] += event.bytes.length;
  return positions;
}

/** How many bytes at the start of `bytes` are whole records. */
function wholeRecordsLength(bytes: Buffer): number {
  let at = 0;
  while (bytes.length - at >= HEADER_BYTES) {
    const length = bytes.readUInt32BE(at + 9);
    if (bytes.length - at - HEADER_BYTES < length) break;
    at += HEADER_BYTES + length;
  }
  return at;
}

function encodeRecord(kind: Kind, at: number, payload: Buffer): Buffer[] {
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  header[0] = kind;
  header.writeDoubleBE(at, 1);
  header.writeUInt32BE(payload.length, 9);
  return payload.length === 0 ? [header] : [header, payload];
}

const NOTHING = Buffer.alloc(0);

/** The record of an event: its header and its payload, as the parts of one `writev`. */
export function encodeEvent(event: LogEvent): Buffer[] {
  switch (event.type) {
    case "chunk":
      return encodeRecord(event.stream === "stdout" ? Kind.StdoutChunk : Kind.StderrChunk, event.at, event.bytes);
    case "debug":
      return encodeRecord(Kind.Debug, event.at, Buffer.from(event.text, "utf8"));
    case "end":
      return encodeRecord(event.stream === "stdout" ? Kind.StdoutEnd : Kind.StderrEnd, event.at, NOTHING);
    case "outcome":
      return encodeRecord(Kind.Outcome, event.at, Buffer.from(JSON.stringify(event.outcome), "utf8"));
    default: {
      const unreachable: never = event;
      throw new Error(`unknown log event ${JSON.stringify(unreachable)}`);
    }
  }
}

function decodeEvent(kind: number, at: number, payload: Buffer): LogEvent | undefined {
  switch (kind) {
    case Kind.StdoutChunk:
      return { type: "chunk", stream: "stdout", at, bytes: payload };
    case Kind.StderrChunk:
      return { type: "chunk", stream: "stderr", at, bytes: payload };
    case Kind.Debug:
      return { type: "debug", at, text: payload.toString("utf8") };
    case Kind.StdoutEnd:
      return { type: "end", stream: "stdout", at };
    case Kind.StderrEnd:
      return { type: "end", stream: "stderr", at };
    case Kind.Outcome: {
      const outcome = parseJson(payload, Outcome);
      return outcome === undefined ? undefined : { type: "outcome", at, outcome };
    }
    default:
      return undefined;
  }
}

function checkpointJson(checkpoint: Checkpoint): z.infer<typeof CheckpointJson> {
  const splitter = (state: SplitterState) => ({ pending: state.pending.toString("base64"), carry: state.carry.toString("base64"), started: state.started });
  return {
    sequence: checkpoint.sequence,
    splitters: { stdout: splitter(checkpoint.splitters.stdout), stderr: splitter(checkpoint.splitters.stderr) },
    ended: { ...checkpoint.ended },
    positions: { ...checkpoint.positions },
  };
}

function parseCheckpoint(payload: Buffer): Checkpoint | undefined {
  const json = parseJson(payload, CheckpointJson);
  if (json === undefined) return undefined;
  const splitter = (state: z.infer<typeof SplitterJson>): SplitterState => ({
    pending: Buffer.from(state.pending, "base64"),
    carry: Buffer.from(state.carry, "base64"),
    started: state.started,
  });
  return {
    sequence: json.sequence,
    splitters: { stdout: splitter(json.splitters.stdout), stderr: splitter(json.splitters.stderr) },
    ended: json.ended,
    positions: json.positions,
  };
}

function parseJson<T>(payload: Buffer, schema: z.ZodType<T>): T | undefined {
  try {
    const parsed = schema.safeParse(JSON.parse(payload.toString("utf8")));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

function removeFile(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Gone already (its run folder was removed).
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
