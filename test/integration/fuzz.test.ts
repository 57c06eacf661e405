// Seeded fuzzing of the real control plane: hundreds of malformed HTTP requests on every route, and hundreds of
// malformed runner frames each on a fresh authenticated socket. Every answer is a named 4xx / close code, and the
// machine's observable state does not move. Rerun a failure with FUZZ_SEED=<the seed it printed>.
import { describe, expect, it, onTestFailed } from "vitest";
import { randomInt } from "node:crypto";
import { connect } from "node:net";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { CloseCode } from "../../shared/protocol.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : randomInt(2 ** 31);

/** Says how to replay the current test's cases when it fails. */
function printSeedOnFailure(): void {
  onTestFailed(() => {
    console.error(`fuzz seed ${SEED}: rerun with FUZZ_SEED=${SEED} npx vitest run test/integration/fuzz.test.ts`);
  });
}

// ------------------------------------------------------------------ a seeded generator

/** A small deterministic generator (mulberry32). */
class Rand {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }
  int(max: number): number {
    return Math.floor(this.next() * max);
  }
  between(min: number, max: number): number {
    return min + this.int(max - min + 1);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  /** Printable ASCII garbage. */
  garbage(length: number): string {
    let out = "";
    for (let i = 0; i < length; i += 1) out += String.fromCharCode(32 + this.int(95));
    return out;
  }
}

/** Inserts `"key": value` as the first member of the JSON object that `text` starts with at `at`. */
function insertMember(text: string, at: number, key: string, valueJson: string): string {
  return `${text.slice(0, at + 1)}${JSON.stringify(key)}:${valueJson},${text.slice(at + 1)}`;
}

// ------------------------------------------------------------------ raw HTTP

interface RawRequest {
  method: string;
  /** The request target exactly as sent (may hold percent-encoding garbage). */
  target: string;
  headers: Array<[string, string]>;
  body?: Buffer;
  /** Which route the request aims at, and what is wrong with it. */
  route: string;
  category: string;
  note: string;
}

interface RawResponse {
  status: number;
  body: string;
}

/** Sends one request on a fresh TCP connection and reads exactly one response (content-length or chunked). */
function sendRaw(port: number, request: RawRequest, timeoutMs = 15_000): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let received = Buffer.alloc(0);
    let done = false;
    const finish = (error: Error | null, response?: RawResponse) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(response!);
    };
    const timer = setTimeout(() => finish(new Error(`no answer within ${timeoutMs} ms (a hang)`)), timeoutMs);
    const tryParse = (ended: boolean) => {
      const end = received.indexOf("\r\n\r\n");
      if (end < 0) {
        if (ended) finish(new Error(`connection closed without a response: ${JSON.stringify(received.toString().slice(0, 200))}`));
        return;
      }
      const head = received.subarray(0, end).toString("latin1").split("\r\n");
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head[0]!)?.[1]);
      const headers = new Map(head.slice(1).map((line) => [line.slice(0, line.indexOf(":")).trim().toLowerCase(), line.slice(line.indexOf(":") + 1).trim()]));
      let rest = received.subarray(end + 4);
      if (headers.get("transfer-encoding")?.toLowerCase() === "chunked") {
        const chunks: Buffer[] = [];
        for (;;) {
          const lineEnd = rest.indexOf("\r\n");
          if (lineEnd < 0) break;
          const size = parseInt(rest.subarray(0, lineEnd).toString(), 16);
          if (rest.length < lineEnd + 2 + size + 2) break;
          if (size === 0) return finish(null, { status, body: Buffer.concat(chunks).toString("utf8") });
          chunks.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
          rest = rest.subarray(lineEnd + 2 + size + 2);
        }
        if (ended) finish(new Error("connection closed in the middle of a chunked response"));
        return;
      }
      const length = headers.has("content-length") ? Number(headers.get("content-length")) : null;
      if (length !== null && rest.length >= length) return finish(null, { status, body: rest.subarray(0, length).toString("utf8") });
      if (length === null && ended) return finish(null, { status, body: rest.toString("utf8") });
      if (ended) finish(new Error("connection closed in the middle of a response"));
    };
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      tryParse(false);
    });
    socket.on("end", () => tryParse(true));
    socket.on("close", () => tryParse(true));
    // The server may answer (413) before it has read a huge body; a reset after that is not an error.
    socket.on("error", (error) => (received.indexOf("\r\n\r\n") >= 0 ? tryParse(true) : finish(error)));
    let head = `${request.method} ${request.target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n`;
    for (const [name, value] of request.headers) head += `${name}: ${value}\r\n`;
    if (request.body !== undefined) head += `Content-Length: ${request.body.length}\r\n`;
    socket.write(Buffer.concat([Buffer.from(`${head}\r\n`, "latin1"), request.body ?? Buffer.alloc(0)]));
  });
}

/** What is wrong with an answer that should be a 4xx with exactly `{"error": {"code", "message"}}`; null when fine. */
function errorShapeProblem(response: RawResponse): string | null {
  if (response.status < 400 || response.status > 499) return `status ${response.status}`;
  let body: unknown;
  try {
    body = JSON.parse(response.body);
  } catch {
    return `status ${response.status} with a body that is not JSON: ${JSON.stringify(response.body.slice(0, 120))}`;
  }
  const ok =
    typeof body === "object" &&
    body !== null &&
    Object.keys(body).join() === "error" &&
    typeof (body as { error: unknown }).error === "object" &&
    (body as { error: object | null }).error !== null &&
    Object.keys((body as { error: object }).error).sort().join() === "code,message" &&
    /^[a-z][a-z_]*$/.test(String((body as { error: { code: unknown } }).error.code)) &&
    typeof (body as { error: { message: unknown } }).error.message === "string" &&
    (body as { error: { message: string } }).error.message.length > 0;
  return ok ? null : `status ${response.status} without the error shape: ${response.body.slice(0, 160)}`;
}

// ------------------------------------------------------------------ malformed HTTP requests

/** The routes of the API (docs/api.md), with the methods each one allows. */
const ROUTES = [
  { id: "list", allowed: ["GET"] },
  // DELETE removes the machine and revokes its token: never sent as a "wrong" method.
  { id: "machine", allowed: ["GET", "DELETE"] },
  { id: "runner-token", allowed: ["POST", "DELETE"] },
  { id: "scripts", allowed: ["POST"] },
  { id: "script", allowed: ["GET", "DELETE"] },
  { id: "stream", allowed: ["GET"] },
  { id: "cancel", allowed: ["POST"] },
  { id: "abandon", allowed: ["POST"] },
  { id: "runner", allowed: ["GET"] },
  { id: "healthz", allowed: ["GET"] },
] as const;
type RouteId = (typeof ROUTES)[number]["id"];
const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"];
const BODY_ROUTES = ["runner-token", "scripts", "cancel", "abandon"] as const;
type BodyRoute = (typeof BODY_ROUTES)[number];

/** Path segments that are not a valid machine id or ticket even after percent-decoding. */
const BAD_SEGMENTS = [
  "%ZZ", "%00", "%", "%0", "%G1", "%C3%28", "%FF", "%FF%FE", "%ed%a0%80", "a%20b", "%2F", "a%2Fb", "%5C", "é", "%E2%80%AE",
  "*", "a:b", "a;b", "a,b", "~x", "a@b", "%7E", "%25", "%2525", "a%09b", "%0A", "%0D%0A", "a+b", "a'b", "(x)", "$x", "a!b",
];
/** Query values that are not a non-negative integer. */
const BAD_NUMBERS = ["-1", "1.5", "abc", "1e3", "", "%ZZ", "99999999999999999999", "0x10", "%201", "+1", "NaN", "Infinity", "%EF%BC%91", "1%00", "1,2", "%2D1", "0.0", "1_000", "%"];

interface HttpContext {
  serverToken: string;
  machine: string;
  unknownMachine: string;
  tickets: string[];
}

class HttpFuzzer {
  constructor(
    private readonly r: Rand,
    private readonly ctx: HttpContext,
  ) {}

  private machine(): string {
    return this.r.chance(0.8) ? this.ctx.machine : this.ctx.unknownMachine;
  }
  private ticket(): string {
    return this.r.chance(0.85) ? this.r.pick(this.ctx.tickets) : "nope";
  }

  /** A path for the route with valid segments. */
  path(route: RouteId, machine = this.machine(), ticket = this.ticket()): string {
    switch (route) {
      case "list":
        return "/api/v1/machines";
      case "machine":
        return `/api/v1/machines/${machine}`;
      case "runner-token":
        return `/api/v1/machines/${machine}/runner-token`;
      case "scripts":
        return `/api/v1/machines/${machine}/scripts`;
      case "script":
        return `/api/v1/machines/${machine}/scripts/${ticket}`;
      case "stream":
        return `/api/v1/machines/${machine}/scripts/${ticket}/stream`;
      case "cancel":
        return `/api/v1/machines/${machine}/scripts/${ticket}/cancel`;
      case "abandon":
        return `/api/v1/machines/${machine}/scripts/${ticket}/abandon`;
      case "runner":
        return `/api/v1/machines/${machine}/runner`;
      case "healthz":
        return "/healthz";
    }
  }

  private auth(): Array<[string, string]> {
    return [["Authorization", `Bearer ${this.ctx.serverToken}`]];
  }
  private json(): Array<[string, string]> {
    return [["Content-Type", "application/json"]];
  }

  /** A valid body for the route: only ever sent after something made it invalid. */
  validBody(route: BodyRoute): Record<string, unknown> {
    switch (route) {
      case "scripts":
        return {
          ticket: `fz-${this.r.int(1e9)}`,
          scriptBody: "echo fuzz",
          shell: "bash",
          arguments: ["a", "b"],
          environment: { A: "1", B: "2" },
          files: [{ name: "f.txt", contents: "eA==" }],
          isolation: "none",
          mutexName: "Fuzz",
          mutexTimeoutMs: 5,
          taskId: "T-1",
          waitMs: 0,
        };
      case "cancel":
        return { abandonAfterMs: 1_000 };
      case "abandon":
        return { killProcess: false };
      case "runner-token":
        return {};
    }
  }

  /** JSON text of the route's body with one value of the wrong type (or an invalid value) somewhere in it. */
  wrongTypeBody(route: BodyRoute): { text: string; note: string } {
    const r = this.r;
    const body = this.validBody(route);
    if (route === "cancel") {
      body.abandonAfterMs = r.pick([-1, 1.5, "1000", null, true, [], {}, 1e300]);
      return { text: JSON.stringify(body), note: `abandonAfterMs=${JSON.stringify(body.abandonAfterMs)}` };
    }
    if (route === "abandon") {
      body.killProcess = r.pick(["yes", 1, 0, null, [], {}, "true"]);
      return { text: JSON.stringify(body), note: `killProcess=${JSON.stringify(body.killProcess)}` };
    }
    if (route === "runner-token") {
      const text = r.pick(["[]", '"x"', "1", "true", "null", "[{}]", '{"machineId":"x"}']);
      return { text, note: `runner-token body ${text}` };
    }
    const wrong: Record<string, unknown[]> = {
      ticket: [1, null, [], {}, "", "has space", "x".repeat(129), "a/b", "é", ".."],
      scriptBody: [1, true, null, [], {}, ["x"], "x\u0000y"],
      shell: ["zsh", "", 1, null, "BASH", ["bash"]],
      arguments: ["a b", 1, null, {}, [1], [null], [["x"]], [{}], ["ok", 2], ["nul\u0000"]],
      environment: [[], "A=1", 1, null, { A: 1 }, { A: null }, { A: ["x"] }, { A: {} }, { A: true }, { "": "x" }, { "A=B": "x" }, { A: "x\u0000y" }],
      files: [
        "f", 1, null, {}, [1], [null], ["f"], [[]],
        [{ name: 1, contents: "" }], [{ name: "a", contents: 1 }], [{ name: null, contents: "" }], [{ name: "a" }], [{ contents: "" }],
        [{ name: "a", contents: "not base64!" }], [{ name: "a", contents: "abc" }], [{ name: "../x", contents: "" }], [{ name: "", contents: "" }],
        [{ name: "a/b", contents: "" }], [{ name: "..", contents: "" }], [{ name: "a", contents: "" }, { name: "a", contents: "" }],
      ],
      isolation: ["partial", "", 0, null, "FULL", true],
      mutexName: ["", 1, null, [], {}, "x".repeat(257)],
      mutexTimeoutMs: [-1, 1.5, "10", null, true, [], {}, 1e300, -0.5],
      taskId: ["", 1, null, [], {}, "x".repeat(257)],
      waitMs: [-1, 30_001, 1.5, "0", null, false],
    };
    if (r.chance(0.08)) {
      delete body.scriptBody;
      return { text: JSON.stringify(body), note: "no scriptBody" };
    }
    const field = r.pick(Object.keys(wrong));
    body[field] = r.pick(wrong[field]!);
    return { text: JSON.stringify(body), note: `${field}=${JSON.stringify(body[field])?.slice(0, 60)}` };
  }

  /** JSON text of the route's body with an unknown member at some depth. */
  unknownFieldBody(route: BodyRoute): { text: string; note: string } {
    const r = this.r;
    const key = r.pick(["extra", "Ticket", "script_body", "scriptbody", "__proto__", "constructor", "toString", "", " ", "x".repeat(300), "é", "waitms"]);
    const value = r.pick(["1", "null", '"x"', "{}", "[]", "true", '{"nested":{"deeper":[1]}}']);
    const base = JSON.stringify(this.validBody(route));
    if (route === "scripts" && r.chance(0.4)) {
      const at = base.indexOf('{"name"');
      return { text: insertMember(base, at, key, value), note: `files[0].${JSON.stringify(key).slice(0, 20)}` };
    }
    return { text: insertMember(base, 0, key, value), note: `unknown ${JSON.stringify(key).slice(0, 20)}` };
  }

  /** A body that is not a JSON document at all (or not one the route can take). */
  badJsonBody(route: BodyRoute): { body: Buffer; note: string } {
    const r = this.r;
    const valid = JSON.stringify(this.validBody(route));
    switch (r.int(4)) {
      case 0: {
        const text = r.pick(["{", "{not json", "[1,2", '{"scriptBody": "x",}', "undefined", "NaN", "{'a':1}", "\u0000", "}{", '{"a":1}{"b":2}', "tru", "nul", r.garbage(r.between(1, 200))]);
        // An empty or blank body is allowed where the body is optional; garbage here is never blank.
        return { body: Buffer.from(text.trim() === "" ? "{" : text), note: `not JSON ${JSON.stringify(text.slice(0, 30))}` };
      }
      case 1: {
        const cut = valid.length > 2 ? r.between(1, valid.length - 1) : 1;
        return { body: Buffer.from(valid.slice(0, cut)), note: `truncated at ${cut}/${valid.length}` };
      }
      case 2: {
        const bad = r.pick([[0xff], [0xfe, 0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xc0, 0xaf]]);
        const insertAt = route === "runner-token" ? 1 : valid.indexOf('"', 2) + 1;
        const text = route === "runner-token" ? '{"x":"?"}' : valid;
        const at = route === "runner-token" ? 6 : insertAt;
        return { body: Buffer.concat([Buffer.from(text.slice(0, at)), Buffer.from(bad), Buffer.from(text.slice(at))]), note: `invalid UTF-8 ${bad.join(",")}` };
      }
      default: {
        const text = r.pick(["[]", '"str"', "1", "null", "true", "[{}]", "-0", "1e999"]);
        return { body: Buffer.from(text), note: `top-level ${text}` };
      }
    }
  }

  /** Any of the malformed bodies above, for a route that takes one. */
  anyBadBody(route: BodyRoute): { body: Buffer; note: string } {
    const kind = this.r.int(3);
    if (kind === 0) return this.badJsonBody(route);
    const { text, note } = kind === 1 || route === "runner-token" ? this.wrongTypeBody(route) : this.unknownFieldBody(route);
    return { body: Buffer.from(text), note };
  }

  /** A request that is malformed in one or more ways; the category says which. */
  generate(category: string): RawRequest {
    const r = this.r;
    switch (category) {
      case "wrong-method": {
        const route = r.pick(ROUTES);
        const method = r.pick(METHODS.filter((m) => !(route.allowed as readonly string[]).includes(m)));
        const withBody = ["POST", "PUT", "PATCH", "DELETE"].includes(method) && r.chance(0.5);
        return {
          method,
          target: this.path(route.id),
          headers: [...this.auth(), ...(withBody ? this.json() : [])],
          body: withBody ? Buffer.from(JSON.stringify({ scriptBody: "true" })) : undefined,
          route: route.id,
          category,
          note: method,
        };
      }
      case "bad-json": {
        const route = r.pick(BODY_ROUTES);
        const { body, note } = this.badJsonBody(route);
        return { method: "POST", target: this.path(route), headers: [...this.auth(), ...this.json()], body, route, category, note };
      }
      case "wrong-type": {
        const route = r.pick(["scripts", "scripts", "scripts", "cancel", "abandon", "runner-token"] as const);
        const { text, note } = this.wrongTypeBody(route);
        return { method: "POST", target: this.path(route), headers: [...this.auth(), ...this.json()], body: Buffer.from(text), route, category, note };
      }
      case "unknown-field": {
        const route = r.pick(["scripts", "scripts", "cancel", "abandon", "runner-token"] as const);
        const { text, note } = this.unknownFieldBody(route);
        return { method: "POST", target: this.path(route), headers: [...this.auth(), ...this.json()], body: Buffer.from(text), route, category, note };
      }
      case "bad-path": {
        const route = r.pick(ROUTES);
        const segment = r.pick(BAD_SEGMENTS);
        let target: string;
        let note: string;
        if (route.id === "list" || route.id === "healthz") {
          target = r.pick(["/api/v1/machines%ZZ", "/api/v1/machine", "/api/v2/machines", "/healthz%00", "/api/v1/%00/machines", "/api/v1/machines/%ZZ/scripts/t/x", `/api/v1/machines/${this.ctx.machine}/nothing`]);
          note = target;
        } else if (["script", "stream", "cancel", "abandon"].includes(route.id) && r.chance(0.5)) {
          const ticket = r.chance(0.15) ? "t".repeat(129) : segment;
          target = this.path(route.id, this.ctx.machine, ticket);
          note = `ticket ${ticket.slice(0, 20)}`;
        } else {
          const machine = r.chance(0.15) ? "m".repeat(65) : segment;
          target = this.path(route.id, machine);
          note = `machine ${machine.slice(0, 20)}`;
        }
        const method = (route.allowed as readonly string[])[0]!;
        const isPost = method === "POST";
        // Nothing else is wrong with these, so the path alone must be refused.
        const body = isPost ? Buffer.from(JSON.stringify(route.id === "scripts" ? this.validBody("scripts") : {})) : undefined;
        return { method, target, headers: [...this.auth(), ...(isPost ? this.json() : [])], body, route: route.id, category, note };
      }
      case "bad-query": {
        const route = r.pick(["script", "script", "stream"] as const);
        const method = route === "script" ? r.pick(["GET", "DELETE"]) : "GET";
        const bad = r.pick(BAD_NUMBERS);
        // DELETE and the stream read only logSequence, so that is the one to break; status reads limit too.
        const breakLimit = route === "script" && method === "GET" && r.chance(0.5);
        const badLimit = r.chance(0.3) ? r.pick(["0", "10001", "00", "99999"]) : bad;
        const query = breakLimit
          ? `${r.chance(0.5) ? "logSequence=0&" : ""}limit=${badLimit}${r.chance(0.3) ? "&limit=5" : ""}`
          : `logSequence=${bad}${r.chance(0.3) ? "&logSequence=0" : ""}${r.chance(0.3) ? "&limit=5" : ""}`;
        return { method, target: `${this.path(route)}?${query}`, headers: this.auth(), route, category, note: `${method} ?${query}` };
      }
      case "bad-auth": {
        const route = r.pick(ROUTES.filter((x) => x.id !== "healthz" && x.id !== "runner"));
        const method = r.pick(route.allowed as readonly string[]);
        const token = this.ctx.serverToken;
        const auth = r.pick<Array<[string, string]>>([
          [],
          [["Authorization", "Bearer"]],
          [["Authorization", "Bearer wrong"]],
          [["Authorization", `Bearer ${token}x`]],
          [["Authorization", `Bearer ${token.slice(1)}`]],
          [["Authorization", `Basic ${Buffer.from(`user:${token}`).toString("base64")}`]],
          [["Authorization", token]],
          [["Authorization", `Bearer ${token} ${token}`]],
          [["Authorization", `Bearer ${token}`], ["Authorization", "Bearer wrong"]],
          [["Authorization", "Bearer wrong"], ["Authorization", `Bearer ${token}`]],
          [["X-Authorization", `Bearer ${token}`]],
        ]);
        // Otherwise a perfectly valid request (on a machine that holds nothing precious for POSTs).
        let body: Buffer | undefined;
        let target = this.path(route.id);
        if (route.id === "scripts") body = Buffer.from(JSON.stringify(this.validBody("scripts")));
        else if (route.id === "cancel" || route.id === "abandon" || route.id === "runner-token") body = Buffer.from("{}");
        if (route.id === "stream") target += "?logSequence=0";
        return { method, target, headers: [...auth, ...(body ? this.json() : [])], body, route: route.id, category, note: auth.map(([, v]) => v.slice(0, 12)).join(" | ") || "none" };
      }
      case "content-type": {
        const route = r.pick(BODY_ROUTES);
        const { body, note } = this.anyBadBody(route);
        const contentType = r.pick<Array<[string, string]>>([
          [],
          [["Content-Type", "text/plain"]],
          [["Content-Type", "application/json"], ["Content-Type", "text/plain"]],
          [["Content-Type", "application/json"], ["Content-Type", "application/json"]],
          [["Content-Type", "application/xml"]],
          [["Content-Type", "multipart/form-data; boundary=x"]],
          [["Content-Type", "application/json; charset=utf-16"]],
          [["Content-Type", ""]],
        ]);
        return {
          method: "POST",
          target: this.path(route),
          headers: [...this.auth(), ...contentType],
          body,
          route,
          category,
          note: `${contentType.map(([, v]) => v).join(" + ") || "no content-type"}; ${note}`,
        };
      }
      case "huge-headers": {
        const inner = this.generate(r.pick(["wrong-method", "bad-json", "wrong-type", "unknown-field", "bad-path", "bad-query"]));
        const kind = r.int(3);
        const extra: Array<[string, string]> =
          kind === 0
            ? [["X-Fill", r.garbage(r.between(8_000, 60_000))]]
            : kind === 1
              ? Array.from({ length: r.between(100, 600) }, (_, i): [string, string] => [`X-H-${i}`, r.garbage(r.between(1, 40))])
              : [["Cookie", Array.from({ length: 400 }, (_, i) => `c${i}=${r.garbage(20).replace(/[;=\s]/g, "x")}`).join("; ")]];
        const size = extra.reduce((sum, [name, value]) => sum + name.length + value.length + 4, 0);
        return { ...inner, headers: [...inner.headers, ...extra], category: `${category}/${inner.category}`, note: `${inner.note}; +${size} header bytes` };
      }
      default:
        throw new Error(`unknown category ${category}`);
    }
  }

  /** Requests over the size limits (a few, as each is megabytes). */
  oversized(): RawRequest[] {
    const body = this.validBody("scripts");
    return [
      { ...body, scriptBody: "#".repeat(1024 * 1024 + 1) },
      { ...body, scriptBody: "é".repeat(512 * 1024 + 1) },
      { ...body, files: [{ name: "big", contents: Buffer.alloc(7 * 1024 * 1024).toString("base64") }] },
      { ...body, arguments: ["x".repeat(9 * 1024 * 1024)] },
    ].map((b, i) => ({
      method: "POST",
      target: this.path("scripts", this.r.chance(0.8) ? this.ctx.machine : this.ctx.unknownMachine),
      headers: [...this.auth(), ...this.json()],
      body: Buffer.from(JSON.stringify(b)),
      route: "scripts",
      category: "oversized",
      note: `oversized #${i}`,
    }));
  }
}

const HTTP_CATEGORIES = ["wrong-method", "bad-json", "wrong-type", "unknown-field", "bad-path", "bad-query", "bad-auth", "content-type", "huge-headers"];

// ------------------------------------------------------------------ malformed runner frames

/** What a fuzzed frame must get: a close with this code, or nothing at all (well-formed report, ignored). */
type FrameExpectation = { close: CloseCode } | "ignored";

interface FrameCase {
  data: string | Buffer;
  binary: boolean;
  expect: FrameExpectation;
  kind: string;
  note: string;
}

interface WsContext {
  /** The running script every fuzz hello claims to continue, its fence, and the next line the object expects. */
  held: { ticket: string; fence: number; next: number };
  completeTicket: string;
  completeFence: number;
  version: string;
  capabilities: string[];
}

const NAMED_CLOSE_CODES = new Set(Object.values(CloseCode).filter((v): v is number => typeof v === "number"));

class FrameFuzzer {
  constructor(
    private readonly r: Rand,
    private readonly ctx: WsContext,
  ) {}

  /** The hello every post-handshake case starts with: it continues the held script, so it changes nothing. */
  hello(runnerId: string): Record<string, unknown> {
    const { held } = this.ctx;
    return {
      type: "hello",
      protocol: 1,
      runnerId,
      version: this.ctx.version,
      capabilities: this.ctx.capabilities,
      inventory: [{ ticket: held.ticket, fence: held.fence, nextSequence: held.next, exited: false }],
    };
  }

  private line(text = "fuzz"): Record<string, unknown> {
    return { source: this.r.pick(["stdout", "stderr", "debug"]), text, occurred: new Date().toISOString() };
  }

  /** A well-formed message of each runner type, for some ticket and fence. */
  private message(type: string, ticket: string, fence: number): Record<string, unknown> {
    switch (type) {
      case "hello":
        return this.hello(`fz-${this.r.int(1e9)}`);
      case "started":
        return { type, ticket, fence, pid: this.r.between(1, 4_000_000) };
      case "output":
        return { type, ticket, fence, sequence: this.r.between(0, 50), lines: [this.line(), this.line()] };
      case "exit":
        return { type, ticket, fence, lineCount: this.r.between(0, 50), outcome: this.outcome() };
      default:
        return { type: "abandoned_exit", ticket, fence, pid: this.r.between(1, 4_000_000) };
    }
  }

  private outcome(): Record<string, unknown> {
    return this.r.pick([
      { kind: "exited", code: 0 },
      { kind: "exited", code: 7 },
      { kind: "signaled", signal: "SIGKILL", number: 9 },
      { kind: "failed", message: "nope" },
      { kind: "cancelled", signals: ["SIGTERM"] },
    ]);
  }

  private anyType(): string {
    return this.r.pick(["hello", "started", "output", "exit", "abandoned_exit"]);
  }

  private someTicket(): { ticket: string; fence: number } {
    const { held } = this.ctx;
    return this.r.pick([
      { ticket: held.ticket, fence: held.fence },
      { ticket: `ghost-${this.r.int(1000)}`, fence: this.r.between(1, 50) },
      { ticket: this.ctx.completeTicket, fence: this.ctx.completeFence },
    ]);
  }

  private text(message: unknown): string {
    return JSON.stringify(message);
  }

  /** One fuzzed frame; `afterHello` says whether the connection completed its handshake first. */
  generate(kind: string, afterHello: boolean): FrameCase {
    const r = this.r;
    const { held } = this.ctx;
    const bad = (data: string | Buffer, note: string, binary = false): FrameCase => ({ data, binary, expect: { close: CloseCode.BadFrame }, kind, note });
    switch (kind) {
      case "not-json": {
        const text = r.pick([
          "", "{", "}", "[", "nul", "undefined", "NaN", "{type:'hello'}", "{'type':'exit'}", '{"type":"output",}', "\u0000", "pingx", "PING",
          "pong", "ping ", "1 2", '{"a":1}{"b":2}', '{"type":"output","sequence":NaN}', '{"type":"exit","fence":Infinity}',
          "1", "true", "null", '"str"', "[]", "[{}]", r.garbage(r.between(1, 300)),
        ]);
        return bad(text, JSON.stringify(text.slice(0, 40)));
      }
      case "binary": {
        const bytes = r.chance(0.3)
          ? Buffer.from(this.text(this.message(this.anyType(), held.ticket, held.fence)))
          : Buffer.from(Array.from({ length: r.between(0, 300) }, () => r.int(256)));
        return bad(bytes, `${bytes.length} binary bytes`, true);
      }
      case "unknown-type": {
        const type = r.pick(["bogus", "HELLO", "welcome", "dispatch", "ack", "exit_ack", "cancel", "ping", "", "exit ", "Output"]);
        const message: Record<string, unknown> = { type, ticket: held.ticket, fence: held.fence };
        if (r.chance(0.2)) delete message.type;
        if (r.chance(0.2)) message.type = r.pick([null, 1, true, ["exit"], { exit: 1 }]);
        return bad(this.text(message), `type ${JSON.stringify(message.type)}`);
      }
      case "wrong-type": {
        const { ticket, fence } = this.someTicket();
        const type = this.anyType();
        const message = this.message(type, ticket, fence);
        const wrongs: Array<[string, (m: any) => void]> = [
          ["ticket", (m) => (m.ticket = r.pick([1, null, "", "has space", "x".repeat(129), ["t"], "a/b"]))],
          ["fence", (m) => (m.fence = r.pick([0, -1, 1.5, "1", null, [], 2 ** 60]))],
          ["type", (m) => (m.type = r.pick([1, null, []]))],
        ];
        if (type === "hello") {
          wrongs.push(
            ["protocol", (m) => (m.protocol = r.pick(["1", 1.5, null, true]))],
            ["runnerId", (m) => (m.runnerId = r.pick([1, "", "x".repeat(65), null]))],
            ["version", (m) => (m.version = r.pick([1, "", "x".repeat(65)]))],
            ["capabilities", (m) => (m.capabilities = r.pick(["script.v1", [1], [""], null, Array.from({ length: 33 }, () => "c")]))],
            ["inventory", (m) => (m.inventory = r.pick([{}, "x", null, [1], [null]]))],
            ["inventory[0].fence", (m) => (m.inventory[0].fence = r.pick([0, -1, "1", 1.5]))],
            ["inventory[0].nextSequence", (m) => (m.inventory[0].nextSequence = r.pick([-1, "2", 1.5, null]))],
            ["inventory[0].exited", (m) => (m.inventory[0].exited = r.pick(["no", 0, null]))],
            ["inventory[0].ticket", (m) => (m.inventory[0].ticket = r.pick(["", 1, "a b"]))],
          );
        } else if (type === "output") {
          wrongs.push(
            ["sequence", (m) => (m.sequence = r.pick([-1, -1000, 1.5, "0", null, 1e300]))],
            ["lines", (m) => (m.lines = r.pick([[], {}, "line", null, [null], ["line"]]))],
            ["lines[0].source", (m) => (m.lines[0].source = r.pick(["stdin", 1, null, ""]))],
            ["lines[0].text", (m) => (m.lines[0].text = r.pick([1, null, ["x"]]))],
            ["lines[0].occurred", (m) => (m.lines[0].occurred = r.pick(["", 1, null, "x".repeat(65)]))],
          );
        } else if (type === "exit") {
          wrongs.push(
            ["lineCount", (m) => (m.lineCount = r.pick([-1, "3", 1.5, null]))],
            ["outcome", (m) => (m.outcome = r.pick([null, "exited", 0, {}, { kind: "zombie" }]))],
            ["outcome.code", (m) => (m.outcome = { kind: "exited", code: r.pick([256, -1, "0", 1.5, null]) })],
            ["outcome.signal", (m) => (m.outcome = { kind: "signaled", signal: r.pick(["", 9, "x".repeat(33)]), number: 9 })],
            ["outcome.number", (m) => (m.outcome = { kind: "signaled", signal: "SIGKILL", number: r.pick([0, 65, "9", -9]) })],
            ["outcome.message", (m) => (m.outcome = { kind: "failed", message: r.pick([1, null, "x".repeat(4097)]) })],
            ["outcome.signals", (m) => (m.outcome = { kind: "cancelled", signals: r.pick(["SIGTERM", [1], [""], Array.from({ length: 9 }, () => "SIGTERM")]) })],
          );
        } else {
          wrongs.push(["pid", (m) => (m.pid = r.pick([0, -1, "1", 1.5, null]))]);
        }
        const [field, mutate] = r.pick(wrongs);
        mutate(message);
        return bad(this.text(message), `${type}.${field}`);
      }
      case "extra-field": {
        const { ticket, fence } = this.someTicket();
        const type = this.anyType();
        const message = this.message(type, ticket, fence);
        const key = r.pick(["extra", "Type", "__proto__", "constructor", "", "seq", "runner_id"]);
        const value = r.pick([1, null, "x", {}, []]);
        const places: Array<[string, (m: any) => Record<string, unknown>]> = [["top", (m) => m]];
        if (type === "output") places.push(["lines[0]", (m) => m.lines[0]]);
        if (type === "exit") places.push(["outcome", (m) => m.outcome]);
        if (type === "hello") places.push(["inventory[0]", (m) => m.inventory[0]]);
        const [where, target] = r.pick(places);
        const holder = target(message);
        Object.defineProperty(holder, key, { value, enumerable: true, configurable: true, writable: true });
        return bad(this.text(message), `${type} ${where}.${JSON.stringify(key)}`);
      }
      case "bad-sequence": {
        const message = this.message("output", held.ticket, held.fence);
        if (r.chance(0.5)) {
          message.sequence = r.pick([-1, -(2 ** 31), -0.5, "NaN", "-1", null]);
          return bad(this.text(message), `sequence ${JSON.stringify(message.sequence)}`);
        }
        const literal = r.pick(["NaN", "-Infinity", "Infinity", "-1e999", "0x10", "+1"]);
        const text = this.text({ ...message, sequence: 0 }).replace('"sequence":0', `"sequence":${literal}`);
        return bad(text, `sequence literal ${literal}`);
      }
      case "second-hello": {
        if (afterHello) {
          const message = r.chance(0.7) ? this.hello(`fz-${r.int(1e9)}`) : { ...this.hello("fz-x"), protocol: r.pick([0, 2, 99]) };
          return { data: this.text(message), binary: false, expect: { close: CloseCode.HandshakeRequired }, kind, note: `hello protocol ${message.protocol}` };
        }
        const protocol = r.pick([0, 3, 99, -1, 2 ** 31]);
        return { data: this.text({ ...this.hello("fz-p"), protocol }), binary: false, expect: { close: CloseCode.UnsupportedProtocol }, kind: "unsupported-protocol", note: `protocol ${protocol}` };
      }
      case "stale-report": {
        // Well-formed reports for a ticket the object does not run under that fence: unknown tickets, the
        // complete script's own old fence, the held script under other fences, and duplicates of stored lines.
        const type = r.pick(["started", "output", "exit", "abandoned_exit"]);
        const choice = r.int(4);
        let message: Record<string, unknown>;
        let note: string;
        if (choice === 0) {
          message = this.message(type, `ghost-${r.int(1000)}`, r.between(1, 10_000));
          note = `${type} for an unknown ticket`;
        } else if (choice === 1) {
          message = this.message(type, this.ctx.completeTicket, this.ctx.completeFence);
          note = `${type} for the complete script's fence`;
        } else if (choice === 2) {
          const fence = r.pick([held.fence + r.between(1, 1000), ...(held.fence > 1 ? [r.between(1, held.fence - 1)] : [])]);
          message = this.message(type, held.ticket, fence);
          note = `${type} for the held script under fence ${fence}`;
        } else {
          const sequence = r.between(0, held.next - 1);
          const count = r.between(1, held.next - sequence);
          message = { type: "output", ticket: held.ticket, fence: held.fence, sequence, lines: Array.from({ length: count }, () => this.line("duplicate")) };
          note = `duplicate output ${sequence}+${count}`;
        }
        if (!afterHello) return { data: this.text(message), binary: false, expect: { close: CloseCode.HandshakeRequired }, kind: "before-hello", note };
        return { data: this.text(message), binary: false, expect: "ignored", kind, note };
      }
      case "gap": {
        const sequence = held.next + r.between(1, 1_000_000);
        const message = { type: "output", ticket: held.ticket, fence: held.fence, sequence, lines: [this.line("gap")] };
        return { data: this.text(message), binary: false, expect: { close: afterHello ? CloseCode.OutOfOrder : CloseCode.HandshakeRequired }, kind, note: `output at ${sequence}` };
      }
      case "exit-early": {
        const lineCount = held.next + r.between(1, 1_000_000);
        const message = { type: "exit", ticket: held.ticket, fence: held.fence, lineCount, outcome: this.outcome() };
        return { data: this.text(message), binary: false, expect: { close: afterHello ? CloseCode.OutOfOrder : CloseCode.HandshakeRequired }, kind, note: `exit with lineCount ${lineCount}` };
      }
      default:
        throw new Error(`unknown frame kind ${kind}`);
    }
  }

  /** A frame over the 16 MiB limit. */
  oversized(): FrameCase {
    const size = 16 * 1024 * 1024 + this.r.between(1, 1000);
    const data = this.r.chance(0.5) ? "x".repeat(size) : `{"type":"output","pad":"${"p".repeat(size)}"}`;
    return { data, binary: false, expect: { close: CloseCode.FrameTooLarge }, kind: "oversized", note: `${size} bytes` };
  }
}

const FRAME_KINDS = ["not-json", "binary", "unknown-type", "wrong-type", "extra-field", "bad-sequence", "second-hello", "stale-report", "gap", "exit-early"];

/** One fuzz case on a fresh socket; returns what went wrong, or null. */
async function runFrameCase(url: string, token: string, c: FrameCase, hello: Record<string, unknown> | null, expectedWelcome: unknown): Promise<string | null> {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, maxPayload: 64 * 1024 * 1024 });
  const messages: any[] = [];
  let closeCode: number | null = null;
  const closed = new Promise<void>((resolve) =>
    ws.on("close", (code) => {
      closeCode = code;
      resolve();
    }),
  );
  ws.on("message", (data) => {
    try {
      messages.push(JSON.parse(data.toString()));
    } catch {
      messages.push({ type: `<${data.toString().slice(0, 20)}>` });
    }
  });
  ws.on("error", () => undefined);
  const opened = await new Promise<string | null>((resolve) => {
    ws.on("open", () => resolve(null));
    ws.on("unexpected-response", (_req, res) => resolve(`upgrade refused with ${res.statusCode}`));
  });
  if (opened) return opened;
  const noop = () => undefined;
  try {
    if (hello) {
      ws.send(JSON.stringify(hello));
      await waitFor(() => messages.some((m) => m.type === "welcome") || closeCode !== null, { timeoutMs: 10_000, what: "the welcome" });
      if (closeCode !== null) return `the hello was answered with close ${closeCode}`;
      const welcome = messages.find((m) => m.type === "welcome");
      if (JSON.stringify(welcome.resume) !== JSON.stringify(expectedWelcome)) return `unexpected resume ${JSON.stringify(welcome.resume)}`;
    }
    ws.send(c.data, { binary: c.binary }, noop);
    // A report of an exit the object never heard of is answered with exit_ack: once it arrives, the fuzzed
    // frame before it was handled without closing the socket.
    if (hello) ws.send(JSON.stringify({ type: "exit", ticket: "sentinel", fence: 999_999, lineCount: 0, outcome: { kind: "exited", code: 0 } }), noop);
    await waitFor(() => closeCode !== null || messages.some((m) => m.type === "exit_ack" && m.ticket === "sentinel"), {
      timeoutMs: 15_000,
      what: "a close or the sentinel's exit_ack",
    });
    const unexpected = messages.filter((m) => !["welcome", "exit_ack", "ack"].includes(m.type));
    if (unexpected.length > 0) return `the control plane sent ${JSON.stringify(unexpected).slice(0, 200)}`;
    if (closeCode === 1006 || closeCode === 1011) return `closed with ${closeCode} (a crash)`;
    if (c.expect === "ignored") {
      if (closeCode !== null) return `expected to be ignored, closed with ${closeCode}`;
      return null;
    }
    if (closeCode === null) return `expected close ${c.expect.close}, but the frame was ignored`;
    if (!NAMED_CLOSE_CODES.has(closeCode)) return `closed with ${closeCode}, not a named close code`;
    if (closeCode !== c.expect.close) return `expected close ${c.expect.close}, got ${closeCode}`;
    return null;
  } catch (error) {
    return String(error);
  } finally {
    if (closeCode === null) ws.close(1000);
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 5_000))]);
    if (closeCode === null) ws.terminate();
  }
}

// ------------------------------------------------------------------ observable state

interface Line {
  sequence: number;
  source: string;
  text: string;
}

/** Everything observable about a machine but the runner's timestamps, plus each named script's full status. */
async function observable(machineId: string, tickets: string[]): Promise<string> {
  const view = (await f.api("GET", `/api/v1/machines/${machineId}`)).body;
  const { connectedAt: _connectedAt, lastSeenAt: _lastSeenAt, ...runner } = view.runner;
  const statuses = [];
  for (const ticket of tickets) statuses.push((await f.api("GET", `/api/v1/machines/${machineId}/scripts/${ticket}`)).body);
  const machines = (await f.api("GET", "/api/v1/machines")).body.machines.map((m: { machineId: string }) => m.machineId).sort();
  return JSON.stringify({ view: { ...view, runner }, statuses, machines }, null, 1);
}

const stdout = (status: { logs: Line[] }) => status.logs.filter((l) => l.source === "stdout").map((l) => l.text);

// ------------------------------------------------------------------ the tests

describe("fuzzing the HTTP API", () => {
  it("answers at least 500 malformed requests on every route with a 4xx and the error shape, and changes nothing", async () => {
    printSeedOnFailure();
    const m = f.machine("fz");
    const unknownMachine = f.machine("never");
    await f.runner(m);
    const release = join(f.scratch, `${m}.release`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "done", scriptBody: "echo done-out; echo done-err >&2; exit 3", waitMs: 20_000 });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "hold", scriptBody: `echo hold-1; while [ ! -f '${release}' ]; do sleep 0.05; done` });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "wait", scriptBody: "echo wait-ran", taskId: "Task-9" });
    await waitFor(async () => stdout((await f.api("GET", `/api/v1/machines/${m}/scripts/hold`)).body).includes("hold-1"), { what: "the holder's line" });
    const tickets = ["done", "hold", "wait"];
    const before = await observable(m, tickets);
    expect(JSON.parse(before).view.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["hold"], waiting: ["wait"] }]);

    const r = new Rand(SEED);
    const fuzzer = new HttpFuzzer(r, { serverToken: f.cp.serverToken, machine: m, unknownMachine, tickets });
    const requests: RawRequest[] = [];
    for (let i = 0; i < 560; i += 1) requests.push(fuzzer.generate(HTTP_CATEGORIES[i % HTTP_CATEGORIES.length]!));
    requests.push(...fuzzer.oversized());
    expect(new Set(requests.map((q) => q.route))).toEqual(new Set(ROUTES.map((x) => x.id)));

    const port = Number(new URL(f.cp.url).port);
    const failures: string[] = [];
    let index = 0;
    const worker = async () => {
      for (;;) {
        const i = index;
        index += 1;
        const request = requests[i];
        if (!request) return;
        const label = `#${i} ${request.category} ${request.method} ${request.target.slice(0, 100)} (${request.note})`;
        try {
          const problem = errorShapeProblem(await sendRaw(port, request));
          if (problem) failures.push(`${label}: ${problem}`);
        } catch (error) {
          failures.push(`${label}: ${String(error)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: 6 }, worker));
    expect(failures, `seed ${SEED}: ${failures.length} of ${requests.length} requests got a wrong answer`).toEqual([]);

    expect(await observable(m, tickets), `seed ${SEED}: the machine's state changed`).toBe(before);
    expect((await f.api("GET", `/api/v1/machines/${unknownMachine}`)).status).toBe(404);

    writeFileSync(release, "");
    expect((await f.completed(m, "hold")).exitCode).toBe(0);
    expect(stdout(await f.completed(m, "wait"))).toEqual(["wait-ran"]);
  }, 120_000);

  it("refuses a start request whose body is not declared as JSON, and accepts application/json with a charset", async () => {
    const m = f.machine("ct");
    await f.register(m);
    const port = Number(new URL(f.cp.url).port);
    const auth: [string, string] = ["Authorization", `Bearer ${f.cp.serverToken}`];
    const cases: Array<Array<[string, string]>> = [
      [],
      [["Content-Type", "text/plain"]],
      [["Content-Type", "application/x-www-form-urlencoded"]],
      [["Content-Type", "application/json"], ["Content-Type", "text/plain"]],
    ];
    const answers = [];
    for (const [i, headers] of cases.entries()) {
      const body = Buffer.from(JSON.stringify({ ticket: `ct-${i}`, scriptBody: "true" }));
      const response = await sendRaw(port, { method: "POST", target: `/api/v1/machines/${m}/scripts`, headers: [auth, ...headers], body, route: "scripts", category: "content-type", note: "" });
      answers.push({ contentType: headers.map(([, v]) => v).join(" + ") || "(none)", status: response.status, problem: errorShapeProblem(response) });
    }
    expect(answers.filter((a) => a.problem !== null)).toEqual([]);
    expect((await f.api("GET", `/api/v1/machines/${m}`)).body.scripts).toEqual([]);
    const charset = await sendRaw(port, {
      method: "POST",
      target: `/api/v1/machines/${m}/scripts`,
      headers: [auth, ["Content-Type", "application/json; charset=utf-8"]],
      body: Buffer.from(JSON.stringify({ ticket: "ct-ok", scriptBody: "true" })),
      route: "scripts",
      category: "content-type",
      note: "",
    });
    expect(charset.status).toBe(201);
  });

  it("answers a header block over the runtime's limit with a 4xx, without hanging", async () => {
    const port = Number(new URL(f.cp.url).port);
    const response = await sendRaw(port, {
      method: "GET",
      target: "/api/v1/machines",
      headers: [["Authorization", `Bearer ${f.cp.serverToken}`], ["X-Fill", "a".repeat(300_000)]],
      route: "list",
      category: "huge-headers",
      note: "",
    });
    // workerd refuses it (431) before the Worker runs, so the body is the runtime's own, not the API's error shape.
    expect(response.status).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
  });
});

describe("fuzzing the runner protocol", () => {
  it("closes at least 500 malformed frames on fresh sockets with their named close codes, ignores stale reports, and changes nothing", async () => {
    printSeedOnFailure();
    const m = f.machine("fzws");
    const token = await f.register(m);

    // A complete script with real output, from a real runner that then goes away.
    const real = await f.runner(m, { token });
    const done = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "done", scriptBody: "echo out-1; echo err-1 >&2; echo out-2", waitMs: 20_000 });
    expect(done.body).toMatchObject({ state: "complete", exitCode: 0 });
    const runnerView = (await f.api("GET", `/api/v1/machines/${m}`)).body.runner;
    await real.stop();
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the real runner to be gone" });

    // A held script running on a scripted connection (so its fence is known), and a script waiting behind it.
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "held", scriptBody: "echo never-runs-here" });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "queued", scriptBody: "echo queued-ran" });
    const url = `${f.cp.url.replace("http", "ws")}/api/v1/machines/${m}/runner`;
    const setup = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } });
    const setupMessages: any[] = [];
    setup.on("message", (data) => setupMessages.push(JSON.parse(data.toString())));
    const setupClosed = new Promise<void>((resolve) => setup.on("close", () => resolve()));
    await new Promise<void>((resolve) => setup.on("open", () => resolve()));
    setup.send(JSON.stringify({ type: "hello", protocol: 1, runnerId: "fuzz-setup", version: runnerView.version, capabilities: runnerView.capabilities, inventory: [] }));
    const dispatch = await waitFor(() => setupMessages.find((msg) => msg.type === "dispatch" && msg.ticket === "held"), { what: "the held script's dispatch" });
    const occurred = new Date().toISOString();
    setup.send(
      JSON.stringify({
        type: "output",
        ticket: "held",
        fence: dispatch.fence,
        sequence: 0,
        lines: [
          { source: "stdout", text: "held-1", occurred },
          { source: "stderr", text: "held-2", occurred },
        ],
      }),
    );
    await waitFor(() => setupMessages.some((msg) => msg.type === "ack" && msg.ticket === "held" && msg.nextSequence === 2), { what: "the held lines' ack" });
    setup.close(1000);
    await setupClosed;
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the setup connection to be gone" });

    const tickets = ["done", "held", "queued"];
    const before = await observable(m, tickets);
    const parsedBefore = JSON.parse(before);
    expect(parsedBefore.view.mutexes).toEqual([{ name: "RunningScript", mode: "exclusive", holders: ["held"], waiting: ["queued"] }]);
    expect(parsedBefore.statuses.map((s: { state: string }) => s.state)).toEqual(["complete", "running", "pending"]);

    const ctx: WsContext = {
      held: { ticket: "held", fence: dispatch.fence, next: 2 },
      completeTicket: "done",
      completeFence: 1,
      version: runnerView.version,
      capabilities: runnerView.capabilities,
    };
    expect(dispatch.fence).toBeGreaterThan(ctx.completeFence);
    const r = new Rand(SEED + 1);
    const fuzzer = new FrameFuzzer(r, ctx);
    const expectedResume = [{ ticket: "held", fence: dispatch.fence, action: "continue", nextSequence: 2 }];
    const cases: Array<{ c: FrameCase; afterHello: boolean }> = [];
    for (let i = 0; i < 520; i += 1) {
      const afterHello = i % 2 === 0;
      cases.push({ c: fuzzer.generate(FRAME_KINDS[Math.floor(i / 2) % FRAME_KINDS.length]!, afterHello), afterHello });
    }
    for (const afterHello of [true, false, true]) cases.push({ c: fuzzer.oversized(), afterHello });

    const failures: string[] = [];
    const outcomes = new Map<string, number>();
    for (const [i, { c, afterHello }] of cases.entries()) {
      const hello = afterHello ? fuzzer.hello(`fz-${i}`) : null;
      const problem = await runFrameCase(url, token, c, hello, expectedResume);
      const key = `${c.kind}→${c.expect === "ignored" ? "ignored" : c.expect.close}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      if (problem) failures.push(`#${i} ${afterHello ? "after hello" : "first frame"} ${c.kind} (${c.note}): ${problem}`);
    }
    expect(failures, `seed ${SEED + 1}: ${failures.length} of ${cases.length} frames got a wrong answer`).toEqual([]);
    // Every kind of violation, and the ignored stale reports, were exercised.
    for (const code of [CloseCode.BadFrame, CloseCode.HandshakeRequired, CloseCode.OutOfOrder, CloseCode.FrameTooLarge, CloseCode.UnsupportedProtocol]) {
      expect([...outcomes.keys()].some((k) => k.endsWith(`→${code}`)), `close code ${code} exercised`).toBe(true);
    }
    expect(outcomes.get("stale-report→ignored") ?? 0).toBeGreaterThan(10);

    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the last fuzz connection to be gone" });
    expect(await observable(m, tickets), `seed ${SEED + 1}: the machine's state changed`).toBe(before);

    // A real runner still connects and runs scripts: the held dispatch belonged to another runner process (-46).
    await f.runner(m, { token });
    expect((await f.completed(m, "held")).exitCode).toBe(-46);
    expect(stdout(await f.completed(m, "queued"))).toEqual(["queued-ran"]);
    const after = await f.api("POST", `/api/v1/machines/${m}/scripts`, { scriptBody: "echo after-fuzz", waitMs: 20_000 });
    expect(after.body).toMatchObject({ state: "complete", exitCode: 0 });
    expect(stdout(after.body)).toEqual(["after-fuzz"]);
  }, 120_000);
});
