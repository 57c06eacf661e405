/**
 * Coordination: what the runner does with each control message, and what it reports for each script.
 * The socket lives in connection.ts, processes in process-manager.ts (killing a whole tree in containment.ts),
 * abandoned processes in abandoned-watch.ts, output numbering in output-spool.ts and files on disk in
 * workspace.ts; this module only ties them together.
 */
import { randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { ScriptPayload } from "../shared/api.js";
import { CAPABILITIES, PROTOCOL_VERSION, encodeOutputFrame, type ControlMessage, type Outcome, type RunnerMessage } from "../shared/protocol.js";
import { AbandonedWatch, WATCH_DEFAULTS, type WatchedProcess } from "./abandoned-watch.js";
import { Connection, type EndReason, type SocketFactory } from "./connection.js";
import { CgroupTree, type StopResult } from "./containment.js";
import { LineSplitter } from "./line-splitter.js";
import { resolveRunnerOptions, type RunnerInput, type RunnerOptions } from "./options.js";
import { OutputSpool, type SpoolStats } from "./output-spool.js";
import { spawnScript, type ScriptProcess, type StreamName, type TreeKill } from "./process-manager.js";
import { displayUrl, environmentSecrets, redact, redactingLogger } from "./redact.js";
import { WarmShellPool } from "./warm-shell.js";
import { Workspaces } from "./workspace.js";

/** The capabilities this runner advertises in `hello`. */
export const RUNNER_CAPABILITIES: string[] = [...CAPABILITIES];

/** Why a runner stopped. */
export type RunnerStop = { kind: "stopped" } | EndReason;

/** A running runner. */
export interface RunnerHandle {
  /** Random per runner process; the control plane tells a restarted runner from a reconnected one by it. */
  readonly runnerId: string;
  /** True while the handshake with the control plane is complete. */
  readonly connected: boolean;
  /** Closes the socket with 1000 and stops tracking every script; their processes keep running. */
  stop(): Promise<void>;
  /** Resolves once the runner stopped: `stopped` after `stop()`, or why the control plane ended it (4000/4001). */
  readonly stopped: Promise<RunnerStop>;
  /** How much output the runner holds right now, per script and in the socket's send buffer. */
  stats(): RunnerStats;
}

/** One tracked script's output as the runner holds it. */
export interface ScriptStats extends SpoolStats {
  ticket: string;
  fence: number;
  phase: "starting" | "running" | "exited";
  /** True while the script's pipes are not read (backpressure). */
  outputPaused: boolean;
}

/** What the runner holds: unacknowledged output (bounded by `maxUnackedBytes` per script) and queued frames. */
export interface RunnerStats {
  /** Estimated bytes of unacknowledged output over every tracked script. */
  heldBytes: number;
  /** Bytes the WebSocket has queued that the OS has not taken yet. */
  socketBufferedBytes: number;
  scripts: ScriptStats[];
}

/** Seams for tests; production code passes nothing. */
export interface RunnerDependencies {
  /** Opens the WebSocket; default `ws`. */
  socketFactory?: SocketFactory;
  /** The environment scripts inherit (secrets removed); default `process.env`. */
  environment?: NodeJS.ProcessEnv;
  /** Where scripts get their own cgroups; `null`: none (marker sweep only); default: detected at start. */
  cgroups?: CgroupTree | null;
  /** How often abandoned processes are looked at; default `WATCH_DEFAULTS.pollMs`. */
  watchPollMs?: number;
}

/** Starts a runner: it connects in the background and keeps reconnecting until stopped. */
export async function startRunner(input: RunnerInput, dependencies: RunnerDependencies = {}): Promise<RunnerHandle> {
  const resolved = resolveRunnerOptions(input);
  // Nothing the runner logs may carry its token, whatever an error message happens to quote.
  const options: RunnerOptions = { ...resolved, logger: redactingLogger(resolved.logger, [resolved.token]) };
  await mkdir(join(options.workDir, "work"), { recursive: true, mode: 0o700 });
  await mkdir(join(options.workDir, "scripts"), { recursive: true, mode: 0o700 });
  if (options.disableKill) {
    options.logger.warn(
      "UNSAFE: process kill is disabled (TENDRIL_UNSAFE_DISABLE_PROCESS_KILL). Cancel and abandon will not stop any process; use this only in tests.",
    );
  }
  const cgroups = dependencies.cgroups === undefined ? detectCgroups(options) : dependencies.cgroups ?? undefined;
  const runner = new Runner(options, dependencies, cgroups);
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
  options.logger.info(`Each script runs in a cgroup of its own under ${tree.base}; cancel kills every process in it.`);
  return tree;
}

/** Where a script is in its life on this runner. */
type Phase = "starting" | "running" | "exited";

/** One dispatched (ticket, fence) this runner tracks until the control plane acknowledges its exit. */
interface TrackedScript {
  readonly key: string;
  readonly ticket: string;
  readonly fence: number;
  readonly spool: OutputSpool;
  readonly splitters: Record<StreamName, LineSplitter>;
  /** Values of its environment that no log line may show. */
  readonly secrets: readonly string[];
  phase: Phase;
  process?: ScriptProcess;
  /** An ack arrived after `started` went out: the control plane has it, so a reconnect need not send it again. */
  startedConfirmed: boolean;
  /** Too much output is unacknowledged: the pipes are not read (applied to the process as soon as it exists). */
  outputPaused: boolean;
  /** The first pause was logged (later ones are not: they come and go with every window of output). */
  pauseLogged: boolean;
  exit?: { lineCount: number; outcome: Outcome };
  /** The connection (by `Runner.generation`) the exit went out on; it is sent once per connection. */
  exitSentOn?: number;
  cancelRequested: boolean;
  cancel?: Promise<TreeKill>;
  /** Abandoned, forgotten, or the runner stopped: nothing more is reported. */
  dropped: boolean;
  /** Abandoned, or cancelled by a welcome, before the process existed: kill it as soon as it does. */
  killOnStart: boolean;
  /** Abandoned: once it has a process, that process is watched until it is gone. */
  abandoned: boolean;
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
  private readonly workspaces: Workspaces;
  private readonly scripts = new Map<string, TrackedScript>();
  /** Tickets whose workspace the control plane asked to delete while a process of theirs still ran. */
  private readonly deleteAfterExit = new Set<string>();
  /** Abandoned processes, watched until they are gone. */
  private readonly watch: AbandonedWatch;
  /** Keys of scripts this runner no longer tracks, oldest first: a repeated dispatch of one of them is ignored. */
  private readonly finished = new Set<string>();
  /** Counts welcomes: which connection an exit was sent on. */
  private generation = 0;
  /** Where the next `pump` starts, so that no script's output can starve the others'. */
  private pumpCursor = 0;
  private halted = false;
  /** Shells started ahead of the next script (see warm-shell.ts); none when `TENDRIL_WARM_SHELLS=0`. */
  private readonly warmShells: WarmShellPool | undefined;

  constructor(
    private readonly options: RunnerOptions,
    private readonly dependencies: RunnerDependencies,
    private readonly cgroups: CgroupTree | undefined,
  ) {
    this.watch = new AbandonedWatch({
      pollMs: dependencies.watchPollMs ?? WATCH_DEFAULTS.pollMs,
      report: (process) => this.send({ type: "abandoned_exit", ...process }),
      gone: (process) => this.onAbandonedGone(process),
    });
    this.stopped = new Promise((resolve) => {
      this.resolveStopped = resolve;
    });
    this.workspaces = new Workspaces(options.workDir);
    this.warmShells = process.env.TENDRIL_WARM_SHELLS === "0" ? undefined : new WarmShellPool();
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
    if (this.halted) return;
    await this.connection.stop();
    this.halt({ kind: "stopped" });
    await this.warmShells?.dispose();
  }

  /** Stops tracking everything without killing any process. */
  private halt(reason: RunnerStop): void {
    if (this.halted) return;
    this.halted = true;
    for (const script of this.scripts.values()) this.drop(script);
    this.watch.stop();
    void this.warmShells?.dispose();
    this.cgroups?.tidy();
    this.resolveStopped(reason);
    if (reason.kind !== "stopped") this.options.onFatal?.(reason.message);
  }

  /** Where the runner's output stands; see `RunnerHandle.stats`. */
  stats(): RunnerStats {
    const scripts = [...this.scripts.values()].map(
      (script): ScriptStats => ({
        ticket: script.ticket,
        fence: script.fence,
        phase: script.phase,
        outputPaused: script.process?.isOutputPaused ?? script.outputPaused,
        ...script.spool.stats,
      }),
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
      if (script.dropped) continue;
      if (!script.spool.allSent) script.spool.flush();
      this.sendExit(script);
    }
  }

  private sendHello(): void {
    const inventory = [...this.scripts.values()].map((script) => ({
      ticket: script.ticket,
      fence: script.fence,
      nextSequence: script.spool.firstUnacknowledged,
      exited: script.phase === "exited",
    }));
    this.send({
      type: "hello",
      protocol: PROTOCOL_VERSION,
      runnerId: this.runnerId,
      version: this.options.version,
      capabilities: RUNNER_CAPABILITIES,
      inventory,
    });
  }

  private handle(message: ControlMessage): void {
    if (this.halted) return;
    switch (message.type) {
      case "welcome":
        return this.onWelcome(message.resume, message.watch);
      case "dispatch":
        return this.onDispatch(message.ticket, message.fence, message.script);
      case "ack":
        return this.onAck(message.ticket, message.fence, message.nextSequence);
      case "exit_ack":
        return this.onExitAck(message.ticket, message.fence);
      case "cancel":
        return this.onCancel(message.ticket, message.fence);
      case "abandon":
        // The dispatch of the next waiter usually arrives with it: that script starts first, and this (bookkeeping,
        // and a kill only when asked) follows in the next turn of the event loop.
        setImmediate(() => {
          if (!this.halted) this.onAbandon(message.ticket, message.fence, message.killProcess);
        });
        return;
      case "delete_workspace":
        return this.onDeleteWorkspace(message.ticket);
      default: {
        const unreachable: never = message;
        throw new Error(`unhandled control message ${JSON.stringify(unreachable)}`);
      }
    }
  }

  private find(ref: { ticket: string; fence: number }): TrackedScript | undefined {
    const script = this.scripts.get(scriptKey(ref.ticket, ref.fence));
    if (script === undefined) this.options.logger.info(`Ignoring a message for ${ref.ticket} (fence ${ref.fence}): this runner does not track it.`);
    return script;
  }

  private onWelcome(resume: Welcome["resume"], watch: Welcome["watch"]): void {
    this.generation += 1;
    const answers = new Map(resume.map((entry) => [scriptKey(entry.ticket, entry.fence), entry]));
    for (const script of [...this.scripts.values()]) {
      const entry = answers.get(script.key);
      if (entry === undefined) {
        this.options.logger.warn(`The welcome said nothing about ${script.ticket} (fence ${script.fence}); continuing it.`);
        this.resume(script, script.spool.firstUnacknowledged);
        continue;
      }
      switch (entry.action) {
        case "continue":
          this.resume(script, entry.nextSequence);
          break;
        case "cancel":
          // A stale fence or a ticket the control plane no longer has: nothing it reports would be used.
          this.options.logger.info(`The control plane no longer runs ${script.ticket} (fence ${script.fence}); killing its process tree.`);
          this.killAndForget(script);
          break;
        case "abandon":
          this.options.logger.info(`The control plane abandoned ${script.ticket} (fence ${script.fence}); releasing it.`);
          this.abandon(script);
          break;
        case "forget":
          this.options.logger.info(`The control plane no longer knows ${script.ticket} (fence ${script.fence}); dropping it.`);
          this.forget(script);
          break;
        default: {
          const unreachable: never = entry.action;
          throw new Error(`unknown resume action ${String(unreachable)}`);
        }
      }
    }
    // A restarted runner learns here of abandoned processes it never knew; reports the last connection could
    // not deliver go out now.
    for (const process of watch) this.watch.add(process);
    this.watch.flush();
  }

  /**
   * Sends again what the control plane is missing of a script: `started` (unless an ack showed it arrived),
   * output from `nextSequence` (as much as the in-flight limit allows; acks bring the rest), then `exit`.
   */
  private resume(script: TrackedScript, nextSequence: number): void {
    if (!script.startedConfirmed) this.sendStarted(script);
    script.spool.resendFrom(nextSequence);
    this.sendExit(script);
  }

  private onAck(ticket: string, fence: number, nextSequence: number): void {
    const script = this.find({ ticket, fence });
    if (script === undefined) return;
    // Frames arrive in order: whatever acknowledges output also proves that `started` arrived before it.
    if (script.process !== undefined) script.startedConfirmed = true;
    script.spool.ack(nextSequence);
    this.sendExit(script);
  }

  private onDispatch(ticket: string, fence: number, payload: ScriptPayload): void {
    const key = scriptKey(ticket, fence);
    if (this.scripts.has(key) || this.finished.has(key)) {
      // A redelivered dispatch: it runs (or ran) once.
      this.options.logger.info(`Ignoring a repeated dispatch of ${ticket} (fence ${fence}): this runner already has it.`);
      return;
    }
    const script: TrackedScript = {
      key,
      ticket,
      fence,
      spool: new OutputSpool({
        send: (batch) => this.connection.sendBulk(encodeOutputFrame({ ticket, fence, sequence: batch.sequence, blocks: batch.blocks })),
        maxUnackedBytes: this.options.maxUnackedBytes,
        pressure: (paused) => this.onPressure(script, paused),
      }),
      splitters: { stdout: new LineSplitter(), stderr: new LineSplitter() },
      secrets: environmentSecrets(payload.environment),
      phase: "starting",
      startedConfirmed: false,
      outputPaused: false,
      pauseLogged: false,
      cancelRequested: false,
      dropped: false,
      killOnStart: false,
      abandoned: false,
    };
    this.scripts.set(key, script);
    const busy = [...this.scripts.values()].find((other) => other.ticket === ticket && other !== script && other.phase !== "exited");
    if (busy !== undefined) {
      // Both would share one workspace folder.
      this.fail(script, `The ticket ${ticket} is still running on this machine under fence ${busy.fence}.`);
      return;
    }
    this.run(script, payload).catch((error: unknown) => {
      const reason = redact(describe(error), script.secrets);
      this.options.logger.error(`Running ${ticket} (fence ${fence}) failed inside the runner: ${reason}`);
      if (!script.dropped && script.phase !== "exited") this.fail(script, `The runner failed while running the script: ${reason}`);
    });
  }

  private async run(script: TrackedScript, payload: ScriptPayload): Promise<void> {
    let workspace;
    try {
      workspace = await this.workspaces.create(script.ticket, payload);
    } catch (error) {
      if (!script.dropped) this.fail(script, `Could not prepare the workspace for ${script.ticket}: ${describe(error)}`);
      return;
    }
    if (script.dropped) return;
    if (script.cancelRequested) {
      script.spool.append("debug", "Cancelled before the process started.");
      this.finish(script, { kind: "cancelled", signals: [] });
      return;
    }
    const spawned = await spawnScript(
      {
        ticket: script.ticket,
        shell: payload.shell,
        scriptPath: workspace.scriptPath,
        cwd: workspace.dir,
        arguments: payload.arguments,
        environment: payload.environment,
      },
      (stream, chunk) => this.onOutput(script, stream, chunk),
      {
        pipeDrainMs: this.options.pipeDrainMs,
        disableKill: this.options.disableKill,
        baseEnvironment: this.dependencies.environment,
        ...(this.cgroups === undefined ? {} : { cgroups: this.cgroups }),
        ...(this.warmShells === undefined ? {} : { warmShells: this.warmShells }),
      },
    );
    if (!spawned.ok) {
      if (!script.dropped) this.fail(script, spawned.outcome.message);
      return;
    }
    const child = spawned.process;
    if (script.dropped) {
      if (script.killOnStart) this.killNow(script, child);
      child.release();
      if (script.abandoned) this.watchAbandoned(script, child);
      return;
    }
    script.process = child;
    script.phase = "running";
    if (script.outputPaused) child.pauseOutput();
    this.options.logger.info(`Started ${script.ticket} (fence ${script.fence}) with ${payload.shell}: pid ${child.pid}.`);
    this.sendStarted(script);
    if (script.cancelRequested) this.startCancel(script);

    const own = await child.wait();
    if (own === undefined || script.dropped) return;
    for (const stream of ["stdout", "stderr"] as const) {
      for (const text of script.splitters[stream].end()) script.spool.append(stream, text);
    }
    // Cancel is done only when no process of the script survives: the exit waits for the whole tree.
    const kill = script.cancel === undefined ? undefined : await script.cancel;
    if (script.dropped) return;
    this.finish(script, this.cancelOutcome(script, own, kill));
  }

  /** The outcome to report and the debug lines that explain a cancel. */
  private cancelOutcome(script: TrackedScript, own: Outcome, kill: TreeKill | undefined): Outcome {
    if (kill === undefined) return own;
    if (kill.signals.length === 0) {
      if (!this.options.disableKill) script.spool.append("debug", "Cancel requested, but the process had already exited; its own exit code stands.");
      return own;
    }
    const [first, ...rest] = kill.signals;
    const escaped = kill.escaped === 0 ? "" : ` and to ${plural(kill.escaped, "process", "processes")} that had left it`;
    const then = rest.length > 0 ? `, then ${rest.join(", then ")} after ${this.options.killGraceMs} ms` : "";
    script.spool.append("debug", `Cancelled: sent ${first} to the process group${escaped}${then}.`);
    if (kill.survivors.length > 0) script.spool.append("debug", survivorsSentence(kill.survivors));
    return { kind: "cancelled", signals: kill.signals };
  }

  private onOutput(script: TrackedScript, stream: StreamName, chunk: Buffer): void {
    if (script.dropped) return;
    // Every line of one chunk arrived at the same moment.
    const occurred = new Date().toISOString();
    for (const { bytes, count } of script.splitters[stream].pushBlocks(chunk)) script.spool.appendBlock({ source: stream, occurred, count, bytes });
  }

  /** The spool holds too much unacknowledged output (or has room again): stop (or go on) reading the pipes. */
  private onPressure(script: TrackedScript, paused: boolean): void {
    script.outputPaused = paused;
    if (paused && !script.pauseLogged && !script.dropped) {
      script.pauseLogged = true;
      this.options.logger.info(
        `${script.ticket} (fence ${script.fence}) writes output faster than the control plane stores it: its output is read only while less than ${this.options.maxUnackedBytes} bytes wait for acknowledgement, and the script waits meanwhile.`,
      );
    }
    if (script.process === undefined) return;
    if (paused) script.process.pauseOutput();
    else script.process.resumeOutput();
  }

  /** The script could not run: one debug line with the reason, then a `failed` exit. */
  private fail(script: TrackedScript, reason: string): void {
    // The reason may quote what the request carried (an error about a file or a variable); never its secrets.
    const clean = redact(reason, script.secrets);
    // The protocol caps the message; a longer one would make the exit frame invalid.
    const message = clean.length > MAX_FAILURE_MESSAGE ? `${clean.slice(0, MAX_FAILURE_MESSAGE - 1)}…` : clean;
    this.options.logger.warn(`${script.ticket} (fence ${script.fence}) could not run: ${message}`);
    script.spool.append("debug", message);
    this.finish(script, { kind: "failed", message });
  }

  /** Records the exit and sends it once all output went out; it is kept until `exit_ack`. */
  private finish(script: TrackedScript, outcome: Outcome): void {
    script.spool.flush();
    script.exit = { lineCount: script.spool.nextSequence, outcome };
    script.phase = "exited";
    this.options.logger.info(`${script.ticket} (fence ${script.fence}) ended: ${describeOutcome(outcome)}.`);
    this.sendExit(script);
    this.deleteWorkspaceIfDue(script.ticket);
  }

  private sendStarted(script: TrackedScript): void {
    if (script.process === undefined) return;
    this.send({ type: "started", ticket: script.ticket, fence: script.fence, pid: script.process.pid });
  }

  /** Sends the exit once per connection, and never before all of its output went out. */
  private sendExit(script: TrackedScript): void {
    // The control plane refuses an exit with lines missing; the output frames go first on the same socket.
    if (script.exit === undefined || script.dropped || !script.spool.allSent || script.exitSentOn === this.generation) return;
    if (this.send({ type: "exit", ticket: script.ticket, fence: script.fence, ...script.exit })) script.exitSentOn = this.generation;
  }

  private onExitAck(ticket: string, fence: number): void {
    const script = this.find({ ticket, fence });
    if (script === undefined) return;
    if (script.exit === undefined) {
      this.options.logger.warn(`Ignoring exit_ack for ${ticket} (fence ${fence}): it has not exited.`);
      return;
    }
    script.spool.dispose();
    this.untrack(script);
  }

  private onCancel(ticket: string, fence: number): void {
    const script = this.find({ ticket, fence });
    if (script === undefined || script.cancelRequested) return;
    if (script.phase === "exited") {
      // Its exit (and own exit code) already went out; what it left running is still part of what to stop.
      script.cancelRequested = true;
      if (script.process !== undefined) this.killLeftovers(script, script.process);
      return;
    }
    script.cancelRequested = true;
    this.options.logger.info(`Cancelling ${ticket} (fence ${fence}).`);
    if (this.options.disableKill) {
      script.spool.append("debug", "Cancel requested, but process kill is disabled on this runner (UNSAFE); the process keeps running.");
    }
    this.startCancel(script);
  }

  private startCancel(script: TrackedScript): void {
    const child = script.process;
    if (child === undefined || script.cancel !== undefined) return;
    script.cancel = child.killTree(this.options.killGraceMs).then(
      (kill) => {
        this.logKill(script, kill);
        return kill;
      },
      (error: unknown): TreeKill => {
        this.options.logger.error(`Could not signal the process tree of ${script.ticket}: ${describe(error)}`);
        return { signals: [], escaped: 0, survivors: [] };
      },
    );
  }

  /** Kills, in the background, what a script that exited by itself left running. */
  private killLeftovers(script: TrackedScript, child: ScriptProcess): void {
    child
      .killTree(this.options.killGraceMs)
      .then((kill) => this.logKill(script, kill))
      .catch((error: unknown) => this.options.logger.error(`Could not signal the process tree of ${script.ticket}: ${describe(error)}`));
  }

  /** Logs what a tree kill could not finish, and what the script left behind once that is dealt with. */
  private logKill(script: TrackedScript, kill: TreeKill): void {
    const name = `${script.ticket} (fence ${script.fence})`;
    if (kill.survivors.length > 0) this.options.logger.error(`Cancelling ${name}: ${survivorsSentence(kill.survivors)}`);
    kill.leftovers?.then(
      (result: StopResult) => {
        if (result.signals.length > 0) {
          this.options.logger.info(`${name} had exited by itself; stopped ${plural(result.escaped, "process", "processes")} it left running.`);
        }
        if (result.survivors.length > 0) this.options.logger.error(`Cancelling ${name}: ${survivorsSentence(result.survivors)}`);
      },
      (error: unknown) => this.options.logger.error(`Could not stop what ${name} left running: ${describe(error)}`),
    );
  }

  private onAbandon(ticket: string, fence: number, killProcess: boolean): void {
    const script = this.find({ ticket, fence });
    if (script === undefined) return;
    this.options.logger.info(`The control plane abandoned ${ticket} (fence ${fence})${killProcess ? "; killing its process tree" : ""}.`);
    if (killProcess) {
      if (script.process !== undefined) this.killNow(script, script.process);
      else script.killOnStart = true;
    }
    this.abandon(script);
  }

  /** Best-effort SIGKILL of the whole tree, without waiting. */
  private killNow(script: TrackedScript, child: ScriptProcess): void {
    try {
      child.killNow();
    } catch (error) {
      this.options.logger.error(`Could not kill the process tree of ${script.ticket}: ${describe(error)}`);
    }
  }

  /** Stops tracking a script and stops its process tree in the background (SIGTERM, SIGKILL after the grace). */
  private killAndForget(script: TrackedScript): void {
    const child = script.process;
    script.killOnStart = true;
    script.dropped = true;
    script.spool.dispose();
    this.untrack(script);
    if (child === undefined) return; // Still starting: `run` kills it as soon as it exists.
    child
      .killTree(this.options.killGraceMs)
      .then((kill) => this.logKill(script, kill))
      .catch((error: unknown) => this.options.logger.error(`Could not signal the process tree of ${script.ticket}: ${describe(error)}`))
      .finally(() => {
        child.release();
        this.deleteWorkspaceIfDue(script.ticket);
      });
  }

  /** Stops tracking an abandoned script at once (nothing more is sent for it) and watches its process instead. */
  private abandon(script: TrackedScript): void {
    script.abandoned = true;
    // Watched first: its workspace must outlive the process.
    if (script.process !== undefined) this.watchAbandoned(script, script.process);
    this.forget(script);
  }

  private watchAbandoned(script: TrackedScript, child: ScriptProcess): void {
    this.watch.add({ ticket: script.ticket, fence: script.fence, pid: child.pid }, child.startTime);
  }

  private onAbandonedGone(process: WatchedProcess): void {
    this.options.logger.info(`The abandoned process ${process.pid} of ${process.ticket} (fence ${process.fence}) is gone.`);
    this.deleteWorkspaceIfDue(process.ticket);
    this.cgroups?.tidy();
  }

  /** Stops tracking a script for good, without killing its process. */
  private forget(script: TrackedScript): void {
    this.drop(script);
    this.untrack(script);
    this.deleteWorkspaceIfDue(script.ticket);
  }

  /** Stops tracking a script, and remembers it so that a late repeat of its dispatch does not run it again. */
  private untrack(script: TrackedScript): void {
    this.scripts.delete(script.key);
    this.finished.add(script.key);
    if (this.finished.size > REMEMBERED_DISPATCHES) {
      const oldest = this.finished.values().next().value;
      if (oldest !== undefined) this.finished.delete(oldest);
    }
  }

  private drop(script: TrackedScript): void {
    script.dropped = true;
    script.process?.release();
    script.spool.dispose();
  }

  /** True while a process of the ticket may still run: a tracked script, or an abandoned process being watched. */
  private ticketInUse(ticket: string): boolean {
    if (this.watch.isWatching(ticket)) return true;
    for (const script of this.scripts.values()) if (script.ticket === ticket && script.phase !== "exited") return true;
    return false;
  }

  private onDeleteWorkspace(ticket: string): void {
    if (this.ticketInUse(ticket)) {
      // Deleting the folder under a running process would break it; do it when that process is gone.
      this.deleteAfterExit.add(ticket);
      return;
    }
    this.removeWorkspace(ticket);
  }

  /** Deletes a workspace the control plane asked to delete once no process of its ticket runs any more. */
  private deleteWorkspaceIfDue(ticket: string): void {
    if (!this.deleteAfterExit.has(ticket) || this.ticketInUse(ticket)) return;
    this.deleteAfterExit.delete(ticket);
    this.removeWorkspace(ticket);
  }

  private removeWorkspace(ticket: string): void {
    this.workspaces.remove(ticket).catch((error: unknown) => {
      this.options.logger.error(`Could not delete the workspace of ${ticket}: ${describe(error)}`);
    });
  }
}

function describeOutcome(outcome: Outcome): string {
  switch (outcome.kind) {
    case "exited":
      return `exited with code ${outcome.code}`;
    case "signaled":
      return `killed by ${outcome.signal}`;
    case "failed":
      return `failed: ${outcome.message}`;
    case "cancelled":
      return outcome.signals.length > 0 ? `cancelled (${outcome.signals.join(", ")})` : "cancelled";
    default: {
      const unreachable: never = outcome;
      throw new Error(`unknown outcome ${JSON.stringify(unreachable)}`);
    }
  }
}

function plural(count: number, one: string, many: string): string {
  return `${count} ${count === 1 ? one : many}`;
}

function survivorsSentence(pids: number[]): string {
  return `${plural(pids.length, "process", "processes")} of the script survived every SIGKILL (pid ${pids.join(", ")}); giving up on ${pids.length === 1 ? "it" : "them"}.`;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
