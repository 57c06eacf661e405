/**
 * One script's output on this runner: its two line splitters, its spool (numbering, batching, acknowledgements) and,
 * for a script that can be re-attached to, its output log (output-log.ts). Every event is logged before it is split
 * and spooled, so that `ScriptOutput.replay` rebuilds the very same lines with the very same numbers in a new runner
 * process. Nothing here knows about processes or the transport.
 */
import type { Outcome } from "../shared/protocol.js";
import { LineSplitter } from "./line-splitter.js";
import type { Checkpoint, LogEvent, LogStream, LoggedOutput, OutputLog } from "./output-log.js";
import { OutputSpool, type OutputSpoolOptions } from "./output-spool.js";

/** Told once when the log could not be written: from then on the output is not logged (the run cannot be re-attached to). */
export type LogFailure = (error: unknown) => void;

/** A script's output: split into lines, numbered and spooled, and logged ahead where a log is attached. */
export class ScriptOutput {
  readonly spool: OutputSpool;
  private splitters: Record<LogStream, LineSplitter> = { stdout: new LineSplitter(), stderr: new LineSplitter() };
  /** Streams whose end was seen. */
  readonly ended: Record<LogStream, boolean> = { stdout: false, stderr: false };
  /** Bytes read of each stream. */
  readonly positions: Record<LogStream, number> = { stdout: 0, stderr: 0 };
  /** The outcome, once recorded. */
  outcome: Outcome | undefined;
  private log: OutputLog | undefined;
  /** Events before a log was attached (only debug lines come before a process exists); undefined once there is no point. */
  private early: LogEvent[] | undefined = [];
  private readonly firstSequence: number;

  constructor(
    spool: OutputSpoolOptions,
    private readonly onLogFailure: LogFailure = () => undefined,
    firstSequence = 0,
  ) {
    this.spool = new OutputSpool(spool);
    this.firstSequence = firstSequence;
    if (firstSequence > 0) this.spool.startAt(firstSequence);
  }

  /**
   * Rebuilds a script's output from its log: the spool numbers from the oldest checkpoint and holds every line since,
   * the splitters hold what they held, and the log (when it could be opened) is appended to from here on.
   */
  static replay(logged: LoggedOutput, log: OutputLog | undefined, spool: OutputSpoolOptions, onLogFailure?: LogFailure): ScriptOutput {
    const { checkpoint, events } = logged;
    const output = new ScriptOutput(spool, onLogFailure, checkpoint.sequence);
    output.early = undefined;
    output.splitters = { stdout: LineSplitter.restore(checkpoint.splitters.stdout), stderr: LineSplitter.restore(checkpoint.splitters.stderr) };
    output.ended.stdout = checkpoint.ended.stdout;
    output.ended.stderr = checkpoint.ended.stderr;
    output.positions.stdout = checkpoint.positions.stdout;
    output.positions.stderr = checkpoint.positions.stderr;
    for (const event of events) output.apply(event);
    output.log = log;
    return output;
  }

  /**
   * Starts logging into a new log made by `create` that starts where this output started: the debug lines added so
   * far are written first, and from here on every event is logged before it is applied. False (and `onLogFailure`
   * told) when that failed: the output goes on without a log.
   */
  attachLog(create: (checkpoint: Checkpoint) => OutputLog): boolean {
    const early = this.early ?? [];
    this.early = undefined;
    try {
      this.log = create({
        sequence: this.firstSequence,
        splitters: { stdout: new LineSplitter().snapshot(), stderr: new LineSplitter().snapshot() },
        ended: { stdout: false, stderr: false },
        positions: { stdout: 0, stderr: 0 },
      });
      for (const event of early) this.log.append(event, () => this.checkpoint());
      return true;
    } catch (error) {
      this.failLog(error);
      return false;
    }
  }

  /** No log will be attached (the script runs without a wrapper): stop keeping events for one. */
  withoutLog(): void {
    this.early = undefined;
  }

  /** A chunk read from a stream: logged, then split into lines that all arrived at `at`. */
  chunk(stream: LogStream, bytes: Buffer, at: number = Date.now()): void {
    this.record({ type: "chunk", stream, at, bytes });
  }

  /** A line of the runner's own. */
  debug(text: string, at: number = Date.now()): void {
    this.record({ type: "debug", at, text });
  }

  /** A stream ended: its unterminated last line, if any, is added. Only once per stream. */
  end(stream: LogStream, at: number = Date.now()): void {
    if (this.ended[stream]) return;
    this.record({ type: "end", stream, at });
  }

  /** The script's outcome, logged for a later runner (after every line of it). Only once. */
  finished(outcome: Outcome, at: number = Date.now()): void {
    if (this.outcome !== undefined) return;
    this.record({ type: "outcome", at, outcome });
  }

  /** The control plane has every line below `nextSequence`: drops them, and the log segments no longer needed. */
  ack(nextSequence: number): void {
    this.spool.ack(nextSequence);
    this.log?.prune(this.spool.firstUnacknowledged);
  }

  /** After a reconnect: resends from `nextSequence` (the control plane has what is below). */
  resendFrom(nextSequence: number): void {
    this.spool.resendFrom(nextSequence);
    this.log?.prune(this.spool.firstUnacknowledged);
  }

  /** Closes the log, which stays on disk for a later runner process, and stops the spool. */
  close(): void {
    this.log?.close();
    this.log = undefined;
    this.spool.dispose();
  }

  /** Deletes the log (nobody will re-attach to the script) and stops the spool. */
  discard(): void {
    this.log?.remove();
    this.log = undefined;
    this.spool.dispose();
  }

  /** Where the output stands: the next sequence and what the splitters hold (a new segment's checkpoint). */
  checkpoint(): Checkpoint {
    return {
      sequence: this.spool.nextSequence,
      splitters: { stdout: this.splitters.stdout.snapshot(), stderr: this.splitters.stderr.snapshot() },
      ended: { ...this.ended },
      positions: { ...this.positions },
    };
  }

  private record(event: LogEvent): void {
    if (this.log !== undefined) {
      try {
        this.log.append(event, () => this.checkpoint());
      } catch (error) {
        this.failLog(error);
      }
    } else {
      this.early?.push(event);
    }
    this.apply(event);
  }

  private failLog(error: unknown): void {
    this.log?.close();
    this.log = undefined;
    this.early = undefined;
    this.onLogFailure(error);
  }

  /** What an event does to the lines: the same now as when a later runner replays it. */
  private apply(event: LogEvent): void {
    const occurred = new Date(event.at).toISOString();
    switch (event.type) {
      case "chunk":
        this.positions[event.stream] += event.bytes.length;
        for (const { bytes, count } of this.splitters[event.stream].pushBlocks(event.bytes)) {
          this.spool.appendBlock({ source: event.stream, occurred, count, bytes });
        }
        return;
      case "debug":
        this.spool.append("debug", event.text, occurred);
        return;
      case "end":
        this.ended[event.stream] = true;
        for (const text of this.splitters[event.stream].end()) this.spool.append(event.stream, text, occurred);
        return;
      case "outcome":
        this.outcome = event.outcome;
        return;
      default: {
        const unreachable: never = event;
        throw new Error(`unknown output event ${JSON.stringify(unreachable)}`);
      }
    }
  }
}
