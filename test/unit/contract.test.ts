// The response check every integration test runs (test/helpers/contract.ts): it must refuse what the declarations
// do not promise, or it would let the OpenAPI document drift from what the Worker sends.
import { describe, expect, it } from "vitest";
import { expectDeclaredResponse } from "../helpers/contract.js";

const status = { ticket: "t1", state: "complete", exitCode: 0, logs: [], nextLogSequence: 0, hasMoreLogs: false, events: [] };

describe("the declared-response check", () => {
  it("accepts an answer its route declares for that status", () => {
    expect(() => expectDeclaredResponse("GET", "/api/v1/machines/m1/scripts/t1", 200, status)).not.toThrow();
    expect(() => expectDeclaredResponse("POST", "/api/v1/machines/m1/scripts", 409, { error: { code: "ticket_conflict", message: "x" } })).not.toThrow();
  });

  it("refuses a status the route does not declare", () => {
    expect(() => expectDeclaredResponse("GET", "/api/v1/machines/m1/scripts/t1", 409, { error: { code: "x", message: "y" } })).toThrow(/does not declare a JSON answer with status 409/);
  });

  it("refuses a field the schema does not name, at any depth", () => {
    expect(() => expectDeclaredResponse("GET", "/api/v1/machines/m1/scripts/t1", 200, { ...status, extra: 1 })).toThrow(/fields its schema does not declare: extra/);
    const line = { sequence: 0, source: "stdout", text: "x", occurred: "2026-01-01T00:00:00.000Z", color: "red" };
    expect(() => expectDeclaredResponse("GET", "/api/v1/machines/m1/scripts/t1", 200, { ...status, logs: [line] })).toThrow(/logs\[0\]\.color/);
  });

  it("refuses a value of the wrong type", () => {
    expect(() => expectDeclaredResponse("GET", "/api/v1/machines/m1/scripts/t1", 200, { ...status, exitCode: "0" })).toThrow(/exitCode/);
  });

  it("accepts only errors for requests no route declares", () => {
    expect(() => expectDeclaredResponse("PUT", "/api/v1/machines/m1", 405, { error: { code: "method_not_allowed", message: "x" } })).not.toThrow();
    expect(() => expectDeclaredResponse("PUT", "/api/v1/machines/m1", 200, { ok: true })).toThrow(/no route is declared/);
  });
});
