/**
 * What a wrapper tells the runner that started it on its own stdout (a pipe, not the script's output): `ready` once
 * its FIFOs are open, then the script's exit status once the script's shell has ended. Its own stderr holds only its
 * own complaints (a failed `mkfifo`), kept for the message of a start that failed.
 */
import type { Readable } from "node:stream";
import { ignore } from "./spawn.js";
import { parseStatusLine } from "./wrapper.js";

/** Most bytes of a wrapper's stderr kept for a failure message. */
const MAX_COMPLAINT = 1024;

/** Reads a wrapper's stdout and stderr pipes. */
export class WrapperStatus {
  private text = "";
  private complaint = "";
  private readyListener: (() => void) | undefined;
  private statusListener: ((status: number) => void) | undefined;
  private isReady = false;
  /** A status that arrived before anyone listened. */
  private status: number | undefined;
  private readonly onStdout = (chunk: Buffer | string) => this.read(String(chunk));
  private readonly onStderr = (chunk: Buffer | string) => {
    if (this.complaint.length < MAX_COMPLAINT) this.complaint = (this.complaint + String(chunk)).slice(0, MAX_COMPLAINT);
  };

  constructor(
    private readonly stdout: Readable,
    private readonly stderr: Readable,
  ) {
    stdout.on("data", this.onStdout);
    stderr.on("data", this.onStderr);
    // A pipe error ends that pipe; the wrapper's exit tells the rest.
    stdout.on("error", ignore);
    stderr.on("error", ignore);
  }

  /** True once the wrapper said `ready`. */
  get ready(): boolean {
    return this.isReady;
  }

  /** What the wrapper wrote on its stderr (its own errors), trimmed. */
  get complaints(): string {
    return this.complaint.trim();
  }

  /** Calls `listener` once the wrapper says `ready` (at once if it did). */
  onReady(listener: () => void): void {
    this.readyListener = listener;
    if (this.isReady) listener();
  }

  /** Calls `listener` with the script's exit status once the wrapper prints it (at once if it did). */
  onStatus(listener: (status: number) => void): void {
    this.statusListener = listener;
    if (this.status !== undefined) listener(this.status);
  }

  /** Stops listening; `close`: also destroys the pipes (a later runner process takes over, and the wrapper ignores SIGPIPE). */
  stop(close: boolean): void {
    this.readyListener = undefined;
    this.statusListener = undefined;
    this.stdout.off("data", this.onStdout);
    this.stderr.off("data", this.onStderr);
    for (const stream of [this.stdout, this.stderr]) {
      if (close) stream.destroy();
      else {
        // Drained into nothing, and keeping nothing alive.
        stream.resume();
        unref(stream);
      }
    }
  }

  private read(chunk: string): void {
    this.text += chunk;
    for (let end = this.text.indexOf("\n"); end !== -1; end = this.text.indexOf("\n")) {
      const line = this.text.slice(0, end);
      this.text = this.text.slice(end + 1);
      const parsed = parseStatusLine(line);
      if (parsed === "ready") {
        this.isReady = true;
        this.readyListener?.();
      } else if (parsed !== undefined && this.status === undefined) {
        this.status = parsed;
        this.statusListener?.(parsed);
      }
    }
    // Nothing else is ever printed there; a runaway line must not grow without bound.
    if (this.text.length > 64) this.text = this.text.slice(-64);
  }
}

function unref(stream: Readable): void {
  const candidate: unknown = stream;
  if (typeof candidate === "object" && candidate !== null && "unref" in candidate && typeof candidate.unref === "function") candidate.unref();
}
