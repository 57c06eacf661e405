/**
 * The runner's connection over a scripted socket (no network): the send-buffer limit for output frames,
 * dead-peer detection, and which close codes reconnect (with jittered backoff) and which stop the runner.
 * Fake timers make the waits exact.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { PROTOCOL_VERSION, type ControlMessage, type RunnerMessage } from "../../shared/protocol.js";
import { Connection, type ConnectionHandlers, type RunnerSocket, type RunnerSocketEvents, type SocketSettings } from "../../runner/connection.js";

/** A socket the test drives: it records what the connection does and reports what the test says. */
class ScriptedSocket implements RunnerSocket {
  readonly sent: string[] = [];
  bufferedAmount = 0;
  closedWith: { code: number; reason: string } | undefined;
  terminated = false;

  constructor(
    readonly settings: SocketSettings,
    readonly events: RunnerSocketEvents,
  ) {}

  send(data: string): void {
    this.sent.push(data);
  }

  close(code: number, reason: string): void {
    this.closedWith = { code, reason };
  }

  terminate(): void {
    this.terminated = true;
    this.events.close(1006, "");
  }

  /** Opens the socket and delivers a welcome. */
  welcome(): void {
    this.events.open();
    const welcome: ControlMessage = {
      type: "welcome",
      protocol: PROTOCOL_VERSION,
      machineId: "m1",
      connectionId: "c1",
      heartbeatMs: 10_000,
      resume: [],
      watch: [],
    };
    this.events.message(JSON.stringify(welcome));
  }
}

const OUTPUT: RunnerMessage = { type: "output", ticket: "t1", fence: 1, sequence: 0, lines: [{ source: "stdout", text: "x", occurred: "2026-01-01T00:00:00.000Z" }] };

let sockets: ScriptedSocket[];
let logs: string[];
let calls: string[];
let connection: Connection | undefined;

beforeEach(() => {
  vi.useFakeTimers();
  sockets = [];
  logs = [];
  calls = [];
});

afterEach(async () => {
  const stopping = connection?.stop();
  await vi.runOnlyPendingTimersAsync();
  await stopping;
  connection = undefined;
  vi.useRealTimers();
});

function connect(overrides: { maxSocketBufferBytes?: number; deadAfterMs?: number; random?: () => number } = {}): Connection {
  const handlers: ConnectionHandlers = {
    opened: (protocol) => calls.push(`opened:${protocol}`),
    message: (message) => calls.push(message.type),
    lost: () => calls.push("lost"),
    ended: (reason) => calls.push(`ended:${reason.kind}`),
    writable: () => calls.push("writable"),
  };
  connection = new Connection(
    {
      url: "http://127.0.0.1:1",
      machineId: "m1",
      token: "runner-token",
      heartbeatMs: 1_000,
      deadAfterMs: overrides.deadAfterMs ?? 5_000,
      reconnectBaseMs: 200,
      reconnectMaxMs: 10_000,
      maxSocketBufferBytes: overrides.maxSocketBufferBytes ?? 1_000,
      logger: { info: (m) => logs.push(m), warn: (m) => logs.push(m), error: (m) => logs.push(m) },
      socketFactory: (settings, events) => {
        const socket = new ScriptedSocket(settings, events);
        sockets.push(socket);
        return socket;
      },
      random: overrides.random ?? (() => 0.5),
    },
    handlers,
  );
  connection.start();
  return connection;
}

/** The delays the connection announced before each reconnect. */
function reconnectDelays(): number[] {
  return logs.flatMap((line) => {
    const match = /reconnecting in (\d+) ms/.exec(line);
    return match ? [Number(match[1])] : [];
  });
}

describe("runner connection", () => {
  it("refuses output frames while the socket's send buffer holds maxSocketBufferBytes, and says when it drained to half", () => {
    const conn = connect({ maxSocketBufferBytes: 1_000 });
    const socket = sockets[0]!;
    socket.welcome();
    expect(conn.sendBulk(OUTPUT)).toBe(true);
    socket.bufferedAmount = 1_000;
    expect(conn.sendBulk(OUTPUT)).toBe(false);
    // Small frames still go: an exit or a heartbeat must never wait behind output.
    expect(conn.send({ type: "started", ticket: "t1", fence: 1, pid: 42 })).toBe(true);
    socket.bufferedAmount = 600;
    socket.events.written();
    expect(calls).not.toContain("writable");
    socket.bufferedAmount = 500;
    socket.events.written();
    expect(calls.filter((call) => call === "writable")).toHaveLength(1);
    socket.events.written();
    expect(calls.filter((call) => call === "writable")).toHaveLength(1);
    expect(conn.sendBulk(OUTPUT)).toBe(true);
    expect(socket.sent.filter((frame) => frame.includes('"output"'))).toHaveLength(2);
  });

  it("refuses output frames before the welcome", () => {
    const conn = connect();
    sockets[0]!.events.open();
    expect(conn.sendBulk(OUTPUT)).toBe(false);
    expect(conn.send({ type: "hello", protocol: PROTOCOL_VERSION, runnerId: "r", version: "1", capabilities: [], inventory: [] })).toBe(true);
  });

  it("terminates a connection that stays silent for deadAfterMs, even while the runner keeps sending", async () => {
    connect({ deadAfterMs: 5_000 });
    const socket = sockets[0]!;
    socket.welcome();
    await vi.advanceTimersByTimeAsync(4_000);
    socket.events.message("pong");
    await vi.advanceTimersByTimeAsync(4_999);
    expect(socket.terminated).toBe(false);
    // Pings went out all along; only inbound frames count as a sign of life.
    expect(socket.sent.filter((frame) => frame === "ping").length).toBeGreaterThanOrEqual(8);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.terminated).toBe(true);
    expect(logs.some((line) => line.includes("No frame from the control plane for 5000 ms"))).toBe(true);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(sockets).toHaveLength(2);
  });

  it.each([1006, 1001, 1011, 4002, 4409, 4400])("reconnects after close code %i with a jittered delay", async (code) => {
    connect({ random: () => 0.5 });
    sockets[0]!.welcome();
    sockets[0]!.events.close(code, "");
    expect(calls).toContain("lost");
    expect(calls.some((call) => call.startsWith("ended"))).toBe(false);
    // Full jitter: half of the 200 ms base with this random source.
    expect(reconnectDelays()).toEqual([100]);
    await vi.advanceTimersByTimeAsync(99);
    expect(sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(sockets).toHaveLength(2);
  });

  it.each([
    [4000, "ended:replaced"],
    [4001, "ended:token_revoked"],
  ] as const)("stops for good on close code %i", async (code, call) => {
    connect();
    sockets[0]!.welcome();
    sockets[0]!.events.close(code, "test");
    expect(calls).toContain(call);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(sockets).toHaveLength(1);
  });

  it("backs off further while the control plane welcomes and then closes at once, and starts over after a connection that lasted", async () => {
    connect({ random: () => 0.5 });
    for (let i = 0; i < 4; i++) {
      const socket = sockets.at(-1)!;
      socket.welcome();
      socket.events.close(4409, "out of order");
      await vi.advanceTimersByTimeAsync(reconnectDelays().at(-1)!);
    }
    expect(reconnectDelays()).toEqual([100, 200, 400, 800]);
    const lasting = sockets.at(-1)!;
    lasting.welcome();
    for (let second = 0; second < 10; second++) {
      await vi.advanceTimersByTimeAsync(1_000);
      lasting.events.message("pong");
    }
    lasting.events.close(1006, "");
    expect(reconnectDelays().at(-1)).toBe(100);
  });

  it("offers protocol 1 at once after a refusal of protocol 2 during the handshake, and protocol 2 again after a backoff when 1 is refused too", async () => {
    const conn = connect({ random: () => 0.5 });
    sockets[0]!.events.open();
    expect(calls).toEqual(["opened:2"]);
    sockets[0]!.events.close(4426, "unsupported protocol version");
    // No backoff: the same control plane, asked again in its version.
    await vi.advanceTimersByTimeAsync(0);
    expect(sockets).toHaveLength(2);
    sockets[1]!.events.open();
    expect(calls.at(-1)).toBe("opened:1");
    // A refusal of version 1 as well is an ordinary failure: a backoff, then version 2 again; never a loop.
    sockets[1]!.events.close(4426, "unsupported protocol version");
    await vi.advanceTimersByTimeAsync(0);
    expect(sockets).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(reconnectDelays().at(-1)!);
    expect(sockets).toHaveLength(3);
    sockets[2]!.events.open();
    expect(calls.at(-1)).toBe("opened:2");
    expect(conn.protocol).toBeUndefined();
  });

  it("speaks the version the welcome names, 1 or 2, and refuses any other", async () => {
    const conn = connect();
    const socket = sockets[0]!;
    socket.events.open();
    socket.events.message(JSON.stringify({ type: "welcome", protocol: 1, machineId: "m1", connectionId: "c1", heartbeatMs: 10_000, resume: [], watch: [] }));
    expect(conn.welcomed).toBe(true);
    expect(conn.protocol).toBe(1);
    socket.events.close(1006, "");
    await vi.advanceTimersByTimeAsync(10_000);
    const next = sockets.at(-1)!;
    next.events.open();
    next.events.message(JSON.stringify({ type: "welcome", protocol: 3, machineId: "m1", connectionId: "c2", heartbeatMs: 10_000, resume: [], watch: [] }));
    expect(conn.welcomed).toBe(false);
    expect(next.closedWith?.code).toBe(4426);
  });
});
