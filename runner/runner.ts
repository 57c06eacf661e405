/**
 * Coordination: the runner feeds each script's state machine (script-state.ts) what happens to the script and
 * carries out what it decides. The socket lives in connection.ts (and what each protocol version may say in
 * versions.ts), processes in process-manager.ts (their wrappers in wrapper.ts and warm-shell.ts, killing a whole
 * tree in containment.ts), run folders and their records in run-folder.ts, what an earlier runner process left in
 * predecessor.ts (re-attaching in reattach.ts), abandoned processes in abandoned-watch.ts, and output (lines,
 * numbering, the log written ahead) in script-output.ts.
 */
import { randomUUID } from "node:crypto";
import { resolve } from "node:path";
import type { ScriptPayload } from "../shared/api.js";
import { CAPABILITIES, clampFailureMessage, encodeOutputFrame, type ControlMessage, type Outcome, type RunnerMessage } from "../shared/protocol.js";
import { AbandonedProcesses, WATCH_DEFAULTS } from "./abandoned-watch.js";
import type { RunnerDependencies, RunnerHandle, RunnerStats, RunnerStop, ScriptStats } from "./api.js";
import { Connection } from "./connection.js";
import { CgroupTree, currentBootId } from "./containment.js";
import { resolveRunnerOptions, type RunnerInput, type RunnerOptions } from "./options.js";
import { OutputLog } from "./output-log.js";
import type { OutputSpoolOptions } from "./output-spool.js";
import {
  OrphanRun,
  inheritRuns,
  ownerFor,
  registerLiveRunner,
  stopStray,
  strayWrappers,
  unregisterLiveRunner,
  type InheritedRun,
  type StrayWrapper,
} from "./predecessor.js";
import { ScriptProcess, spawnScript, type ProcessManagerOptions, type StreamName, type TreeKill } from "./process-manager.js";
import { REATTACH_DEFAULTS, letRunGo, reattachedProcess, type ReattachableRun } from "./reattach.js";
import { displayUrl, environmentSecrets, redact, redactingLogger } from "./redact.js";
import { LOG_NAME, RunFolders, newRunRecord, type Run, type RunOwner, type RunRecord } from "./run-folder.js";
import { ScriptOutput } from "./script-output.js";
import {
  describeOutcome,
  exitDue,
  handleScript,
  nameOf,
  newScriptState,
  type Origin,
  type ScriptContext,
  type ScriptEffect,
  type ScriptEvent,
  type ScriptState,
} from "./script-state.js";
import type { ScriptIdentity, ShellName } from "./spawn.js";
import { trace } from "./trace.js";
import { forProtocol } from "./versions.js";
import { WarmShellPool } from "./warm-shell.js";

export type { RunnerDependencies, RunnerHandle, RunnerStats, RunnerStop, ScriptStats } from "./api.js";

/** The capabilities this runner advertises in `hello`. */
export const RUNNER_CAPABILITIES: string[] = [...CAPABILITIES];

/** Starts a runner: it takes over what an earlier runner left in its work dir, connects in the background and keeps reconnecting until stopped. */
export async function startRunner(input: RunnerInput, dependencies: RunnerDependencies = {}): Promise<RunnerHandle> {
  const resolved = resolveRunnerOptions(input);
  // Nothing the runner logs may carry its token, whatever an error message happens to quote.
  const options: RunnerOptions = { ...resolved, logger: redactingLogger(resolved.logger, [resolved.token]) };
  if (options.disableKill) {
    options.logger.warn(
      "UNSAFE: process kill is disabled (TENDRIL_UNSAFE_DISABLE_PROCESS_KILL). Cancel and abandon will not stop any process; use this only in tests.",
    );
  }
  const runs = new RunFolders(
    options.workDir,
    (run, doing, error) => options.logger.error(`Could not ${doing} the run folder ${run.dir}: ${describe(error)}`),
    options.runtimeDir,
  );
  runs.prepare();
  runs.pruneSlots();
  const ownCgroups = dependencies.cgroups === undefined;
  const cgroups = ownCgroups ? detectCgroups(options) : dependencies.cgroups ?? undefined;
  const runner = new Runner(options, dependencies, runs, cgroups, ownCgroups);
  runner.start();
  return {
    runnerId: runner.runnerId,
    get connected() {
      return runner.connected;
    },
    stop: () => runner.stop(),
    drain: () => runner.drain(),
    stopped: runner.stopped,
    stats: () => runner.stats(),
  };
}

/** Finds where scripts get cgroups of their own; says once, in the log, whether they do. */
function detectCgroups(options: RunnerOptions): CgroupTree | undefined {
  const fallback = "cancel finds processes that left a script's process group by their TENDRIL_SCRIPT_MARKER only";
  const tree = CgroupTree.detect((reason) => options.logger.info(`cgroups are not used from now on: ${reason}; ${fallback}.`));
  if (typeof tree === "string") {
    options.logger.info(`Scripts run without cgroups of their own: ${tree}; ${fallback}.`);
    return undefined;
  }
  options.logger.info(`Each script runs in a cgroup of its own under ${tree.own}; cancel kills every process in it.`);
  return tree;
}

/** One (ticket, fence) this runner tracks until the control plane acknowledges its exit (or lets it go). */
interface TrackedScript {
  readonly key: string;
  readonly state: ScriptState;
  /** Its lines: split, numbered, spooled, and logged ahead where it can be re-attached to. */
  readonly output: ScriptOutput;
  /** Values of its environment that no log line may show. */
  readonly secrets: readonly string[];
  /** Its run folder; undefined when making it failed. */
  run?: Run;
  /** What is still to run, until it is spawned. */
  payload?: ScriptPayload;
  /** Its processes: spawned or re-attached to by this runner (output, end), or a predecessor's it cannot follow. */
  handle?: ScriptProcess | OrphanRun;
  exit?: { lineCount: number; outcome: Outcome };
  /** The control plane acknowledged its exit: the record says so, and nothing of it is left to re-attach to. */
  exitAcknowledged?: boolean;
}

type Welcome = Extract<ControlMessage, { type: "welcome" }>;

/** What keeps a re-attached run's folder until the first welcome answered for it. */
const WELCOME_HOLD = "welcome";

/** How many finished (ticket, fence) pairs are remembered, so that a late repeat of their dispatch cannot run them again. */
const REMEMBERED_DISPATCHES = 4096;

function scriptKey(ticket: string, fence: number): string {
  return `${fence}:${ticket}`;
}

class Runner {
  readonly runnerId = randomUUID();
  readonly stopped: Promise<RunnerStop>;
  private resolveStopped: (stop: RunnerStop) => void = () => undefined;
  private readonly connection: Connection;
  private readonly scripts = new Map<string, TrackedScript>();
  /** Abandoned processes, watched until they are gone. */
  private readonly abandoned: AbandonedProcesses;
  /** Keys of scripts this runner no longer tracks, oldest first: a repeated dispatch of one of them is ignored. */
  private readonly finished = new Set<string>();
  /** Counts welcomes: which connection an exit was sent on. */
  private generation = 0;
  /** Where the next `pump` starts, so that no script's output can starve the others'. */
  private pumpCursor = 0;
  private halted = false;
  /** Wrappers of this work dir that no record names, stopped before the first hello. */
  private readonly strays: StrayWrapper[];
  /** The end of `stop()`: warm shells gone and empty cgroups removed. */
  private cleanup: Promise<void> | undefined;
  /** Shells started ahead of the next script (see warm-shell.ts); none when `TENDRIL_WARM_SHELLS=0`. */
  private readonly warmShells: WarmShellPool | undefined;
  private readonly bootId = currentBootId();
  private readonly owner: RunOwner;
  private readonly context: ScriptContext;
  private readonly processOptions: ProcessManagerOptions;
  /** How often a re-attached script's wrapper and exit status file are looked at. */
  private readonly reattachPollMs: number;
  /** Output log segment size; default `LOG_DEFAULTS`. */
  private readonly logSegmentBytes: number | undefined;

  constructor(
    private readonly options: RunnerOptions,
    dependencies: RunnerDependencies,
    private readonly runs: RunFolders,
    private readonly cgroups: CgroupTree | undefined,
    /** The runner detected its cgroup tree itself: it removes the tree's empty cgroups when it stops. */
    private readonly ownCgroups: boolean,
  ) {
    this.owner = ownerFor(this.runnerId);
    this.context = { disableKill: options.disableKill, killGraceMs: options.killGraceMs, maxUnackedBytes: options.maxUnackedBytes, bootId: this.bootId };
    this.abandoned = new AbandonedProcesses({
      pollMs: dependencies.watchPollMs ?? WATCH_DEFAULTS.pollMs,
      report: (process) => this.send({ type: "abandoned_exit", ...process }),
      runs,
      cgroups,
      disableKill: options.disableKill,
      logger: options.logger,
    });
    this.stopped = new Promise((resolve) => {
      this.resolveStopped = resolve;
    });
    this.warmShells = process.env.TENDRIL_WARM_SHELLS === "0" ? undefined : new WarmShellPool();
    this.reattachPollMs = dependencies.reattachPollMs ?? REATTACH_DEFAULTS.pollMs;
    this.logSegmentBytes = dependencies.logSegmentBytes;
    this.processOptions = {
      pipeDrainMs: options.pipeDrainMs,
      disableKill: options.disableKill,
      baseEnvironment: dependencies.environment,
      workDir: resolve(options.workDir),
      ...(cgroups === undefined ? {} : { cgroups }),
      ...(this.warmShells === undefined ? {} : { warmShells: this.warmShells }),
    };
    this.connection = new Connection(
      { ...options, ...(dependencies.socketFactory ? { socketFactory: dependencies.socketFactory } : {}) },
      {
        opened: (protocol) => this.sendHello(protocol),
        message: (message) => this.handle(message),
        lost: () => this.options.logger.warn("Lost the connection to the control plane; scripts keep running."),
        ended: (reason) => this.halt(reason),
        writable: () => this.pump(),
      },
    );
    // What earlier runner processes left is taken over before this one registers: its own runs are never a predecessor's.
    const { inherited, markers } = inheritRuns(runs, {
      cgroups,
      disableKill: options.disableKill,
      onNotReattachable: (run, record, reason) =>
        options.logger.warn(`Cannot re-attach to ${nameOf(record)} (run folder ${run.dir}): ${reason}; it follows the floor rule.`),
    });
    for (const each of inherited) this.inherit(each);
    this.strays = strayWrappers(this.processOptions.workDir!, markers);
    registerLiveRunner(this.runnerId);
  }

  get connected(): boolean {
    return this.connection.welcomed;
  }

  start(): void {
    this.options.logger.info(
      `Runner ${this.runnerId} (version ${this.options.version}) for machine ${this.options.machineId} connecting to ${displayUrl(this.options.url)}.`,
    );
    if (this.strays.length === 0) {
      this.connection.start();
      return;
    }
    // The control plane releases the mutex of a script the hello does not list: what nobody can list is stopped first.
    void this.stopStrays().finally(() => {
      if (!this.halted) this.connection.start();
    });
  }

  async stop(): Promise<void> {
    if (!this.halted) {
      await this.connection.stop();
      this.halt({ kind: "stopped" });
    }
    await this.cleanup;
  }

  /**
   * A graceful stop that leaves every running script to the next runner process (SIGTERM): says `draining` (the
   * control plane holds new dispatches), closes the socket with 1000, and stops like `stop` (the warm shells are
   * killed; scripts keep running, their wrappers waiting for the next runner to re-attach).
   */
  async drain(): Promise<void> {
    if (!this.halted) {
      this.options.logger.info("Draining: taking no new scripts; running scripts are left for the next runner process to re-attach to.");
      this.send({ type: "draining" });
      await this.connection.stop();
      this.halt({ kind: "stopped" });
    }
    await this.cleanup;
  }

  /** Stops the wrappers of this work dir that no record names (see `strayWrappers`), as a cancel would. */
  private async stopStrays(): Promise<void> {
    await Promise.all(
      this.strays.map(async (stray) => {
        if (stray.waiting) {
          this.options.logger.info(`Stopping the waiting shell ${stray.pid} an earlier runner process left; it never got a script.`);
        } else {
          this.options.logger.warn(
            `Found the script wrapper ${stray.pid} of this work dir, left by an earlier runner process, with no run record naming it (its run folder was removed); stopping it as a cancel would.`,
          );
        }
        // A waiting shell has nothing to end gracefully.
        const graceMs = stray.waiting ? 0 : this.options.killGraceMs;
        const kill = await stopStray(stray, { cgroups: this.cgroups, disableKill: this.options.disableKill }, graceMs).catch(
          (error: unknown) => {
            this.options.logger.error(`Could not stop the wrapper ${stray.pid}: ${describe(error)}`);
            return undefined;
          },
        );
        if (kill !== undefined && kill.survivors.length > 0) {
          this.options.logger.error(`Processes of the wrapper ${stray.pid} survived every SIGKILL: pid ${kill.survivors.map((each) => each.pid).join(", ")}.`);
        }
      }),
    );
  }

  /** Stops tracking everything without killing any process, then removes the warm shells and empty cgroups. */
  private halt(reason: RunnerStop): void {
    if (this.halted) return;
    this.halted = true;
    for (const script of [...this.scripts.values()]) this.apply(script, { type: "halt" });
    this.abandoned.stop();
    unregisterLiveRunner(this.runnerId);
    this.cleanup = (async () => {
      await this.warmShells?.dispose();
      // What still holds processes stays for the next runner.
      if (this.ownCgroups) await this.cgroups?.removeEmptySettled();
      else this.cgroups?.tidy();
    })();
    this.resolveStopped(reason);
    if (reason.kind !== "stopped") this.options.onFatal?.(reason.message);
  }

  /** Where the runner's output stands; see `RunnerHandle.stats`. */
  stats(): RunnerStats {
    const scripts = [...this.scripts.values()].flatMap(({ state, output, handle }): ScriptStats[] =>
      state.phase === "released"
        ? []
        : [
            {
              ticket: state.ticket,
              fence: state.fence,
              phase: state.phase,
              origin: state.origin,
              outputPaused: handle instanceof ScriptProcess ? handle.isOutputPaused : state.outputPaused,
              ...output.spool.stats,
            },
          ],
    );
    return {
      heldBytes: scripts.reduce((sum, script) => sum + script.heldBytes, 0),
      socketBufferedBytes: this.connection.bufferedAmount,
      scripts,
    };
  }

  /** Sends a message as the current connection's protocol version carries it (nothing when that version has no such message). */
  private send(message: RunnerMessage, protocol: number | undefined = this.connection.protocol): boolean {
    if (protocol === undefined) return false;
    const shaped = forProtocol(message, protocol);
    return shaped !== undefined && this.connection.send(shaped);
  }

  /**
   * Sends what waits once the socket can take more: each script's unsent output (up to its in-flight limit),
   * then its exit when that was the last of it. Starts with a different script each time.
   */
  private pump(): void {
    const scripts = [...this.scripts.values()];
    if (scripts.length === 0) return;
    const start = this.pumpCursor++ % scripts.length;
    for (let i = 0; i < scripts.length; i++) {
      const script = scripts[(start + i) % scripts.length]!;
      if (!script.output.spool.allSent) script.output.spool.flush();
      this.sendExit(script);
    }
  }

  /** The first frame of a connection, in the protocol version it offers. */
  private sendHello(protocol: number): void {
    const inventory = [...this.scripts.values()].map(({ state, output }) => ({
      ticket: state.ticket,
      fence: state.fence,
      nextSequence: output.spool.firstUnacknowledged,
      exited: state.phase === "exited",
      ...(state.origin === "reattached" ? { reattached: true } : {}),
    }));
    this.send(
      {
        type: "hello",
        protocol,
        runnerId: this.runnerId,
        version: this.options.version,
        capabilities: RUNNER_CAPABILITIES,
        killGraceMs: this.options.killGraceMs,
        inventory,
      },
      protocol,
    );
  }

  private handle(message: ControlMessage): void {
    if (this.halted) return;
    switch (message.type) {
      case "welcome":
        return this.onWelcome(message);
      case "dispatch":
        return this.onDispatch(message.ticket, message.fence, message.script);
      case "ack":
        return this.onScript(message, { type: "ack" }, (script) => script.output.ack(message.nextSequence));
      case "exit_ack":
        return this.onScript(message, { type: "exit_ack" }, (script) => {
          if (script.state.phase === "exited") script.exitAcknowledged = true;
        });
      case "cancel":
        return this.onScript(message, { type: "cancel" });
      case "abandon":
        // The dispatch of the next waiter usually arrives with it: that script starts first, and this (bookkeeping,
        // and a kill only when asked) follows in the next turn of the event loop.
        setImmediate(() => {
          if (!this.halted) this.onScript(message, { type: "abandon", killProcess: message.killProcess });
        });
        return;
      case "delete_workspace":
        return this.runs.requestDelete(message.ticket);
      default: {
        const unreachable: never = message;
        throw new Error(`unhandled control message ${JSON.stringify(unreachable)}`);
      }
    }
  }

  /** Hands a message about one script to its state machine (after `before`); a script this runner does not track is ignored. */
  private onScript(ref: { ticket: string; fence: number }, event: ScriptEvent, before?: (script: TrackedScript) => void): void {
    const script = this.scripts.get(scriptKey(ref.ticket, ref.fence));
    if (script === undefined) {
      this.options.logger.info(`Ignoring a message for ${nameOf(ref)}: this runner does not track it.`);
      return;
    }
    before?.(script);
    this.apply(script, event);
  }

  private onWelcome(welcome: Welcome): void {
    this.generation += 1;
    const answers = new Map(welcome.resume.map((entry) => [scriptKey(entry.ticket, entry.fence), entry]));
    for (const script of [...this.scripts.values()]) {
      const entry = answers.get(script.key);
      // A re-attached script the control plane goes on with is this runner's own now: its folder stays until the
      // script is deleted. One it forgets or cancels goes with its last process, as a predecessor's leftovers do.
      if (script.state.origin === "reattached" && script.run !== undefined && script.run.holds.has(WELCOME_HOLD)) {
        if ((entry?.action ?? "continue") === "continue") this.runs.keep(script.run);
        this.runs.let(script.run, WELCOME_HOLD);
      }
      this.apply(script, {
        type: "resume",
        action: entry?.action,
        nextSequence: entry?.nextSequence ?? script.output.spool.firstUnacknowledged,
        killProcess: entry?.killProcess === true,
      });
    }
    // A restarted runner learns here of abandoned processes it never knew; reports the last connection could
    // not deliver go out now.
    this.abandoned.welcome(welcome.watch);
  }

  /**
   * Starts tracking a script: dispatched now, re-attached to, or a predecessor's run found alive. `makeOutput` makes its
   * output (rebuilt from its log, for a re-attached one) over the spool settings given.
   */
  private track(
    ticket: string,
    fence: number,
    origin: Origin,
    secrets: readonly string[],
    makeOutput: (spool: OutputSpoolOptions, onLogFailure: (error: unknown) => void) => ScriptOutput = (spool, onLogFailure) =>
      new ScriptOutput(spool, onLogFailure),
  ): TrackedScript {
    let script: TrackedScript | undefined;
    const spool: OutputSpoolOptions = {
      send: (batch) => this.connection.sendBulk(encodeOutputFrame({ ticket, fence, sequence: batch.sequence, blocks: batch.blocks })),
      maxUnackedBytes: this.options.maxUnackedBytes,
      // Told while a log is replayed too, before the script is tracked: applied just below then.
      pressure: (paused) => {
        if (script !== undefined) this.apply(script, { type: "pressure", paused });
      },
    };
    const output = makeOutput(spool, (error) => this.logFailed(ticket, fence, error));
    script = { key: scriptKey(ticket, fence), state: newScriptState(ticket, fence, origin), output, secrets };
    this.scripts.set(script.key, script);
    if (output.spool.isPaused) this.apply(script, { type: "pressure", paused: true });
    return script;
  }

  /**
   * A script's output log could not be written: its output goes on, but a later runner process could not number its
   * lines as this one does, so its record stops naming a wrapper to re-attach to (a restart stops it instead).
   */
  private logFailed(ticket: string, fence: number, error: unknown): void {
    this.options.logger.error(`Could not write the output log of ${nameOf({ ticket, fence })}: ${describe(error)}; a runner restart will stop it instead of re-attaching to it.`);
    const run = this.scripts.get(scriptKey(ticket, fence))?.run;
    if (run !== undefined) this.runs.update(run, { reattach: undefined });
  }

  private onDispatch(ticket: string, fence: number, payload: ScriptPayload): void {
    trace(ticket, "dispatch");
    const key = scriptKey(ticket, fence);
    if (this.scripts.has(key) || this.finished.has(key)) {
      // A redelivered dispatch: it runs (or ran) once.
      this.options.logger.info(`Ignoring a repeated dispatch of ${nameOf({ ticket, fence })}: this runner already has it.`);
      return;
    }
    const script = this.track(ticket, fence, "dispatch", environmentSecrets(payload.environment));
    try {
      // A folder of its own, even for a ticket that ran here before: an abandoned process keeps its own.
      script.run = this.runs.create(ticket, fence, payload);
    } catch (error) {
      this.fail(script, `Could not prepare the workspace for ${ticket}: ${describe(error)}`);
      return;
    }
    this.runs.hold(script.run, "script");
    script.payload = payload;
    this.apply(script, { type: "workspace_ready" });
  }

  /**
   * Tracks what a predecessor left: a script to re-attach to, an orphan until the control plane decides, leftovers
   * until they are gone.
   */
  private inherit(inherited: InheritedRun): void {
    if (inherited.kind === "reattach") {
      this.reattach(inherited.run, inherited.record, inherited.found);
      return;
    }
    const { run, record, kind, handle } = inherited;
    const name = nameOf(record);
    if (kind === "orphan") {
      this.options.logger.info(`Found ${name} left running by an earlier runner process${handle.pid === undefined ? "" : ` (pid ${handle.pid})`}; the control plane decides what becomes of it.`);
      const script = this.track(record.ticket, record.fence, "predecessor", []);
      // Its lines are numbered from the welcome's, and nothing of it can be re-attached to later: no log.
      script.output.withoutLog();
      script.run = run;
      script.handle = handle;
      this.runs.hold(run, "script");
    } else if (record.process !== undefined) {
      // Abandoned: what still runs is left alone (its copiers told to drain, its wrapper free to exit), and its folder
      // goes once it is gone.
      letRunGo(run, record);
      const { pid, startTime } = record.process;
      this.abandoned.add({ ticket: record.ticket, fence: record.fence, pid }, { startTime, bootId: record.bootId }, false);
    }
    this.runs.let(run, "found");
  }

  /**
   * Re-attaches to a script an earlier runner process started under a wrapper: its lines are rebuilt from the log
   * (same numbers), its FIFOs read on, its end watched; it is listed in the hello as re-attached, and goes on like a
   * dispatched script once the control plane says `continue`.
   */
  private reattach(run: Run, record: RunRecord, found: ReattachableRun): void {
    const { ticket, fence } = record;
    let log: OutputLog | undefined;
    try {
      log = OutputLog.resume(run.dir, found.logName, this.logOptions());
    } catch (error) {
      this.options.logger.error(`Could not open the output log of ${nameOf(record)} for writing: ${describe(error)}`);
    }
    const script = this.track(ticket, fence, "reattached", [], (spool, onLogFailure) => ScriptOutput.replay(found.logged, log, spool, onLogFailure));
    script.run = run;
    this.runs.hold(run, "script");
    // Until the control plane says what becomes of it: whether its folder is kept depends on that.
    this.runs.hold(run, WELCOME_HOLD);
    this.runs.let(run, "found");
    // This runner follows it now: a third runner process must not take it while this one lives.
    this.runs.update(run, { owner: this.owner, ...(log === undefined ? { reattach: undefined } : {}) });
    const replayed = script.output.outcome;
    this.options.logger.info(
      `Re-attached to ${nameOf(record)}, left by an earlier runner process (wrapper pid ${found.wrapper.pid}; lines ${script.output.spool.firstUnacknowledged} to ${script.output.spool.nextSequence - 1} from its log${replayed === undefined ? "" : `; ${describeOutcome(replayed)}`}).`,
    );
    const child = reattachedProcess(found, record, (stream, chunk) => this.onOutput(script, stream, chunk), {
      pipeDrainMs: this.options.pipeDrainMs,
      disableKill: this.options.disableKill,
      pollMs: this.reattachPollMs,
      cgroups: this.cgroups,
    });
    script.handle = child;
    if (script.state.outputPaused) child.pauseOutput();
    if (replayed !== undefined) this.apply(script, { type: "process_ended", outcome: replayed });
    this.follow(script, child).catch((error: unknown) => this.options.logger.error(`Following ${nameOf(record)} failed inside the runner: ${describe(error)}`));
  }

  /** How output logs are cut. */
  private logOptions(): { segmentBytes?: number } {
    return this.logSegmentBytes === undefined ? {} : { segmentBytes: this.logSegmentBytes };
  }

  /** Feeds one event to a script's state machine and carries out its decisions, in order. */
  private apply(script: TrackedScript, event: ScriptEvent): void {
    for (const effect of handleScript(script.state, event, this.context)) this.perform(script, effect);
  }

  private perform(script: TrackedScript, effect: ScriptEffect): void {
    switch (effect.type) {
      case "spawn":
        return this.spawn(script);
      case "send_started":
        return this.sendStarted(script);
      case "pause_output":
        return this.processOf(script)?.pauseOutput();
      case "resume_output":
        return this.processOf(script)?.resumeOutput();
      case "stop_tree":
        return this.stopTree(script);
      case "kill_now":
        return this.killNow(script);
      case "release":
        return script.handle?.release(effect.handOff);
      case "watch":
        if (script.handle?.pid !== undefined) this.watchProcess(script, { pid: script.handle.pid, startTime: script.handle.startTime });
        if (script.run !== undefined) this.runs.update(script.run, { abandoned: true });
        return;
      case "watch_survivors":
        for (const survivor of effect.survivors) this.watchProcess(script, survivor);
        return;
      case "number_from":
        return script.output.spool.startAt(effect.sequence);
      case "resend":
        return script.output.resendFrom(effect.nextSequence);
      case "debug":
        return script.output.debug(effect.text);
      case "finish":
        return this.finish(script, effect.outcome);
      case "send_exit":
        return this.sendExit(script);
      case "untrack":
        return this.untrack(script);
      case "log":
        return this.options.logger[effect.level](redact(effect.text, script.secrets));
      default: {
        const unreachable: never = effect;
        throw new Error(`unhandled script effect ${JSON.stringify(unreachable)}`);
      }
    }
  }

  private processOf(script: TrackedScript): ScriptProcess | undefined {
    return script.handle instanceof ScriptProcess ? script.handle : undefined;
  }

  private spawn(script: TrackedScript): void {
    this.run(script).catch((error: unknown) => {
      const reason = redact(describe(error), script.secrets);
      this.options.logger.error(`Running ${nameOf(script.state)} failed inside the runner: ${reason}`);
      this.fail(script, `The runner failed while running the script: ${reason}`);
    });
  }

  private async run(script: TrackedScript): Promise<void> {
    const { run, payload, state } = script;
    if (run === undefined || payload === undefined) return;
    script.payload = undefined;
    const spawned = await spawnScript(
      {
        ticket: state.ticket,
        shell: payload.shell,
        scriptPath: run.scriptPath,
        runDir: run.dir,
        cwd: run.cwd,
        arguments: payload.arguments,
        environment: payload.environment,
      },
      (stream, chunk) => this.onOutput(script, stream, chunk),
      this.processOptions,
      // On disk before the process can run anything: a runner killed right after the spawn leaves what finds it.
      (identity) => this.beforeStart(script, run, payload.shell, identity),
    );
    if (!spawned.ok) {
      this.fail(script, spawned.outcome.message);
      return;
    }
    const child = spawned.process;
    script.handle = child;
    // A wrapper's record names its pid already; a direct spawn's gets it now.
    if (run.record?.process?.pid !== child.pid) this.runs.update(run, { process: { pid: child.pid, startTime: child.startTime } });
    this.apply(script, { type: "spawned" });
    if (released(state)) return;
    this.options.logger.info(`Started ${nameOf(state)} with ${payload.shell}: pid ${child.pid}.`);
    await this.follow(script, child);
  }

  /**
   * Before the script's process can run anything: its output log (a wrapped script can be re-attached to, and every
   * event from here on is written ahead) and its record. A throw fails the start.
   */
  private beforeStart(script: TrackedScript, run: Run, shell: ShellName, identity: ScriptIdentity): void {
    let wrapped = identity.wrapped === true;
    if (wrapped) wrapped = script.output.attachLog((checkpoint) => OutputLog.create(run.dir, LOG_NAME, checkpoint, this.logOptions()));
    else script.output.withoutLog();
    this.runs.write(run, newRunRecord(run, shell, this.owner, this.bootId, { ...identity, wrapped }));
  }

  /** Follows a script's process to its end: its streams' ends and its outcome are logged, then its wrapper may exit. */
  private async follow(script: TrackedScript, child: ScriptProcess): Promise<void> {
    const own = await child.wait();
    if (own === undefined || released(script.state)) return;
    trace(script.state.ticket, "ended");
    for (const stream of ["stdout", "stderr"] as const) script.output.end(stream);
    this.apply(script, { type: "process_ended", outcome: own });
    child.settle();
  }

  private onOutput(script: TrackedScript, stream: StreamName, chunk: Buffer): void {
    if (script.state.phase === "released") return;
    script.output.chunk(stream, chunk);
  }

  /** The script could not run: one debug line with the reason (no secrets, within the protocol's limit), then a `failed` exit. */
  private fail(script: TrackedScript, reason: string): void {
    this.apply(script, { type: "failed", message: clampFailureMessage(redact(reason, script.secrets)) });
  }

  /**
   * Records the exit after every line so far (in the log too, for a later runner process); it is sent once all of them
   * went out, and kept until `exit_ack`.
   */
  private finish(script: TrackedScript, outcome: Outcome): void {
    script.output.finished(outcome);
    script.output.spool.flush();
    script.exit = { lineCount: script.output.spool.nextSequence, outcome };
    this.options.logger.info(`${nameOf(script.state)} ended: ${describeOutcome(outcome)}.`);
    if (script.run !== undefined) this.runs.let(script.run, "script");
  }

  private sendStarted(script: TrackedScript): void {
    const handle = this.processOf(script);
    if (handle === undefined) return;
    const { ticket, fence } = script.state;
    this.send({
      type: "started",
      ticket,
      fence,
      pid: handle.pid,
      ...(handle.startTime === undefined ? {} : { startTime: handle.startTime }),
      ...(this.bootId === undefined ? {} : { bootId: this.bootId }),
    });
  }

  /** Sends the exit once per connection, and never before all of its output went out. */
  private sendExit(script: TrackedScript): void {
    // The control plane refuses an exit with lines missing; the output frames go first on the same socket.
    if (script.exit === undefined || !exitDue(script.state, this.generation) || !script.output.spool.allSent) return;
    const { ticket, fence } = script.state;
    if (this.send({ type: "exit", ticket, fence, ...script.exit })) {
      trace(ticket, "exit");
      this.apply(script, { type: "exit_sent", connection: this.generation });
    }
  }

  /** Stops tracking a script for good; remembers it so that a late repeat of its dispatch does not run it again. */
  private untrack(script: TrackedScript): void {
    this.scripts.delete(script.key);
    this.finished.add(script.key);
    if (this.finished.size > REMEMBERED_DISPATCHES) {
      const oldest = this.finished.values().next().value;
      if (oldest !== undefined) this.finished.delete(oldest);
    }
    // Handed off (the runner stops), its log stays for the next runner process; otherwise nobody will need it.
    if (script.state.fate?.handOff === true) script.output.close();
    else script.output.discard();
    const { run, exit } = script;
    if (run === undefined) return;
    if (script.exitAcknowledged === true && exit !== undefined) {
      // On disk for a later runner: nothing of it is left to report. Off the path of the acknowledgement itself.
      const recorded = { outcome: exit.outcome, at: new Date().toISOString() };
      setImmediate(() => this.runs.update(run, { exit: recorded }));
    }
    this.runs.let(run, "script");
  }

  /** Stops the script's tree (SIGTERM, SIGKILL after the grace) in the background; `tree_stopped` follows. */
  private stopTree(script: TrackedScript): void {
    const { handle, run } = script;
    if (handle === undefined) return;
    if (run !== undefined) this.runs.hold(run, "stop");
    const failed = (error: unknown): TreeKill => {
      this.options.logger.error(`Could not signal the process tree of ${nameOf(script.state)}: ${describe(error)}`);
      return { signals: [], escaped: 0, survivors: [], aborted: false };
    };
    void handle
      .killTree(this.options.killGraceMs)
      .catch(failed)
      .then((kill) => {
        kill.leftovers?.catch(failed).then((leftovers) => this.apply(script, { type: "leftovers_stopped", kill: leftovers }));
        this.apply(script, { type: "tree_stopped", kill });
        if (run !== undefined) this.runs.let(run, "stop");
      });
  }

  /** Best-effort SIGKILL of the whole tree, without waiting. */
  private killNow(script: TrackedScript): void {
    try {
      script.handle?.killNow();
    } catch (error) {
      this.options.logger.error(`Could not kill the process tree of ${nameOf(script.state)}: ${describe(error)}`);
    }
  }

  /** Watches a process of an abandoned (or lost) script until it is gone; its run folder stays meanwhile. */
  private watchProcess(script: TrackedScript, process: { pid: number; startTime: number | undefined }): void {
    const { ticket, fence } = script.state;
    this.abandoned.add({ ticket, fence, pid: process.pid }, { startTime: process.startTime, bootId: this.bootId });
  }
}

/** True once the script is let go (a function, so that a check after an `await` is not narrowed away). */
function released(state: ScriptState): boolean {
  return state.phase === "released";
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
