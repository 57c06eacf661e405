// Where a dispatch's milliseconds go: the stage timestamps the control plane (TENDRIL_TRACE=1, lines on its output)
// and the runner (TENDRIL_TRACE_FILE) record for each ticket, turned into per-stage times. The control plane's clock
// ticks in whole ms (and stands still between I/O events), the runner's in fractions: each stage is reported as its
// mean over all runs, which averages the rounding out, and the stages add up to the mean total.
import { readFileSync } from "node:fs";

/** Every trace line of the control plane's output and the runner's trace file: ticket → stage → epoch ms. */
export function readTraces(controlPlaneOutput, runnerTraceFile) {
  const traces = new Map();
  const add = (text) => {
    for (const match of text.matchAll(/^(?:tendril-trace )?(\S+) ([a-z-]+) (\d+(?:\.\d+)?)$/gm)) {
      const [, ticket, stage, at] = match;
      if (!traces.has(ticket)) traces.set(ticket, {});
      // The first time a stage is reached counts (a redelivered frame would repeat it).
      traces.get(ticket)[stage] ??= Number(at);
    }
  };
  add(controlPlaneOutput.split("\n").filter((line) => line.includes("tendril-trace ")).map((line) => line.slice(line.indexOf("tendril-trace "))).join("\n"));
  add(readFileSync(runnerTraceFile, "utf8"));
  return traces;
}

/** Mean of each stage over `runs` (each a list of stage durations in the order of `names`). */
function means(names, runs) {
  if (runs.length === 0) throw new Error("no run was traced completely");
  return names.map((stage, i) => ({ stage, ms: runs.reduce((sum, run) => sum + run[i], 0) / runs.length }));
}

/** The stages of one dispatch with `waitMs`, from the request leaving the client to its answer arriving. */
export const DISPATCH_STAGES = [
  ["HTTP in (client → Worker)", "sent", "edge"],
  ["Worker → machine object", "edge", "object"],
  ["object: decide, commit, socket to the runner", "object", "dispatch"],
  ["runner: preparation (record, workspace, wrapper)", "dispatch", "exec"],
  ["exec, script, exit seen by the runner", "exec", "ended"],
  ["runner: exit report (output flushed, frame sent)", "ended", "exit"],
  ["socket to the object", "exit", "exit-in"],
  ["object: store the exit, commit, wake the request", "exit-in", "woke"],
  ["machine object → Worker", "woke", "answer"],
  ["HTTP out (Worker → client)", "answer", "received"],
];

/** Per-stage means of traced dispatches; `clients` holds each ticket's `sent` and `received` (epoch ms). */
export function dispatchBreakdown(traces, clients) {
  const runs = [];
  for (const [ticket, client] of clients) {
    const t = { ...traces.get(ticket), ...client };
    if (DISPATCH_STAGES.every(([, from, to]) => t[from] !== undefined && t[to] !== undefined)) runs.push(DISPATCH_STAGES.map(([, from, to]) => t[to] - t[from]));
  }
  return { runs: runs.length, stages: means(DISPATCH_STAGES.map(([name]) => name), runs) };
}

/** The stages of one mutex handoff, from the exit of a script (`prev`) to the exit of the next (`next`). */
export const HANDOFF_STAGES = [
  ["runner: exit report (output flushed, frame sent)", ["prev", "ended"], ["prev", "exit"]],
  ["socket to the object", ["prev", "exit"], ["prev", "exit-in"]],
  ["object: release, grant the next, commit, socket to the runner", ["prev", "exit-in"], ["next", "dispatch"]],
  ["runner: preparation (record, workspace, wrapper)", ["next", "dispatch"], ["next", "exec"]],
  ["exec, script, exit seen by the runner", ["next", "exec"], ["next", "ended"]],
];

/** Per-stage means over consecutive scripts of a handoff run (`tickets` in the order the mutex granted them). */
export function handoffBreakdown(traces, tickets) {
  const runs = [];
  for (let i = 1; i < tickets.length; i += 1) {
    const pair = { prev: traces.get(tickets[i - 1]) ?? {}, next: traces.get(tickets[i]) ?? {} };
    const at = ([which, stage]) => pair[which][stage];
    if (HANDOFF_STAGES.every(([, from, to]) => at(from) !== undefined && at(to) !== undefined)) runs.push(HANDOFF_STAGES.map(([, from, to]) => at(to) - at(from)));
  }
  return { runs: runs.length, stages: means(HANDOFF_STAGES.map(([name]) => name), runs) };
}
