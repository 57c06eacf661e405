/**
 * Runs the control plane locally: the built Worker (dist/worker.js) on workerd through Miniflare, with
 * the same bindings as wrangler.toml and Durable Object state persisted under a folder.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { allPids, readCommandLine, readParentPid } from "../../runner/containment.js";
import { guardOrphan } from "./orphan-guard.js";

const STOP_SIGNALS = ["SIGINT", "SIGTERM"] as const;

/** Options for a local control plane. */
export interface LocalControlPlaneOptions {
  /** TCP port on `host`; 0 picks a free one. */
  port: number;
  /** Address to listen on; loopback unless told otherwise. */
  host?: string;
  /** The server API's bearer token. */
  serverToken: string;
  /** A second server token accepted beside it while set (rotation without downtime). */
  serverTokenNext?: string;
  /** Folder for persisted Durable Object state. */
  stateDir: string;
  /** How long completed scripts the server never deleted are kept, in ms (the Worker's default: 7 days). */
  retentionMs?: number;
  /** Most output stored per script, in bytes (the Worker's default: 100 MiB). */
  maxOutputBytes?: number;
  /** How long the audit feed keeps an event, in ms (the Worker's default: 90 days). */
  auditRetentionMs?: number;
}

/** A running local control plane. */
export interface LocalControlPlane {
  /** Base URL, e.g. `http://127.0.0.1:8787`. */
  url: string;
  /** Stops workerd and waits for it. */
  stop(): Promise<void>;
}

/** The project folder (holding wrangler.toml and dist/), found from this module's location. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "wrangler.toml")) && existsSync(join(dir, "package.json"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the Tendril project folder (wrangler.toml)");
    dir = parent;
  }
}

/** The compatibility date from wrangler.toml, so that local and deployed Workers agree. */
export function compatibilityDate(root: string): string {
  const toml = readFileSync(join(root, "wrangler.toml"), "utf8");
  const match = /^compatibility_date\s*=\s*"(\d{4}-\d{2}-\d{2})"/m.exec(toml);
  if (!match?.[1]) throw new Error("wrangler.toml has no compatibility_date");
  return match[1];
}

/** Starts the control plane and resolves once it accepts requests. */
export async function startLocalControlPlane(options: LocalControlPlaneOptions): Promise<LocalControlPlane> {
  const root = projectRoot();
  const scriptPath = join(root, "dist", "worker.js");
  if (!existsSync(scriptPath)) throw new Error(`${scriptPath} is missing; run \`npm run build\` first`);
  const host = options.host ?? "127.0.0.1";
  // workerd dies with a raw fatal trace (kj::Exception ... Address already in use) when its port is taken, and
  // Miniflare prints it before its own message: try the port first, so that the only thing said is what to do.
  if (options.port !== 0) await assertPortFree(host, options.port);
  const persist = resolve(options.stateDir, "durable-objects");
  mkdirSync(persist, { recursive: true });
  // Loaded here, not at the top: every other `tendril` command would otherwise pay for loading Miniflare.
  const { Miniflare } = await import("miniflare");
  const before = new Map(STOP_SIGNALS.map((signal) => [signal, process.listeners(signal)]));
  // Miniflare makes a folder of its own in the temporary folder and, once stopped, removes it without waiting: a
  // process that exits right after stopping left one behind every time. It is made inside a folder of ours instead,
  // which `stop()` removes once workerd is gone.
  const scratch = mkdtempSync(join(tmpdir(), "tendril-workerd-"));
  const removeScratch = () => rmSync(scratch, { recursive: true, force: true });
  const settings = {
    modules: true,
    scriptPath,
    modulesRoot: dirname(scriptPath),
    compatibilityDate: compatibilityDate(root),
    durableObjects: {
      MACHINE: { className: "MachineObject", useSQLite: true },
      REGISTRY: { className: "RegistryObject", useSQLite: true },
    },
    bindings: {
      SERVER_TOKEN: options.serverToken,
      ...(options.serverTokenNext === undefined ? {} : { SERVER_TOKEN_NEXT: options.serverTokenNext }),
      ...(options.auditRetentionMs === undefined ? {} : { AUDIT_RETENTION_MS: String(options.auditRetentionMs) }),
      ...(options.retentionMs === undefined ? {} : { SCRIPT_RETENTION_MS: String(options.retentionMs) }),
      ...(options.maxOutputBytes === undefined ? {} : { MAX_SCRIPT_OUTPUT_BYTES: String(options.maxOutputBytes) }),
      // The benchmark's stage timestamps (bench/breakdown.mjs); never set otherwise.
      ...(process.env.TENDRIL_TRACE === "1" ? { TENDRIL_TRACE: "1" } : {}),
    },
    durableObjectsPersist: persist,
    // Requests reach the Worker on a socket of its own: Miniflare's entry worker, which would otherwise sit in front
    // of it, emulates Cloudflare's edge (gzip for JSON, request logging, pretty error pages) at about 1 ms a request
    // here, most of it in the client's decompression. Its own socket stays on loopback, unused.
    unsafeDirectSockets: [{ host, port: options.port }],
    host: "127.0.0.1",
    port: 0,
    logRequests: false,
    cf: false,
  };
  let mf: InstanceType<typeof Miniflare> | undefined;
  let url: string;
  const earlier = workerdChildren();
  try {
    mf = inTemporaryFolder(scratch, () => new Miniflare(settings));
    await mf.ready;
    url = (await mf.unsafeGetDirectURL()).origin;
  } catch (error) {
    await mf?.dispose().catch(() => undefined);
    removeScratch();
    throw error;
  }
  const started = mf;
  // The workerd that appeared meanwhile is this one's. Another launch overlapping this one in the same process may be
  // guarded here too, which is harmless: a guard kills only a workerd that is still the same process, and only once this
  // process is gone.
  const guards = [...workerdChildren()].filter((pid) => !earlier.has(pid)).flatMap((pid) => guardOrphan(pid, { signal: "KILL", remove: scratch }) ?? []);
  // Miniflare installs SIGINT/SIGTERM handlers that dispose workerd and exit the process at once. The
  // embedder decides how to stop (it calls `stop()`), so those handlers are taken away again.
  for (const signal of STOP_SIGNALS) {
    for (const listener of process.listeners(signal)) {
      if (!before.get(signal)!.includes(listener)) process.removeListener(signal, listener);
    }
  }
  return {
    url,
    stop: async () => {
      // The guards go first: once workerd has exited, its pid may name another process.
      await Promise.all(guards.map((guard) => guard.stop()));
      try {
        await started.dispose();
      } finally {
        removeScratch();
      }
    },
  };
}

/** This process's children that run workerd, by pid; none without /proc. */
function workerdChildren(): Set<number> {
  let pids: number[];
  try {
    pids = allPids();
  } catch {
    return new Set();
  }
  return new Set(pids.filter((pid) => readParentPid(pid) === process.pid && readCommandLine(pid)?.[0]?.endsWith("/workerd") === true));
}

/** Runs `make` with the temporary folder (`os.tmpdir()`, which reads TMPDIR) set to `folder`, then sets it back. */
function inTemporaryFolder<T>(folder: string, make: () => T): T {
  const before = process.env.TMPDIR;
  process.env.TMPDIR = folder;
  try {
    return make();
  } finally {
    if (before === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = before;
  }
}

/** Resolves when `host:port` can be listened on now; otherwise throws an Error that says what to do. */
export function assertPortFree(host: string, port: number): Promise<void> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "EADDRINUSE") {
        reject(
          new Error(
            `${host}:${port} is already in use (is another \`npm start\` or \`tendril control-plane\` running?); ` +
              "stop it, or choose another port with --port",
          ),
        );
      } else if (error.code === "EACCES") {
        reject(new Error(`not allowed to listen on ${host}:${port}; choose a port above 1023 with --port`));
      } else if (error.code === "EADDRNOTAVAIL") {
        reject(new Error(`cannot listen on ${host}: it is not an address of this computer`));
      } else reject(error);
    });
    // `exclusive` keeps Node's cluster module from sharing a handle; the probe must really own the port.
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolvePort()));
  });
}
