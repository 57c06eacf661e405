// The console's sessions and form posts over plain HTTP, on the real Worker: the cookie and where it is accepted,
// sign-in slowdown per client, the cross-site guards one by one (Origin, form token) and the viewer's refusal, who
// actions are recorded as, the end of a session (sign-out, an operator removed or given a new token, a server token
// retired by a rotation), the live log's resume, the console's absence from the OpenAPI document, and what
// `npm start` says about it. The browser's
// side of the same (SameSite, what a person sees) is in test/browser/console.test.ts.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { call } from "../helpers/api.js";
import { startControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import { useControlPlane } from "../helpers/fixture.js";
import { editRegistry } from "../helpers/persisted-sqlite.js";
import { startTendril } from "../helpers/processes.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

/** A raw console request (redirects are not followed: the test looks at the 303 itself). */
function request(
  base: { url: string },
  method: "GET" | "POST",
  path: string,
  { cookie, form, origin = base.url, headers = {} }: { cookie?: string; form?: Record<string, string>; origin?: string | null; headers?: Record<string, string> } = {},
): Promise<Response> {
  const all: Record<string, string> = { ...headers };
  if (cookie) all.cookie = cookie;
  if (method === "POST" && origin !== null) all.origin = origin;
  return fetch(`${base.url}${path}`, { method, headers: all, body: form ? new URLSearchParams(form) : undefined, redirect: "manual" });
}

/** Signs in with a token; answers the response and the session cookie (`name=value`) it set, if any. */
async function signIn(base: { url: string }, token: string, clientIp?: string): Promise<{ response: Response; cookie: string | null }> {
  const response = await request(base, "POST", "/session", { form: { token, next: "/" }, headers: clientIp ? { "cf-connecting-ip": clientIp } : {} });
  const set = response.headers.get("set-cookie");
  return { response, cookie: set ? set.split(";")[0]! : null };
}

/** A page's form token, as the page's forms carry it. */
async function formTokenOf(base: { url: string }, cookie: string): Promise<string> {
  const html = await (await request(base, "GET", "/audit", { cookie })).text();
  const match = /name="formToken" value="([^"]+)"/.exec(html);
  if (!match) throw new Error(`no form token on the page:\n${html}`);
  return match[1]!;
}

async function addOperator(base: { url: string; serverToken: string }, name: string, role: "viewer" | "operator"): Promise<string> {
  const added = await call(base, "POST", "/api/v1/operators", { name, role });
  expect(added.status).toBe(201);
  return added.body.token;
}

/** A machine with no runner and a script that stays pending, holding its mutex. */
async function pendingScript(ticket = "held"): Promise<{ m: string; path: string }> {
  const m = f.machine("console");
  await f.register(m);
  expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket, scriptBody: "true" })).status).toBe(201);
  return { m, path: `/machines/${m}/scripts/${ticket}` };
}

describe("the session cookie", () => {
  it("is set on sign-in as HttpOnly, SameSite=Strict and 12 hours long, opens console pages, and is never accepted on the API", async () => {
    const { response, cookie } = await signIn(f.cp, f.cp.serverToken);
    expect(response.status).toBe(303);
    expect(response.headers.get("location")).toBe("/");
    expect(response.headers.get("set-cookie")).toMatch(/^tendril-session=[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}; Path=\/; Max-Age=43200; HttpOnly; SameSite=Strict$/);
    const page = await request(f.cp, "GET", "/", { cookie: cookie! });
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(await page.text()).toContain("Signed in as <strong>server</strong>");
    const api = await fetch(`${f.cp.url}/api/v1/machines`, { headers: { cookie: cookie! } });
    expect(api.status).toBe(401);
    // Without a session, a page sends the browser to sign in and back.
    const anonymous = await request(f.cp, "GET", "/machines/web-01?x=1");
    expect(anonymous.status).toBe(303);
    expect(anonymous.headers.get("location")).toBe(`/session?next=${encodeURIComponent("/machines/web-01?x=1")}`);
    // A forged cookie opens nothing and is cleared.
    const forged = await request(f.cp, "GET", "/", { cookie: `${cookie!.slice(0, -3)}AAA` });
    expect(forged.status).toBe(303);
    expect(forged.headers.get("set-cookie")).toContain("Max-Age=0");
  });

  it("refuses a sign-in posted from another origin, and a wrong token with 401", async () => {
    const crossSite = await request(f.cp, "POST", "/session", { form: { token: f.cp.serverToken }, origin: "http://evil.example" });
    expect(crossSite.status).toBe(403);
    expect(crossSite.headers.get("set-cookie")).toBeNull();
    const wrong = await signIn(f.cp, "not-a-token", "192.0.2.50");
    expect(wrong.response.status).toBe(401);
    expect(wrong.cookie).toBeNull();
    expect(await wrong.response.text()).toContain("That token is neither the server token nor a current operator token.");
  });

  it("slows down repeated failed sign-ins from one client with 429 and Retry-After, but never a correct sign-in from another client", async () => {
    const guesser = "198.51.100.23";
    for (let i = 0; i < 5; i += 1) expect((await signIn(f.cp, `guess-${i}`, guesser)).response.status).toBe(401);
    const slowed = await signIn(f.cp, "guess-5", guesser);
    expect(slowed.response.status).toBe(429);
    expect(Number(slowed.response.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    // While slowed down, not even the right token is tried for that client…
    expect((await signIn(f.cp, f.cp.serverToken, guesser)).response.status).toBe(429);
    // …while another client signs in at once.
    const other = await signIn(f.cp, f.cp.serverToken, "203.0.113.99");
    expect(other.response.status).toBe(303);
    // Once the wait is over the right token works again (a refused attempt does not extend the wait).
    await waitFor(async () => (await signIn(f.cp, f.cp.serverToken, guesser)).response.status === 303, { timeoutMs: 10_000, intervalMs: 250, what: "the slowdown to end" });
  });
});

describe("actions", () => {
  it("answers a cancel form with 303 to the script, recorded as `server` for a server-token session", async () => {
    const { m, path } = await pendingScript();
    const { cookie } = await signIn(f.cp, f.cp.serverToken);
    const posted = await request(f.cp, "POST", `${path}/cancel`, { cookie: cookie!, form: { reason: "superseded", formToken: await formTokenOf(f.cp, cookie!) } });
    expect(posted.status).toBe(303);
    expect(posted.headers.get("location")).toBe(`${path}?done=cancelled`);
    const status = (await f.api("GET", `/api/v1/machines/${m}/scripts/held?limit=1`)).body;
    expect(status).toMatchObject({ state: "complete", exitCode: -43, events: [{ action: "cancel", actor: "server", reason: "superseded" }] });
  });

  it("abandons with killProcess for an operator, as operator:<name>, and refuses an abandon without a reason or a confirmation", async () => {
    const m = f.machine("console");
    await f.runner(m);
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "held", scriptBody: "sleep 600" })).status).toBe(201);
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}/scripts/held?limit=1`)).body.state === "running", { what: "the script to run" });
    const path = `/machines/${m}/scripts/held`;
    const { cookie } = await signIn(f.cp, await addOperator(f.cp, "bob", "operator"));
    const formToken = await formTokenOf(f.cp, cookie!);
    const abandon = (form: Record<string, string>) => request(f.cp, "POST", `${path}/abandon`, { cookie: cookie!, form: { formToken, ...form } });
    expect((await abandon({ reason: "", confirm: "yes" })).status).toBe(400);
    expect((await abandon({ reason: "stuck" })).status).toBe(400);
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/held?limit=1`)).body.state).toBe("running");
    const posted = await abandon({ reason: "stuck in AV scan", confirm: "yes", killProcess: "yes" });
    expect(posted.status).toBe(303);
    expect(posted.headers.get("location")).toBe(`${path}?done=abandon-kill`);
    const status = (await f.api("GET", `/api/v1/machines/${m}/scripts/held?limit=1`)).body;
    expect(status.events.map((e: { action: string; actor: string; reason: string }) => `${e.action} ${e.actor} ${e.reason}`)).toEqual([
      "abandon operator:bob stuck in AV scan",
      "kill-requested operator:bob stuck in AV scan",
    ]);
  });

  it("refuses a post from another origin, without an Origin, or without the session's form token, and a viewer's with 403; nothing is done", async () => {
    const { m, path } = await pendingScript();
    const operator = (await signIn(f.cp, await addOperator(f.cp, "carol", "operator"))).cookie!;
    const viewer = (await signIn(f.cp, await addOperator(f.cp, "vera", "viewer"))).cookie!;
    const other = (await signIn(f.cp, f.cp.serverToken)).cookie!;
    const token = await formTokenOf(f.cp, operator);
    const attempts = {
      "another origin": request(f.cp, "POST", `${path}/cancel`, { cookie: operator, form: { formToken: token }, origin: "http://evil.example" }),
      "no origin": request(f.cp, "POST", `${path}/cancel`, { cookie: operator, form: { formToken: token }, origin: null }),
      "no form token": request(f.cp, "POST", `${path}/cancel`, { cookie: operator, form: { reason: "x" } }),
      "another session's form token": request(f.cp, "POST", `${path}/cancel`, { cookie: operator, form: { formToken: await formTokenOf(f.cp, other) } }),
      "a viewer": request(f.cp, "POST", `${path}/cancel`, { cookie: viewer, form: { formToken: await formTokenOf(f.cp, viewer) } }),
      "a viewer's abandon": request(f.cp, "POST", `${path}/abandon`, { cookie: viewer, form: { formToken: await formTokenOf(f.cp, viewer), reason: "x", confirm: "yes" } }),
    };
    const statuses: Record<string, number> = {};
    for (const [name, answer] of Object.entries(attempts)) statuses[name] = (await answer).status;
    expect(statuses).toEqual(Object.fromEntries(Object.keys(attempts).map((name) => [name, 403])));
    // Same origin, the right token, and a permitted caller: then it goes through.
    expect((await request(f.cp, "POST", `${path}/cancel`, { cookie: operator, form: { formToken: token } })).status).toBe(303);
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/held?limit=1`)).body.events).toEqual([expect.objectContaining({ action: "cancel", actor: "operator:carol" })]);
  });
});

describe("the end of a session", () => {
  it("ends on sign-out, and a copy of the cookie is refused afterwards", async () => {
    const { cookie } = await signIn(f.cp, f.cp.serverToken);
    const out = await request(f.cp, "POST", "/session/end", { cookie: cookie!, form: { formToken: await formTokenOf(f.cp, cookie!) } });
    expect(out.status).toBe(303);
    expect(out.headers.get("location")).toBe("/session?out");
    expect(out.headers.get("set-cookie")).toContain("Max-Age=0");
    const after = await request(f.cp, "GET", "/", { cookie: cookie! });
    expect(after.status).toBe(303);
    expect(after.headers.get("location")).toBe("/session?next=%2F&ended");
  });

  it("ends an operator's session when the operator gets a new token, and when it is removed", async () => {
    const first = (await signIn(f.cp, await addOperator(f.cp, "dave", "operator"))).cookie!;
    expect((await request(f.cp, "GET", "/", { cookie: first })).status).toBe(200);
    const second = (await signIn(f.cp, await addOperator(f.cp, "dave", "viewer"))).cookie!;
    expect((await request(f.cp, "GET", "/", { cookie: first })).status).toBe(303);
    expect(await (await request(f.cp, "GET", "/", { cookie: second })).text()).toContain("Signed in as <strong>dave</strong> (viewer)");
    expect((await f.api("DELETE", "/api/v1/operators/dave")).status).toBe(200);
    expect((await request(f.cp, "GET", "/", { cookie: second })).status).toBe(303);
  });

  it("ends a server-token session when a rotation retires its token, keeps an operator's made during the rotation, and ends one whose token expired", async () => {
    const next = "next-server-token-for-the-console";
    let cp: TestControlPlane | undefined = await startControlPlane({ args: ["--server-token-next", next] });
    const { stateDir, serverToken: old } = cp;
    try {
      const oldSession = (await signIn(cp, old)).cookie!;
      const newSession = (await signIn(cp, next)).cookie!;
      const operatorSession = (await signIn(cp, await addOperator(cp, "erin", "operator"))).cookie!;
      const expiringSession = (await signIn(cp, await addOperator(cp, "frank", "operator"))).cookie!;
      for (const cookie of [oldSession, newSession, operatorSession, expiringSession]) expect((await request(cp, "GET", "/", { cookie })).status).toBe(200);
      await cp.stop({ keepState: true });
      cp = undefined;
      // frank's token expires meanwhile, as the passing of its days would make it.
      await editRegistry(stateDir, (storage) => storage.db.run("UPDATE operators SET expires_at = ? WHERE name = 'frank'", [Date.now() - 1]));
      cp = await startControlPlane({ stateDir, serverToken: next });
      expect((await request(cp, "GET", "/", { cookie: oldSession })).status).toBe(303);
      expect((await request(cp, "GET", "/", { cookie: newSession })).status).toBe(200);
      expect((await request(cp, "GET", "/", { cookie: operatorSession })).status).toBe(200);
      expect((await request(cp, "GET", "/", { cookie: expiringSession })).status).toBe(303);
    } finally {
      await cp?.stop();
      rmSync(stateDir, { recursive: true, force: true });
    }
  }, 90_000);
});

describe("the live log and the contract", () => {
  it("streams a script's lines as events whose ids are their sequences, and resumes after Last-Event-ID", async () => {
    const m = f.machine("stream");
    await f.runner(m);
    expect((await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "five", scriptBody: "for i in 1 2 3 4 5; do echo $i; done", waitMs: 10_000 })).body.state).toBe("complete");
    const { cookie } = await signIn(f.cp, f.cp.serverToken);
    const read = async (headers: Record<string, string>, query = "") => {
      const response = await request(f.cp, "GET", `/machines/${m}/scripts/five/log${query}`, { cookie: cookie!, headers });
      expect(response.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
      const text = await response.text();
      return { ids: [...text.matchAll(/^id: (\d+)$/gm)].map((match) => Number(match[1])), text };
    };
    expect((await read({})).ids).toEqual([0, 1, 2, 3, 4]);
    expect((await read({ "last-event-id": "2" }, "?from=0")).ids).toEqual([3, 4]);
    const tail = await read({}, "?from=4");
    expect(tail.ids).toEqual([4]);
    expect(tail.text).toMatch(/event: status\ndata: \{"state":"complete","exitCode":0,"nextLogSequence":5\}\n\n$/);
    expect((await request(f.cp, "GET", `/machines/${m}/scripts/five/log`)).status).toBe(401);
    expect((await request(f.cp, "GET", `/machines/${m}/scripts/nope/log`, { cookie: cookie! })).status).toBe(404);
  });

  it("keeps the console out of the OpenAPI document", async () => {
    const document = (await call(f.cp, "GET", "/api/v1/openapi.json", undefined, { token: null })).body;
    expect(Object.keys(document.paths).filter((path) => !path.startsWith("/api/v1/") && path !== "/healthz")).toEqual([]);
  });
});

describe("npm start", () => {
  it("prints the console's address and how to sign in, and the server token it prints signs in there", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "tendril-console-start-"));
    const start = startTendril(["start", "--port", "0"], { TENDRIL_URL: "", TENDRIL_SERVER_TOKEN: "" }, cwd);
    try {
      const banner = await waitFor(() => (/Press Ctrl-C to stop/.test(start.stdout()) ? start.stdout() : undefined), { timeoutMs: 60_000, what: `npm start's banner:\n${start.output()}` });
      const consoleLine = /^ {2}console {8}(http:\/\/127\.0\.0\.1:\d+)\/ {2}\(open it in a browser and sign in with the server token\)$/m.exec(banner);
      const token = /^ {2}server token {3}(\S+)$/m.exec(banner);
      expect(consoleLine, banner).not.toBeNull();
      expect(banner).toContain("npx tendril operator add alice --role operator");
      const signedIn = await signIn({ url: consoleLine![1]! }, token![1]!);
      expect(signedIn.response.status).toBe(303);
      expect((await request({ url: consoleLine![1]! }, "GET", "/machines/local", { cookie: signedIn.cookie! })).status).toBe(200);
    } finally {
      await start.stop(15_000);
      rmSync(cwd, { recursive: true, force: true });
    }
  }, 120_000);
});
