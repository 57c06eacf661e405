/**
 * The isolation mutex on its own: a named reader/writer lock with a strict FIFO queue. Every test
 * asserts the exact holders, queue and grant order, so a change in ordering rules shows up here first.
 */
import { describe, expect, it } from "vitest";
import {
  compatible,
  grantWaiters,
  heldMode,
  isIdle,
  leaveMutex,
  newMutex,
  requestMutex,
  type LockMode,
  type MutexState,
} from "../../control-plane/machine/core/mutex.js";

/** The holders as `[ticket, mode]` pairs in insertion order. */
function holders(mutex: MutexState): Array<[string, LockMode]> {
  return [...mutex.holders.entries()];
}

/** The waiting tickets, head first. */
function waiting(mutex: MutexState): string[] {
  return mutex.queue.map((w) => w.ticket);
}

/** A mutex built from explicit holders and waiters, for cases that are awkward to reach by requests. */
function mutexWith(
  held: Array<[string, LockMode]>,
  queue: Array<[string, LockMode]>,
  name = "RunningScript",
): MutexState {
  const mutex = newMutex(name);
  for (const [ticket, mode] of held) mutex.holders.set(ticket, mode);
  for (const [ticket, mode] of queue) mutex.queue.push({ ticket, mode });
  return mutex;
}

describe("newMutex", () => {
  it("creates a free, idle mutex with the given name and nobody waiting", () => {
    const mutex = newMutex("Deploy");
    expect(mutex.name).toBe("Deploy");
    expect(holders(mutex)).toEqual([]);
    expect(waiting(mutex)).toEqual([]);
    expect(heldMode(mutex)).toBe("free");
    expect(isIdle(mutex)).toBe(true);
  });
});

describe("compatible", () => {
  it("allows exclusive and shared requests on a free mutex", () => {
    const mutex = newMutex("m");
    expect(compatible(mutex, "exclusive")).toBe(true);
    expect(compatible(mutex, "shared")).toBe(true);
  });

  it("allows a shared request but not an exclusive one while shared holders hold", () => {
    const mutex = mutexWith([["s1", "shared"], ["s2", "shared"]], []);
    expect(compatible(mutex, "shared")).toBe(true);
    expect(compatible(mutex, "exclusive")).toBe(false);
  });

  it("allows nothing while an exclusive holder holds", () => {
    const mutex = mutexWith([["x", "exclusive"]], []);
    expect(compatible(mutex, "shared")).toBe(false);
    expect(compatible(mutex, "exclusive")).toBe(false);
  });

  it("looks only at the holders, not at the queue", () => {
    // The no-overtaking rule lives in grantWaiters/requestMutex, not in compatible().
    const mutex = mutexWith([["s1", "shared"]], [["x", "exclusive"]]);
    expect(compatible(mutex, "shared")).toBe(true);
  });
});

describe("heldMode and isIdle", () => {
  it("reports free for a mutex nobody holds", () => {
    expect(heldMode(newMutex("m"))).toBe("free");
  });

  it("reports shared while only shared holders hold", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "s1", "shared");
    requestMutex(mutex, "s2", "shared");
    expect(heldMode(mutex)).toBe("shared");
  });

  it("reports exclusive while an exclusive holder holds", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "x", "exclusive");
    expect(heldMode(mutex)).toBe("exclusive");
  });

  it("reports exclusive when an exclusive holder is listed after a shared one", () => {
    // Not reachable through requests, but heldMode must not depend on insertion order.
    expect(heldMode(mutexWith([["s", "shared"], ["x", "exclusive"]], []))).toBe("exclusive");
  });

  it("reports free, not idle, when nobody holds but someone still waits", () => {
    const mutex = mutexWith([], [["w", "exclusive"]]);
    expect(heldMode(mutex)).toBe("free");
    expect(isIdle(mutex)).toBe(false);
  });

  it("is not idle while someone holds it", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "a", "shared");
    expect(isIdle(mutex)).toBe(false);
  });

  it("becomes idle again once every holder and waiter has left", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "a", "exclusive");
    requestMutex(mutex, "b", "shared");
    leaveMutex(mutex, "b");
    expect(isIdle(mutex)).toBe(false);
    leaveMutex(mutex, "a");
    expect(isIdle(mutex)).toBe(true);
    expect(heldMode(mutex)).toBe("free");
  });
});

describe("exclusive requests", () => {
  it("grants an exclusive request at once on a free mutex", () => {
    const mutex = newMutex("m");
    expect(requestMutex(mutex, "a", "exclusive")).toBe(true);
    expect(holders(mutex)).toEqual([["a", "exclusive"]]);
    expect(waiting(mutex)).toEqual([]);
  });

  it("queues a second exclusive request behind the first", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "a", "exclusive");
    expect(requestMutex(mutex, "b", "exclusive")).toBe(false);
    expect(holders(mutex)).toEqual([["a", "exclusive"]]);
    expect(mutex.queue).toEqual([{ ticket: "b", mode: "exclusive" }]);
  });

  it("hands an exclusive mutex to the waiters one at a time in arrival order", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "a", "exclusive");
    requestMutex(mutex, "b", "exclusive");
    requestMutex(mutex, "c", "exclusive");
    expect(waiting(mutex)).toEqual(["b", "c"]);

    expect(leaveMutex(mutex, "a")).toEqual(["b"]);
    expect(holders(mutex)).toEqual([["b", "exclusive"]]);
    expect(waiting(mutex)).toEqual(["c"]);

    expect(leaveMutex(mutex, "b")).toEqual(["c"]);
    expect(holders(mutex)).toEqual([["c", "exclusive"]]);
    expect(waiting(mutex)).toEqual([]);

    expect(leaveMutex(mutex, "c")).toEqual([]);
    expect(isIdle(mutex)).toBe(true);
  });

  it("makes a shared request wait behind an exclusive holder", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "x", "exclusive");
    expect(requestMutex(mutex, "s", "shared")).toBe(false);
    expect(waiting(mutex)).toEqual(["s"]);
    expect(leaveMutex(mutex, "x")).toEqual(["s"]);
    expect(holders(mutex)).toEqual([["s", "shared"]]);
  });
});

describe("shared requests", () => {
  it("grants shared requests together", () => {
    const mutex = newMutex("m");
    expect(requestMutex(mutex, "s1", "shared")).toBe(true);
    expect(requestMutex(mutex, "s2", "shared")).toBe(true);
    expect(requestMutex(mutex, "s3", "shared")).toBe(true);
    expect(holders(mutex)).toEqual([
      ["s1", "shared"],
      ["s2", "shared"],
      ["s3", "shared"],
    ]);
    expect(waiting(mutex)).toEqual([]);
  });

  it("makes an exclusive request wait until the last shared holder leaves", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "s1", "shared");
    requestMutex(mutex, "s2", "shared");
    expect(requestMutex(mutex, "x", "exclusive")).toBe(false);

    expect(leaveMutex(mutex, "s1")).toEqual([]);
    expect(holders(mutex)).toEqual([["s2", "shared"]]);
    expect(waiting(mutex)).toEqual(["x"]);

    expect(leaveMutex(mutex, "s2")).toEqual(["x"]);
    expect(holders(mutex)).toEqual([["x", "exclusive"]]);
    expect(waiting(mutex)).toEqual([]);
  });

  it("does not let a shared request overtake a waiting exclusive one, though it is compatible with the shared holders", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "s1", "shared");
    requestMutex(mutex, "x", "exclusive");
    expect(compatible(mutex, "shared")).toBe(true);

    expect(requestMutex(mutex, "s2", "shared")).toBe(false);
    expect(holders(mutex)).toEqual([["s1", "shared"]]);
    expect(mutex.queue).toEqual([
      { ticket: "x", mode: "exclusive" },
      { ticket: "s2", mode: "shared" },
    ]);
  });
});

describe("a mixed queue", () => {
  it("grants [S,S,X,S,S] behind an exclusive holder in batches as holders leave", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "h", "exclusive");
    expect(requestMutex(mutex, "s1", "shared")).toBe(false);
    expect(requestMutex(mutex, "s2", "shared")).toBe(false);
    expect(requestMutex(mutex, "x", "exclusive")).toBe(false);
    expect(requestMutex(mutex, "s3", "shared")).toBe(false);
    expect(requestMutex(mutex, "s4", "shared")).toBe(false);
    expect(waiting(mutex)).toEqual(["s1", "s2", "x", "s3", "s4"]);

    // The first two shared waiters go in together; the exclusive one stops the batch.
    expect(leaveMutex(mutex, "h")).toEqual(["s1", "s2"]);
    expect(holders(mutex)).toEqual([
      ["s1", "shared"],
      ["s2", "shared"],
    ]);
    expect(waiting(mutex)).toEqual(["x", "s3", "s4"]);

    expect(leaveMutex(mutex, "s2")).toEqual([]);
    expect(waiting(mutex)).toEqual(["x", "s3", "s4"]);

    expect(leaveMutex(mutex, "s1")).toEqual(["x"]);
    expect(holders(mutex)).toEqual([["x", "exclusive"]]);
    expect(waiting(mutex)).toEqual(["s3", "s4"]);

    expect(leaveMutex(mutex, "x")).toEqual(["s3", "s4"]);
    expect(holders(mutex)).toEqual([
      ["s3", "shared"],
      ["s4", "shared"],
    ]);
    expect(waiting(mutex)).toEqual([]);

    expect(leaveMutex(mutex, "s4")).toEqual([]);
    expect(leaveMutex(mutex, "s3")).toEqual([]);
    expect(isIdle(mutex)).toBe(true);
  });

  it("grants the leading shared requests of [S,S,X,S,S] at once on a free mutex and queues the rest", () => {
    const mutex = newMutex("m");
    expect(requestMutex(mutex, "s1", "shared")).toBe(true);
    expect(requestMutex(mutex, "s2", "shared")).toBe(true);
    expect(requestMutex(mutex, "x", "exclusive")).toBe(false);
    expect(requestMutex(mutex, "s3", "shared")).toBe(false);
    expect(requestMutex(mutex, "s4", "shared")).toBe(false);
    expect(holders(mutex).map(([t]) => t)).toEqual(["s1", "s2"]);
    expect(waiting(mutex)).toEqual(["x", "s3", "s4"]);
  });

  it("grants shared waiters up to the next exclusive one when an exclusive holder leaves", () => {
    const mutex = mutexWith(
      [["h", "exclusive"]],
      [
        ["s1", "shared"],
        ["x1", "exclusive"],
        ["x2", "exclusive"],
        ["s2", "shared"],
      ],
    );
    expect(leaveMutex(mutex, "h")).toEqual(["s1"]);
    expect(leaveMutex(mutex, "s1")).toEqual(["x1"]);
    expect(leaveMutex(mutex, "x1")).toEqual(["x2"]);
    expect(leaveMutex(mutex, "x2")).toEqual(["s2"]);
    expect(waiting(mutex)).toEqual([]);
  });
});

describe("leaveMutex", () => {
  it("grants nothing when a waiter leaves from the middle of the queue", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "s0", "shared");
    requestMutex(mutex, "x", "exclusive");
    requestMutex(mutex, "s1", "shared");
    requestMutex(mutex, "s2", "shared");

    expect(leaveMutex(mutex, "s1")).toEqual([]);
    expect(holders(mutex)).toEqual([["s0", "shared"]]);
    expect(mutex.queue).toEqual([
      { ticket: "x", mode: "exclusive" },
      { ticket: "s2", mode: "shared" },
    ]);
  });

  it("grants nothing when the last waiter leaves", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "h", "exclusive");
    requestMutex(mutex, "a", "shared");
    requestMutex(mutex, "b", "shared");
    expect(leaveMutex(mutex, "b")).toEqual([]);
    expect(waiting(mutex)).toEqual(["a"]);
    expect(holders(mutex)).toEqual([["h", "exclusive"]]);
  });

  it("lets compatible followers through when the waiting head leaves", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "s0", "shared");
    requestMutex(mutex, "x1", "exclusive");
    requestMutex(mutex, "s1", "shared");
    requestMutex(mutex, "s2", "shared");
    requestMutex(mutex, "x2", "exclusive");
    requestMutex(mutex, "s3", "shared");

    expect(leaveMutex(mutex, "x1")).toEqual(["s1", "s2"]);
    expect(holders(mutex)).toEqual([
      ["s0", "shared"],
      ["s1", "shared"],
      ["s2", "shared"],
    ]);
    expect(waiting(mutex)).toEqual(["x2", "s3"]);
  });

  it("grants nothing when the waiting head leaves and the next waiter is still incompatible", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "h", "exclusive");
    requestMutex(mutex, "a", "exclusive");
    requestMutex(mutex, "b", "shared");
    expect(leaveMutex(mutex, "a")).toEqual([]);
    expect(waiting(mutex)).toEqual(["b"]);
    expect(holders(mutex)).toEqual([["h", "exclusive"]]);
  });

  it("grants nothing when a shared holder leaves while other shared holders remain", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "s1", "shared");
    requestMutex(mutex, "s2", "shared");
    requestMutex(mutex, "x", "exclusive");
    expect(leaveMutex(mutex, "s2")).toEqual([]);
    expect(holders(mutex)).toEqual([["s1", "shared"]]);
  });

  it("returns nothing and changes nothing for a ticket that neither holds nor waits", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "h", "exclusive");
    requestMutex(mutex, "w", "exclusive");
    expect(leaveMutex(mutex, "stranger")).toEqual([]);
    expect(holders(mutex)).toEqual([["h", "exclusive"]]);
    expect(waiting(mutex)).toEqual(["w"]);
  });

  it("returns nothing when the same holder leaves twice", () => {
    const mutex = newMutex("m");
    requestMutex(mutex, "h", "exclusive");
    requestMutex(mutex, "w", "exclusive");
    expect(leaveMutex(mutex, "h")).toEqual(["w"]);
    expect(leaveMutex(mutex, "h")).toEqual([]);
    expect(holders(mutex)).toEqual([["w", "exclusive"]]);
  });
});

describe("grantWaiters", () => {
  it("grants from the head while compatible and stops at the first incompatible waiter", () => {
    const mutex = mutexWith(
      [],
      [
        ["s1", "shared"],
        ["s2", "shared"],
        ["x", "exclusive"],
        ["s3", "shared"],
      ],
    );
    expect(grantWaiters(mutex)).toEqual(["s1", "s2"]);
    expect(waiting(mutex)).toEqual(["x", "s3"]);
  });

  it("grants a single exclusive head and nothing after it", () => {
    const mutex = mutexWith(
      [],
      [
        ["x", "exclusive"],
        ["s", "shared"],
      ],
    );
    expect(grantWaiters(mutex)).toEqual(["x"]);
    expect(holders(mutex)).toEqual([["x", "exclusive"]]);
    expect(waiting(mutex)).toEqual(["s"]);
  });

  it("grants nothing when the head is incompatible with the holders", () => {
    const mutex = mutexWith([["s0", "shared"]], [["x", "exclusive"], ["s1", "shared"]]);
    expect(grantWaiters(mutex)).toEqual([]);
    expect(waiting(mutex)).toEqual(["x", "s1"]);
  });

  it("grants nothing on an empty queue", () => {
    expect(grantWaiters(newMutex("m"))).toEqual([]);
  });
});

describe("separate mutex names", () => {
  it("never blocks a request on one mutex because of a holder of another", () => {
    const deploy = newMutex("Deploy");
    const backup = newMutex("Backup");
    expect(requestMutex(deploy, "a", "exclusive")).toBe(true);
    expect(requestMutex(backup, "b", "exclusive")).toBe(true);
    expect(requestMutex(backup, "c", "shared")).toBe(false);
    expect(holders(deploy)).toEqual([["a", "exclusive"]]);
    expect(holders(backup)).toEqual([["b", "exclusive"]]);
    expect(waiting(deploy)).toEqual([]);
    expect(waiting(backup)).toEqual(["c"]);
  });

  it("never grants a waiter of one mutex when a holder of another leaves", () => {
    const deploy = newMutex("Deploy");
    const backup = newMutex("Backup");
    requestMutex(deploy, "a", "exclusive");
    requestMutex(backup, "b", "exclusive");
    requestMutex(backup, "c", "exclusive");
    expect(leaveMutex(deploy, "a")).toEqual([]);
    expect(isIdle(deploy)).toBe(true);
    expect(holders(backup)).toEqual([["b", "exclusive"]]);
    expect(waiting(backup)).toEqual(["c"]);
  });

  it("keeps the same ticket name independent in two mutexes", () => {
    const one = newMutex("one");
    const two = newMutex("two");
    requestMutex(one, "t", "exclusive");
    requestMutex(two, "t", "shared");
    leaveMutex(one, "t");
    expect(isIdle(one)).toBe(true);
    expect(holders(two)).toEqual([["t", "shared"]]);
  });
});
