/**
 * The runner's WebSocket adapter (`wsSocketFactory`) as the wire sees it: a raw TCP server on 127.0.0.1 does the
 * upgrade handshake by hand and reads the bytes of the frames the runner sends.
 */
import { createHash } from "node:crypto";
import { createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { wsSocketFactory, type RunnerSocket, type RunnerSocketEvents } from "../../runner/connection.js";
import { waitFor } from "./fake-control-plane.js";

/** One client frame as it arrived: its masking key and its payload, unmasked. */
interface WireFrame {
  opcode: number;
  masked: boolean;
  key: Buffer;
  payload: string;
}

/** The GUID RFC 6455 appends to the client's key for `Sec-WebSocket-Accept`. */
const WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

let server: Server | undefined;
let socket: RunnerSocket | undefined;

afterEach(async () => {
  socket?.terminate();
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
  socket = undefined;
});

/** A server that accepts one upgrade by hand and collects the frames that follow (short frames only). */
async function rawServer(): Promise<{ port: number; frames: WireFrame[] }> {
  const frames: WireFrame[] = [];
  const connections: Socket[] = [];
  server = createServer((connection) => {
    connections.push(connection);
    let buffered = Buffer.alloc(0);
    let upgraded = false;
    connection.on("error", () => undefined);
    connection.on("data", (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (!upgraded) {
        const end = buffered.indexOf("\r\n\r\n");
        if (end === -1) return;
        const key = /^sec-websocket-key:\s*(\S+)/im.exec(buffered.subarray(0, end).toString("latin1"))![1]!;
        const accept = createHash("sha1").update(`${key}${WEBSOCKET_GUID}`).digest("base64");
        connection.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
        buffered = buffered.subarray(end + 4);
        upgraded = true;
      }
      // Frames of fewer than 126 bytes: a 2-byte header, the 4-byte key when masked, then the payload.
      while (buffered.length >= 2) {
        const masked = (buffered[1]! & 0x80) !== 0;
        const length = buffered[1]! & 0x7f;
        const keyLength = masked ? 4 : 0;
        if (length >= 126 || buffered.length < 2 + keyLength + length) return;
        const key = Buffer.from(buffered.subarray(2, 2 + keyLength));
        const payload = Buffer.from(buffered.subarray(2 + keyLength, 2 + keyLength + length));
        if (masked) for (let i = 0; i < payload.length; i++) payload[i]! ^= key[i % 4]!;
        frames.push({ opcode: buffered[0]! & 0x0f, masked, key, payload: payload.toString("utf8") });
        buffered = buffered.subarray(2 + keyLength + length);
      }
    });
  });
  server.on("close", () => connections.forEach((connection) => connection.destroy()));
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no TCP address");
  return { port: address.port, frames };
}

describe("the runner's socket on the wire", () => {
  it("masks every frame with a fresh random key, as RFC 6455 requires of a client (bug 10)", async () => {
    const { port, frames } = await rawServer();
    let opened = false;
    const events: RunnerSocketEvents = {
      open: () => (opened = true),
      message: () => undefined,
      activity: () => undefined,
      written: () => undefined,
      unexpectedResponse: () => undefined,
      error: () => undefined,
      close: () => undefined,
    };
    socket = wsSocketFactory({ url: `ws://127.0.0.1:${port}/runner`, headers: {}, handshakeTimeoutMs: 5_000 }, events);
    await waitFor(() => opened, "the handshake");
    socket.send("first");
    socket.send("second");
    const [first, second] = await waitFor(() => (frames.length >= 2 ? frames : undefined), "two frames");
    expect(first).toMatchObject({ opcode: 1, masked: true, payload: "first" });
    expect(second).toMatchObject({ opcode: 1, masked: true, payload: "second" });
    // An all-zero key is no mask at all; two frames must not share one.
    expect(first!.key.equals(Buffer.alloc(4))).toBe(false);
    expect(first!.key.equals(second!.key)).toBe(false);
  });
});
