/**
 * Handles: `client.machine(id)` names one machine, and each run started on it (or re-attached by ticket) is a
 * `ScriptRun` whose methods need no ids: its logs from the start (then live), its stored result, cancel, abandon,
 * deletion — and disposal (`await using`), which deletes it once it is complete and never touches it before.
 */
import { randomUUID } from "node:crypto";
import type { LogLine, MachineView, RegisteredMachine, ScriptStatus, StartScriptInput } from "../shared/api.js";
import { TendrilApiError, TendrilProtocolError } from "./errors.js";
import { executeOn, type ExecuteScriptOptions, type ExecutedScript } from "./execute.js";
import type {
  AbandonScriptOptions,
  CancelScriptOptions,
  CompleteScriptOptions,
  FollowOptions,
  GetStatusOptions,
  ScriptEvent,
  TendrilClient,
} from "./sdk.js";

/** Options of `MachineHandle.start`. */
export interface StartOptions {
  /** Aborts the start call (the script may still have been created: start it again with the same ticket to find out). */
  signal?: AbortSignal;
}

/**
 * A complete script's stored status, as `ScriptRun.result()` reads it from the control plane: its exit code
 * (negative codes are Tendril's: -43 cancelled, -44 mutex timeout, -46 result unknown, -48 abandoned) and whatever
 * else a status carries, without the page of logs (`logs()` has them).
 */
export type ScriptResult = Omit<ScriptStatus, "logs" | "nextLogSequence" | "hasMoreLogs" | "state" | "exitCode"> & {
  state: "complete";
  exitCode: number;
};

/**
 * What disposing of a run did. Disposal never throws (an error in it would mask the one that ended the block):
 * - `deleted`: the run was complete, and it is deleted now; `result` is its final stored status;
 * - `not_complete`: the run is still pending or running, so it was left exactly as it was (never cancelled, never
 *   deleted): it goes on, stays stored, and `machine.script(ticket)` re-attaches to it;
 * - `already_deleted`: it was deleted before (by `complete()`, `executeScript`, or another process);
 * - `failed`: the deletion could not be made (e.g. the control plane was unreachable); the client's
 *   `onDisposeError` has been told. The script stays stored until the control plane's retention removes it.
 */
export type DisposeOutcome =
  | { outcome: "deleted"; result: ScriptResult }
  | { outcome: "not_complete" }
  | { outcome: "already_deleted" }
  | { outcome: "failed"; error: unknown };

/** One machine of a control plane; from `client.machine(id)`. */
export class MachineHandle {
  /** Creates a handle; nothing is sent (use `client.machine(id)`). */
  constructor(
    /** The client it talks through. */
    readonly client: TendrilClient,
    /** The machine's id. */
    readonly id: string,
  ) {}

  /**
   * Starts a script and returns a handle on its run. A ticket is generated when the request has none, so the
   * call can be repeated safely: the same ticket with the same body is the same run (`created` false).
   */
  async start(request: StartScriptInput, options: StartOptions = {}): Promise<ScriptRun> {
    const ticket = request.ticket ?? randomUUID();
    const started = await this.client.startScript(this.id, { ...request, ticket }, options);
    return new ScriptRun(this, ticket, started.created);
  }

  /** A handle on a run started elsewhere (another process, an earlier deployment), by its ticket. Sends nothing. */
  script(ticket: string): ScriptRun {
    return new ScriptRun(this, ticket, undefined);
  }

  /** The machine view: its runner (connected, capabilities), mutexes, scripts and abandoned processes. */
  view(options: { signal?: AbortSignal } = {}): Promise<MachineView> {
    return this.client.getMachine(this.id, options);
  }

  /** Registers the machine (creating it when new) and issues a fresh runner token, revoking the previous one. */
  register(): Promise<RegisteredMachine> {
    return this.client.registerMachine(this.id);
  }

  /** Revokes its runner token without issuing a new one; its runner is disconnected. */
  revokeRunnerToken(): Promise<{ machineId: string; revoked: true }> {
    return this.client.revokeRunnerToken(this.id);
  }

  /** Removes the decommissioned machine (409 `machine_busy` while a script is pending or running on it). */
  remove(): Promise<{ machineId: string; removed: true }> {
    return this.client.removeMachine(this.id);
  }

  /** Runs a script start to finish, with cancel → abandon escalation, and deletes it (see `TendrilClient.executeScript`). */
  execute(request: StartScriptInput, options: ExecuteScriptOptions = {}): Promise<ExecutedScript> {
    return executeOn(this, request, options);
  }
}

/**
 * One run of a script on a machine: from `machine.start(...)`, or `machine.script(ticket)` to re-attach. Every
 * method reads or acts on the control plane's stored state, so any number of handles (in any number of processes)
 * may point at the same run. `await using run = await machine.start(...)` deletes it at the end of the block if it
 * is complete by then (see `DisposeOutcome`).
 */
export class ScriptRun implements AsyncDisposable {
  /** The machine's id. */
  readonly machineId: string;
  /** The run's first log sequence that none of this handle's iterations has delivered yet. */
  private delivered = 0;
  /** The stored final status, once read (it never changes after completion). */
  private final: ScriptResult | undefined;
  private deleted = false;
  private disposal: Promise<DisposeOutcome> | undefined;

  /** Creates a handle; nothing is sent (use `machine.start` or `machine.script`). */
  constructor(
    /** The machine it runs on. */
    readonly machine: MachineHandle,
    /** The script's ticket. */
    readonly ticket: string,
    /** True when `start` created it (201), false when the ticket already named it (200), undefined when re-attached. */
    readonly created: boolean | undefined,
  ) {
    this.machineId = machine.id;
  }

  private get client(): TendrilClient {
    return this.machine.client;
  }

  /**
   * The run's log lines, each once and in order: from the start (or `logSequence`), then live until the run is
   * complete; the iteration then ends. A dropped stream resumes where it stopped (or falls back to polling). Each
   * call iterates anew from the start, so a second reader misses nothing.
   */
  async *logs(options: FollowOptions = {}): AsyncGenerator<LogLine> {
    for await (const event of this.events(options)) if (event.type === "log") yield event.line;
  }

  /** Like `logs()`, followed by one final `status` event as the live stream reported it. */
  async *events(options: FollowOptions = {}): AsyncGenerator<ScriptEvent> {
    for await (const event of this.client.followScript(this.machineId, this.ticket, options)) {
      if (event.type === "log") this.delivered = Math.max(this.delivered, event.line.sequence + 1);
      yield event;
    }
  }

  /** The run's current status with one page of its logs (`logSequence`, `limit`). */
  status(options: GetStatusOptions = {}): Promise<ScriptStatus> {
    return this.client.getStatus(this.machineId, this.ticket, options);
  }

  /**
   * Waits until the run is complete and resolves with its final status as the control plane stored it — read with a
   * GET once completion has been seen, never taken from how a stream ended. Waiting follows the live stream (falling
   * back to polling). Rejects with `TendrilApiError` `unknown_script` once the run has been deleted elsewhere; after
   * this handle has read or deleted it, it answers from what it read.
   */
  async result(options: { signal?: AbortSignal } = {}): Promise<ScriptResult> {
    if (this.final) return this.final;
    let waited = false;
    for (;;) {
      // One line at most: the page of logs is not part of the result, and `logs()` delivers them.
      const status = await this.status({ logSequence: this.delivered, limit: 1, ...(options.signal && { signal: options.signal }) });
      if (status.state === "complete") return this.remember(status);
      if (waited) {
        throw new TendrilProtocolError(`the live stream of ${this.ticket} ended with its final status, but its stored status is still ${status.state}`);
      }
      // The lines are of no use here; starting where this handle's iterations stopped skips what they delivered.
      for await (const _event of this.events({ logSequence: this.delivered, ...(options.signal && { signal: options.signal }) })) {
        // drained
      }
      waited = true;
    }
  }

  /**
   * Asks the control plane to cancel the run, and resolves once it has recorded the cancel, with the status at that
   * moment: often still `running`, since the runner stops the process tree asynchronously (`result()` waits for the
   * end). A pending run completes at once with -43; a complete one is left as it is. Repeating it is harmless.
   */
  cancel(options: CancelScriptOptions = {}): Promise<ScriptStatus> {
    return this.client.cancelScript(this.machineId, this.ticket, options);
  }

  /**
   * Abandons the run: it completes at once with -48 and its mutex goes to the next waiter, while its process may go
   * on running (`killProcess: true` asks for a best-effort kill). Resolves with the status, already complete (-43
   * for a run that never started; a run already complete keeps its real exit code). Repeating it is harmless.
   */
  abandon(options: AbandonScriptOptions = {}): Promise<ScriptStatus> {
    return this.client.abandonScript(this.machineId, this.ticket, options);
  }

  /**
   * Deletes the complete run and resolves with its final status and one page of logs from `logSequence`. Rejects
   * with `TendrilApiError` `not_complete` (409) while it is pending or running: nothing is deleted then.
   */
  async complete(options: CompleteScriptOptions = {}): Promise<ScriptStatus> {
    const status = await this.client.completeScript(this.machineId, this.ticket, options);
    this.deleted = true;
    this.remember(status);
    return status;
  }

  /** Deletes the run if it is complete, and otherwise leaves it alone; never throws (see `DisposeOutcome`). Once per handle. */
  dispose(): Promise<DisposeOutcome> {
    this.disposal ??= this.disposeOnce();
    return this.disposal;
  }

  /** `await using`: `dispose()`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  private async disposeOnce(): Promise<DisposeOutcome> {
    if (this.deleted) return { outcome: "already_deleted" };
    try {
      // The control plane refuses (409) to delete what is not complete, in the same step as its check: no race.
      const status = await this.complete({ logSequence: this.delivered, limit: 1 });
      return { outcome: "deleted", result: this.remember(status) };
    } catch (error) {
      if (error instanceof TendrilApiError && error.code === "not_complete") return { outcome: "not_complete" };
      if (error instanceof TendrilApiError && error.code === "unknown_script") return { outcome: "already_deleted" };
      try {
        this.client.onDisposeError?.(error, { machineId: this.machineId, ticket: this.ticket });
      } catch {
        // A throwing callback must not turn disposal into an error either.
      }
      return { outcome: "failed", error };
    }
  }

  /** Keeps the stored final status of a complete run; the first one read is the one kept (it never changes). */
  private remember(status: ScriptStatus): ScriptResult {
    if (this.final) return this.final;
    const { logs: _logs, nextLogSequence: _next, hasMoreLogs: _more, state, exitCode, ...rest } = status;
    if (state !== "complete" || exitCode === null) {
      throw new TendrilProtocolError(`the final status of ${this.ticket} is ${state} with exit code ${String(exitCode)}, not complete with a code`);
    }
    this.final = { ...rest, state, exitCode };
    return this.final;
  }
}
