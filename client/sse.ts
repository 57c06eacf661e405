/** Reading a Server-Sent Events body (WHATWG HTML, "event stream interpretation"), however its bytes are split. */
import { TendrilNetworkError } from "./errors.js";

/** One dispatched Server-Sent Event. */
export interface ServerSentEvent {
  /** The `event:` field; `message` when the event named none. */
  event: string;
  /** The `data:` lines joined with newlines. */
  data: string;
}

/** Reads Server-Sent Events from a response body, however the bytes are split into chunks. */
export async function* readServerSentEvents(
  body: ReadableStream<Uint8Array>,
  url: string,
  signal: AbortSignal | undefined,
): AsyncGenerator<ServerSentEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder(); // streaming mode below keeps a UTF-8 character split across chunks intact
  const parser = new ServerSentEventParser();
  try {
    for (;;) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      try {
        chunk = await reader.read();
      } catch (error) {
        // A connection that breaks mid-stream surfaces as a bare `TypeError: terminated`; name the URL.
        if (signal?.aborted) throw error;
        throw new TendrilNetworkError(url, error);
      }
      const { done, value } = chunk;
      const events = done ? parser.push(decoder.decode(), true) : parser.push(decoder.decode(value, { stream: true }), false);
      yield* events;
      if (done) return;
    }
  } finally {
    // Closes the connection when the consumer stops early; harmless when the stream already ended.
    await reader.cancel().catch(() => undefined);
  }
}

/** The line-level Server-Sent Events parser (WHATWG HTML, "event stream interpretation"). */
export class ServerSentEventParser {
  private buffer = "";
  private eventType = "";
  private data: string[] = [];

  /** Adds decoded text and returns the events it completed; `final` marks the end of the stream. */
  push(text: string, final: boolean): ServerSentEvent[] {
    this.buffer += text;
    const events: ServerSentEvent[] = [];
    let start = 0;
    for (;;) {
      const lineEnd = this.findLineEnd(start);
      if (lineEnd < 0) break;
      const char = this.buffer[lineEnd];
      // A lone `\r` at the end of what has arrived may be the first half of `\r\n`: wait for the next chunk.
      if (char === "\r" && lineEnd === this.buffer.length - 1 && !final) break;
      const event = this.line(this.buffer.slice(start, lineEnd));
      if (event) events.push(event);
      start = lineEnd + (char === "\r" && this.buffer[lineEnd + 1] === "\n" ? 2 : 1);
    }
    this.buffer = this.buffer.slice(start);
    // An event not closed by a blank line before the stream ends is discarded, as the standard says.
    return events;
  }

  private findLineEnd(from: number): number {
    for (let i = from; i < this.buffer.length; i++) {
      const char = this.buffer[i];
      if (char === "\n" || char === "\r") return i;
    }
    return -1;
  }

  private line(line: string): ServerSentEvent | undefined {
    if (line === "") {
      const event = this.data.length > 0 ? { event: this.eventType || "message", data: this.data.join("\n") } : undefined;
      this.eventType = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return undefined; // a comment, e.g. a keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.eventType = value;
    else if (field === "data") this.data.push(value);
    // `id` and `retry` are not used: resuming goes by log sequence, which the SDK tracks itself.
    return undefined;
  }
}
