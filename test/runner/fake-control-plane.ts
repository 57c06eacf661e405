/**
 * A fake control plane for runner tests: a real `ws` server on 127.0.0.1 that speaks the protocol, a runner
 * started against it, and waiting helpers (observable conditions with deadlines, never bare sleeps).
 */
import { createServer, type IncomingMessage, type Server } from "node:http";
import { readFileSync, readdirSync } from "node:fs";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket } from "ws";
import type { ScriptPayload } from "../../shared/api.js";
import {
  ControlMessage,
  PROTOCOL_VERSION,
  parseRunnerMessage,
  type OutputLine,
  type RunnerMessage,
} from "../../shared/protocol.js";
import { startRunner, type RunnerDependencies, type RunnerHandle, type RunnerInput } from "../../runner/index.js";

// ---------------------------------------------------------------------------------------------------
// waiting helpers: observable conditions with deadlines

/** Polls `probe` until it returns a value (not undefined or false) or the deadline passes. */
export async function waitFor<T>(probe: () => T | undefined | false, what: string, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Resolves like `promise`, or fails once `timeoutMs` passed. */
export async function within<T>(promise: Promise<T>, what: string, timeoutMs = 5_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** True while the process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** SIGKILLs a process group; a group that is gone is fine. */
export function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** SIGKILLs one process; a process that is gone is fine. */
export function killPid(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** Every live pid whose environment holds exactly `name=value` (the test's own view, independent of the runner). */
export function pidsWithEnvironment(name: string, value: string): number[] {
  const wanted = `${name}=${value}`;
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const environ = readFileSync(`/proc/${entry}/environ`).toString("utf8").split("\0");
      if (environ.includes(wanted) && isAlive(Number(entry))) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

// ---------------------------------------------------------------------------------------------------
// the fake control plane

type Welcome = Extract<ControlMessage, { type: "welcome" }>;

/** A runner message of one type. */
export type Frame<T extends RunnerMessage["type"]> = Extract<RunnerMessage, { type: T }>;

/** A type guard for runner messages of one type. */
export function isType<T extends RunnerMessage["type"]>(type: T) {
  return (message: RunnerMessage): message is Frame<T> => message.type === type;
}

/** One runner connection as the fake control plane sees it. */
export class FakeConnection {
  /** Every valid frame, in arrival order. */
  readonly frames: RunnerMessage[] = [];
  /** Frames that failed the runner-message schema (there should be none). */
  readonly invalid: string[] = [];
  pings = 0;
  closed: { code: number; reason: string } | undefined;

  constructor(
    readonly ws: WebSocket,
    readonly request: IncomingMessage,
    private readonly plane: FakeControlPlane,
  ) {
    ws.on("message", (data, isBinary) => {
      const text = isBinary ? "<binary>" : data.toString();
      if (text === "ping") {
        this.pings++;
        if (this.plane.answerPings) ws.send("pong");
        return;
      }
      const parsed = parseRunnerMessage(text);
      if (!parsed.ok) {
        this.invalid.push(text);
        return;
      }
      this.frames.push(parsed.message);
      if (parsed.message.type === "hello" && this.plane.autoWelcome) {
        // A control plane that has everything the runner did not see acknowledged: continue each script.
        this.welcome(parsed.message.inventory.map((item) => ({ ticket: item.ticket, fence: item.fence, action: "continue", nextSequence: item.nextSequence })));
      }
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
    });
  }

  /** Sends a control message, checked against the schema first. */
  send(message: ControlMessage): void {
    this.ws.send(JSON.stringify(ControlMessage.parse(message)));
  }

  /** Answers the hello; `watch` lists abandoned processes the runner should report on. */
  welcome(resume: Welcome["resume"] = [], watch: Welcome["watch"] = []): void {
    this.send({ type: "welcome", protocol: PROTOCOL_VERSION, machineId: "m1", connectionId: "c1", heartbeatMs: 10_000, resume, watch });
  }

  dispatch(ticket: string, fence: number, scriptBody: string, extra: Partial<ScriptPayload> = {}): void {
    this.send({
      type: "dispatch",
      ticket,
      fence,
      script: { scriptBody, shell: "bash", arguments: [], environment: {}, files: [], ...extra },
    });
  }

  /** The first frame of a type that matches, waiting for it. */
  frame<T extends RunnerMessage["type"]>(type: T, match: (frame: Frame<T>) => boolean = () => true, timeoutMs = 5_000): Promise<Frame<T>> {
    return waitFor(() => this.frames.filter(isType(type)).find(match), `a ${type} frame`, timeoutMs);
  }

  all<T extends RunnerMessage["type"]>(type: T, ticket?: string): Array<Frame<T>> {
    return this.frames.filter(isType(type)).filter((frame) => ticket === undefined || !("ticket" in frame) || frame.ticket === ticket);
  }

  /** Every output line of a ticket as `sequence:source:text`, in arrival order. */
  lines(ticket: string): string[] {
    return this.all("output", ticket).flatMap((frame) => frame.lines.map((line, i) => describeLine(frame.sequence + i, line)));
  }

  indexOf(frame: RunnerMessage): number {
    return this.frames.indexOf(frame);
  }
}

/** A line as `sequence:source:text`. */
export function describeLine(sequence: number, line: OutputLine): string {
  return `${sequence}:${line.source}:${line.text}`;
}

/** An HTTP server that upgrades the runner path, or refuses it with a status when told to. */
export class FakeControlPlane {
  readonly connections: FakeConnection[] = [];
  readonly upgrades: Array<{ at: number; path: string; authorization: string | undefined }> = [];
  /** Statuses to refuse the next upgrades with, one each. */
  readonly refuse: number[] = [];
  autoWelcome = true;
  answerPings = true;
  private readonly server: Server = createServer((_, response) => response.writeHead(404).end());
  private readonly wss = new WebSocketServer({ noServer: true });
  private port = 0;

  async start(): Promise<void> {
    this.server.on("upgrade", (request: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(request, socket, head));
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("no port");
    this.port = address.port;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The n-th connection (1-based), waiting for it. */
  connection(n: number, timeoutMs = 5_000): Promise<FakeConnection> {
    return waitFor(() => this.connections[n - 1], `connection #${n}`, timeoutMs);
  }

  /** Every pid any connection was told about. */
  pids(): number[] {
    return this.connections.flatMap((connection) => connection.all("started").map((frame) => frame.pid));
  }

  async stop(): Promise<void> {
    for (const client of this.wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.upgrades.push({ at: Date.now(), path: request.url ?? "", authorization: request.headers.authorization });
    const status = this.refuse.shift();
    if (status !== undefined) {
      const body = JSON.stringify({ error: { code: "unauthorized", message: "no" } });
      socket.end(`HTTP/1.1 ${status} Refused\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
      return;
    }
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      this.connections.push(new FakeConnection(ws, request, this));
    });
  }
}


// ---------------------------------------------------------------------------------------------------
// a runner against the fake control plane

/** A runner started for a test, with what it logged. */
export interface TestRunner {
  handle: RunnerHandle;
  logs: string[];
  fatal: string[];
}

/** Starts a runner against `plane` with short test timings; `overrides` and `dependencies` adjust it. */
export async function startTestRunner(
  plane: FakeControlPlane,
  workDir: string,
  overrides: Partial<RunnerInput> = {},
  dependencies: RunnerDependencies = {},
): Promise<TestRunner> {
  const logs: string[] = [];
  const fatal: string[] = [];
  const handle = await startRunner(
    {
      url: plane.url,
      machineId: "m1",
      token: "runner-token",
      workDir,
      version: "9.9.9",
      killGraceMs: 300,
      heartbeatMs: 1_000,
      deadAfterMs: 5_000,
      pipeDrainMs: 200,
      reconnectBaseMs: 10,
      reconnectMaxMs: 100,
      logger: {
        info: (message) => logs.push(`info: ${message}`),
        warn: (message) => logs.push(`warn: ${message}`),
        error: (message) => logs.push(`error: ${message}`),
      },
      onFatal: (message) => fatal.push(message),
      ...overrides,
    },
    dependencies,
  );
  return { handle, logs, fatal };
}
