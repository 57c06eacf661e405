// Runner tokens and fencing against a real control plane and real runners: revoked and foreign tokens, forged
// reports from other machines and stale connections, and secrets that must never show up anywhere.
import { describe, expect, it } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { openRunnerSocket, runnerUpgradeStatus } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();

interface Line {
  sequence: number;
  source: string;
  text: string;
}

const stdout = (status: { logs: Line[] }) => status.logs.filter((l) => l.source === "stdout").map((l) => l.text);
const runnerPath = (machineId: string) => `/api/v1/machines/${machineId}/runner`;
const hello = (runnerId: string) => ({ type: "hello", protocol: 1, runnerId, version: "0.1.0", capabilities: ["script.v1", "script.abandon"], inventory: [] });

/** The HTTP status the runner socket's upgrade gets with this token (101 when it is accepted). */
const upgradeStatus = (machineId: string, token: string) => runnerUpgradeStatus(f.cp, machineId, token);

/** A runner socket opened with `ws`: every message it receives, and how it closed. */
const openSocket = (machineId: string, token: string) => openRunnerSocket(f.cp, machineId, token);

/**
 * A hand-rolled WebSocket client over a plain TCP socket. Unlike `ws` it does not answer a close frame, so a
 * test can keep writing on a connection the control plane has already closed (a stale connection).
 */
class RawRunnerSocket {
  private buffer = Buffer.alloc(0);
  private upgraded = false;
  readonly frames: Array<{ opcode: number; text: string; code?: number }> = [];
  private constructor(private readonly socket: Socket) {}

  /** Opens the socket and completes the upgrade with `token`. */
  static async open(url: string, path: string, token: string): Promise<RawRunnerSocket> {
    const { hostname, port } = new URL(url);
    const socket = connect(Number(port), hostname);
    const raw = new RawRunnerSocket(socket);
    socket.on("data", (chunk: Buffer) => raw.onData(chunk));
    socket.on("error", () => undefined);
    socket.write(
      [
        `GET ${path} HTTP/1.1`,
        `Host: ${hostname}:${port}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`,
        "Sec-WebSocket-Version: 13",
        `Authorization: Bearer ${token}`,
        "",
        "",
      ].join("\r\n"),
    );
    await waitFor(() => raw.upgraded, { what: "the raw WebSocket upgrade" });
    return raw;
  }

  /** True while the TCP connection is open. */
  get open(): boolean {
    return !this.socket.destroyed && this.socket.writable;
  }

  /** Sends one masked text frame. */
  send(message: unknown): void {
    const payload = Buffer.from(JSON.stringify(message));
    const mask = randomBytes(4);
    let header: Buffer;
    if (payload.length < 126) {
      header = Buffer.from([0x81, 0x80 | payload.length]);
    } else if (payload.length < 65_536) {
      header = Buffer.from([0x81, 0x80 | 126, 0, 0]);
      header.writeUInt16BE(payload.length, 2);
    } else {
      header = Buffer.alloc(10);
      header[0] = 0x81;
      header[1] = 0x80 | 127;
      header.writeBigUInt64BE(BigInt(payload.length), 2);
    }
    for (let i = 0; i < payload.length; i += 1) payload[i]! ^= mask[i % 4]!;
    this.socket.write(Buffer.concat([header, mask, payload]));
  }

  destroy(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (!this.upgraded) {
      const end = this.buffer.indexOf("\r\n\r\n");
      if (end < 0) return;
      const statusLine = this.buffer.subarray(0, end).toString().split("\r\n")[0]!;
      if (!/^HTTP\/1\.1 101/.test(statusLine)) throw new Error(`raw upgrade refused: ${statusLine}`);
      this.buffer = this.buffer.subarray(end + 4);
      this.upgraded = true;
    }
    while (this.buffer.length >= 2) {
      const opcode = this.buffer[0]! & 0x0f;
      let length = this.buffer[1]! & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (this.buffer.length < 4) return;
        length = this.buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (this.buffer.length < 10) return;
        length = Number(this.buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (this.buffer.length < offset + length) return;
      const payload = this.buffer.subarray(offset, offset + length);
      this.buffer = this.buffer.subarray(offset + length);
      if (opcode === 0x8) this.frames.push({ opcode, code: payload.length >= 2 ? payload.readUInt16BE(0) : undefined, text: payload.subarray(2).toString() });
      else this.frames.push({ opcode, text: payload.toString() });
    }
  }
}

/** Output, started and exit reports for `ticket` under each fence in 1..maxFence, as a forger would send them. */
function forgedReports(ticket: string, maxFence: number): unknown[] {
  const occurred = new Date().toISOString();
  const reports: unknown[] = [];
  for (let fence = 1; fence <= maxFence; fence += 1) {
    reports.push(
      { type: "started", ticket, fence, pid: 1 },
      { type: "output", ticket, fence, sequence: 0, lines: [{ source: "stdout", text: `forged-${fence}`, occurred }] },
      { type: "output", ticket, fence, sequence: 1, lines: [{ source: "stdout", text: `forged-late-${fence}`, occurred }] },
      { type: "exit", ticket, fence, lineCount: 0, outcome: { kind: "exited", code: 7 } },
      { type: "exit", ticket, fence, lineCount: 2, outcome: { kind: "exited", code: 9 } },
    );
  }
  return reports;
}

describe("runner tokens", () => {
  it("disconnects a runner whose token was re-issued: it exits 3 saying so, and the old token is refused", async () => {
    const m = f.machine();
    const oldToken = await f.register(m);
    const runner = await f.runner(m, { token: oldToken });
    const newToken = await f.register(m);
    const exit = await Promise.race([
      runner.process.exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`the runner did not exit:\n${runner.process.output()}`)), 15_000)),
    ]);
    expect(exit.code).toBe(3);
    expect(runner.process.output()).toMatch(/runner token of machine \S+ was revoked/);
    await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === false, { what: "the runner to be gone" });
    expect(await upgradeStatus(m, oldToken)).toBe(401);
    expect(await upgradeStatus(m, newToken)).toBe(101);
  });

  it("never accepts a runner token for another machine", async () => {
    const a = f.machine();
    const b = f.machine();
    const tokenA = await f.register(a);
    const tokenB = await f.register(b);
    expect(await upgradeStatus(b, tokenA)).toBe(401);
    expect(await upgradeStatus(a, tokenB)).toBe(401);
    // A runner process pointed at machine b with a's token is refused, and neither machine shows it connected.
    const runner = await f.runner(b, { token: tokenA, waitConnected: false });
    await waitFor(() => /HTTP 401/.test(runner.process.output()), { timeoutMs: 15_000, what: "the runner to report the 401" });
    for (const machineId of [a, b]) {
      const view = (await f.api("GET", `/api/v1/machines/${machineId}`)).body;
      expect(view.runner).toMatchObject({ connected: false, connectedAt: null });
    }
    await runner.stop();
  });
});

describe("fencing of runner reports", () => {
  it("ignores reports from another machine's runner, and refuses them before the handshake, for a script running elsewhere", async () => {
    const a = f.machine();
    const b = f.machine();
    const tokenA = await f.register(a);
    const tokenB = await f.register(b);
    const runnerA = await f.runner(a, { token: tokenA });
    const release = join(f.scratch, `${a}.release`);
    await f.api("POST", `/api/v1/machines/${a}/scripts`, {
      ticket: "victim",
      scriptBody: `echo victim-1; while [ ! -f '${release}' ]; do sleep 0.05; done; echo victim-2`,
    });
    await waitFor(async () => stdout((await f.api("GET", `/api/v1/machines/${a}/scripts/victim`)).body).includes("victim-1"), {
      what: "the victim's first line",
    });
    const victimBefore = (await f.api("GET", `/api/v1/machines/${a}/scripts/victim`)).body;
    const viewABefore = (await f.api("GET", `/api/v1/machines/${a}`)).body;

    // Machine b's runner socket, handshake done, reports for a's ticket under every plausible fence.
    const other = await openSocket(b, tokenB);
    other.send(hello("forger-b"));
    await waitFor(() => other.messages.some((msg) => msg.type === "welcome"), { what: "the welcome on machine b" });
    for (const report of forgedReports("victim", 10)) other.send(report);
    // An exit for a ticket b never had is answered with exit_ack: once it arrives, every report before it was handled.
    other.send({ type: "exit", ticket: "sentinel", fence: 999_999, lineCount: 0, outcome: { kind: "exited", code: 0 } });
    await waitFor(() => other.messages.some((msg) => msg.type === "exit_ack" && msg.ticket === "sentinel"), {
      what: "machine b to handle every forged report",
    });
    expect(other.ws.readyState).toBe(WebSocket.OPEN);
    other.ws.close(1000);
    await other.closed;

    // A connection on machine a itself that never said hello is closed at its first report.
    const early = await openSocket(a, tokenA);
    early.send(forgedReports("victim", 1)[1]);
    expect(await early.closed).toBe(4403);

    expect((await f.api("GET", `/api/v1/machines/${a}/scripts/victim`)).body).toEqual(victimBefore);
    const viewA = (await f.api("GET", `/api/v1/machines/${a}`)).body;
    expect(viewA.runner.connectedAt).toBe(viewABefore.runner.connectedAt);
    expect(viewA.mutexes).toEqual(viewABefore.mutexes);
    const viewB = (await f.api("GET", `/api/v1/machines/${b}`)).body;
    expect(viewB.scripts).toEqual([]);
    expect(viewB.mutexes).toEqual([]);
    expect((await f.api("GET", `/api/v1/machines/${b}/scripts/victim`)).status).toBe(404);
    expect(runnerA.process.child.exitCode).toBeNull();

    writeFileSync(release, "");
    const victim = await f.completed(a, "victim");
    expect(victim.exitCode).toBe(0);
    expect(stdout(victim)).toEqual(["victim-1", "victim-2"]);
  });

  it("ignores reports on a replaced connection for a script dispatched to the connection that replaced it", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const stale = await RawRunnerSocket.open(f.cp.url, runnerPath(m), token);
    try {
      stale.send(hello("stale-runner"));
      await waitFor(() => stale.frames.some((frame) => frame.opcode === 0x1 && JSON.parse(frame.text).type === "welcome"), {
        what: "the welcome on the first connection",
      });

      // A real runner connects and replaces it; the stale client never answers the close.
      const runner = await f.runner(m, { token });
      await waitFor(() => stale.frames.find((frame) => frame.opcode === 0x8), { what: "the close frame on the replaced connection" });
      expect(stale.frames.find((frame) => frame.opcode === 0x8)?.code).toBe(4000);

      const release = join(f.scratch, `${m}.release`);
      await f.api("POST", `/api/v1/machines/${m}/scripts`, {
        ticket: "victim",
        scriptBody: `echo victim-1; while [ ! -f '${release}' ]; do sleep 0.05; done; echo victim-2`,
      });
      await waitFor(async () => stdout((await f.api("GET", `/api/v1/machines/${m}/scripts/victim`)).body).includes("victim-1"), {
        what: "the victim's first line",
      });
      const before = (await f.api("GET", `/api/v1/machines/${m}/scripts/victim`)).body;
      const viewBefore = (await f.api("GET", `/api/v1/machines/${m}`)).body;

      expect(stale.open).toBe(true);
      for (const report of forgedReports("victim", 10)) stale.send(report);
      // The control plane answers nothing on a replaced connection, so proving that nothing happens takes a
      // window of time: one second, far longer than a frame takes to reach the object on loopback.
      const sentAt = Date.now();
      await waitFor(() => Date.now() - sentAt > 1_000, { what: "a second for the forged reports to land" });
      expect(stale.open).toBe(true);
      // Whatever the control plane did with them, the real runner's connection and script are untouched.
      await waitFor(async () => (await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connected === true, { what: "the real runner" });
      expect((await f.api("GET", `/api/v1/machines/${m}/scripts/victim`)).body).toEqual(before);
      expect((await f.api("GET", `/api/v1/machines/${m}`)).body.runner.connectedAt).toBe(viewBefore.runner.connectedAt);
      expect(runner.process.child.exitCode).toBeNull();
      // No control message for the real runner's script went to the stale connection.
      expect(stale.frames.filter((frame) => frame.opcode === 0x1).map((frame) => JSON.parse(frame.text).type)).toEqual(["welcome"]);

      writeFileSync(release, "");
      const victim = await f.completed(m, "victim");
      expect(victim.exitCode).toBe(0);
      expect(stdout(victim)).toEqual(["victim-1", "victim-2"]);
    } finally {
      stale.destroy();
    }
  });
});

describe("secrets", () => {
  it("never shows the runner token or environment values in the API or in either process's output", async () => {
    const m = f.machine();
    const token = await f.register(m);
    const runner = await f.runner(m, { token });
    const secret = `s3cr3t-${randomBytes(12).toString("hex")}`;
    const digest = createHash("sha256").update(secret).digest("hex");
    // The script proves it received the secret without printing it, and prints the rest of its environment.
    const scriptBody = [
      `if [ "$(printf %s "$DEPLOY_SECRET" | sha256sum | cut -d' ' -f1)" = "${digest}" ]; then echo secret-received; fi`,
      "env | grep -v '^DEPLOY_SECRET='",
      "echo to-stderr >&2",
    ].join("\n");
    const started = await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "secretive", scriptBody, environment: { DEPLOY_SECRET: secret } });
    expect(JSON.stringify(started.body)).not.toContain(secret);
    const status = await f.completed(m, "secretive");
    expect(status.exitCode).toBe(0);
    expect(stdout(status)).toContain("secret-received");

    // Also a pending script holding the secret, seen while it waits, then cancelled.
    const release = join(f.scratch, `${m}.release`);
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "holder", scriptBody: `while [ ! -f '${release}' ]; do sleep 0.05; done` });
    await f.api("POST", `/api/v1/machines/${m}/scripts`, { ticket: "waiting", scriptBody: "true", environment: { DEPLOY_SECRET: secret } });
    const seen = [
      (await f.api("GET", `/api/v1/machines/${m}`)).body,
      (await f.api("GET", "/api/v1/machines")).body,
      (await f.api("GET", `/api/v1/machines/${m}/scripts/secretive`)).body,
      (await f.api("GET", `/api/v1/machines/${m}/scripts/waiting`)).body,
      (await f.api("POST", `/api/v1/machines/${m}/scripts/waiting/cancel`)).body,
      await fetch(`${f.cp.url}/api/v1/machines/${m}/scripts/secretive/stream`, { headers: { authorization: `Bearer ${f.cp.serverToken}` } }).then((r) => r.text()),
      (await f.api("DELETE", `/api/v1/machines/${m}/scripts/secretive`)).body,
    ];
    writeFileSync(release, "");
    await f.completed(m, "holder");
    await runner.stop();

    for (const [i, item] of seen.entries()) {
      const text = typeof item === "string" ? item : JSON.stringify(item);
      expect(text, `answer ${i}`).not.toContain(secret);
      expect(text, `answer ${i}`).not.toContain(token);
    }
    const outputs = { "control plane": f.cp.process.output(), runner: runner.process.output() };
    for (const [name, output] of Object.entries(outputs)) {
      expect(output.length, `${name} output`).toBeGreaterThan(0);
      expect(output.includes(secret), `${name} output shows the environment secret`).toBe(false);
      expect(output.includes(token), `${name} output shows the runner token`).toBe(false);
      expect(output.includes(f.cp.serverToken), `${name} output shows the server token`).toBe(false);
    }
  });
});
