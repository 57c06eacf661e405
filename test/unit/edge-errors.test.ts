/**
 * The edge's answer when a machine's object fails: the platform's word that it reset or throttled the object (the
 * error properties Durable Objects document) is 503 `unavailable` with `retry-after`, for the caller to try again;
 * anything else an object throws stays a 500 `internal`, a bug to report. The edge runs as built (createApp); only
 * the object's stub is stood in for, because workerd resets an object this way only under memory pressure.
 */
import { describe, expect, it } from "vitest";

/** The edge's app. Imported by a path the root type check does not follow: the Worker's code is checked by its own tsconfig. */
const APP_MODULE: string = "../../control-plane/http/app.js";
const { createApp } = (await import(APP_MODULE)) as {
  createApp: () => { request: (path: string, init: RequestInit, env: unknown) => Promise<Response> };
};

const TOKEN = "server-token-for-the-edge-errors-test";

/** An environment whose every machine object fails each call with `failure`. */
function failingMachines(failure: unknown) {
  const stub = new Proxy({}, { get: () => async () => Promise.reject(failure) });
  return { SERVER_TOKEN: TOKEN, MACHINE: { idFromName: (name: string) => name, get: () => stub } };
}

async function register(env: unknown) {
  const response = await createApp().request("/api/v1/machines/web-01/runner-token", { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } }, env);
  return { status: response.status, retryAfter: response.headers.get("retry-after"), body: (await response.json()) as { error: { code: string; message: string } } };
}

describe("a machine object that fails", () => {
  for (const mark of ["durableObjectReset", "overloaded", "retryable"]) {
    it(`answers 503 unavailable with retry-after when the platform marks the error ${mark}`, async () => {
      const error = Object.assign(new Error("out of memory: SQLITE_NOMEM"), { [mark]: true });
      const answer = await register(failingMachines(error));
      expect(answer).toMatchObject({ status: 503, retryAfter: "1", body: { error: { code: "unavailable" } } });
      expect(answer.body.error.message).toMatch(/try again/);
    });
  }

  it("answers 503 unavailable for the runtime's own internal error, which it words with a reference", async () => {
    const answer = await register(failingMachines(new Error("internal error; reference = op86mf9ev8aj04qu6bigt1s4")));
    expect(answer).toMatchObject({ status: 503, retryAfter: "1", body: { error: { code: "unavailable" } } });
  });

  it("answers 500 internal for anything else it throws", async () => {
    const answer = await register(failingMachines(new TypeError("a bug")));
    expect(answer).toMatchObject({ status: 500, retryAfter: null, body: { error: { code: "internal" } } });
  });
});
