/**
 * A fake control plane for runner tests: a real `ws` server on 127.0.0.1 that speaks the protocol, a runner
 * started against it, tagged scripts whose processes the test can find by itself, and waiting helpers
 * (observable conditions with deadlines, never bare sleeps).
 */
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, readdirSync, rmdirSync } from "node:fs";
import { basename, join } from "node:path";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import type { ScriptPayload } from "../../shared/api.js";
import {
  ControlMessage,
  PROTOCOL_VERSION,
  outputLines,
  parseRunnerMessage,
  type OutputLine,
  type RunnerMessage,
} from "../../shared/protocol.js";
import { startRunner, type RunnerDependencies, type RunnerHandle, type RunnerInput } from "../../runner/index.js";
import { CgroupTree } from "../../runner/containment.js";
import type { RunRecord } from "../../runner/run-folder.js";
import { closeServer, listenLocally } from "../helpers/http-server.js";
import { bytesWritten, isBlockedOnWrite, killGroup, killPid, pidsWithEnvironment, removeDir, tempDir } from "../helpers/processes.js";

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

/**
 * Waits until `pid` is blocked: asleep in a write to its output, having written nothing more for `stableMs` (a writer
 * that only waits for a moment while its reader catches up does not count). Returns the bytes it had written.
 */
export async function waitForBlockedWriter(pid: number, what: string, timeoutMs = 30_000, stableMs = 1_000): Promise<number> {
  let last = -1;
  let since = Date.now();
  return waitFor(
    () => {
      const written = bytesWritten(pid);
      if (written !== last || !isBlockedOnWrite(pid)) {
        last = written;
        since = Date.now();
        return undefined;
      }
      return Date.now() - since >= stableMs ? written : undefined;
    },
    what,
    timeoutMs,
  );
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

/** Keeps at most this many problems per ledger: one is enough to fail a test, millions would exhaust memory. */
const MAX_VIOLATIONS = 20;

/**
 * What the fake control plane stored of one dispatch, checked strictly: every output frame must start exactly
 * where the stored lines end (a gap or a single repeated line is a violation), as must the exit's `lineCount`.
 * Only frames of the current connection (the latest hello) count, like the real control plane's fencing.
 */
export class OutputLedger {
  /** How many lines are stored: the next expected sequence. */
  next = 0;
  /** Output frames stored. */
  frames = 0;
  /** Every exit received on a current connection. */
  readonly exits: Array<Frame<"exit">> = [];
  readonly violations: string[] = [];

  constructor(
    readonly ticket: string,
    readonly fence: number,
  ) {}

  violate(problem: string): void {
    if (this.violations.length < MAX_VIOLATIONS) this.violations.push(problem);
  }
}

/** One runner connection as the fake control plane sees it. */
export class FakeConnection {
  /** Every valid frame, in arrival order (output frames only while `plane.keepOutputFrames`). */
  readonly frames: RunnerMessage[] = [];
  /** Frames that failed the runner-message schema (there should be none). */
  readonly invalid: string[] = [];
  pings = 0;
  /** Output frames received, kept or not. */
  outputFrames = 0;
  closed: { code: number; reason: string } | undefined;
  /** Half-open: this side neither handles nor answers anything any more, and closes nothing. */
  frozen = false;
  /** Close codes this connection was refused with (a version 1 control plane's 4426 or 4400). */
  readonly refused: number[] = [];

  constructor(
    readonly ws: WebSocket,
    readonly request: IncomingMessage,
    private readonly plane: FakeControlPlane,
    /** The TCP socket under `ws`: pausing it stops reading, so the runner's send buffer fills. */
    readonly tcp: Duplex,
  ) {
    ws.on("message", (data, isBinary) => {
      if (this.frozen) return;
      const text = isBinary ? "<binary>" : data.toString();
      if (text === "ping") {
        this.pings++;
        if (this.plane.answerPings) ws.send("pong");
        return;
      }
      // Binary frames are output (`encodeOutputFrame`); the control plane parses them the same way.
      const parsed = parseRunnerMessage(isBinary ? binaryData(data) : text);
      if (!parsed.ok) {
        this.invalid.push(isBinary ? `<binary: ${parsed.reason}>` : text);
        return;
      }
      const message = parsed.message;
      if (message.type === "output") this.outputFrames++;
      if (message.type !== "output" || this.plane.keepOutputFrames) this.frames.push(message);
      const refusal = this.plane.refusalOf(message);
      if (refusal !== undefined) {
        // As a control plane of an older version does: the frame is kept above for the test, but changes nothing.
        this.refused.push(refusal);
        this.cut(refusal);
        return;
      }
      if (message.type === "hello") this.plane.current = this;
      else if (this.plane.current === this) this.plane.record(this, message);
      if (message.type === "hello" && this.plane.autoWelcome) {
        // By default a control plane that has everything the runner did not see acknowledged; with
        // `welcomeFromLedger`, exactly what this fake stored.
        this.welcome(
          message.inventory.map((item) => ({
            ticket: item.ticket,
            fence: item.fence,
            action: "continue",
            nextSequence: this.plane.welcomeFromLedger ? (this.plane.ledgers.get(`${item.fence}:${item.ticket}`)?.next ?? 0) : item.nextSequence,
          })),
        );
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

  /** Answers the hello (in the version it offered, or the newest this plane speaks); `watch` lists abandoned processes to report on. */
  welcome(resume: Welcome["resume"] = [], watch: Welcome["watch"] = []): void {
    const offered = this.frames.find(isType("hello"))?.protocol ?? PROTOCOL_VERSION;
    const protocol = Math.min(offered, Math.max(...this.plane.protocols));
    this.send({ type: "welcome", protocol, machineId: "m1", connectionId: "c1", heartbeatMs: 10_000, resume, watch });
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
    return this.all("output", ticket).flatMap((frame) => outputLines(frame).map((line, i) => describeLine(frame.sequence + i, line)));
  }

  /** A round trip through another script (`true`): every frame sent before it has been handled by the runner. */
  async roundTrip(ticket: string, fence: number): Promise<void> {
    this.dispatch(ticket, fence, "true");
    await this.frame("exit", (frame) => frame.ticket === ticket);
  }

  indexOf(frame: RunnerMessage): number {
    return this.frames.indexOf(frame);
  }

  /** Goes silent without closing (a half-open connection): no pong, no ack, nothing handled. */
  freeze(): void {
    this.frozen = true;
  }

  /**
   * Ends this connection from the control plane's side: `terminate` drops the TCP connection (the runner sees
   * 1006), a code sends a close frame. Like the real control plane, nothing more it receives is stored.
   */
  cut(how: "terminate" | number): void {
    if (this.plane.current === this) this.plane.current = undefined;
    this.frozen = true;
    if (how === "terminate") this.ws.terminate();
    else this.ws.close(how, "cut by the test");
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
  /** False: upgrades are refused with 503 (the control plane is unreachable) until it is true again. */
  acceptUpgrades = true;
  /** False: output frames are checked and counted but not kept in `frames` (for tests that move megabytes). */
  keepOutputFrames = true;
  /** Acknowledge every output frame with the ledger's next sequence, and every complete exit with exit_ack. */
  autoAck = false;
  /** The automatic welcome names the ledger's next sequence instead of the runner's own. */
  welcomeFromLedger = false;
  /** The protocol versions this plane speaks; a hello offering another is refused with 4426, as today's control plane does. */
  protocols: number[] = [1, 2];
  /**
   * Like a control plane that knows only version 1: a hello or a message with a version 2 field or type (`killGraceMs`,
   * `reattached`, `startTime`/`bootId` in `started`, a `lost` outcome, `draining`) is refused with 4400.
   */
  strictVersion1 = false;
  /** Checks one stored line; returns a problem, or undefined when the line is as expected. */
  checkLine: ((ticket: string, sequence: number, line: OutputLine) => string | undefined) | undefined;
  /** Called after each stored output frame (tests cut connections from here, in the middle of a stream). */
  onStored: ((connection: FakeConnection, ledger: OutputLedger) => void) | undefined;
  /** What this fake stored per dispatch, by `fence:ticket`. */
  readonly ledgers = new Map<string, OutputLedger>();
  /** The connection of the latest hello: only its frames are stored. */
  current: FakeConnection | undefined;
  /** Runners started against this plane with startTestRunner; `stopRunners` stops them. */
  readonly runners: RunnerHandle[] = [];
  private readonly server: Server = createServer((_, response) => response.writeHead(404).end());
  private readonly wss = new WebSocketServer({ noServer: true });
  private baseUrl = "";

  async start(): Promise<void> {
    this.server.on("upgrade", (request: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(request, socket, head));
    this.baseUrl = await listenLocally(this.server);
  }

  /** `http://127.0.0.1:<port>`, once started. */
  get url(): string {
    return this.baseUrl;
  }

  /** The n-th connection (1-based), waiting for it. */
  connection(n: number, timeoutMs = 5_000): Promise<FakeConnection> {
    return waitFor(() => this.connections[n - 1], `connection #${n}`, timeoutMs);
  }

  /** The ledger of a dispatch (created empty when unknown). */
  ledger(ticket: string, fence: number): OutputLedger {
    const key = `${fence}:${ticket}`;
    let ledger = this.ledgers.get(key);
    if (ledger === undefined) {
      ledger = new OutputLedger(ticket, fence);
      this.ledgers.set(key, ledger);
    }
    return ledger;
  }

  /** Makes this plane one of version 1 only (today's control plane): it refuses a newer hello and any version 2 field. */
  speakVersion1Only(): void {
    this.protocols = [1];
    this.strictVersion1 = true;
  }

  /** The close code a frame is refused with, by what this plane's versions allow; undefined when it is allowed. */
  refusalOf(message: RunnerMessage): number | undefined {
    if (message.type === "hello" && !this.protocols.includes(message.protocol)) return 4426;
    if (!this.strictVersion1) return undefined;
    switch (message.type) {
      case "hello":
        return message.killGraceMs !== undefined || message.inventory.some((item) => item.reattached !== undefined) ? 4400 : undefined;
      case "started":
        return message.startTime !== undefined || message.bootId !== undefined ? 4400 : undefined;
      case "exit":
        return message.outcome.kind === "lost" ? 4400 : undefined;
      case "draining":
        return 4400;
      default:
        return undefined;
    }
  }

  /** Stores a frame of the current connection in its ledger, strictly in order; acknowledges when `autoAck`. */
  record(connection: FakeConnection, message: RunnerMessage): void {
    if (message.type === "output") {
      const ledger = this.ledger(message.ticket, message.fence);
      if (message.sequence !== ledger.next) {
        ledger.violate(`output for ${message.ticket} starts at ${message.sequence}, expected ${ledger.next}`);
        return;
      }
      const lines = outputLines(message);
      if (this.checkLine !== undefined) {
        for (let i = 0; i < lines.length; i++) {
          const problem = this.checkLine(message.ticket, message.sequence + i, lines[i]!);
          if (problem !== undefined) ledger.violate(problem);
        }
      }
      ledger.next += lines.length;
      ledger.frames++;
      if (this.autoAck) connection.send({ type: "ack", ticket: message.ticket, fence: message.fence, nextSequence: ledger.next });
      this.onStored?.(connection, ledger);
    } else if (message.type === "exit") {
      const ledger = this.ledger(message.ticket, message.fence);
      ledger.exits.push(message);
      if (message.lineCount !== ledger.next) ledger.violate(`exit of ${message.ticket} says ${message.lineCount} lines, ${ledger.next} stored`);
      else if (this.autoAck) connection.send({ type: "exit_ack", ticket: message.ticket, fence: message.fence });
    }
  }

  /** Every pid any connection was told about. */
  pids(): number[] {
    return this.connections.flatMap((connection) => connection.all("started").map((frame) => frame.pid));
  }

  /**
   * The safety net after a test: stops every runner started against this plane, then SIGKILLs, by pid, the
   * process group of every script a runner said it started.
   */
  async stopRunners(): Promise<void> {
    for (const runner of this.runners.splice(0)) await runner.stop();
    for (const pid of this.pids()) killGroup(pid);
  }

  async stop(): Promise<void> {
    for (const client of this.wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    await closeServer(this.server);
  }

  private onUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.upgrades.push({ at: Date.now(), path: request.url ?? "", authorization: request.headers.authorization });
    const status = this.refuse.shift() ?? (this.acceptUpgrades ? undefined : 503);
    if (status !== undefined) {
      const body = JSON.stringify({ error: { code: "unauthorized", message: "no" } });
      socket.end(`HTTP/1.1 ${status} Refused\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
      return;
    }
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      this.connections.push(new FakeConnection(ws, request, this, socket));
    });
  }
}


// ---------------------------------------------------------------------------------------------------
// a runner against the fake control plane

/** What each runner test starts from: a fake control plane of its own and an empty work folder. */
export interface RunnerTestSetup {
  plane: FakeControlPlane;
  workDir: string;
}

/** Starts a fresh fake control plane and makes a work folder `tendril-<name>-XXXXXX` (for a beforeEach). */
export async function setUpRunnerTest(name: string): Promise<RunnerTestSetup> {
  const plane = new FakeControlPlane();
  await plane.start();
  return { plane, workDir: await tempDir(name) };
}

/**
 * The safety net after a runner test, by pid (for an afterEach): stops the runners started against the plane and
 * kills their scripts' process groups (and, given a tag, every process that carries it), then stops the plane
 * and removes the work folder.
 */
export async function tearDownRunnerTest({ plane, workDir }: RunnerTestSetup, tag?: ScriptTag): Promise<void> {
  await plane.stopRunners();
  await tag?.killAll();
  await plane.stop();
  await removeDir(workDir);
  await removeLeftCgroups();
}

/** This test process's folder of script cgroups, where its runners make them (none where cgroups are not usable). */
const cgroupFolder = (() => {
  const tree = CgroupTree.detect(() => undefined);
  return typeof tree === "string" ? undefined : tree.own;
})();

/**
 * Removes the cgroups of scripts a test killed after their runner had stopped (a runner leaves a cgroup that still
 * holds a process to its successor), once they are empty; best effort, within a few seconds.
 */
async function removeLeftCgroups(): Promise<void> {
  if (cgroupFolder === undefined || !existsSync(cgroupFolder)) return;
  const folder = cgroupFolder;
  const removeAll = () => {
    for (const name of readdirSync(folder).filter((entry) => entry.startsWith("s-"))) {
      try {
        rmdirSync(join(folder, name));
      } catch {
        // Still holds a process that is dying: tried again.
      }
    }
    try {
      rmdirSync(folder);
      return true;
    } catch {
      return false;
    }
  };
  await waitFor(removeAll, "the test's cgroups to be removed").catch(() => undefined);
}

/** A runner started for a test, with what it logged. */
export interface TestRunner {
  handle: RunnerHandle;
  logs: string[];
  fatal: string[];
}

/** Starts a runner against `plane` with short test timings (stopped by `plane.stopRunners()`); `overrides` and `dependencies` adjust it. */
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
  plane.runners.push(handle);
  return { handle, logs, fatal };
}

/**
 * Starts a runner against `plane` and waits until its first connection is welcomed: by the plane, or, while
 * `plane.autoWelcome` is off, by this function with nothing to resume (the test answers any later hello itself).
 */
export async function startConnectedRunner(
  plane: FakeControlPlane,
  workDir: string,
  overrides: Partial<RunnerInput> = {},
  dependencies: RunnerDependencies = {},
): Promise<TestRunner & { connection: FakeConnection }> {
  const runner = await startTestRunner(plane, workDir, overrides, dependencies);
  const connection = await plane.connection(1);
  if (!plane.autoWelcome) {
    await connection.frame("hello");
    connection.welcome();
  }
  await waitFor(() => runner.handle.connected, "the welcome");
  return { ...runner, connection };
}

// ---------------------------------------------------------------------------------------------------
// tagged scripts: processes a test can find by itself

/** Every process of a tagged script carries this variable in its environment. */
const TAG_VARIABLE = "TENDRIL_TEST_TAG";

/**
 * A random tag for one test's scripts: every process they start carries it in its environment, so that the test
 * can find (and kill) them itself, by pid, even those that left the script's process group.
 */
export class ScriptTag {
  readonly value = randomUUID();
  /** Pids the test started or learned of (tagged or not) and must not leave behind. */
  readonly extraPids = new Set<number>();

  /** Dispatches a bash script whose every process carries the tag. */
  dispatch(connection: FakeConnection, ticket: string, fence: number, scriptBody: string): void {
    connection.dispatch(ticket, fence, scriptBody, { environment: { [TAG_VARIABLE]: this.value } });
  }

  /** Every live process that carries the tag. */
  pids(): number[] {
    return pidsWithEnvironment(TAG_VARIABLE, this.value);
  }

  /** SIGKILLs every tagged process and every extra pid, and waits until no tagged process is left. */
  async killAll(): Promise<void> {
    for (const pid of this.pids()) killPid(pid);
    for (const pid of this.extraPids) killPid(pid);
    this.extraPids.clear();
    await waitFor(() => this.pids().length === 0, "the test's processes to be gone");
  }
}

/** The bytes of a binary `ws` message, however `ws` delivered them. */
function binaryData(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data);
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data;
}

// ---------------------------------------------------------------------------------------------------
// run folders: where a runner ran what

/** The run folders in a runner's work dir that have a record, with it (each run's folder is `dir`). */
export function runRecords(workDir: string): Array<{ dir: string; record: RunRecord }> {
  const root = join(workDir, "runs");
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return [];
  }
  return names.flatMap((name) => {
    try {
      // Read as the test sees the file (the runner's own reader is what is under test elsewhere).
      const record = JSON.parse(readFileSync(join(root, name, "record.json"), "utf8")) as RunRecord;
      return [{ dir: join(root, name), record }];
    } catch {
      return [];
    }
  });
}

/** The run folder of a dispatch (`fence`, or the ticket's latest), from the runs' records; throws when there is none. */
export function runDir(workDir: string, ticket: string, fence?: number): string {
  const runs = runRecords(workDir)
    .filter(({ record }) => record.ticket === ticket && (fence === undefined || record.fence === fence))
    .sort((a, b) => a.record.fence - b.record.fence);
  const run = runs.at(-1);
  if (run === undefined) throw new Error(`no run of ${ticket}${fence === undefined ? "" : ` (fence ${fence})`} in ${workDir}`);
  return run.dir;
}

/** The working directory of a dispatch's run (see `runDir`), whose run folder is in `runtimeDir` (default the work dir). */
export function workspaceOf(workDir: string, ticket: string, fence?: number, runtimeDir: string = workDir): string {
  return join(workDir, "runs", basename(runDir(runtimeDir, ticket, fence)), "work");
}
