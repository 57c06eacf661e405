/**
 * Coordination: the runner feeds each script's state machine (script-state.ts) what happens to the script and
 * carries out what it decides. The socket lives in connection.ts, processes in process-manager.ts (killing a whole
 * tree in containment.ts), run folders and their records in run-folder.ts, what an earlier runner process left in
 * predecessor.ts, abandoned processes in abandoned-watch.ts and output numbering in output-spool.ts.
 */
import { randomUUID } from "node:crypto";
import type { ScriptPayload } from "../shared/api.js";
import { CAPABILITIES, PROTOCOL_VERSION, encodeOutputFrame, type ControlMessage, type Outcome, type RunnerMessage } from "../shared/protocol.js";
import { AbandonedProcesses, WATCH_DEFAULTS } from "./abandoned-watch.js";
import type { RunnerDependencies, RunnerHandle, RunnerStats, RunnerStop, ScriptStats } from "./api.js";
import { Connection } from "./connection.js";
import { CgroupTree, currentBootId } from "./containment.js";
import { LineSplitter } from "./line-splitter.js";
import { resolveRunnerOptions, type RunnerInput, type RunnerOptions } from "./options.js";
import { OutputSpool } from "./output-spool.js";
import { OrphanRun, inheritRuns, ownerFor, registerLiveRunner, unregisterLiveRunner, type InheritedRun } from "./predecessor.js";
import { spawnScript, type ProcessManagerOptions, type ScriptProcess, type StreamName, type TreeKill } from "./process-manager.js";
import { displayUrl, environmentSecrets, redact, redactingLogger } from "./redact.js";
import { RunFolders, newRunRecord, type Run, type RunOwner } from "./run-folder.js";
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
  const runs = new RunFolders(options.workDir, (run, doing, error) => options.logger.error(`Could not ${doing} the run folder ${run.dir}: ${describe(error)}`));
  runs.prepare();
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
  readonly spool: OutputSpool;
  readonly splitters: Record<StreamName, LineSplitter>;
  /** Values of its environment that no log line may show. */
  readonly secrets: readonly string[];
  /** Its run folder; undefined when making it failed. */
  run?: Run;
  /** What is still to run, until it is spawned. */
  payload?: ScriptPayload;
  /** Its processes: spawned by this runner (pipes, exit status), or a predecessor's. */
  handle?: ScriptProcess | OrphanRun;
  exit?: { lineCount: number; outcome: Outcome };
}

type Welcome = Extract<ControlMessage, { type: "welcome" }>;

/** Longest `failed` outcome message the protocol accepts. */
const MAX_FAILURE_MESSAGE = 4096;

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
  /** The end of `stop()`: warm shells gone and empty cgroups removed. */
  private cleanup: Promise<void> | undefined;
  /** Shells started ahead of the next script (see warm-shell.ts); none when `TENDRIL_WARM_SHELLS=0`. */
  private readonly warmShells: WarmShellPool | undefined;
  private readonly bootId = currentBootId();
  private readonly owner: RunOwner;
  private readonly context: ScriptContext;
  private readonly processOptions: ProcessManagerOptions;

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
    this.processOptions = {
      pipeDrainMs: options.pipeDrainMs,
      disableKill: options.disableKill,
      baseEnvironment: dependencies.environment,
      ...(cgroups === undefined ? {} : { cgroups }),
      ...(this.warmShells === undefined ? {} : { warmShells: this.warmShells }),
    };
    this.connection = new Connection(
      { ...options, ...(dependencies.socketFactory ? { socketFactory: dependencies.socketFactory } : {}) },
      {
        opened: () => this.sendHello(),
        message: (message) => this.handle(message),
        lost: () => this.options.logger.warn("Lost the connection to the control plane; scripts keep running."),
        ended: (reason) => this.halt(reason),
        writable: () => this.pump(),
      },
    );
    // What earlier runner processes left is taken over before this one registers: its own runs are never a predecessor's.
    for (const inherited of inheritRuns(runs, { cgroups, disableKill: options.disableKill })) this.inherit(inherited);
    registerLiveRunner(this.runnerId);
  }

  get connected(): boolean {
    return this.connection.welcomed;
  }

  start(): void {
    this.options.logger.info(
      `Runner ${this.runnerId} (version ${this.options.version}) for machine ${this.options.machineId} connecting to ${displayUrl(this.options.url)}.`,
    );
    this.connection.start();
  }

  async stop(): Promise<void> {
    if (!this.halted) {
      await this.connection.stop();
      this.halt({ kind: "stopped" });
    }
    await this.cleanup;
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
      if (this.ownCgroups) this.cgroups?.removeEmpty();
      else this.cgroups?.tidy();
    })();
    this.resolveStopped(reason);
    if (reason.kind !== "stopped") this.options.onFatal?.(reason.message);
  }

  /** Where the runner's output stands; see `RunnerHandle.stats`. */
  stats(): RunnerStats {
    const scripts = [...this.scripts.values()].flatMap(({ state, spool, handle }): ScriptStats[] =>
      state.phase === "released"
        ? []
        : [
            {
              ticket: state.ticket,
              fence: state.fence,
              phase: state.phase,
              outputPaused: handle !== undefined && "isOutputPaused" in handle ? handle.isOutputPaused : state.outputPaused,
              ...spool.stats,
            },
          ],
    );
    return {
      heldBytes: scripts.reduce((sum, script) => sum + script.heldBytes, 0),
      socketBufferedBytes: this.connection.bufferedAmount,
      scripts,
    };
  }

  private send(message: RunnerMessage): boolean {
    return this.connection.send(message);
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
      if (!script.spool.allSent) script.spool.flush();
      this.sendExit(script);
    }
  }

  private sendHello(): void {
    const inventory = [...this.scripts.values()].map(({ state, spool }) => ({
      ticket: state.ticket,
      fence: state.fence,
      nextSequence: spool.firstUnacknowledged,
      exited: state.phase === "exited",
    }));
    this.send({
      type: "hello",
      protocol: PROTOCOL_VERSION,
      runnerId: this.runnerId,
      version: this.options.version,
      capabilities: RUNNER_CAPABILITIES,
      killGraceMs: this.options.killGraceMs,
      inventory,
    });
  }

  private handle(message: ControlMessage): void {
    if (this.halted) return;
    switch (message.type) {
      case "welcome":
        return this.onWelcome(message);
      case "dispatch":
        return this.onDispatch(message.ticket, message.fence, message.script);
      case "ack":
        return this.onScript(message, { type: "ack" }, (script) => script.spool.ack(message.nextSequence));
      case "exit_ack":
        return this.onScript(message, { type: "exit_ack" });
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
      this.apply(script, {
        type: "resume",
        action: entry?.action,
        nextSequence: entry?.nextSequence ?? script.spool.firstUnacknowledged,
        killProcess: entry?.killProcess === true,
      });
    }
    // A restarted runner learns here of abandoned processes it never knew; reports the last connection could
    // not deliver go out now.
    this.abandoned.welcome(welcome.watch);
  }

  /** Starts tracking a script: dispatched now, or a predecessor's run found alive. */
  private track(ticket: string, fence: number, origin: Origin, secrets: readonly string[]): TrackedScript {
    const script: TrackedScript = {
      key: scriptKey(ticket, fence),
      state: newScriptState(ticket, fence, origin),
      spool: new OutputSpool({
        send: (batch) => this.connection.sendBulk(encodeOutputFrame({ ticket, fence, sequence: batch.sequence, blocks: batch.blocks })),
        maxUnackedBytes: this.options.maxUnackedBytes,
        pressure: (paused) => this.apply(script, { type: "pressure", paused }),
      }),
      splitters: { stdout: new LineSplitter(), stderr: new LineSplitter() },
      secrets,
    };
    this.scripts.set(script.key, script);
    return script;
  }

  private onDispatch(ticket: string, fence: number, payload: ScriptPayload): void {
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

  /** Tracks what a predecessor left: an orphan until the control plane decides, leftovers until they are gone. */
  private inherit({ run, record, kind, handle }: InheritedRun): void {
    const name = nameOf(record);
    if (kind === "orphan") {
      this.options.logger.info(`Found ${name} left running by an earlier runner process${handle.pid === undefined ? "" : ` (pid ${handle.pid})`}; the control plane decides what becomes of it.`);
      const script = this.track(record.ticket, record.fence, "predecessor", []);
      script.run = run;
      script.handle = handle;
      this.runs.hold(run, "script");
    } else if (record.process !== undefined) {
      // Abandoned: what still runs is left alone, and its folder goes once it is gone.
      const { pid, startTime } = record.process;
      this.abandoned.add({ ticket: record.ticket, fence: record.fence, pid }, { startTime, bootId: record.bootId }, false);
    }
    this.runs.let(run, "found");
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
        return script.handle?.release();
      case "watch":
        if (script.handle?.pid !== undefined) this.watchProcess(script, { pid: script.handle.pid, startTime: script.handle.startTime });
        if (script.run !== undefined) this.runs.update(script.run, { abandoned: true });
        return;
      case "watch_survivors":
        for (const survivor of effect.survivors) this.watchProcess(script, survivor);
        return;
      case "number_from":
        return script.spool.startAt(effect.sequence);
      case "resend":
        return script.spool.resendFrom(effect.nextSequence);
      case "debug":
        script.spool.append("debug", effect.text);
        return;
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
    return script.handle instanceof OrphanRun ? undefined : script.handle;
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
      { ticket: state.ticket, shell: payload.shell, scriptPath: run.scriptPath, cwd: run.cwd, arguments: payload.arguments, environment: payload.environment },
      (stream, chunk) => this.onOutput(script, stream, chunk),
      this.processOptions,
      // On disk before the process can run anything: a runner killed right after the spawn leaves what finds it.
      (identity) => this.runs.write(run, newRunRecord(run, payload.shell, this.owner, this.bootId, identity)),
    );
    if (!spawned.ok) {
      this.fail(script, spawned.outcome.message);
      return;
    }
    const child = spawned.process;
    script.handle = child;
    this.runs.update(run, { process: { pid: child.pid, startTime: child.startTime } });
    this.apply(script, { type: "spawned" });
    if (released(state)) return;
    this.options.logger.info(`Started ${nameOf(state)} with ${payload.shell}: pid ${child.pid}.`);
    const own = await child.wait();
    if (own === undefined || released(state)) return;
    for (const stream of ["stdout", "stderr"] as const) {
      for (const text of script.splitters[stream].end()) script.spool.append(stream, text);
    }
    this.apply(script, { type: "process_ended", outcome: own });
  }

  private onOutput(script: TrackedScript, stream: StreamName, chunk: Buffer): void {
    if (script.state.phase === "released") return;
    // Every line of one chunk arrived at the same moment.
    const occurred = new Date().toISOString();
    for (const { bytes, count } of script.splitters[stream].pushBlocks(chunk)) script.spool.appendBlock({ source: stream, occurred, count, bytes });
  }

  /** The script could not run: one debug line with the reason (no secrets, within the protocol's limit), then a `failed` exit. */
  private fail(script: TrackedScript, reason: string): void {
    const clean = redact(reason, script.secrets);
    const message = clean.length > MAX_FAILURE_MESSAGE ? `${clean.slice(0, MAX_FAILURE_MESSAGE - 1)}…` : clean;
    this.apply(script, { type: "failed", message });
  }

  /** Records the exit after every line so far; it is sent once all of them went out, and kept until `exit_ack`. */
  private finish(script: TrackedScript, outcome: Outcome): void {
    script.spool.flush();
    script.exit = { lineCount: script.spool.nextSequence, outcome };
    this.options.logger.info(`${nameOf(script.state)} ended: ${describeOutcome(outcome)}.`);
    const { run } = script;
    if (run === undefined) return;
    // On disk too, for a later runner, but after the exit went out: the write is no part of reporting it.
    const exit = { outcome, at: new Date().toISOString() };
    setImmediate(() => this.runs.update(run, { exit }));
    this.runs.let(run, "script");
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
    if (script.exit === undefined || !exitDue(script.state, this.generation) || !script.spool.allSent) return;
    const { ticket, fence } = script.state;
    if (this.send({ type: "exit", ticket, fence, ...script.exit })) this.apply(script, { type: "exit_sent", connection: this.generation });
  }

  /** Stops tracking a script for good; remembers it so that a late repeat of its dispatch does not run it again. */
  private untrack(script: TrackedScript): void {
    this.scripts.delete(script.key);
    this.finished.add(script.key);
    if (this.finished.size > REMEMBERED_DISPATCHES) {
      const oldest = this.finished.values().next().value;
      if (oldest !== undefined) this.finished.delete(oldest);
    }
    script.spool.dispose();
    if (script.run !== undefined) this.runs.let(script.run, "script");
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
