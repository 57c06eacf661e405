/**
 * One script's life on this runner, as a pure state machine: `handleScript(state, event, context) → effects`. It
 * does no I/O: runner.ts feeds it what happened (the process spawned or ended, a tree stop finished, a control
 * message arrived) and carries out the effects it returns, in order (spawn, kill, release, watch, send, finish).
 *
 *   starting ─spawned→ running ─cancel→ stopping ─(own exit and tree stopped)→ exited ─exit_ack→ released
 *      │                  └──────────────────own exit──────────────────────────┘
 *      └─failed, or cancelled before the spawn→ exited
 *
 * A script an earlier runner process started under a wrapper and this one re-attached to (`origin: "reattached"`)
 * starts in `running` with its output rebuilt from the run's log, and goes on like a dispatched one; should its
 * wrapper turn out to have gone without recording the script's end (`process_ended` with an unknown end), what is left
 * of it is stopped and it exits as `lost`. A run that an earlier runner process left behind and that cannot be
 * re-attached to (`origin: "predecessor"`) starts in `running` with processes but no pipes of ours; `continue` makes
 * the runner stop it as a cancel would (`stopping`), and it exits as `lost`, listing the processes that would not
 * die. Abandon, a welcome's cancel, forget or abandon, and a halt release a script from any phase: nothing more is
 * reported for it, and its `fate` says what becomes of its process (killed now, stopped, watched, or handed off to a
 * later runner process), also of one still being spawned.
 */
import { MAX_SURVIVORS, type Outcome, type ProcessRef, type ResumeAction } from "../shared/protocol.js";
import type { ProcessIdentity } from "./containment.js";

/** Where a script is in its life on this runner. */
export type Phase =
  /** Dispatched; its process does not exist yet. */
  | "starting"
  /** Its process runs and is tracked. */
  | "running"
  /** Its process tree is being stopped (a cancel; for a predecessor's run, the runner itself). */
  | "stopping"
  /** Its outcome is known; the exit is sent once per connection until `exit_ack`. */
  | "exited"
  /** No longer tracked: nothing more is reported for it. */
  | "released";

/**
 * Whether this runner process dispatched the script, re-attached to one an earlier runner process started, or found
 * one left by an earlier runner process that it cannot re-attach to.
 */
export type Origin = "dispatch" | "reattached" | "predecessor";

/** What a tree stop did. */
export interface KillSummary {
  /** Signals sent while processes of it still ran; none when nothing was left to signal. */
  signals: string[];
  /** How many processes outside the process group were signalled. */
  escaped: number;
  /** Processes alive at the end: they survived every SIGKILL or, when `aborted`, were let go. */
  survivors: ProcessIdentity[];
  /** The stop was ended early because the script was released (abandoned). */
  aborted: boolean;
}

/** What becomes of the process of a released script (now, or once it exists). */
export interface Fate {
  /** `now`: SIGKILL at once; `tree`: stop it as a cancel would, released once stopped; `none`: left running. */
  kill: "none" | "now" | "tree";
  /** Watched until it is gone, and reported (`abandoned_exit`). */
  watch: boolean;
  /** Left to a later runner process to re-attach to (the runner stops): its wrapper keeps waiting, its log stays. */
  handOff?: boolean;
}

/** Everything the runner keeps about one script's course. */
export interface ScriptState {
  readonly ticket: string;
  readonly fence: number;
  readonly origin: Origin;
  phase: Phase;
  /** Its process exists (spawned by this runner, or found alive when it came from a predecessor). */
  hasProcess: boolean;
  /** An ack arrived after `started` went out: a reconnect need not send it again. */
  startedConfirmed: boolean;
  /** Too much output is unacknowledged: the pipes are not read (applied to the process as soon as it exists). */
  outputPaused: boolean;
  /** The first pause was logged (later ones come and go with every window of output). */
  pauseLogged: boolean;
  cancelRequested: boolean;
  /** A tree stop was started for it; a second is never started. */
  treeStop: "none" | "running" | "done";
  /** A predecessor's run numbers its lines from the welcome's `nextSequence`: set once that is known. */
  numbered: boolean;
  /** A re-attached script whose wrapper went without recording its end: it exits as `lost` once what is left is stopped. */
  unknownEnd: boolean;
  /** While stopping: the process's own outcome, once it ended. */
  ownOutcome?: Outcome;
  /** While stopping: what the tree stop did, once it finished. */
  kill?: KillSummary;
  /** The connection (a runner-wide counter of welcomes) its exit went out on. */
  exitSentOn?: number;
  /** Once released: what becomes of its process. */
  fate?: Fate;
}

/** Settings the decisions depend on. */
export interface ScriptContext {
  /** UNSAFE: kills are no-ops (said in the script's output when it matters). */
  disableKill: boolean;
  /** The grace between SIGTERM and SIGKILL, named in the debug lines. */
  killGraceMs: number;
  /** The backpressure mark, named in the log when a script's output first pauses. */
  maxUnackedBytes: number;
  /** This boot's id, for the processes a `lost` outcome lists. */
  bootId: string | undefined;
}

/** What happens to a script. */
export type ScriptEvent =
  /** Its run folder is ready: the process may start. */
  | { type: "workspace_ready" }
  /** Its process exists. */
  | { type: "spawned" }
  /** It could not run (the message is safe to show). */
  | { type: "failed"; message: string }
  /** Its process ended (its output all read), with this outcome. */
  | { type: "process_ended"; outcome: Outcome }
  /** The tree stop it asked for finished. */
  | { type: "tree_stopped"; kill: KillSummary }
  /** The stop of what it left running after it had exited by itself finished. */
  | { type: "leftovers_stopped"; kill: KillSummary }
  /** The output spool wants the pipes not read (true) or read again (false). */
  | { type: "pressure"; paused: boolean }
  | { type: "ack" }
  | { type: "exit_ack" }
  | { type: "exit_sent"; connection: number }
  | { type: "cancel" }
  | { type: "abandon"; killProcess: boolean }
  /** The welcome's answer for it; `action` undefined when the welcome said nothing about it. */
  | { type: "resume"; action: ResumeAction | undefined; nextSequence: number; killProcess: boolean }
  /** The runner stops: it lets go of everything without killing anything. */
  | { type: "halt" };

/** What the runner does about it, in order. */
export type ScriptEffect =
  | { type: "spawn" }
  | { type: "send_started" }
  | { type: "pause_output" }
  | { type: "resume_output" }
  /** SIGTERM to the tree, SIGKILL after the grace; `tree_stopped` follows. */
  | { type: "stop_tree" }
  /** Best-effort SIGKILL of the whole tree, without waiting. */
  | { type: "kill_now" }
  /**
   * Stops tracking the process (a tree stop in progress ends): its output is drained into nothing, or, handed off
   * (`handOff`), left to a later runner process.
   */
  | { type: "release"; handOff: boolean }
  /** Watches its process until gone and reports `abandoned_exit`. */
  | { type: "watch" }
  /** Watches these processes of it until gone and reports each one's end. */
  | { type: "watch_survivors"; survivors: ProcessIdentity[] }
  /** Its lines are numbered from here (a predecessor's run). */
  | { type: "number_from"; sequence: number }
  /** Sends its output again from here (after a reconnect). */
  | { type: "resend"; nextSequence: number }
  /** A debug line in its output. */
  | { type: "debug"; text: string }
  /** Records the exit (after every line so far) and keeps it until `exit_ack`. */
  | { type: "finish"; outcome: Outcome }
  /** Sends the exit, unless it went out on this connection or output is still unsent. */
  | { type: "send_exit" }
  /** Stops tracking the script: nothing more is sent for it; a repeat of its dispatch is ignored. */
  | { type: "untrack" }
  /** A line in the runner's own log. */
  | { type: "log"; level: "info" | "warn" | "error"; text: string };

/**
 * A new script: dispatched (starting), re-attached to (running, its lines numbered by its log), or a predecessor's run
 * found alive (running, not yet numbered).
 */
export function newScriptState(ticket: string, fence: number, origin: Origin): ScriptState {
  const found = origin !== "dispatch";
  return {
    ticket,
    fence,
    origin,
    phase: found ? "running" : "starting",
    hasProcess: found,
    startedConfirmed: false,
    outputPaused: false,
    pauseLogged: false,
    cancelRequested: false,
    treeStop: "none",
    numbered: origin !== "predecessor",
    unknownEnd: false,
  };
}

/** True when this runner reads the script's output and sees its end (dispatched here, or re-attached to). */
function followed(state: ScriptState): boolean {
  return state.origin !== "predecessor";
}

/** True while the exit is known and has not gone out on connection `connection`. */
export function exitDue(state: ScriptState, connection: number): boolean {
  return state.phase === "exited" && state.exitSentOn !== connection;
}

/** Applies one event to the state (in place) and returns what to do, in order. */
export function handleScript(state: ScriptState, event: ScriptEvent, context: ScriptContext): ScriptEffect[] {
  switch (event.type) {
    case "workspace_ready":
      return workspaceReady(state);
    case "spawned":
      return spawned(state);
    case "failed":
      if (state.phase !== "starting") return [];
      return [log("warn", `${nameOf(state)} could not run: ${event.message}`), ...finish(state, { kind: "failed", message: event.message }, [event.message])];
    case "process_ended":
      return processEnded(state, event.outcome, context);
    case "tree_stopped":
      return treeStopped(state, event.kill, context);
    case "leftovers_stopped": {
      const stopped = event.kill.signals.length > 0 ? [log("info", `${nameOf(state)} had exited by itself; stopped ${plural(event.kill.escaped, "process", "processes")} it left running.`)] : [];
      return [...stopped, ...killLog(state, event.kill)];
    }
    case "pressure":
      return pressure(state, event.paused, context);
    case "ack":
      // Frames arrive in order: whatever acknowledges output also proves that `started` arrived before it.
      if (state.hasProcess && followed(state)) state.startedConfirmed = true;
      return state.phase === "exited" ? [{ type: "send_exit" }] : [];
    case "exit_ack":
      if (state.phase === "released") return [];
      if (state.phase !== "exited") return [log("warn", `Ignoring exit_ack for ${nameOf(state)}: it has not exited.`)];
      return letGo(state, { kill: "none", watch: false });
    case "exit_sent":
      state.exitSentOn = event.connection;
      return [];
    case "cancel":
      return cancel(state, context);
    case "abandon":
      if (state.phase === "released") return [];
      return [
        log("info", `The control plane abandoned ${nameOf(state)}${event.killProcess ? "; killing its process tree" : ""}.`),
        ...letGo(state, { kill: event.killProcess ? "now" : "none", watch: true }),
      ];
    case "resume":
      return resume(state, event.action, event.nextSequence, event.killProcess);
    case "halt":
      return state.phase === "released" ? [] : letGo(state, { kill: "none", watch: false, handOff: true });
    default: {
      const unreachable: never = event;
      throw new Error(`unhandled script event ${JSON.stringify(unreachable)}`);
    }
  }
}

function workspaceReady(state: ScriptState): ScriptEffect[] {
  if (state.phase !== "starting") return [];
  if (state.cancelRequested) return finish(state, { kind: "cancelled", signals: [] }, ["Cancelled before the process started."]);
  return [{ type: "spawn" }];
}

function spawned(state: ScriptState): ScriptEffect[] {
  state.hasProcess = true;
  if (state.phase === "released") return applyFate(state, true);
  if (state.phase !== "starting") return [];
  state.phase = "running";
  const out: ScriptEffect[] = [];
  if (state.outputPaused) out.push({ type: "pause_output" });
  out.push({ type: "send_started" });
  if (state.cancelRequested) {
    state.phase = "stopping";
    out.push(...stopTree(state));
  }
  return out;
}

function processEnded(state: ScriptState, own: Outcome, context: ScriptContext): ScriptEffect[] {
  if (state.phase === "running" && own.kind === "lost") {
    // A re-attached script whose wrapper went without its exit status: stop what is left, then report it lost.
    state.unknownEnd = true;
    state.phase = "stopping";
    return [debug(UNKNOWN_END_LINE), ...stopTree(state)];
  }
  if (state.phase === "running") return finish(state, own, []);
  if (state.phase !== "stopping") return [];
  // Cancel is done only when no process of the script survives: the exit waits for the tree stop too.
  state.ownOutcome = own;
  if (state.kill === undefined) return [];
  const { outcome, lines } = cancelOutcome(own, state.kill, context);
  return finish(state, outcome, lines);
}

function treeStopped(state: ScriptState, kill: KillSummary, context: ScriptContext): ScriptEffect[] {
  state.treeStop = "done";
  const out = killLog(state, kill);
  if (state.phase === "released") {
    if (state.fate?.kill === "tree") out.push({ type: "release", handOff: false });
    return out;
  }
  if (state.phase !== "stopping") return out;
  if (state.origin === "predecessor" || state.unknownEnd) {
    const { outcome, lines } = lostOutcome(kill, context, state.unknownEnd ? "unknown-end" : "unreattachable");
    if (kill.survivors.length > 0) out.push({ type: "watch_survivors", survivors: kill.survivors });
    return [...out, ...finish(state, outcome, lines)];
  }
  state.kill = kill;
  if (state.ownOutcome === undefined) return out;
  const { outcome, lines } = cancelOutcome(state.ownOutcome, kill, context);
  return [...out, ...finish(state, outcome, lines)];
}

function pressure(state: ScriptState, paused: boolean, context: ScriptContext): ScriptEffect[] {
  state.outputPaused = paused;
  if (state.phase === "released") return [];
  const out: ScriptEffect[] = [];
  if (paused && !state.pauseLogged) {
    state.pauseLogged = true;
    out.push(
      log(
        "info",
        `${nameOf(state)} writes output faster than the control plane stores it: its output is read only while less than ${context.maxUnackedBytes} bytes wait for acknowledgement, and the script waits meanwhile.`,
      ),
    );
  }
  if (state.hasProcess && followed(state)) out.push({ type: paused ? "pause_output" : "resume_output" });
  return out;
}

function cancel(state: ScriptState, context: ScriptContext): ScriptEffect[] {
  if (state.cancelRequested || state.phase === "released") return [];
  state.cancelRequested = true;
  // Its exit (and own exit code) already went out; what it left running is still part of what to stop.
  if (state.phase === "exited") return followed(state) && state.hasProcess ? stopTree(state) : [];
  // A predecessor's run is being stopped already (a cancel sent again after a reconnect changes nothing).
  if (state.origin === "predecessor") return [];
  const out: ScriptEffect[] = [log("info", `Cancelling ${nameOf(state)}.`)];
  if (context.disableKill) out.push(debug("Cancel requested, but process kill is disabled on this runner (UNSAFE); the process keeps running."));
  // Starting: the spawn sees the request.
  if (state.phase === "running") {
    state.phase = "stopping";
    out.push(...stopTree(state));
  }
  return out;
}

function resume(state: ScriptState, action: ResumeAction | undefined, nextSequence: number, killProcess: boolean): ScriptEffect[] {
  if (state.phase === "released") return [];
  const name = nameOf(state);
  switch (action) {
    case undefined:
    case "continue": {
      const out: ScriptEffect[] = action === undefined ? [log("warn", `The welcome said nothing about ${name}; continuing it.`)] : [];
      if (!state.numbered) {
        // A predecessor's run: the control plane has its lines up to here; this runner cannot re-attach to it.
        state.numbered = true;
        out.push({ type: "number_from", sequence: nextSequence });
        if (state.phase === "running") {
          state.phase = "stopping";
          out.push(log("info", `${name} was left running by an earlier runner process and cannot be re-attached to; stopping it as a cancel would.`));
          out.push(...stopTree(state));
        }
        return out;
      }
      // Sends again what the control plane is missing: `started` (unless an ack showed it arrived), output, exit.
      if (followed(state) && state.hasProcess && !state.startedConfirmed) out.push({ type: "send_started" });
      out.push({ type: "resend", nextSequence }, { type: "send_exit" });
      return out;
    }
    case "cancel":
      // A stale fence or a ticket the control plane no longer has: nothing it reports would be used.
      return [log("info", `The control plane no longer runs ${name}; killing its process tree.`), ...letGo(state, { kill: "tree", watch: false })];
    case "abandon":
      return [
        log("info", `The control plane abandoned ${name}; releasing it${killProcess ? " and killing its process tree" : ""}.`),
        ...letGo(state, { kill: killProcess ? "now" : "none", watch: true }),
      ];
    case "forget":
      // A script of this runner has ended already; one found after a restart may have left processes nobody wants.
      return [
        log("info", `The control plane no longer knows ${name}; dropping it.`),
        ...letGo(state, { kill: state.origin === "dispatch" ? "none" : "tree", watch: false }),
      ];
    default: {
      const unreachable: never = action;
      throw new Error(`unknown resume action ${String(unreachable)}`);
    }
  }
}

/** Stops tracking the script; its process meets `fate` now, or once it exists. */
function letGo(state: ScriptState, fate: Fate): ScriptEffect[] {
  // A process still tracked (running or being stopped) has a handle to release; an exited one is done with it.
  const tracked = state.phase === "running" || state.phase === "stopping";
  state.phase = "released";
  state.fate = fate;
  const out = state.hasProcess ? applyFate(state, tracked) : [];
  // Last: a watch keeps the run's folder from going when the script stops holding it.
  out.push({ type: "untrack" });
  return out;
}

/** What a released script's process meets. */
function applyFate(state: ScriptState, tracked: boolean): ScriptEffect[] {
  const fate = state.fate ?? { kill: "none", watch: false };
  const release: ScriptEffect = { type: "release", handOff: fate.handOff === true };
  const out: ScriptEffect[] = [];
  if (fate.watch) out.push({ type: "watch" });
  if (fate.kill === "now") out.push({ type: "kill_now" });
  if (fate.kill === "tree") {
    // Released once stopped; a stop already under way (a cancel) serves.
    out.push(...stopTree(state));
    if (state.treeStop === "done" && tracked) out.push(release);
    return out;
  }
  if (tracked) out.push(release);
  return out;
}

function stopTree(state: ScriptState): ScriptEffect[] {
  if (state.treeStop !== "none") return [];
  state.treeStop = "running";
  return [{ type: "stop_tree" }];
}

/** Records the outcome after its debug lines; sends it when it can. */
function finish(state: ScriptState, outcome: Outcome, lines: readonly string[]): ScriptEffect[] {
  state.phase = "exited";
  return [...lines.map(debug), { type: "finish", outcome }, { type: "send_exit" }];
}

/** What a finished tree stop leaves to say in the runner's log. */
function killLog(state: ScriptState, kill: KillSummary): ScriptEffect[] {
  if (kill.survivors.length === 0) return [];
  const pids = kill.survivors.map((survivor) => survivor.pid);
  if (kill.aborted) {
    return [
      log(
        "info",
        `${nameOf(state)}: the control plane abandoned it while the runner was stopping it, so the runner let go of ${plural(pids.length, "process", "processes")} of it that still ran (pid ${pids.join(", ")}) and sent them no more signals.`,
      ),
    ];
  }
  const verb = state.origin === "predecessor" ? "Stopping" : "Cancelling";
  return [log("error", `${verb} ${nameOf(state)}: ${survivorsSentence(pids)}`)];
}

/** The outcome to report after a cancel, and the debug lines that explain it. */
export function cancelOutcome(own: Outcome, kill: KillSummary, context: ScriptContext): { outcome: Outcome; lines: string[] } {
  // A re-attached script whose wrapper had gone without its status: nothing was left to cancel, its end is unknown.
  if (kill.signals.length === 0 && own.kind === "lost") return lostOutcome(kill, context, "unknown-end");
  if (kill.signals.length === 0) {
    const lines = context.disableKill ? [] : ["Cancel requested, but the process had already exited; its own exit code stands."];
    return { outcome: own, lines };
  }
  const [first, ...rest] = kill.signals;
  const escaped = kill.escaped === 0 ? "" : ` and to ${plural(kill.escaped, "process", "processes")} that had left it`;
  const then = rest.length > 0 ? `, then ${rest.join(", then ")} after ${context.killGraceMs} ms` : "";
  const lines = [`Cancelled: sent ${first} to the process group${escaped}${then}.`];
  if (kill.survivors.length > 0) lines.push(survivorsSentence(kill.survivors.map((survivor) => survivor.pid)));
  return { outcome: { kind: "cancelled", signals: kill.signals }, lines };
}

/** Said when a re-attached script's wrapper turns out to have gone without recording the script's end. */
export const UNKNOWN_END_LINE =
  "The script's wrapper process ended without recording the script's exit status (it was killed while the runner restarted): the result is unknown.";

/** Why a run is reported `lost`: a predecessor's run this runner cannot re-attach to, or a re-attached one whose end is unknown. */
export type LostReason = "unreattachable" | "unknown-end";

/**
 * The outcome of a run that this runner stopped because it could not follow it (`lost`: -46), with the processes that
 * would not die (the control plane lists them as abandoned), and the debug lines that say what happened.
 */
export function lostOutcome(kill: KillSummary, context: ScriptContext, reason: LostReason = "unreattachable"): { outcome: Outcome; lines: string[] } {
  const pids = kill.survivors.map((survivor) => survivor.pid);
  const [first, ...rest] = kill.signals;
  const then = rest.length > 0 ? `, then ${rest.join(", then ")} after ${context.killGraceMs} ms` : "";
  const lines: string[] = [];
  if (reason === "unknown-end") {
    if (context.disableKill && pids.length > 0) lines.push("Process kill is disabled on this runner (UNSAFE): what it left running was not stopped.");
    else if (kill.signals.length === 0 && pids.length === 0) lines.push("No process of it was left running.");
    else lines.push(`Stopped what it left running: sent ${first ?? "nothing"} to its processes${then}.`);
    if (pids.length > 0) lines.push(`${survivorsSentence(pids)} Listed as abandoned: ${pids.length === 1 ? "it" : "they"} may still be running.`);
  } else {
    const found = "A new runner process found this script left running by the previous one and could not re-attach to it";
    if (context.disableKill && pids.length > 0) {
      lines.push(`${found}; process kill is disabled on this runner (UNSAFE), so it did not stop it.`);
      lines.push(`${plural(pids.length, "process", "processes")} of the script ${pids.length === 1 ? "is" : "are"} still running (pid ${pids.join(", ")}); listed as abandoned.`);
    } else if (kill.signals.length === 0 && pids.length === 0) {
      lines.push(`${found}; no process of it was left running.`);
    } else {
      lines.push(`${found}, so it stopped it: sent ${first ?? "nothing"} to its processes${then}.`);
      if (pids.length > 0) lines.push(`${survivorsSentence(pids)} Listed as abandoned: ${pids.length === 1 ? "it" : "they"} may still be running.`);
    }
  }
  const survivors: ProcessRef[] = kill.survivors.slice(0, MAX_SURVIVORS).map((survivor) => ({
    pid: survivor.pid,
    startTime: survivor.startTime,
    ...(context.bootId === undefined ? {} : { bootId: context.bootId }),
  }));
  return { outcome: { kind: "lost", signals: kill.signals, survivors }, lines };
}

/** How an outcome reads in the runner's log. */
export function describeOutcome(outcome: Outcome): string {
  switch (outcome.kind) {
    case "exited":
      return `exited with code ${outcome.code}`;
    case "signaled":
      return `killed by ${outcome.signal}`;
    case "failed":
      return `failed: ${outcome.message}`;
    case "cancelled":
      return outcome.signals.length > 0 ? `cancelled (${outcome.signals.join(", ")})` : "cancelled";
    case "lost":
      return `lost after a runner restart${outcome.signals.length > 0 ? `, stopped (${outcome.signals.join(", ")})` : ""}${
        outcome.survivors.length > 0 ? `, ${plural(outcome.survivors.length, "process", "processes")} surviving` : ""
      }`;
    default: {
      const unreachable: never = outcome;
      throw new Error(`unknown outcome ${JSON.stringify(unreachable)}`);
    }
  }
}

/** How a script is named in the runner's log. */
export function nameOf(state: Pick<ScriptState, "ticket" | "fence">): string {
  return `${state.ticket} (fence ${state.fence})`;
}

/** `1 process`, `2 processes`. */
export function plural(count: number, one: string, many: string): string {
  return `${count} ${count === 1 ? one : many}`;
}

/** The sentence for processes that survived every SIGKILL. */
export function survivorsSentence(pids: readonly number[]): string {
  return `${plural(pids.length, "process", "processes")} of the script survived every SIGKILL (pid ${pids.join(", ")}); giving up on ${pids.length === 1 ? "it" : "them"}.`;
}

function log(level: "info" | "warn" | "error", text: string): ScriptEffect {
  return { type: "log", level, text };
}

function debug(text: string): ScriptEffect {
  return { type: "debug", text };
}
