/** `tendril run`'s signal ladder: one step per SIGINT/SIGTERM, the last step repeating. */
import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import { InterruptSteps } from "../../client/cli/signals.js";

describe("InterruptSteps", () => {
  it("takes the next step on each SIGINT or SIGTERM and repeats the last one", () => {
    const target = new EventEmitter();
    const taken: string[] = [];
    const steps = new InterruptSteps([() => taken.push("cancel"), () => taken.push("abandon"), () => taken.push("exit")], target);

    target.emit("SIGINT");
    target.emit("SIGTERM");
    target.emit("SIGINT");
    target.emit("SIGINT");

    expect(taken).toEqual(["cancel", "abandon", "exit", "exit"]);
    expect(steps.received).toBe(4);
  });

  it("stops listening once disposed", () => {
    const target = new EventEmitter();
    const steps = new InterruptSteps([() => undefined], target);
    expect(target.listenerCount("SIGINT")).toBe(1);
    expect(target.listenerCount("SIGTERM")).toBe(1);

    steps.dispose();

    expect(target.listenerCount("SIGINT")).toBe(0);
    expect(target.listenerCount("SIGTERM")).toBe(0);
  });
});
