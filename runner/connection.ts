/**
 * The runner's one outbound WebSocket to the control plane: connect, handshake gate, protocol version, heartbeat,
 * dead-peer detection, reconnect with full-jitter backoff, and the close codes that end the runner for good.
 * It parses every inbound frame with the shared schemas and hands on only valid messages; it knows nothing
 * about scripts. The socket itself sits behind `RunnerSocket`, so tests can drive a fake.
 *
 * Versions: every connection offers the newest protocol (`PROTOCOL_VERSION`) in its `hello`. A control plane that
 * knows only version 1 refuses it during the handshake, with 4426 (another protocol number) or 4400 (a field it does
 * not know); the next connection, opened at once, offers version 1, and the runner speaks what the `welcome` names.
 * A later reconnect offers the newest again (the control plane may have been upgraded meanwhile), so each refusal
 * costs one handshake, never a loop.
 */
import WebSocket from "ws";
import {
  CloseCode,
  HEARTBEAT_PING,
  HEARTBEAT_PONG,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  SUPPORTED_PROTOCOLS,
  closeReason,
  parseControlMessage,
  type ControlMessage,
  type RunnerMessage,
} from "../shared/protocol.js";
import type { RunnerOptions } from "./options.js";
import { displayUrl } from "./redact.js";
import { YoungGarbagePacer } from "./young-garbage.js";

/** What the connection needs from a WebSocket. */
export interface RunnerSocket {
  /**
   * Sends a message: text for a string; binary for parts, which are sent as the fragments of one message (no
   * copy into one buffer). Only called while open. `written` is reported once it has been handed to the OS.
   */
  send(data: string | readonly Uint8Array[]): void;
  /** Bytes queued for sending that the OS has not taken yet. */
  readonly bufferedAmount: number;
  /** Starts the closing handshake. */
  close(code: number, reason: string): void;
  /** Drops the connection at once; `close` is still reported. */
  terminate(): void;
}

/** What a socket reports; after `close` it reports nothing more. */
export interface RunnerSocketEvents {
  open(): void;
  /** A data frame: text as a string, binary as an ArrayBuffer. */
  message(data: string | ArrayBuffer): void;
  /** A control frame (WebSocket ping or pong): proof of life that carries no message. */
  activity(): void;
  /** A frame this side sent has been handed to the OS: the send buffer may have room again. */
  written(): void;
  /** The server answered the upgrade with this HTTP status instead of 101; `close` follows. */
  unexpectedResponse(status: number): void;
  error(error: Error): void;
  close(code: number, reason: string): void;
}

/** Settings a socket is opened with. */
export interface SocketSettings {
  url: string;
  headers: Record<string, string>;
  /** Give up on an upgrade that takes longer than this. */
  handshakeTimeoutMs: number;
}

/** Opens a socket and reports its events (never synchronously from inside the call). */
export type SocketFactory = (settings: SocketSettings, events: RunnerSocketEvents) => RunnerSocket;

/** The `ws` adapter. */
export const wsSocketFactory: SocketFactory = (settings, events) => {
  const ws = new WebSocket(settings.url, {
    headers: settings.headers,
    handshakeTimeout: settings.handshakeTimeoutMs,
    maxPayload: MAX_FRAME_BYTES,
    perMessageDeflate: false,
    // No `generateMask`: RFC 6455 requires a client to mask every frame with a fresh, unpredictable key, which is
    // what `ws` does by default. Script output is attacker-influenced bytes, and a known key (all zeros is no mask at
    // all) would let it reach an intermediary unmasked. The XOR is done in JavaScript, or by the optional native
    // `bufferutil` when it happens to be installed; the runner needs neither it nor any other native module.
  });
  ws.on("open", () => events.open());
  ws.on("message", (data, isBinary) => {
    const bytes = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? Buffer.from(data) : data;
    events.message(isBinary ? new Uint8Array(bytes).buffer : bytes.toString("utf8"));
  });
  ws.on("ping", () => events.activity());
  ws.on("pong", () => events.activity());
  ws.on("unexpected-response", (_request, response) => {
    events.unexpectedResponse(response.statusCode ?? 0);
    response.resume();
    // With a listener for this event `ws` leaves the handshake hanging; end it so `close` follows.
    ws.terminate();
  });
  ws.on("error", (error) => events.error(error));
  ws.on("close", (code, reason) => events.close(code, reason.toString("utf8")));
  // One callback for every frame; an error (the socket closed first) is reported by `close` anyway.
  const written = () => events.written();
  // `ws` masks each binary part into a copy that is dead once written: collected while young (young-garbage.ts).
  const garbage = new YoungGarbagePacer();
  return {
    send: (data) => {
      if (typeof data === "string") return ws.send(data, written);
      const last = data.length - 1;
      data.forEach((part, index) => ws.send(part, { binary: true, fin: index === last }, index === last ? written : undefined));
      garbage.sent(data.reduce((bytes, part) => bytes + part.length, 0));
    },
    get bufferedAmount() {
      return ws.bufferedAmount;
    },
    close: (code, reason) => ws.close(code, reason),
    terminate: () => ws.terminate(),
  };
};

/** Why the control plane ended this runner for good. */
export type EndReason =
  | { kind: "replaced"; message: string }
  | { kind: "token_revoked"; message: string };

/** What the connection tells the runner. */
export interface ConnectionHandlers {
  /** A socket opened: send `hello` in protocol `protocol` now; it is the only frame allowed before `welcome`. */
  opened(protocol: number): void;
  /** A valid control message; `welcome` arrives after the connection has opened the gate for other frames. */
  message(message: ControlMessage): void;
  /** The current socket closed; a reconnect follows unless the runner stops. */
  lost(): void;
  /** Close code 4000 or 4001: this runner must stop. The connection has already stopped. */
  ended(reason: EndReason): void;
  /** `sendBulk` refused a frame because the send buffer was full; it has drained since: send more now. */
  writable(): void;
}

/** The options the connection uses. */
export type ConnectionOptions = Pick<
  RunnerOptions,
  "url" | "machineId" | "token" | "heartbeatMs" | "deadAfterMs" | "reconnectBaseMs" | "reconnectMaxMs" | "maxSocketBufferBytes" | "logger"
> & {
  /** Opens sockets; default `ws`. */
  socketFactory?: SocketFactory;
  /** Source of jitter in [0, 1); default `Math.random`. */
  random?: () => number;
};

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The runner socket URL for a control plane base URL: http(s) becomes ws(s). */
export function runnerSocketUrl(baseUrl: string, machineId: string): string {
  const url = new URL(baseUrl);
  switch (url.protocol) {
    case "http:":
    case "ws:":
      url.protocol = "ws:";
      break;
    case "https:":
    case "wss:":
      url.protocol = "wss:";
      break;
    default:
      throw new Error(`The control plane URL must start with http:// or https:// (got ${JSON.stringify(baseUrl)}).`);
  }
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/api/v1/machines/${encodeURIComponent(machineId)}/runner`;
  url.search = "";
  url.hash = "";
  return url.toString();
}

/** `closing`: this side decided to close; nothing more is sent or handled on it. */
type SocketState = "connecting" | "open" | "welcomed" | "closing";

/** One socket and what the connection knows about it. */
interface Attempt {
  socket: RunnerSocket;
  state: SocketState;
  /** The protocol version its `hello` offers. */
  offered: number;
  /** The protocol version its `welcome` named: the one spoken on it. */
  protocol?: number;
  /** Why the control plane refused this socket (an HTTP status on the upgrade, a protocol mismatch). */
  refusal?: { message: string; retryAtMax: boolean };
  lastError?: Error;
  heartbeat?: NodeJS.Timeout;
  deadline?: NodeJS.Timeout;
  /** When the welcome arrived. */
  welcomedAt?: number;
  /** `sendBulk` refused a frame for a full send buffer; `writable` is due once it drains. */
  congested?: boolean;
}

/** Keeps one socket to the control plane open until stopped. */
export class Connection {
  private readonly url: string;
  /** `url` as log lines show it (no user name or password). */
  private readonly shownUrl: string;
  private readonly factory: SocketFactory;
  private readonly random: () => number;
  private current: Attempt | undefined;
  private failures = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private closedWaiters: Array<() => void> = [];
  /** The next connection offers the oldest version: the last one's offer of the newest was refused. */
  private fallBack = false;

  constructor(
    private readonly options: ConnectionOptions,
    private readonly handlers: ConnectionHandlers,
  ) {
    this.url = runnerSocketUrl(options.url, options.machineId);
    this.shownUrl = displayUrl(this.url);
    this.factory = options.socketFactory ?? wsSocketFactory;
    this.random = options.random ?? Math.random;
  }

  /** True while the handshake is complete and frames may flow. */
  get welcomed(): boolean {
    return this.current?.state === "welcomed";
  }

  /** The protocol version the current connection speaks (its welcome's); undefined before the welcome. */
  get protocol(): number | undefined {
    return this.current?.state === "welcomed" ? this.current.protocol : undefined;
  }

  /** Opens the first socket. */
  start(): void {
    if (this.stopped || this.current !== undefined || this.reconnectTimer !== undefined) return;
    this.connect();
  }

  /** Bytes the current socket has queued and the OS has not taken yet (0 without a socket). */
  get bufferedAmount(): number {
    const attempt = this.current;
    return attempt === undefined || attempt.state === "connecting" ? 0 : attempt.socket.bufferedAmount;
  }

  /** Sends a message; false when it cannot go now (no socket, or not `hello` before the welcome). */
  send(message: RunnerMessage): boolean {
    const attempt = this.current;
    if (attempt === undefined || attempt.state === "connecting" || attempt.state === "closing") return false;
    if (message.type !== "hello" && attempt.state !== "welcomed") return false;
    return this.sendRaw(attempt, JSON.stringify(message));
  }

  /**
   * Sends a bulk message (output) only while the socket's send buffer holds less than `maxSocketBufferBytes`:
   * `ws` queues without limit, so a slow peer would otherwise make the runner hold every frame in memory.
   * False when it cannot go now; after a refusal for a full buffer, `writable` follows once it drained to half.
   */
  sendBulk(message: RunnerMessage | readonly Uint8Array[]): boolean {
    const attempt = this.current;
    if (attempt === undefined || attempt.state !== "welcomed") return false;
    if (attempt.socket.bufferedAmount >= this.options.maxSocketBufferBytes) {
      attempt.congested = true;
      return false;
    }
    // Parts are an encoded binary message already (`encodeOutputFrame`).
    return this.sendRaw(attempt, Array.isArray(message) ? message : JSON.stringify(message));
  }

  /** Closes the socket with 1000 and never reconnects; resolves once it closed (or after a short wait). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const attempt = this.current;
    if (attempt === undefined) return;
    const closed = new Promise<void>((resolve) => this.closedWaiters.push(resolve));
    if (attempt.state === "connecting") attempt.socket.terminate();
    else this.closeAttempt(attempt, CloseCode.Normal, "runner stopping");
    // A peer that never answers the close must not hold the runner: drop the socket after a while.
    const fallback = setTimeout(() => attempt.socket.terminate(), 2_000);
    await closed;
    clearTimeout(fallback);
  }

  private connect(): void {
    this.reconnectTimer = undefined;
    let attempt: Attempt | undefined;
    // Events of a socket that is no longer current are ignored: a stale socket cannot change state.
    const ifCurrent =
      <A extends unknown[]>(handler: (attempt: Attempt, ...args: A) => void) =>
      (...args: A) => {
        if (attempt !== undefined && attempt === this.current) handler(attempt, ...args);
      };
    const events: RunnerSocketEvents = {
      open: ifCurrent((a) => this.onOpen(a)),
      message: ifCurrent((a, data: string | ArrayBuffer) => this.onMessage(a, data)),
      activity: ifCurrent((a) => this.markAlive(a)),
      written: ifCurrent((a) => this.onWritten(a)),
      unexpectedResponse: ifCurrent((a, status: number) => {
        // 401/404 will not fix themselves soon: retry slowly. Anything else (a 502 during a deploy) is transient.
        a.refusal = { message: refusalText(status, this.shownUrl, this.options.machineId), retryAtMax: status === 401 || status === 404 };
      }),
      error: ifCurrent((a, error: Error) => {
        a.lastError = error;
      }),
      close: ifCurrent((a, code: number, reason: string) => this.onClose(a, code, reason)),
    };
    const headers = { Authorization: `Bearer ${this.options.token}` };
    const offered = this.fallBack ? SUPPORTED_PROTOCOLS[0]! : PROTOCOL_VERSION;
    this.fallBack = false;
    try {
      const socket = this.factory({ url: this.url, headers, handshakeTimeoutMs: this.options.deadAfterMs }, events);
      attempt = { socket, state: "connecting", offered };
      this.current = attempt;
    } catch (error) {
      this.options.logger.error(`Could not open a WebSocket to ${this.shownUrl}: ${describe(error)}`);
      this.scheduleReconnect(this.options.reconnectMaxMs);
    }
  }

  private onOpen(attempt: Attempt): void {
    attempt.state = "open";
    this.options.logger.info(`Connected to ${this.shownUrl}; waiting for the welcome.`);
    this.startHeartbeat(attempt, this.options.heartbeatMs);
    this.markAlive(attempt);
    this.handlers.opened(attempt.offered);
  }

  private onMessage(attempt: Attempt, data: string | ArrayBuffer): void {
    if (attempt.state === "closing") return;
    this.markAlive(attempt);
    if (data === HEARTBEAT_PONG) return;
    const parsed = parseControlMessage(data);
    if (!parsed.ok) {
      this.options.logger.error(`Closing the connection: the control plane sent a bad frame (${parsed.reason}).`);
      this.closeAttempt(attempt, parsed.code, parsed.reason);
      return;
    }
    const message = parsed.message;
    if (attempt.state !== "welcomed") {
      if (message.type !== "welcome") {
        this.options.logger.error(`Closing the connection: the control plane sent "${message.type}" before "welcome".`);
        this.closeAttempt(attempt, CloseCode.HandshakeRequired, "welcome expected first");
        return;
      }
      if (!SUPPORTED_PROTOCOLS.includes(message.protocol)) {
        const spoken = SUPPORTED_PROTOCOLS.join(" or ");
        this.options.logger.error(
          `Closing the connection: the control plane speaks protocol ${message.protocol}, this runner speaks ${spoken}. Update the runner or the control plane.`,
        );
        attempt.refusal = { message: `The control plane at ${this.shownUrl} speaks neither protocol ${spoken}.`, retryAtMax: true };
        this.closeAttempt(attempt, CloseCode.UnsupportedProtocol, "unsupported protocol version");
        return;
      }
      attempt.state = "welcomed";
      attempt.protocol = message.protocol;
      if (message.protocol < PROTOCOL_VERSION) this.options.logger.info(`The control plane speaks protocol ${message.protocol}; this runner speaks it on this connection.`);
      attempt.welcomedAt = Date.now();
      // Ping at least as often as the control plane asks.
      if (message.heartbeatMs < this.options.heartbeatMs) this.startHeartbeat(attempt, message.heartbeatMs);
      this.options.logger.info(`Welcomed by the control plane as machine ${message.machineId} (connection ${message.connectionId}).`);
    }
    try {
      this.handlers.message(message);
    } catch (error) {
      // A bug in handling one message must not take the runner (and every script's reporting) down.
      this.options.logger.error(`Handling a ${message.type} message failed: ${describe(error)}`);
    }
  }

  /** Starts closing this socket; until the peer answers, its frames are ignored and nothing is sent. */
  private closeAttempt(attempt: Attempt, code: number, reason: string): void {
    attempt.state = "closing";
    if (attempt.heartbeat !== undefined) clearInterval(attempt.heartbeat);
    attempt.heartbeat = undefined;
    try {
      attempt.socket.close(code, closeReason(reason));
    } catch (error) {
      this.options.logger.warn(`Could not close the socket cleanly (${describe(error)}); dropping it.`);
      attempt.socket.terminate();
    }
  }

  private onWritten(attempt: Attempt): void {
    if (!attempt.congested || attempt.state !== "welcomed") return;
    if (attempt.socket.bufferedAmount > this.options.maxSocketBufferBytes / 2) return;
    attempt.congested = false;
    this.handlers.writable();
  }

  private onClose(attempt: Attempt, code: number, reason: string): void {
    const wasOpen = attempt.state !== "connecting";
    // The backoff starts over only after a connection that lasted: one that the control plane welcomes and
    // then closes at once (say for a protocol disagreement) must not turn into a tight reconnect loop.
    if (attempt.welcomedAt !== undefined && Date.now() - attempt.welcomedAt >= this.options.reconnectMaxMs) this.failures = 0;
    this.stopTimers(attempt);
    this.current = undefined;
    for (const resolve of this.closedWaiters.splice(0)) resolve();
    if (this.stopped) return;
    if (wasOpen) this.handlers.lost();
    if (code === CloseCode.Replaced || code === CloseCode.TokenRevoked) {
      const reasonText = reason ? ` (${reason})` : "";
      const message =
        code === CloseCode.Replaced
          ? `Another runner took over machine ${this.options.machineId}${reasonText}; this runner stops.`
          : `The runner token of machine ${this.options.machineId} was revoked${reasonText}; this runner stops. Register the machine again for a new token.`;
      this.options.logger.error(message);
      this.stopped = true;
      this.handlers.ended(code === CloseCode.Replaced ? { kind: "replaced", message } : { kind: "token_revoked", message });
      return;
    }
    if (refusedNewest(attempt, code)) {
      // A control plane of version 1: say hello again at once, in its version.
      this.options.logger.info(`The control plane refused protocol ${attempt.offered} (${code}${reason ? ` ${reason}` : ""}); saying hello in protocol ${SUPPORTED_PROTOCOLS[0]}.`);
      this.fallBack = true;
      this.scheduleReconnect(0);
      return;
    }
    if (attempt.refusal !== undefined) {
      const delay = attempt.refusal.retryAtMax ? this.options.reconnectMaxMs : this.nextBackoff();
      this.options.logger.error(`${attempt.refusal.message} Retrying in ${delay} ms.`);
      this.scheduleReconnect(delay);
      return;
    }
    const delay = this.nextBackoff();
    const why = wasOpen ? `closed (${code}${reason ? ` ${reason}` : ""})` : `failed (${attempt.lastError?.message ?? `code ${code}`})`;
    this.options.logger.warn(`The connection to ${this.shownUrl} ${why}; reconnecting in ${delay} ms.`);
    this.scheduleReconnect(delay);
  }

  private nextBackoff(): number {
    const delay = backoffDelay(this.failures, this.options.reconnectBaseMs, this.options.reconnectMaxMs, this.random);
    this.failures += 1;
    return delay;
  }

  private scheduleReconnect(delayMs: number): void {
    if (this.stopped) return;
    this.reconnectTimer = setTimeout(() => this.connect(), delayMs);
  }

  private startHeartbeat(attempt: Attempt, intervalMs: number): void {
    if (attempt.heartbeat !== undefined) clearInterval(attempt.heartbeat);
    attempt.heartbeat = setInterval(() => this.sendRaw(attempt, HEARTBEAT_PING), intervalMs);
  }

  /** Any inbound frame proves the peer alive; silence for `deadAfterMs` drops the socket. */
  private markAlive(attempt: Attempt): void {
    if (attempt.state === "connecting") return;
    if (attempt.deadline !== undefined) {
      attempt.deadline.refresh();
      return;
    }
    attempt.deadline = setTimeout(() => {
      this.options.logger.warn(`No frame from the control plane for ${this.options.deadAfterMs} ms; reconnecting.`);
      attempt.socket.terminate();
    }, this.options.deadAfterMs);
  }

  private stopTimers(attempt: Attempt): void {
    if (attempt.heartbeat !== undefined) clearInterval(attempt.heartbeat);
    if (attempt.deadline !== undefined) clearTimeout(attempt.deadline);
    attempt.heartbeat = undefined;
    attempt.deadline = undefined;
  }

  private sendRaw(attempt: Attempt, data: string | readonly Uint8Array[]): boolean {
    if (attempt !== this.current) return false;
    try {
      attempt.socket.send(data);
      return true;
    } catch (error) {
      this.options.logger.warn(`Could not send a frame: ${describe(error)}`);
      return false;
    }
  }
}

/**
 * True when the control plane closed a connection that offered a newer protocol than version 1 during the handshake,
 * the way a version 1 control plane refuses one: 4426 (another protocol number), or 4400 (a field it does not know).
 */
function refusedNewest(attempt: Attempt, code: number): boolean {
  return (
    attempt.state === "open" &&
    attempt.offered > SUPPORTED_PROTOCOLS[0]! &&
    (code === CloseCode.UnsupportedProtocol || code === CloseCode.BadFrame)
  );
}

/** One clear sentence for a refused upgrade. */
function refusalText(status: number, url: string, machineId: string): string {
  switch (status) {
    case 401:
      return `The control plane refused the runner token for machine ${machineId} (HTTP 401): check the token, or issue a new one with "tendril register ${machineId}".`;
    case 404:
      return `The control plane has no runner endpoint at ${url} (HTTP 404): check the URL and that machine ${machineId} is registered.`;
    default:
      return `The control plane refused the runner connection at ${url} (HTTP ${status}).`;
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
