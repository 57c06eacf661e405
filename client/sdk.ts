/**
 * The typed SDK a deployment server uses to talk to the Tendril control plane (docs/api.md): register
 * machines, start scripts, follow their output live (Server-Sent Events, with a polling fallback),
 * cancel or abandon them, and delete them once their result has been read.
 */
import { randomUUID } from "node:crypto";
import { z } from "zod";
import type { LogLine, MachineView, ScriptStatus, StartScriptInput } from "../shared/api.js";
import { TendrilApiError, TendrilNetworkError, TendrilProtocolError } from "./errors.js";
import { ScriptEscalation, type EscalationEvent, type ExecutionOutcome } from "./escalation.js";

export { ABANDON_CAPABILITY, type EscalationEvent, type ExecutionOutcome } from "./escalation.js";

/** Timing defaults of the SDK. */
export const DEFAULTS = {
  /** First wait between status polls; doubles while nothing new arrives. */
  pollInitialDelayMs: 100,
  /** Longest wait between status polls. */
  pollMaxDelayMs: 2_000,
  /** How long following keeps retrying an unreachable control plane (e.g. while it restarts) before giving up. */
  unreachableRetryMs: 30_000,
  /**
   * `executeScript`: once its `signal` has sent the cancel, how long the script may take to complete
   * before it is abandoned (when the runner supports abandon). Longer than the runner's default grace
   * between SIGTERM and SIGKILL (10 s), so that a cancel that works always gets to finish first.
   */
  abandonAfterCancelMs: 30_000,
} as const;

/** How to reach the control plane. */
export interface TendrilClientOptions {
  /** The control plane's base URL, e.g. `http://127.0.0.1:8787` or `https://tendril.example.workers.dev`. */
  url: string;
  /** The server token (`Authorization: Bearer`). */
  serverToken: string;
  /** A fetch implementation to use instead of the global one (tests, proxies, custom agents). */
  fetch?: typeof fetch;
}

/** One item of a script's live output: a log line, or its final status (always the last item). */
export type ScriptEvent = { type: "log"; line: LogLine } | { type: "status"; status: ScriptStatus };

/** The answer of `registerMachine`. */
export interface RegisteredMachine {
  /** The machine the token belongs to. */
  machineId: string;
  /** The machine's new runner token; the previous one no longer works. */
  runnerToken: string;
}

/** The answer of `startScript`. */
export interface StartedScript {
  /** True when this call created the script (201); false when the ticket already existed (200). */
  created: boolean;
  /** The script's status as the start call returned it. */
  status: ScriptStatus;
}

/** Options of `getStatus`. */
export interface GetStatusOptions {
  /** First log sequence to return (default 0). */
  logSequence?: number;
  /** Most log lines to return (1–10,000). */
  limit?: number;
  /** Aborts the request. */
  signal?: AbortSignal;
}

/** Options of `streamScript`, `followScript` and `pollScript`. */
export interface FollowOptions {
  /** First log sequence to deliver (default 0). */
  logSequence?: number;
  /** Stops following; the iteration then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Called when `followScript` gives up on the stream and falls back to polling, with the reason. */
  onFallback?: (error: unknown) => void;
}

/** Options of `completeScript`. */
export interface CompleteScriptOptions {
  /** First log sequence to return with the final status (default 0). */
  logSequence?: number;
}

/** Options of `cancelScript`. */
export interface CancelScriptOptions {
  /** Abandon the script if it is still not complete this many milliseconds after the cancel. */
  abandonAfterMs?: number;
}

/** Options of `abandonScript`. */
export interface AbandonScriptOptions {
  /** Also ask the runner for a best-effort kill of the process tree. */
  killProcess?: boolean;
}

/** Options of `executeScript`. */
export interface ExecuteScriptOptions {
  /** Receives every log line once, in order. */
  onLog?: (line: LogLine) => void;
  /** Called once the start call has been answered. */
  onStarted?: (started: { ticket: string; created: boolean }) => void;
  /**
   * Aborting it stops the script: the cancel is sent (once), and if the script is still not complete
   * `abandonAfterCancelMs` later, it is abandoned — only when the machine's runner advertises
   * `script.abandon` (else `onEscalation` gets `abandon_unavailable` and the script is still followed).
   * The call still resolves only once the script is complete.
   */
  signal?: AbortSignal;
  /**
   * After the cancel, how long to wait for the script to complete before abandoning it (default
   * `DEFAULTS.abandonAfterCancelMs`, 30 s); `Infinity` never abandons by itself. The client does this,
   * so it needs this call to keep running; see `abandonAfterMs` for the control plane's own deadline.
   */
  abandonAfterCancelMs?: number;
  /**
   * Sent with the cancel (`{"abandonAfterMs": N}`): the control plane itself abandons the script if it
   * is still not complete N ms after the cancel, even if this process has gone away.
   */
  abandonAfterMs?: number;
  /** Aborting it abandons the script at once (once), whatever the runner advertises; no cancel is sent first. */
  abandonSignal?: AbortSignal;
  /** Sent with every abandon: also ask the runner for a best-effort kill of the process tree. */
  killProcessOnAbandon?: boolean;
  /** Reports each escalation step: cancel sent, abandon sent, abandon not available. */
  onEscalation?: (event: EscalationEvent) => void;
  /** Reports a cancel, machine read or abandon call that failed (the script is still followed). */
  onEscalationError?: (action: "cancel" | "abandon", error: unknown) => void;
  /** Reports that live streaming failed and status polling took over. */
  onFallback?: (error: unknown) => void;
  /** Leave the completed script on the control plane instead of deleting it (default false). */
  keep?: boolean;
}

/** The result of `executeScript`. */
export interface ExecutedScript {
  /** The script's ticket (the given one, or the one generated for it). */
  ticket: string;
  /** False when the ticket already existed and this call followed the earlier script. */
  created: boolean;
  /** The script's exit code (negative codes are Tendril's, see shared/exit-codes.ts). */
  exitCode: number;
  /** How it ended: by itself (`completed`), after this call's cancel (`cancelled`), or `abandoned` (-48). */
  outcome: ExecutionOutcome;
  /** The final status (`complete`); its log lines all went to `onLog`, so `logs` is empty. */
  status: ScriptStatus;
  /** Set when the script completed but deleting it failed; the result above is still valid. */
  deleteError?: unknown;
}

const LogLineSchema = z.object({
  sequence: z.int().min(0),
  source: z.enum(["stdout", "stderr", "debug"]),
  text: z.string(),
  occurred: z.string(),
}) satisfies z.ZodType<LogLine>;

const ScriptStatusSchema = z.object({
  ticket: z.string(),
  state: z.enum(["pending", "running", "complete"]),
  exitCode: z.int().nullable(),
  logs: z.array(LogLineSchema),
  nextLogSequence: z.int().min(0),
  hasMoreLogs: z.boolean(),
}) satisfies z.ZodType<ScriptStatus>;

// The stream's final status event comes "without logs"; accept it with or without the log fields.
const StreamStatusSchema = ScriptStatusSchema.extend({
  logs: z.array(LogLineSchema).optional(),
  nextLogSequence: z.int().min(0).optional(),
  hasMoreLogs: z.boolean().optional(),
});

const RegisteredMachineSchema = z.object({ machineId: z.string(), runnerToken: z.string().min(1) });

/** A client of one control plane, authenticated with its server token. */
export class TendrilClient {
  /** The control plane's base URL, without a trailing slash. */
  readonly url: string;
  private readonly serverToken: string;
  private readonly fetchImpl: typeof fetch;

  /** Creates a client; throws when the URL is not an http(s) URL. */
  constructor(options: TendrilClientOptions) {
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch {
      throw new Error(`invalid control plane URL ${JSON.stringify(options.url)}: expected e.g. http://127.0.0.1:8787`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new Error(`invalid control plane URL ${JSON.stringify(options.url)}: it must start with http:// or https://`);
    }
    this.url = `${parsed.origin}${parsed.pathname}`.replace(/\/+$/, "");
    this.serverToken = options.serverToken;
    // Wrapped so that the global fetch is called unbound (some runtimes insist) and looked up per call.
    this.fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  /** Registers a machine (creating it when new) and issues a fresh runner token, revoking the previous one. */
  async registerMachine(machineId: string): Promise<RegisteredMachine> {
    const response = await this.send("POST", `${machinePath(machineId)}/runner-token`);
    return parseJson(RegisteredMachineSchema, await readJson(response), "registered machine");
  }

  /** Returns one machine's view: its runner, mutexes, scripts and abandoned processes. */
  async getMachine(machineId: string): Promise<MachineView> {
    const response = await this.send("GET", machinePath(machineId));
    // The machine view is display data; it is trusted to follow the contract's shape (shared/api.ts).
    return (await readJson(response)) as MachineView;
  }

  /** Lists every registered machine (views without their scripts). */
  async listMachines(): Promise<MachineView[]> {
    const response = await this.send("GET", "/api/v1/machines");
    const body = await readJson(response);
    const machines = typeof body === "object" && body !== null && "machines" in body ? body.machines : undefined;
    if (!Array.isArray(machines)) throw new TendrilProtocolError("the machine list has no `machines` array");
    // Display data, trusted to follow the contract's shape like `getMachine`.
    return machines as MachineView[];
  }

  /** Starts a script (or returns the existing one for a repeated ticket with the same body). */
  async startScript(machineId: string, request: StartScriptInput): Promise<StartedScript> {
    const response = await this.send("POST", `${machinePath(machineId)}/scripts`, { body: request });
    const status = parseJson(ScriptStatusSchema, await readJson(response), "script status");
    return { created: response.status === 201, status };
  }

  /** Returns a script's status with a page of its logs from `logSequence`. */
  async getStatus(machineId: string, ticket: string, options: GetStatusOptions = {}): Promise<ScriptStatus> {
    const response = await this.send("GET", scriptPath(machineId, ticket), {
      query: { logSequence: options.logSequence, limit: options.limit },
      signal: options.signal,
    });
    return parseJson(ScriptStatusSchema, await readJson(response), "script status");
  }

  /**
   * Streams a script's log lines and then its final status over Server-Sent Events. A stream that
   * ends before the status event is reopened from the next log sequence; a failure rejects.
   */
  async *streamScript(machineId: string, ticket: string, options: FollowOptions = {}): AsyncGenerator<ScriptEvent> {
    let next = options.logSequence ?? 0;
    let idleDelayMs: number = DEFAULTS.pollInitialDelayMs;
    const path = `${scriptPath(machineId, ticket)}/stream`;
    for (;;) {
      const response = await this.send("GET", path, {
        query: { logSequence: next },
        signal: options.signal,
        accept: "text/event-stream",
      });
      const contentType = response.headers.get("content-type") ?? "";
      if (!contentType.includes("text/event-stream") || !response.body) {
        await response.body?.cancel().catch(() => undefined);
        throw new TendrilProtocolError(`the script stream answered with ${contentType || "no content type"}, not an event stream`);
      }
      let progressed = false;
      for await (const event of readServerSentEvents(response.body, `${this.url}${path}`, options.signal)) {
        if (event.event === "log") {
          const line = parseJson(LogLineSchema, parseEventData(event.data), "log event");
          // After a resume the server may repeat a line; each line is delivered once.
          if (line.sequence < next) continue;
          next = line.sequence + 1;
          progressed = true;
          yield { type: "log", line };
        } else if (event.event === "status") {
          const status = parseJson(StreamStatusSchema, parseEventData(event.data), "status event");
          yield {
            type: "status",
            status: {
              ...status,
              logs: status.logs ?? [],
              nextLogSequence: status.nextLogSequence ?? next,
              hasMoreLogs: status.hasMoreLogs ?? false,
            },
          };
          return;
        }
        if (event.event === "error") break; // reopening reports the problem with its real HTTP status
        // Other event types are not part of the contract yet; skipping them keeps old clients working.
      }
      // Ended early (a proxy's timeout, a redeploy): resume at once if it was useful, else back off so a
      // server that keeps closing empty streams is not hammered.
      if (progressed) {
        idleDelayMs = DEFAULTS.pollInitialDelayMs;
      } else {
        await sleep(idleDelayMs, options.signal);
        idleDelayMs = Math.min(idleDelayMs * 2, DEFAULTS.pollMaxDelayMs);
      }
    }
  }

  /**
   * Follows a script to completion: the live stream when it works, else status polling with backoff
   * (100 ms doubling to 2 s). Yields each log line once, then the final status.
   */
  async *followScript(machineId: string, ticket: string, options: FollowOptions = {}): AsyncGenerator<ScriptEvent> {
    let next = options.logSequence ?? 0;
    try {
      for await (const event of this.streamScript(machineId, ticket, { ...options, logSequence: next })) {
        if (event.type === "log") next = event.line.sequence + 1;
        yield event;
        if (event.type === "status") return;
      }
    } catch (error) {
      if (options.signal?.aborted) throw error;
      // Any stream failure (no stream route, a proxy that buffers, a reset) is worth a polling attempt:
      // a real problem such as a wrong token or an unknown ticket surfaces from the first poll.
      options.onFallback?.(error);
    }
    yield* this.pollScript(machineId, ticket, { ...options, logSequence: next });
  }

  /**
   * Follows a script by polling its status with backoff (100 ms doubling to 2 s, back to 100 ms when
   * output arrives); retries an unreachable control plane for up to 30 s. Yields log lines, then the status.
   */
  async *pollScript(machineId: string, ticket: string, options: FollowOptions = {}): AsyncGenerator<ScriptEvent> {
    let next = options.logSequence ?? 0;
    let delayMs: number = DEFAULTS.pollInitialDelayMs;
    let unreachableSince: number | undefined;
    for (;;) {
      let status: ScriptStatus;
      try {
        status = await this.getStatus(machineId, ticket, { logSequence: next, signal: options.signal });
        unreachableSince = undefined;
      } catch (error) {
        if (options.signal?.aborted || !isTransient(error)) throw error;
        unreachableSince ??= Date.now();
        if (Date.now() - unreachableSince > DEFAULTS.unreachableRetryMs) throw error;
        await sleep(delayMs, options.signal);
        delayMs = Math.min(delayMs * 2, DEFAULTS.pollMaxDelayMs);
        continue;
      }
      let progressed = false;
      for (const line of status.logs) {
        if (line.sequence < next) continue;
        next = line.sequence + 1;
        progressed = true;
        yield { type: "log", line };
      }
      next = Math.max(next, status.nextLogSequence);
      if (status.hasMoreLogs) continue; // the rest of a long page is already there: no waiting
      if (status.state === "complete") {
        yield { type: "status", status: { ...status, logs: [] } };
        return;
      }
      if (progressed) delayMs = DEFAULTS.pollInitialDelayMs;
      await sleep(delayMs, options.signal);
      delayMs = Math.min(delayMs * 2, DEFAULTS.pollMaxDelayMs);
    }
  }

  /** Deletes a complete script and returns its final status with the logs from `logSequence` (409 if not complete). */
  async completeScript(machineId: string, ticket: string, options: CompleteScriptOptions = {}): Promise<ScriptStatus> {
    const response = await this.send("DELETE", scriptPath(machineId, ticket), {
      query: { logSequence: options.logSequence },
    });
    return parseJson(ScriptStatusSchema, await readJson(response), "script status");
  }

  /** Asks for a script to be cancelled; answers at once with its current status. */
  async cancelScript(machineId: string, ticket: string, options: CancelScriptOptions = {}): Promise<ScriptStatus> {
    const body = options.abandonAfterMs === undefined ? {} : { abandonAfterMs: options.abandonAfterMs };
    const response = await this.send("POST", `${scriptPath(machineId, ticket)}/cancel`, { body });
    return parseJson(ScriptStatusSchema, await readJson(response), "script status");
  }

  /** Abandons a script: completes it with -48 and releases its mutex even if its process will not die. */
  async abandonScript(machineId: string, ticket: string, options: AbandonScriptOptions = {}): Promise<ScriptStatus> {
    const body = options.killProcess === undefined ? {} : { killProcess: options.killProcess };
    const response = await this.send("POST", `${scriptPath(machineId, ticket)}/abandon`, { body });
    return parseJson(ScriptStatusSchema, await readJson(response), "script status");
  }

  /**
   * Runs a script start to finish: starts it (generating a ticket when none is given), follows its
   * output, stops it when asked (cancel, then abandon — see `ExecuteScriptOptions.signal`), and deletes
   * it once complete.
   */
  async executeScript(
    machineId: string,
    request: StartScriptInput,
    options: ExecuteScriptOptions = {},
  ): Promise<ExecutedScript> {
    const abandonAfterCancelMs = options.abandonAfterCancelMs ?? DEFAULTS.abandonAfterCancelMs;
    if (Number.isNaN(abandonAfterCancelMs) || abandonAfterCancelMs < 0) {
      throw new RangeError(`abandonAfterCancelMs must be a non-negative number of milliseconds (or Infinity), not ${abandonAfterCancelMs}`);
    }
    // A ticket chosen here makes the start call safe to retry and lets a cancel name the script even
    // while the start call is still in flight.
    const ticket = request.ticket ?? randomUUID();
    const started = await this.startScript(machineId, { ...request, ticket });
    options.onStarted?.({ ticket, created: started.created });

    const cancelOptions = options.abandonAfterMs === undefined ? {} : { abandonAfterMs: options.abandonAfterMs };
    const abandonOptions = options.killProcessOnAbandon === undefined ? {} : { killProcess: options.killProcessOnAbandon };
    const escalation = new ScriptEscalation(
      {
        cancel: () => this.cancelScript(machineId, ticket, cancelOptions),
        abandon: () => this.abandonScript(machineId, ticket, abandonOptions),
        runner: async () => (await this.getMachine(machineId)).runner,
      },
      {
        signal: options.signal,
        abandonSignal: options.abandonSignal,
        abandonAfterCancelMs,
        onEvent: options.onEscalation,
        onError: options.onEscalationError,
      },
    );
    let next = 0;
    let final: ScriptStatus | undefined;
    try {
      const followOptions = options.onFallback ? { onFallback: options.onFallback } : {};
      for await (const event of this.followScript(machineId, ticket, followOptions)) {
        if (event.type === "log") {
          next = event.line.sequence + 1;
          options.onLog?.(event.line);
        } else {
          final = event.status;
        }
      }
    } finally {
      // Complete (or following failed): nothing is left to cancel or abandon, and no timer may linger.
      await escalation.stop();
    }
    if (final?.exitCode == null) throw new TendrilProtocolError(`script ${ticket} completed without an exit code`);
    const result = (status: ScriptStatus, exitCode: number) => ({
      ticket,
      created: started.created,
      exitCode,
      outcome: escalation.outcome(exitCode),
      status: { ...status, logs: [] },
    });
    if (options.keep) return result(final, final.exitCode);
    try {
      const deleted = await this.completeScript(machineId, ticket, { logSequence: next });
      for (const line of deleted.logs) if (line.sequence >= next) options.onLog?.(line);
      return result(deleted, deleted.exitCode ?? final.exitCode);
    } catch (deleteError) {
      return { ...result(final, final.exitCode), deleteError };
    }
  }

  /** Sends one authenticated request; rejects with TendrilApiError for 4xx/5xx and TendrilNetworkError when unreachable. */
  private async send(
    method: string,
    path: string,
    options: { query?: Record<string, number | undefined>; body?: unknown; signal?: AbortSignal | undefined; accept?: string } = {},
  ): Promise<Response> {
    const url = new URL(`${this.url}${path}`);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.serverToken}`,
      accept: options.accept ?? "application/json",
    };
    const init: RequestInit = { method, headers };
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    if (options.signal) init.signal = options.signal;
    let response: Response;
    try {
      response = await this.fetchImpl(url, init);
    } catch (error) {
      if (options.signal?.aborted) throw error;
      throw new TendrilNetworkError(url.href, error);
    }
    if (!response.ok) throw await TendrilApiError.fromResponse(response, `${method} ${url.pathname}`);
    return response;
  }
}

/** `/api/v1/machines/{machineId}` with the id URL-encoded. */
function machinePath(machineId: string): string {
  return `/api/v1/machines/${pathSegment(machineId, "machine id")}`;
}

/** `/api/v1/machines/{machineId}/scripts/{ticket}` with both ids URL-encoded. */
function scriptPath(machineId: string, ticket: string): string {
  return `${machinePath(machineId)}/scripts/${pathSegment(ticket, "ticket")}`;
}

function pathSegment(value: string, what: string): string {
  // URL parsers resolve `.` and `..` segments (even as %2E), so such an id would address another
  // route; refuse it rather than send the request somewhere unexpected.
  if (value === "" || value === "." || value === "..") {
    throw new Error(`invalid ${what} ${JSON.stringify(value)}: it cannot be used in a URL path`);
  }
  return encodeURIComponent(value);
}

async function readJson(response: Response): Promise<unknown> {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new TendrilProtocolError(`the control plane answered ${response.url || "a call"} with invalid JSON`);
  }
}

function parseEventData(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    throw new TendrilProtocolError(`the script stream sent an event whose data is not JSON: ${data.slice(0, 100)}`);
  }
}

function parseJson<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = issue?.path.length ? issue.path.join(".") : "body";
  throw new TendrilProtocolError(`the control plane sent a malformed ${what} (${where}: ${issue?.message ?? "invalid"})`);
}

/**
 * Worth retrying while polling: the control plane is unreachable (restarting) or a proxy in front of it
 * says so (502/503/504). A 500 is a bug in the control plane, and waiting would only hide it.
 */
function isTransient(error: unknown): boolean {
  return error instanceof TendrilNetworkError || (error instanceof TendrilApiError && [502, 503, 504].includes(error.status));
}

/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbortSleep = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbortSleep);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbortSleep, { once: true });
  });
}

/** One dispatched Server-Sent Event. */
interface ServerSentEvent {
  /** The `event:` field; `message` when the event named none. */
  event: string;
  /** The `data:` lines joined with newlines. */
  data: string;
}

/** Reads Server-Sent Events from a response body, however the bytes are split into chunks. */
async function* readServerSentEvents(
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
class ServerSentEventParser {
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
