/**
 * What each protocol version lets the runner say (PROTOCOL.md, "Versions"). The runner builds every message in the
 * newest version; `forProtocol` shapes it for the version a connection speaks. Version 1 (a control plane that knows
 * no version 2) has no `killGraceMs` or `reattached` in `hello`, no `startTime` or `bootId` in `started`, no `lost`
 * outcome and no `draining` message.
 */
import { MAX_SURVIVORS, clampFailureMessage, type Outcome, type RunnerMessage } from "../shared/protocol.js";

/** `message` as protocol `version` carries it; undefined when that version has no such message. */
export function forProtocol(message: RunnerMessage, version: number): RunnerMessage | undefined {
  if (version >= 2) return message;
  switch (message.type) {
    case "hello": {
      const { killGraceMs: _killGraceMs, inventory, ...rest } = message;
      return { ...rest, protocol: version, inventory: inventory.map(({ reattached: _reattached, ...item }) => item) };
    }
    case "started": {
      const { startTime: _startTime, bootId: _bootId, ...rest } = message;
      return rest;
    }
    case "exit":
      return { ...message, outcome: outcomeForVersion1(message.outcome) };
    case "draining":
      // A version 1 control plane learns of the stop by the socket's close, and holds dispatches while no runner is connected.
      return undefined;
    default:
      return message;
  }
}

/**
 * A version 1 control plane has no `lost` outcome (-46): the runner could not follow the script (it could not be
 * re-attached to, or its end is unknown). It gets `failed` (-41: the runner could not run it to the end) with a
 * message that says so and names the processes that would not die, which version 1 cannot list as abandoned.
 */
export function outcomeForVersion1(outcome: Outcome): Outcome {
  if (outcome.kind !== "lost") return outcome;
  const stopped = outcome.signals.length > 0 ? ` It stopped what was left of it (${outcome.signals.join(", ")}).` : "";
  const pids = outcome.survivors.slice(0, MAX_SURVIVORS).map((survivor) => survivor.pid);
  const survivors = pids.length > 0 ? ` ${pids.length === 1 ? "A process" : "Processes"} of it would not die and may still be running: pid ${pids.join(", ")}.` : "";
  const message = `The runner restarted and could not follow this script to its end: its result is unknown.${stopped}${survivors}`;
  return { kind: "failed", message: clampFailureMessage(message) };
}
