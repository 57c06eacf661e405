/**
 * A fault-injecting TCP proxy on loopback, placed between a runner and the control plane: it can cut every
 * live connection, freeze them (half-open: nothing is forwarded and nothing is closed, like a dead NAT
 * path), and send new connections to another port (a control plane restarted elsewhere).
 */
import { createConnection, createServer, type Socket } from "node:net";

/** A running proxy. */
export interface FaultProxy {
  /** The loopback port the proxy listens on. */
  port: number;
  /** `http://127.0.0.1:<port>`, to give a runner as its `--url`. */
  url: string;
  /** Destroys every live connection, both ways (frozen ones too); new connections still pass. */
  cut(): void;
  /** Stops forwarding on every live connection, in both directions, without closing it. New connections pass. */
  freeze(): void;
  /** Resumes forwarding on every frozen connection, delivering what was held back, in order. */
  thaw(): void;
  /** Sends new connections to another port on 127.0.0.1; live ones stay where they are. */
  setTarget(port: number): void;
  /** Live proxied connections (frozen ones included). */
  connections(): number;
  /** Connections accepted since the proxy started. */
  accepted(): number;
  /** Destroys every connection and stops listening. */
  close(): Promise<void>;
}

/** One proxied connection: the accepted client socket and its socket to the target. */
interface Link {
  client: Socket;
  upstream: Socket;
  frozen: boolean;
  closed: boolean;
  /** Chunks that were already on their way when the link froze, per direction, delivered on thaw. */
  held: Map<Socket, Buffer[]>;
}

const LOOPBACK = "127.0.0.1";

/** Starts a proxy on a free loopback port that forwards to `targetPort` on 127.0.0.1. */
export async function startFaultProxy(targetPort: number): Promise<FaultProxy> {
  let target = targetPort;
  let acceptedCount = 0;
  const links = new Set<Link>();

  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    acceptedCount += 1;
    const upstream = createConnection({ host: LOOPBACK, port: target, allowHalfOpen: true });
    const link: Link = { client, upstream, frozen: false, closed: false, held: new Map([[client, []], [upstream, []]]) };
    links.add(link);
    const teardown = () => {
      if (link.closed) return;
      link.closed = true;
      links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    forward(link, client, upstream);
    forward(link, upstream, client);
    // A socket that ended (FIN) is passed on as an end; a reset, an error or a full close tears both down.
    client.on("close", teardown);
    upstream.on("close", teardown);
    client.on("error", teardown);
    upstream.on("error", teardown);
    upstream.on("connect", () => {
      if (!link.frozen) client.resume();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, LOOPBACK, () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the fault proxy has no TCP address");

  return {
    port: address.port,
    url: `http://${LOOPBACK}:${address.port}`,
    cut() {
      for (const link of [...links]) {
        link.closed = true;
        links.delete(link);
        link.client.destroy();
        link.upstream.destroy();
      }
    },
    freeze() {
      for (const link of links) {
        link.frozen = true;
        // Paused sockets are not read: the peers' writes pile up in kernel buffers and nothing reaches the
        // other side, and a FIN or RST from either peer goes unnoticed until the link is thawed.
        link.client.pause();
        link.upstream.pause();
      }
    },
    thaw() {
      for (const link of links) {
        if (!link.frozen) continue;
        link.frozen = false;
        for (const [from, chunks] of link.held) {
          const to = from === link.client ? link.upstream : link.client;
          for (const chunk of chunks.splice(0)) to.write(chunk);
        }
        link.client.resume();
        link.upstream.resume();
      }
    },
    setTarget(port: number) {
      target = port;
    },
    connections: () => links.size,
    accepted: () => acceptedCount,
    async close() {
      for (const link of [...links]) {
        link.closed = true;
        link.client.destroy();
        link.upstream.destroy();
      }
      links.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Copies `from` to `to` with backpressure; a frozen link reads nothing, so it forwards nothing. */
function forward(link: Link, from: Socket, to: Socket): void {
  from.on("data", (chunk: Buffer) => {
    if (link.closed) return;
    if (link.frozen) {
      link.held.get(from)!.push(chunk);
      return;
    }
    if (!to.write(chunk)) from.pause();
  });
  to.on("drain", () => {
    if (!link.frozen && !link.closed) from.resume();
  });
  from.on("end", () => {
    if (!link.closed) to.end();
  });
}
