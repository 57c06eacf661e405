/** `tendril control-plane`: the control plane alone, on this computer (workerd via Miniflare). */
import { resolve } from "node:path";
import { nonEmpty } from "../args.js";
import { CLI_EXIT } from "../exit-codes.js";
import { describeError } from "../output.js";
import { generateServerToken } from "../server-client.js";
import { Shutdown } from "../signals.js";

/** Flags of `tendril control-plane`. */
export interface ControlPlaneFlags {
  port: number;
  host: string;
  serverToken?: string;
  /** A second server token accepted while set (rotation). */
  serverTokenNext?: string;
  stateDir: string;
  /** Retention of completed scripts, in ms. */
  retention?: number;
  /** Output cap per script, in bytes. */
  maxOutput?: number;
  /** How long the audit feed keeps an event, in ms. */
  auditRetention?: number;
}

/** `tendril control-plane`: the local control plane alone, until SIGINT/SIGTERM. */
export async function runControlPlane(flags: ControlPlaneFlags): Promise<number> {
  const shutdown = new Shutdown();
  const given = flags.serverToken ?? nonEmpty(process.env.TENDRIL_SERVER_TOKEN);
  const serverToken = given ?? generateServerToken();
  const serverTokenNext = flags.serverTokenNext ?? nonEmpty(process.env.TENDRIL_SERVER_TOKEN_NEXT);
  // Loaded lazily (a chunk of its own in dist/) so that the other commands start without it.
  const { startLocalControlPlane } = await import("../../../control-plane/local/launcher.js");
  const controlPlane = await startLocalControlPlane({
    port: flags.port,
    host: flags.host,
    serverToken,
    ...(serverTokenNext === undefined ? {} : { serverTokenNext }),
    stateDir: resolve(flags.stateDir),
    ...(flags.retention === undefined ? {} : { retentionMs: flags.retention }),
    ...(flags.maxOutput === undefined ? {} : { maxOutputBytes: flags.maxOutput }),
    ...(flags.auditRetention === undefined ? {} : { auditRetentionMs: flags.auditRetention }),
  }).catch((error: unknown) => {
    throw new Error(`could not start the control plane: ${describeError(error)}`);
  });
  try {
    if (given === undefined) process.stdout.write(`server token: ${serverToken}\n`);
    process.stdout.write(`listening on ${controlPlane.url}\n`);
    await shutdown.signal;
  } finally {
    await controlPlane.stop();
  }
  return CLI_EXIT.ok;
}
