/**
 * The operators' console: a second face of the edge, server-rendered HTML over the same machine-object and registry
 * methods the API calls. It keeps no state besides sessions (a signed cookie; the registry remembers signed-out
 * sessions and failed sign-ins). Its cookie is read on these routes only, never on `/api/v1`.
 *
 * Pages: `/` (fleet), `/machines/{id}`, `/machines/{id}/scripts/{ticket}`, `/audit`, `GET|POST /session` (sign in),
 * `POST /session/end` (sign out). Live parts: the same pages (re-read by the browser script) and
 * `/machines/{id}/scripts/{ticket}/log` (Server-Sent Events). Actions: `POST .../cancel` and `.../abandon`, plain
 * forms answered with 303, each checked in this order: same origin, a live session, the session's form token, the
 * caller's permission; the cookie itself is SameSite=Strict.
 */
import { Hono, type Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { JSX } from "hono/jsx/jsx-runtime";
import { FleetStatus, type MachineList, type ScriptStatus } from "../../shared/api.js";
import { ExitCode } from "../../shared/exit-codes.js";
import { isMachineId, isTicket } from "../../shared/ids.js";
import { registryStub, type Env } from "../env.js";
import { readBounded } from "../http/errors.js";
import { actorOf, permits, type Caller } from "../http/callers.js";
import type { RpcError } from "../machine/results.js";
import { parseFeedCursor, parseMachineCursor } from "../registry/cursors.js";
import { assetResponse } from "./assets.js";
import { clientKey } from "./client-key.js";
import { resumeFrom } from "./log-events.js";
import { logStream } from "./log-stream.js";
import { AuditPage } from "./pages/audit.js";
import { FleetPage } from "./pages/fleet.js";
import type { Viewer } from "./pages/layout.js";
import { MachinePage } from "./pages/machine.js";
import { scriptPath } from "./pages/parts.js";
import { ScriptPage } from "./pages/script.js";
import { MessagePage, SignInPage } from "./pages/sign-in.js";
import { clearedSessionCookie, formToken, formTokenMatches, newClaims, openSession, readCookie, sealSession, sessionCookie, sessionCookieName, sessionKey, type OpenedSession } from "./session.js";
import { identifyToken, verifyingKeys } from "./tokens.js";
import { serverTokens } from "../http/auth.js";

type ConsoleEnv = { Bindings: Env };
type Ctx = Context<ConsoleEnv>;

/** Machines on one page of the fleet list. */
const FLEET_PAGE = 50;
/** Events on one page of the audit feed. */
const AUDIT_PAGE = 50;
/** Log lines a script page renders (the newest, unless `?from=` says where to start). */
const LOG_LINES_SHOWN = 1_000;
/** The largest form the console accepts (a reason is at most 500 characters). */
const FORM_MAX_BYTES = 16 * 1024;
/** The longest `reason`, as the API allows. */
const REASON_MAX = 500;

/** A signed-in person as every console request sees them, re-checked against the registry on each request. */
interface Session {
  opened: OpenedSession;
  caller: Caller;
  /** `server` or `operator:<name>`: the actor of their actions in the audit trail. */
  actor: string;
  viewer: Viewer;
}

/** Builds the console's routes (mounted by control-plane/http/app.ts, outside `/api/v1`). */
export function createConsole(): Hono<ConsoleEnv> {
  const app = new Hono<ConsoleEnv>();

  app.get("/console/assets/:name", (c) => assetResponse(c.req.path) ?? message(c, null, 404, "Not found", "There is no such file."));

  app.get("/session", async (c) => {
    const next = safeNext(c.req.query("next"));
    const found = await readSession(c);
    if (found.kind === "live") return seeOther(c, next);
    const notice = c.req.query("out") !== undefined ? "You are signed out." : c.req.query("ended") !== undefined ? "Your session has ended: sign in again." : null;
    return page(c, SignInPage({ now: Date.now(), next, notice }), 200, found.kind === "ended" ? clearCookie(c) : {});
  });

  app.post("/session", async (c) => {
    if (!sameOrigin(c)) return crossSite(c);
    const form = await readForm(c);
    if (!form) return message(c, null, 400, "Not a sign-in", "The sign-in form could not be read (too large, or not a plain form).");
    const next = safeNext(form.get("next") ?? undefined);
    const now = Date.now();
    if (serverTokens(c.env).length === 0) {
      return page(c, SignInPage({ now, next, error: "The control plane has no server token configured, so nobody can sign in (fail closed)." }), 401);
    }
    const client = clientKey(c.req.header("cf-connecting-ip"));
    const waitMs = await registry(c).beginConsoleSignIn(client);
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000);
      const error = `Too many failed sign-ins from your address: try again in ${seconds} s.`;
      return page(c, SignInPage({ now, next, error }), 429, { "retry-after": String(seconds) });
    }
    const signIn = await identifyToken(c.env, (form.get("token") ?? "").trim());
    if (!signIn) return page(c, SignInPage({ now, next, error: "That token is neither the server token nor a current operator token." }), 401);
    await registry(c).consoleSignInSucceeded(client);
    const value = await sealSession(newClaims(signIn.subject, now), await sessionKey(signIn.signingToken));
    c.header("set-cookie", sessionCookie(value, secure(c)));
    return seeOther(c, next);
  });

  app.post("/session/end", async (c) => {
    if (!sameOrigin(c)) return crossSite(c);
    const found = await readSession(c);
    if (found.kind !== "live") return seeOther(c, "/session?out", clearCookie(c));
    const form = await readForm(c);
    if (!form || !(await formTokenMatches(found.session.opened, form.get("formToken")))) return badFormToken(c, found.session);
    const { sid, exp } = found.session.opened.claims;
    await registry(c).endConsoleSession(sid, exp);
    return seeOther(c, "/session?out", clearCookie(c));
  });

  app.get("/", signedIn(async (c, session) => {
    const prefix = c.req.query("prefix") ?? "";
    const statusText = c.req.query("status") ?? "";
    const cursor = c.req.query("cursor") || null;
    const errors: string[] = [];
    const prefixOk = /^[A-Za-z0-9._-]{0,64}$/.test(prefix);
    if (!prefixOk) errors.push("A machine id has only letters, digits, '.', '_' and '-': that prefix matches none.");
    const status = statusText === "" ? null : FleetStatus.safeParse(statusText).data ?? null;
    if (statusText !== "" && status === null) errors.push(`There is no status ${statusText}.`);
    const after = cursor === null ? null : parseMachineCursor(cursor);
    if (cursor !== null && after === null) errors.push("That page link is not one this console made: showing the first page.");
    const json = await registry(c).listMachines({ limit: FLEET_PAGE, after, prefix: prefixOk && prefix ? prefix : null, status });
    // The registry's own JSON, in the MachineList shape by construction (the API sends the same text as it is).
    const list = JSON.parse(json) as MachineList;
    return page(c, FleetPage({ now: Date.now(), viewer: session.viewer, list, prefix: prefixOk ? prefix : "", status, cursor: after === null ? null : cursor, error: errors.join(" ") || null }));
  }));

  app.get("/audit", signedIn(async (c, session) => {
    const machineId = c.req.query("machineId") ?? "";
    const cursor = c.req.query("cursor") || null;
    const errors: string[] = [];
    const machineOk = machineId === "" || isMachineId(machineId);
    if (!machineOk) errors.push("That is not a machine id: showing every machine.");
    const before = cursor === null ? null : parseFeedCursor(cursor);
    if (cursor !== null && before === null) errors.push("That page link is not one this console made: showing the newest events.");
    const filter = machineOk ? machineId : "";
    const feed = await registry(c).feed({ machineId: filter || null, limit: AUDIT_PAGE, before });
    return page(c, AuditPage({ now: Date.now(), viewer: session.viewer, feed, machineId: filter, cursor: before === null ? null : cursor, error: errors.join(" ") || null }));
  }));

  app.get("/machines/:machineId", signedIn(async (c, session) => {
    const { machineId } = pathIds(c);
    if (!isMachineId(machineId)) return noSuchMachine(c, session, machineId);
    const view = await machine(c, machineId).view(machineId, true);
    if (!view.ok) return rpcFailure(c, session, view);
    return page(c, MachinePage({ now: Date.now(), viewer: session.viewer, view: view.value }));
  }));

  app.get("/machines/:machineId/scripts/:ticket", signedIn(async (c, session) => {
    const { machineId, ticket } = pathIds(c);
    if (!isMachineId(machineId) || !isTicket(ticket)) return noSuchMachine(c, session, machineId);
    const stub = machine(c, machineId);
    const fromQuery = /^\d{1,15}$/.test(c.req.query("from") ?? "") ? Number(c.req.query("from")) : null;
    const viewing = stub.view(machineId, true);
    let from = fromQuery;
    if (from === null) {
      // Where the log ends now (a page from past its end is empty and says so), to show its newest lines.
      const head = await stub.getStatus(machineId, ticket, Number.MAX_SAFE_INTEGER, 1);
      if (!head.ok) return rpcFailure(c, session, head);
      from = Math.max(0, head.value.nextLogSequence - LOG_LINES_SHOWN);
    }
    const [status, view] = await Promise.all([stub.getStatus(machineId, ticket, from, LOG_LINES_SHOWN), viewing]);
    if (!status.ok) return rpcFailure(c, session, status);
    const summary = view.ok ? (view.value.scripts?.find((script) => script.ticket === ticket) ?? null) : null;
    const mutex = view.ok ? (view.value.mutexes.find((m) => m.holders.includes(ticket) || m.waiting.includes(ticket)) ?? null) : null;
    return page(
      c,
      ScriptPage({
        now: Date.now(),
        viewer: session.viewer,
        machineId,
        status: status.value,
        summary,
        mutex,
        from,
        canAct: permits(session.caller, "act"),
        notice: doneNotice(c.req.query("done"), machineId),
      }),
    );
  }));

  app.get("/machines/:machineId/scripts/:ticket/log", async (c) => {
    const found = await readSession(c);
    if (found.kind !== "live") return c.text("Sign in to the console first.", 401);
    const { machineId, ticket } = pathIds(c);
    if (!isMachineId(machineId) || !isTicket(ticket)) return c.text("No such script.", 404);
    const from = resumeFrom(c.req.header("last-event-id"), c.req.query("from"));
    if (from === null) return c.text("Last-Event-ID and from must be non-negative integers.", 400);
    const stream = await logStream(machine(c, machineId), machineId, ticket, from);
    if (stream instanceof Response) return stream;
    return c.text(stream.message, stream.status);
  });

  app.post("/machines/:machineId/scripts/:ticket/cancel", action("cancel"));
  app.post("/machines/:machineId/scripts/:ticket/abandon", action("abandon"));
  return app;
}

/** A cancel or abandon form post: same origin, live session, form token, permission; then the call and a 303. */
function action(kind: "cancel" | "abandon") {
  return async (c: Ctx): Promise<Response> => {
    if (!sameOrigin(c)) return crossSite(c);
    const found = await readSession(c);
    if (found.kind !== "live") {
      return message(c, null, 401, "Signed out", "Your session has ended, so nothing was done. Sign in and try again.", { href: "/session", text: "Sign in" }, found.kind === "ended" ? clearCookie(c) : {});
    }
    const session = found.session;
    const form = await readForm(c);
    if (!form || !(await formTokenMatches(session.opened, form.get("formToken")))) return badFormToken(c, session);
    if (!permits(session.caller, "act")) {
      return message(c, session.viewer, 403, "Not allowed", "A viewer may watch but not act: cancel and abandon need an operator of role operator (or the server token). Nothing was done.");
    }
    const { machineId, ticket } = pathIds(c);
    if (!isMachineId(machineId) || !isTicket(ticket)) return noSuchMachine(c, session, machineId);
    const back = { href: scriptPath(machineId, ticket), text: "Back to the script" };
    const reason = (form.get("reason") ?? "").trim();
    if (reason.length > REASON_MAX) return message(c, session.viewer, 400, "Reason too long", `A reason is at most ${REASON_MAX} characters. Nothing was done.`, back);
    const kill = form.get("killProcess") === "yes";
    if (kind === "abandon" && reason === "") return message(c, session.viewer, 400, "Say why", "Abandoning needs a reason, for the audit trail. Nothing was done.", back);
    if (kind === "abandon" && form.get("confirm") !== "yes") {
      return message(c, session.viewer, 400, "Not confirmed", "Abandoning releases the mutex while the process may keep running: tick “Yes, abandon it” to confirm. Nothing was done.", back);
    }
    const by = { actor: session.actor, reason: reason === "" ? null : reason };
    const stub = machine(c, machineId);
    const result = kind === "cancel" ? await stub.cancelScript(machineId, ticket, null, by) : await stub.abandonScript(machineId, ticket, kill, by);
    if (!result.ok) return rpcFailure(c, session, result);
    return seeOther(c, `${scriptPath(machineId, ticket)}?done=${outcome(kind, kill, result.value)}`);
  };
}

/** What a script page says after an action (the `done` query). */
type Done = "cancel" | "abandon" | "abandon-kill" | "cancelled" | "nothing";

/**
 * What an action did, read from the status it answered: cancel and abandon are harmless on a complete script, and
 * the notice must not claim an abandon that did not happen.
 */
function outcome(kind: "cancel" | "abandon", kill: boolean, status: ScriptStatus): Done {
  const asked: Done = kind === "abandon" ? (kill ? "abandon-kill" : "abandon") : "cancel";
  if (status.state !== "complete") return asked;
  if (kind === "abandon" && status.exitCode === ExitCode.Abandoned) return asked;
  return status.exitCode === ExitCode.Cancelled ? "cancelled" : "nothing";
}

/** The sentence a script page shows after an action. */
function doneNotice(done: string | undefined, machineId: string): string | null {
  switch (done) {
    case "cancel":
      return "Cancel requested: a running script's process tree is being stopped; a script still waiting will never run.";
    case "abandon":
      return `Abandoned: its mutex is released and the next script may start; its process may still be running on ${machineId}.`;
    case "abandon-kill":
      return `Abandoned: its mutex is released and the next script may start; the runner was asked to kill its process tree (best effort), which may still be running on ${machineId}.`;
    case "cancelled":
      return "Cancelled: the script is complete with exit code -43.";
    case "nothing":
      return "It was already complete: nothing was done.";
    default:
      return null;
  }
}

// ---------------------------------------------------------------------------------------------------
// sessions

type FoundSession = { kind: "none" } | { kind: "ended" } | { kind: "live"; session: Session };

/**
 * The request's session: none (no cookie), ended (forged, expired, signed with a retired token's key, signed out, or
 * an operator's whose token was revoked, replaced or expired since) or live. Asks the registry on every request.
 */
async function readSession(c: Ctx): Promise<FoundSession> {
  const value = readCookie(c.req.header("cookie"), sessionCookieName(secure(c)));
  if (value === null) return { kind: "none" };
  const opened = await openSession(value, await verifyingKeys(c.env), Date.now());
  if (!opened) return { kind: "ended" };
  const who = opened.claims.who;
  const operator = who.kind === "operator" ? { name: who.name, generation: who.generation } : null;
  if (!(await registry(c).consoleSessionLive(opened.claims.sid, operator))) return { kind: "ended" };
  const caller: Caller = who.kind === "server" ? { kind: "server" } : { kind: "operator", name: who.name, role: who.role, generation: who.generation };
  const viewer: Viewer = {
    label: who.kind === "server" ? "server" : who.name,
    role: who.kind === "server" ? "server token" : who.role,
    formToken: await formToken(opened),
  };
  return { kind: "live", session: { opened, caller, actor: actorOf(caller), viewer } };
}

/** A page handler that needs a live session; without one, the browser goes to the sign-in page (and back after). */
function signedIn(handler: (c: Ctx, session: Session) => Promise<Response>) {
  return async (c: Ctx): Promise<Response> => {
    const found = await readSession(c);
    if (found.kind === "live") return handler(c, found.session);
    const url = new URL(c.req.url);
    const next = encodeURIComponent(url.pathname + url.search);
    return seeOther(c, `/session?next=${next}${found.kind === "ended" ? "&ended" : ""}`, found.kind === "ended" ? clearCookie(c) : {});
  };
}

/** Where to go after signing in: a path of this console, else the fleet (never another site). */
function safeNext(next: string | undefined): string {
  if (!next || !next.startsWith("/") || next.startsWith("//") || next.startsWith("/\\") || next.length > 1024) return "/";
  const url = new URL(next, "http://console.invalid");
  return url.origin === "http://console.invalid" ? url.pathname + url.search : "/";
}

/**
 * Whether a post comes from this console's own pages: its `Origin` is this origin (browsers send it with every
 * POST); without one, `Sec-Fetch-Site` must say same-origin. Anything else is refused, whatever cookie it carries.
 */
function sameOrigin(c: Ctx): boolean {
  const origin = c.req.header("origin");
  if (origin !== undefined) return origin === new URL(c.req.url).origin;
  return c.req.header("sec-fetch-site") === "same-origin";
}

/** The machine id and ticket of a console path (empty when the route has none; callers check them). */
function pathIds(c: Ctx): { machineId: string; ticket: string } {
  return { machineId: c.req.param("machineId") ?? "", ticket: c.req.param("ticket") ?? "" };
}

function secure(c: Ctx): boolean {
  return new URL(c.req.url).protocol === "https:";
}

function clearCookie(c: Ctx): Record<string, string> {
  return { "set-cookie": clearedSessionCookie(secure(c)) };
}

/** Reads a urlencoded form of at most FORM_MAX_BYTES; null when it is larger or not a form. */
async function readForm(c: Ctx): Promise<URLSearchParams | null> {
  const type = (c.req.header("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") return null;
  const bytes = await readBounded(c.req.raw, FORM_MAX_BYTES);
  return bytes === null ? null : new URLSearchParams(new TextDecoder().decode(bytes));
}

// ---------------------------------------------------------------------------------------------------
// answers

/**
 * What every console page is sent with: no caching, no framing, and a content security policy that lets the page load
 * nothing but this origin's own stylesheet, script and icon, connect nowhere else, and post forms only here.
 */
const PAGE_HEADERS: Record<string, string> = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-frame-options": "DENY",
  "referrer-policy": "same-origin",
  "x-content-type-options": "nosniff",
};

/** Sends a rendered page. */
async function page(c: Ctx, node: JSX.Element, status: ContentfulStatusCode = 200, headers: Record<string, string> = {}): Promise<Response> {
  const html = `<!DOCTYPE html>${await node.toString()}`;
  return c.body(html, status, { ...PAGE_HEADERS, ...headers });
}

/** A page with one message. */
function message(
  c: Ctx,
  viewer: Viewer | null,
  status: ContentfulStatusCode,
  title: string,
  text: string,
  link?: { href: string; text: string },
  headers: Record<string, string> = {},
): Promise<Response> {
  return page(c, MessagePage({ now: Date.now(), viewer, title, message: text, ...(link ? { link } : {}) }), status, headers);
}

function seeOther(c: Ctx, location: string, headers: Record<string, string> = {}): Response {
  return c.body(null, 303, { location, "cache-control": "no-store", ...headers });
}

function crossSite(c: Ctx): Promise<Response> {
  return message(c, null, 403, "Refused", "This request did not come from the console's own pages, so it was refused and nothing was done.");
}

function badFormToken(c: Ctx, session: Session): Promise<Response> {
  return message(c, session.viewer, 403, "Refused", "The form's token is missing or is not this session's, so nothing was done. Reload the page and try again.");
}

function noSuchMachine(c: Ctx, session: Session, machineId: string): Promise<Response> {
  return message(c, session.viewer, 404, "Not found", `There is no machine or script at this address (${machineId}).`);
}

/** An error the machine object answered (unknown machine or script, storage unavailable), as a page. */
function rpcFailure(c: Ctx, session: Session, error: RpcError): Promise<Response> {
  const title = error.status === 404 ? "Not found" : error.status === 503 ? "Try again" : "Refused";
  return message(c, session.viewer, error.status, title, error.message);
}

function registry(c: Ctx) {
  return registryStub(c.env);
}

function machine(c: Ctx, machineId: string) {
  return c.env.MACHINE.get(c.env.MACHINE.idFromName(machineId));
}
