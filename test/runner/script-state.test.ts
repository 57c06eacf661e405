/**
 * The per-script state machine of the runner (runner/script-state.ts): pure, so every path is checked by feeding it
 * events and reading the effects it decides, without processes or sockets.
 */
import { describe, expect, it } from "vitest";
import {
  cancelOutcome,
  describeOutcome,
  exitDue,
  handleScript,
  lostOutcome,
  newScriptState,
  type KillSummary,
  type ScriptContext,
  type ScriptEffect,
  type ScriptEvent,
  type ScriptState,
} from "../../runner/script-state.js";

const CONTEXT: ScriptContext = { disableKill: false, killGraceMs: 300, maxUnackedBytes: 1024, bootId: "boot-1" };

/** Feeds events in order; returns the effect types of the last one (logs left out unless asked). */
function feed(state: ScriptState, events: ScriptEvent[], context: ScriptContext = CONTEXT): ScriptEffect[] {
  let effects: ScriptEffect[] = [];
  for (const event of events) effects = handleScript(state, event, context);
  return effects;
}

/** The effects without log lines. */
function acts(effects: ScriptEffect[]): ScriptEffect[] {
  return effects.filter((effect) => effect.type !== "log");
}

function types(effects: ScriptEffect[]): string[] {
  return acts(effects).map((effect) => effect.type);
}

function logs(effects: ScriptEffect[]): string[] {
  return effects.flatMap((effect) => (effect.type === "log" ? [`${effect.level}: ${effect.text}`] : []));
}

const stopped = (kill: Partial<KillSummary> = {}): ScriptEvent => ({
  type: "tree_stopped",
  kill: { signals: ["SIGTERM"], escaped: 0, survivors: [], aborted: false, ...kill },
});

/** A dispatched script whose process runs. */
function running(): ScriptState {
  const state = newScriptState("t1", 1, "dispatch");
  feed(state, [{ type: "workspace_ready" }, { type: "spawned" }]);
  return state;
}

describe("a dispatched script", () => {
  it("spawns once its folder is ready, sends started, and finishes with its own outcome", () => {
    const state = newScriptState("t1", 1, "dispatch");
    expect(state.phase).toBe("starting");
    expect(types(handleScript(state, { type: "workspace_ready" }, CONTEXT))).toEqual(["spawn"]);
    expect(types(handleScript(state, { type: "spawned" }, CONTEXT))).toEqual(["send_started"]);
    expect(state.phase).toBe("running");
    expect(acts(handleScript(state, { type: "process_ended", outcome: { kind: "exited", code: 3 } }, CONTEXT))).toEqual([
      { type: "finish", outcome: { kind: "exited", code: 3 } },
      { type: "send_exit" },
    ]);
    expect(state.phase).toBe("exited");
    expect(types(handleScript(state, { type: "exit_ack" }, CONTEXT))).toEqual(["untrack"]);
    expect(state.phase).toBe("released");
  });

  it("fails with one debug line and a failed outcome, without a process", () => {
    const state = newScriptState("t1", 1, "dispatch");
    const effects = feed(state, [{ type: "workspace_ready" }, { type: "failed", message: "no shell" }]);
    expect(acts(effects)).toEqual([
      { type: "debug", text: "no shell" },
      { type: "finish", outcome: { kind: "failed", message: "no shell" } },
      { type: "send_exit" },
    ]);
    expect(logs(effects)).toEqual(["warn: t1 (fence 1) could not run: no shell"]);
  });

  it("never starts when cancelled before its folder was ready", () => {
    const state = newScriptState("t1", 1, "dispatch");
    feed(state, [{ type: "cancel" }]);
    expect(acts(handleScript(state, { type: "workspace_ready" }, CONTEXT))).toEqual([
      { type: "debug", text: "Cancelled before the process started." },
      { type: "finish", outcome: { kind: "cancelled", signals: [] } },
      { type: "send_exit" },
    ]);
  });

  it("stops the tree as soon as a process cancelled while it was being spawned exists", () => {
    const state = newScriptState("t1", 1, "dispatch");
    feed(state, [{ type: "workspace_ready" }, { type: "cancel" }]);
    expect(types(handleScript(state, { type: "spawned" }, CONTEXT))).toEqual(["send_started", "stop_tree"]);
    expect(state.phase).toBe("stopping");
  });

  it("pauses a process that is spawned while its output is paused", () => {
    const state = newScriptState("t1", 1, "dispatch");
    const paused = feed(state, [{ type: "workspace_ready" }, { type: "pressure", paused: true }]);
    expect(types(paused)).toEqual([]);
    expect(logs(paused)).toHaveLength(1);
    expect(types(handleScript(state, { type: "spawned" }, CONTEXT))).toEqual(["pause_output", "send_started"]);
    // The pause is logged once, however often it comes back.
    expect(logs(feed(state, [{ type: "pressure", paused: false }, { type: "pressure", paused: true }]))).toEqual([]);
  });
});

describe("cancel", () => {
  it("reports cancelled only once both the tree stop and the process's own end are in, whichever comes first", () => {
    for (const order of [["stopped", "ended"], ["ended", "stopped"]] as const) {
      const state = running();
      expect(types(feed(state, [{ type: "cancel" }]))).toEqual(["stop_tree"]);
      const events: Record<string, ScriptEvent> = {
        stopped: stopped({ signals: ["SIGTERM", "SIGKILL"] }),
        ended: { type: "process_ended", outcome: { kind: "signaled", signal: "SIGKILL", number: 9 } },
      };
      expect(types(handleScript(state, events[order[0]]!, CONTEXT))).toEqual([]);
      expect(acts(handleScript(state, events[order[1]]!, CONTEXT))).toEqual([
        { type: "debug", text: "Cancelled: sent SIGTERM to the process group, then SIGKILL after 300 ms." },
        { type: "finish", outcome: { kind: "cancelled", signals: ["SIGTERM", "SIGKILL"] } },
        { type: "send_exit" },
      ]);
    }
  });

  it("is handled once, and after the exit stops only what the script left running", () => {
    const state = running();
    expect(types(feed(state, [{ type: "cancel" }, { type: "cancel" }]))).toEqual([]);
    const exited = running();
    feed(exited, [{ type: "process_ended", outcome: { kind: "exited", code: 0 } }]);
    expect(feed(exited, [{ type: "cancel" }])).toEqual([{ type: "stop_tree" }]);
    expect(exited.phase).toBe("exited");
  });

  it("says in the output when kill is disabled", () => {
    const state = running();
    const effects = feed(state, [{ type: "cancel" }], { ...CONTEXT, disableKill: true });
    expect(acts(effects)[0]).toEqual({ type: "debug", text: "Cancel requested, but process kill is disabled on this runner (UNSAFE); the process keeps running." });
  });
});

describe("abandon", () => {
  it("lets go of a running script: watched, released, untracked, and nothing more reported", () => {
    const state = running();
    expect(types(handleScript(state, { type: "abandon", killProcess: false }, CONTEXT))).toEqual(["watch", "release", "untrack"]);
    expect(state.phase).toBe("released");
    expect(feed(state, [{ type: "process_ended", outcome: { kind: "exited", code: 0 } }, { type: "cancel" }, { type: "exit_ack" }])).toEqual([]);
  });

  it("kills first when asked, and applies that to a process that is still being spawned", () => {
    expect(types(handleScript(running(), { type: "abandon", killProcess: true }, CONTEXT))).toEqual(["watch", "kill_now", "release", "untrack"]);
    const starting = newScriptState("t1", 1, "dispatch");
    feed(starting, [{ type: "workspace_ready" }]);
    expect(types(handleScript(starting, { type: "abandon", killProcess: true }, CONTEXT))).toEqual(["untrack"]);
    expect(types(handleScript(starting, { type: "spawned" }, CONTEXT))).toEqual(["watch", "kill_now", "release"]);
  });

  it("during a cancel lets go of the processes still alive and says so, without claiming a SIGKILL (bug 15)", () => {
    const state = running();
    feed(state, [{ type: "cancel" }, { type: "abandon", killProcess: false }]);
    const effects = handleScript(state, stopped({ survivors: [{ pid: 10, startTime: 1 }, { pid: 11, startTime: 2 }], aborted: true }), CONTEXT);
    expect(acts(effects)).toEqual([]);
    expect(logs(effects)).toEqual([
      "info: t1 (fence 1): the control plane abandoned it while the runner was stopping it, so the runner let go of 2 processes of it that still ran (pid 10, 11) and sent them no more signals.",
    ]);
  });
});

describe("resume after a reconnect", () => {
  it("sends started again until an ack confirmed it, then output and exit", () => {
    const state = running();
    expect(types(handleScript(state, { type: "resume", action: "continue", nextSequence: 4, killProcess: false }, CONTEXT))).toEqual([
      "send_started",
      "resend",
      "send_exit",
    ]);
    feed(state, [{ type: "ack" }]);
    expect(acts(handleScript(state, { type: "resume", action: "continue", nextSequence: 4, killProcess: false }, CONTEXT))).toEqual([
      { type: "resend", nextSequence: 4 },
      { type: "send_exit" },
    ]);
  });

  it("continues a script the welcome says nothing about, with a warning", () => {
    const effects = handleScript(running(), { type: "resume", action: undefined, nextSequence: 0, killProcess: false }, CONTEXT);
    expect(logs(effects)).toEqual(["warn: The welcome said nothing about t1 (fence 1); continuing it."]);
    expect(types(effects)).toEqual(["send_started", "resend", "send_exit"]);
  });

  it("stops the tree of a script the welcome cancels and releases it once stopped", () => {
    const state = running();
    expect(types(handleScript(state, { type: "resume", action: "cancel", nextSequence: 0, killProcess: false }, CONTEXT))).toEqual(["stop_tree", "untrack"]);
    expect(types(handleScript(state, stopped(), CONTEXT))).toEqual(["release"]);
  });

  it("kills a script the welcome abandons with killProcess (bug 7)", () => {
    expect(types(handleScript(running(), { type: "resume", action: "abandon", nextSequence: 0, killProcess: true }, CONTEXT))).toEqual([
      "watch",
      "kill_now",
      "release",
      "untrack",
    ]);
    expect(types(handleScript(running(), { type: "resume", action: "abandon", nextSequence: 0, killProcess: false }, CONTEXT))).toEqual([
      "watch",
      "release",
      "untrack",
    ]);
  });

  it("sends the exit once per connection", () => {
    const state = running();
    feed(state, [{ type: "process_ended", outcome: { kind: "exited", code: 0 } }]);
    expect(exitDue(state, 1)).toBe(true);
    feed(state, [{ type: "exit_sent", connection: 1 }]);
    expect(exitDue(state, 1)).toBe(false);
    expect(exitDue(state, 2)).toBe(true);
  });
});

describe("a predecessor's run", () => {
  it("waits for the welcome, then is numbered from its nextSequence, stopped, and lost (bug 2)", () => {
    const state = newScriptState("t1", 7, "predecessor");
    expect(state.phase).toBe("running");
    const effects = handleScript(state, { type: "resume", action: "continue", nextSequence: 12, killProcess: false }, CONTEXT);
    expect(types(effects)).toEqual(["number_from", "stop_tree"]);
    expect(acts(effects)[0]).toEqual({ type: "number_from", sequence: 12 });
    expect(state.phase).toBe("stopping");
    const survivors = [{ pid: 42, startTime: 4200 }];
    expect(acts(handleScript(state, stopped({ signals: ["SIGTERM", "SIGKILL"], survivors }), CONTEXT))).toEqual([
      { type: "watch_survivors", survivors },
      {
        type: "debug",
        text: "A new runner process found this script left running by the previous one and could not re-attach to it, so it stopped it: sent SIGTERM to its processes, then SIGKILL after 300 ms.",
      },
      {
        type: "debug",
        text: "1 process of the script survived every SIGKILL (pid 42); giving up on it. Listed as abandoned: it may still be running.",
      },
      { type: "finish", outcome: { kind: "lost", signals: ["SIGTERM", "SIGKILL"], survivors: [{ pid: 42, startTime: 4200, bootId: "boot-1" }] } },
      { type: "send_exit" },
    ]);
  });

  it("after a reconnect resends like any script, and never sends started", () => {
    const state = newScriptState("t1", 7, "predecessor");
    feed(state, [{ type: "resume", action: "continue", nextSequence: 3, killProcess: false }, stopped({ signals: [] })]);
    expect(types(handleScript(state, { type: "resume", action: "continue", nextSequence: 4, killProcess: false }, CONTEXT))).toEqual(["resend", "send_exit"]);
  });

  it("is stopped and dropped when the control plane cancels or forgets it, and released (killed when asked) when it abandons it", () => {
    for (const action of ["cancel", "forget"] as const) {
      const state = newScriptState("t1", 7, "predecessor");
      expect(types(handleScript(state, { type: "resume", action, nextSequence: 0, killProcess: false }, CONTEXT))).toEqual(["stop_tree", "untrack"]);
    }
    const abandoned = newScriptState("t1", 7, "predecessor");
    expect(types(handleScript(abandoned, { type: "resume", action: "abandon", nextSequence: 0, killProcess: true }, CONTEXT))).toEqual([
      "watch",
      "kill_now",
      "release",
      "untrack",
    ]);
  });

  it("ignores a cancel sent again while it is being stopped", () => {
    const state = newScriptState("t1", 7, "predecessor");
    feed(state, [{ type: "resume", action: "continue", nextSequence: 0, killProcess: false }]);
    expect(handleScript(state, { type: "cancel" }, CONTEXT)).toEqual([]);
  });
});

describe("outcomes", () => {
  it("keeps the script's own exit when the cancel came too late", () => {
    const own = { kind: "exited", code: 3 } as const;
    expect(cancelOutcome(own, { signals: [], escaped: 0, survivors: [], aborted: false }, CONTEXT)).toEqual({
      outcome: own,
      lines: ["Cancel requested, but the process had already exited; its own exit code stands."],
    });
  });

  it("describes a lost script with nothing left, and one this runner could not kill", () => {
    expect(lostOutcome({ signals: [], escaped: 0, survivors: [], aborted: false }, CONTEXT)).toEqual({
      outcome: { kind: "lost", signals: [], survivors: [] },
      lines: ["A new runner process found this script left running by the previous one and could not re-attach to it; no process of it was left running."],
    });
    const unkillable = lostOutcome({ signals: [], escaped: 0, survivors: [{ pid: 5, startTime: 6 }], aborted: false }, { ...CONTEXT, disableKill: true });
    expect(unkillable.outcome).toEqual({ kind: "lost", signals: [], survivors: [{ pid: 5, startTime: 6, bootId: "boot-1" }] });
    expect(unkillable.lines[1]).toBe("1 process of the script is still running (pid 5); listed as abandoned.");
    expect(describeOutcome(unkillable.outcome)).toBe("lost after a runner restart, 1 process surviving");
  });
});

describe("a script re-attached to after a runner restart", () => {
  /** A script an earlier runner process started, re-attached to by this one. */
  function reattached(): ScriptState {
    return newScriptState("t1", 1, "reattached");
  }

  it("runs with its process and its lines numbered already, and on continue resends from the welcome (with started) and its exit", () => {
    const state = reattached();
    expect(state).toMatchObject({ phase: "running", hasProcess: true, numbered: true });
    expect(acts(handleScript(state, { type: "resume", action: "continue", nextSequence: 12, killProcess: false }, CONTEXT))).toEqual([
      { type: "send_started" },
      { type: "resend", nextSequence: 12 },
      { type: "send_exit" },
    ]);
    expect(acts(handleScript(state, { type: "process_ended", outcome: { kind: "exited", code: 4 } }, CONTEXT))).toEqual([
      { type: "finish", outcome: { kind: "exited", code: 4 } },
      { type: "send_exit" },
    ]);
  });

  it("pauses and resumes its output like a dispatched script", () => {
    const state = reattached();
    expect(types(handleScript(state, { type: "pressure", paused: true }, CONTEXT))).toEqual(["pause_output"]);
    expect(types(handleScript(state, { type: "pressure", paused: false }, CONTEXT))).toEqual(["resume_output"]);
  });

  it("is cancelled like a dispatched script: its tree stopped, cancelled with the signals once its process ended", () => {
    const state = reattached();
    expect(types(handleScript(state, { type: "cancel" }, CONTEXT))).toEqual(["stop_tree"]);
    expect(types(handleScript(state, stopped(), CONTEXT))).toEqual([]);
    expect(acts(handleScript(state, { type: "process_ended", outcome: { kind: "lost", signals: [], survivors: [] } }, CONTEXT))).toEqual([
      { type: "debug", text: "Cancelled: sent SIGTERM to the process group." },
      { type: "finish", outcome: { kind: "cancelled", signals: ["SIGTERM"] } },
      { type: "send_exit" },
    ]);
  });

  it("stops what is left and reports lost when its wrapper went without recording the script's end", () => {
    const state = reattached();
    expect(acts(handleScript(state, { type: "process_ended", outcome: { kind: "lost", signals: [], survivors: [] } }, CONTEXT))).toEqual([
      { type: "debug", text: "The script's wrapper process ended without recording the script's exit status (it was killed while the runner restarted): the result is unknown." },
      { type: "stop_tree" },
    ]);
    expect(state.phase).toBe("stopping");
    expect(acts(handleScript(state, stopped({ survivors: [{ pid: 9, startTime: 3 }] }), CONTEXT))).toEqual([
      { type: "watch_survivors", survivors: [{ pid: 9, startTime: 3 }] },
      { type: "debug", text: "Stopped what it left running: sent SIGTERM to its processes." },
      { type: "debug", text: "1 process of the script survived every SIGKILL (pid 9); giving up on it. Listed as abandoned: it may still be running." },
      { type: "finish", outcome: { kind: "lost", signals: ["SIGTERM"], survivors: [{ pid: 9, startTime: 3, bootId: "boot-1" }] } },
      { type: "send_exit" },
    ]);
  });

  it("is left for the next runner process when the runner stops (handed off), and stopped when the control plane forgets it", () => {
    const halted = reattached();
    expect(acts(handleScript(halted, { type: "halt" }, CONTEXT))).toEqual([{ type: "release", handOff: true }, { type: "untrack" }]);
    const forgotten = reattached();
    expect(types(handleScript(forgotten, { type: "resume", action: "forget", nextSequence: 0, killProcess: false }, CONTEXT))).toEqual(["stop_tree", "untrack"]);
    expect(acts(handleScript(forgotten, stopped(), CONTEXT))).toEqual([{ type: "release", handOff: false }]);
  });

  it("hands a dispatched script off too when the runner stops, and releases it for good on abandon", () => {
    expect(acts(handleScript(running(), { type: "halt" }, CONTEXT))).toEqual([{ type: "release", handOff: true }, { type: "untrack" }]);
    expect(acts(handleScript(running(), { type: "abandon", killProcess: false }, CONTEXT))).toEqual([
      { type: "watch" },
      { type: "release", handOff: false },
      { type: "untrack" },
    ]);
  });
});
