/**
 * The TypeScript SDK of Tendril (`import { TendrilClient } from "tendril/sdk"`), for deployment servers: register
 * machines, start scripts and hold a handle on each run (`client.machine(id).start(...)`: its logs, its stored
 * result, cancel, abandon, and deletion on disposal), or run one start to finish with `executeScript`. Every answer
 * is validated with the schemas shared/routes.ts declares for its route (docs/api.md): a malformed answer is a
 * `TendrilProtocolError`, never a silently wrong value.
 */
import { z } from "zod";
import {
  AddedOperator,
  AuditFeed,
  LogLine,
  MachineList,
  MachineView,
  OperatorList,
  RegisteredMachine,
  ScriptStatus,
  StreamStatus,
  type AbandonRequest,
  type AddOperatorRequest,
  type CancelRequest,
  type OperatorView,
  type StartScriptInput,
} from "../shared/api.js";
import { ROUTES, type RouteDecl } from "../shared/routes.js";
import { TendrilApiError, TendrilNetworkError, TendrilProtocolError } from "./errors.js";
import { executeOn, type ExecuteScriptOptions, type ExecutedScript } from "./execute.js";
import { MachineHandle } from "./handles.js";
import { callJson, openStream, parseAnswer, type JsonAnswer, type RouteInputs, type Transport } from "./http.js";
import { DEFAULTS } from "./defaults.js";
import { readServerSentEvents } from "./sse.js";

export { TendrilApiError, TendrilNetworkError, TendrilProtocolError } from "./errors.js";
export { ABANDON_CAPABILITY, type EscalationEvent, type ExecutionOutcome } from "./escalation.js";
export type { ExecuteScriptOptions, ExecutedScript } from "./execute.js";
export { MachineHandle, ScriptRun, type DisposeOutcome, type ScriptResult, type StartOptions } from "./handles.js";
export { ExitCode } from "../shared/exit-codes.js";
export type {
  AbandonedView,
  AddedOperator,
  AuditAction,
  AuditEvent,
  AuditFeed,
  FeedEvent,
  FleetStatus,
  LogLine,
  LogSource,
  MachineList,
  MachineSummary,
  MachineView,
  MutexView,
  OperatorRole,
  OperatorView,
  RegisteredMachine,
  RunnerView,
  ScriptState,
  ScriptStatus,
  ScriptSummary,
  StartScriptInput,
  StreamStatus,
} from "../shared/api.js";

export { DEFAULTS } from "./defaults.js";

/** How to reach the control plane. */
export interface TendrilClientOptions {
  /** The control plane's base URL, e.g. `http://127.0.0.1:8787` or `https://tendril.example.workers.dev`. */
  url: string;
  /** The server token (`Authorization: Bearer`). */
  serverToken: string;
  /** A fetch implementation to use instead of the global one (tests, proxies, custom agents). */
  fetch?: typeof fetch;
  /**
   * Told when disposing of a run (`await using`) could not delete it although it was complete (the control plane
   * was unreachable, say). Disposal never throws; without this the failure is silent, and the script stays stored
   * until the control plane's retention removes it (7 days by default).
   */
  onDisposeError?: (error: unknown, run: { machineId: string; ticket: string }) => void;
}

/** One item of a script's live output: a log line, or its final status (always the last item). */
export type ScriptEvent = { type: "log"; line: LogLine } | { type: "status"; status: ScriptStatus };

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
  /** Most log lines to return with it (1–10,000; default 10,000). */
  limit?: number;
}

/** The cancel call's options: its body as shared/api.ts declares it (`abandonAfterMs`, `reason`, `requestedBy`). */
export type CancelScriptOptions = z.input<typeof CancelRequest>;

/** The abandon call's options: its body as shared/api.ts declares it (`killProcess`, `reason`, `requestedBy`). */
export type AbandonScriptOptions = z.input<typeof AbandonRequest>;

/** The fleet list's filters and paging, as its route declares its query (`limit`, `cursor`, `prefix`, `status`). */
export type ListMachinesOptions = NonNullable<RouteInputs<typeof ROUTES.listMachines>["query"]>;

/** The audit feed's filter and paging, as its route declares its query (`machineId`, `limit`, `cursor`). */
export type AuditOptions = NonNullable<RouteInputs<typeof ROUTES.audit>["query"]>;

/** The add-operator call's body as shared/api.ts declares it (`name`, `role`, `expiresInDays`). */
export type AddOperatorOptions = z.input<typeof AddOperatorRequest>;

// The answers of these routes are declared inline in shared/routes.ts (not exported); these are the same shapes, applied
// after the declared schema has validated the answer, for the type.
const RemovedMachine = z.object({ machineId: z.string(), removed: z.literal(true) });
const RevokedRunnerToken = z.object({ machineId: z.string(), revoked: z.literal(true) });
const RemovedOperator = z.object({ name: z.string(), removed: z.literal(true) });

/** A client of one control plane, authenticated with its server token. */
export class TendrilClient {
  /** The control plane's base URL, without a trailing slash. */
  readonly url: string;
  /** Told when disposing of a complete run could not delete it (see `TendrilClientOptions.onDisposeError`). */
  readonly onDisposeError: ((error: unknown, run: { machineId: string; ticket: string }) => void) | undefined;
  private readonly transport: Transport;

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
    this.onDisposeError = options.onDisposeError;
    this.transport = {
      url: this.url,
      serverToken: options.serverToken,
      // Wrapped so that the global fetch is called unbound (some runtimes insist) and looked up per call.
      fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
    };
  }

  /** A handle on one machine: start scripts on it (`start`), re-attach to one (`script`), read its view. Sends nothing. */
  machine(machineId: string): MachineHandle {
    return new MachineHandle(this, machineId);
  }

  /** Registers a machine (creating it when new) and issues a fresh runner token, revoking the previous one. */
  async registerMachine(machineId: string): Promise<RegisteredMachine> {
    return (await this.call(ROUTES.registerMachine, { params: { machineId } }, RegisteredMachine)).body;
  }

  /** Returns one machine's view: its runner, mutexes, scripts and abandoned processes. */
  async getMachine(machineId: string, options: { signal?: AbortSignal } = {}): Promise<MachineView> {
    return (await this.call(ROUTES.getMachine, { params: { machineId }, signal: options.signal }, MachineView)).body;
  }

  /** One page of the fleet, ordered by machine id, with the fleet's counts; pass `nextCursor` back as `cursor` for the next. */
  async listMachines(options: ListMachinesOptions = {}): Promise<MachineList> {
    return (await this.call(ROUTES.listMachines, { query: options }, MachineList)).body;
  }

  /** Removes a decommissioned machine (409 `machine_busy` while a script is pending or running on it). */
  async removeMachine(machineId: string): Promise<z.output<typeof RemovedMachine>> {
    return (await this.call(ROUTES.removeMachine, { params: { machineId } }, RemovedMachine)).body;
  }

  /** Revokes a machine's runner token without issuing a new one; its runner is disconnected. */
  async revokeRunnerToken(machineId: string): Promise<z.output<typeof RevokedRunnerToken>> {
    return (await this.call(ROUTES.revokeRunnerToken, { params: { machineId } }, RevokedRunnerToken)).body;
  }

  /** Every operator (never their tokens). */
  async listOperators(): Promise<OperatorView[]> {
    return (await this.call(ROUTES.listOperators, {}, OperatorList)).body.operators;
  }

  /** Adds an operator, or gives an existing one a new token; the token in the answer is shown once. */
  async addOperator(request: AddOperatorOptions): Promise<AddedOperator> {
    return (await this.call(ROUTES.addOperator, { body: request }, AddedOperator)).body;
  }

  /** Revokes an operator at once (404 `unknown_operator` when there is none of that name). */
  async removeOperator(name: string): Promise<z.output<typeof RemovedOperator>> {
    return (await this.call(ROUTES.removeOperator, { params: { name } }, RemovedOperator)).body;
  }

  /** One page of the fleet-wide audit feed, newest first; pass `nextCursor` back as `cursor` for older events. */
  async audit(options: AuditOptions = {}): Promise<AuditFeed> {
    return (await this.call(ROUTES.audit, { query: options }, AuditFeed)).body;
  }

  /** Starts a script (or returns the existing one for a repeated ticket with the same body). */
  async startScript(machineId: string, request: StartScriptInput, options: { signal?: AbortSignal } = {}): Promise<StartedScript> {
    const answer = await this.call(ROUTES.startScript, { params: { machineId }, body: request, signal: options.signal }, ScriptStatus);
    return { created: answer.status === 201, status: answer.body };
  }

  /** Returns a script's status with a page of its logs from `logSequence`. */
  async getStatus(machineId: string, ticket: string, options: GetStatusOptions = {}): Promise<ScriptStatus> {
    const query = { logSequence: options.logSequence, limit: options.limit };
    return (await this.call(ROUTES.getScript, { params: { machineId, ticket }, query, signal: options.signal }, ScriptStatus)).body;
  }

  /**
   * Streams a script's log lines and then its final status over Server-Sent Events. A stream that
   * ends before the status event is reopened from the next log sequence; a failure rejects.
   */
  async *streamScript(machineId: string, ticket: string, options: FollowOptions = {}): AsyncGenerator<ScriptEvent> {
    let next = options.logSequence ?? 0;
    let idleDelayMs: number = DEFAULTS.pollInitialDelayMs;
    for (;;) {
      const stream = await openStream(this.transport, ROUTES.streamScript, {
        params: { machineId, ticket },
        query: { logSequence: next },
        signal: options.signal,
      });
      let progressed = false;
      for await (const event of readServerSentEvents(stream.body, stream.url, options.signal)) {
        if (event.event === "log") {
          const line = parseAnswer(LogLine, parseEventData(event.data), "the script stream sent a malformed log event");
          // After a resume the server may repeat a line; each line is delivered once.
          if (line.sequence < next) continue;
          next = line.sequence + 1;
          progressed = true;
          yield { type: "log", line };
        } else if (event.event === "status") {
          const status = parseAnswer(StreamStatus, parseEventData(event.data), "the script stream sent a malformed status event");
          yield { type: "status", status: { ...status, logs: [] } };
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
        status = await this.getStatus(machineId, ticket, { logSequence: next, ...(options.signal && { signal: options.signal }) });
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
    const query = { logSequence: options.logSequence, limit: options.limit };
    return (await this.call(ROUTES.completeScript, { params: { machineId, ticket }, query }, ScriptStatus)).body;
  }

  /** Asks for a script to be cancelled; answers at once, once the control plane has recorded it, with its current status. */
  async cancelScript(machineId: string, ticket: string, options: CancelScriptOptions = {}): Promise<ScriptStatus> {
    return (await this.call(ROUTES.cancelScript, { params: { machineId, ticket }, body: options }, ScriptStatus)).body;
  }

  /** Abandons a script: completes it with -48 and releases its mutex even if its process will not die. */
  async abandonScript(machineId: string, ticket: string, options: AbandonScriptOptions = {}): Promise<ScriptStatus> {
    return (await this.call(ROUTES.abandonScript, { params: { machineId, ticket }, body: options }, ScriptStatus)).body;
  }

  /**
   * Runs a script start to finish: starts it (generating a ticket when none is given), follows its
   * output, stops it when asked (cancel, then abandon — see `ExecuteScriptOptions.signal`), and deletes
   * it once complete. The same as `client.machine(machineId).execute(request, options)`.
   */
  executeScript(machineId: string, request: StartScriptInput, options: ExecuteScriptOptions = {}): Promise<ExecutedScript> {
    return executeOn(this.machine(machineId), request, options);
  }

  /** Calls a declared route and validates its answer (client/http.ts); every method above is one such call. */
  private call<R extends RouteDecl, S extends z.ZodType>(route: R, inputs: RouteInputs<R>, schema: S): Promise<JsonAnswer<z.output<S>>> {
    return callJson(this.transport, route, inputs, schema);
  }
}

function parseEventData(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    throw new TendrilProtocolError(`the script stream sent an event whose data is not JSON: ${data.slice(0, 100)}`);
  }
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
