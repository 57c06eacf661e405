/**
 * The edge's pure rules for the operations API: what each caller may do (`permits`), the actor an action is recorded
 * under (`actorOf`), and the opaque cursors of the paged lists, which refuse anything the control plane did not give.
 */
import { describe, expect, it } from "vitest";
import { actorOf, permits, type Caller } from "../../control-plane/http/callers.js";
import { feedCursor, machineCursor, parseFeedCursor, parseMachineCursor } from "../../control-plane/registry/cursors.js";

const SERVER: Caller = { kind: "server" };
const OPERATOR: Caller = { kind: "operator", name: "alice", role: "operator", generation: 1 };
const VIEWER: Caller = { kind: "operator", name: "bob", role: "viewer", generation: 3 };

describe("permits", () => {
  it("lets the server token do everything, an operator read and act, and a viewer only read", () => {
    const table = [SERVER, OPERATOR, VIEWER].map((caller) => (["server", "read", "act"] as const).map((access) => permits(caller, access)));
    expect(table).toEqual([
      [true, true, true],
      [false, true, true],
      [false, true, false],
    ]);
  });
});

describe("actorOf", () => {
  it("records the server, the server on someone's behalf, or the operator by name", () => {
    expect(actorOf(SERVER)).toBe("server");
    expect(actorOf(SERVER, "alice (ServerTasks-42)")).toBe("server:alice (ServerTasks-42)");
    expect(actorOf(OPERATOR)).toBe("operator:alice");
  });
});

describe("cursors", () => {
  it("round-trip where a page ended, as URL-safe text", () => {
    for (const id of ["web-01", "a", "Z.z_9-x".repeat(9)]) {
      expect(machineCursor(id)).toMatch(/^[A-Za-z0-9_-]+$/);
      expect(parseMachineCursor(machineCursor(id))).toBe(id);
    }
    expect(parseFeedCursor(feedCursor({ at: 1_796_199_383_162, id: 42 }))).toEqual({ at: 1_796_199_383_162, id: 42 });
  });

  it("refuse what the control plane did not give out, or a cursor of the other list", () => {
    for (const bad of ["", "x", "!!!", "bTo", machineCursor("web-01").slice(1), Buffer.from("m:../etc").toString("base64url"), Buffer.from("m:").toString("base64url")]) {
      expect(parseMachineCursor(bad), bad).toBeNull();
    }
    expect(parseMachineCursor(feedCursor({ at: 1, id: 1 }))).toBeNull();
    expect(parseFeedCursor(machineCursor("web-01"))).toBeNull();
    expect(parseFeedCursor(Buffer.from("a:1:x").toString("base64url"))).toBeNull();
  });
});
