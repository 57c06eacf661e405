/** `tendril start` (behind `npm start`): the local all-in-one — control plane plus a supervised runner for machine `local`. */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { LOCAL_DIR, readLocalConfig, writeLocalConfig } from "../../local-config.js";
import { TendrilClient } from "../../sdk.js";
import { DEFAULTS } from "../defaults.js";
import { CLI_EXIT } from "../exit-codes.js";
import { describeError } from "../output.js";
import { generateServerToken } from "../server-client.js";
import { Shutdown } from "../signals.js";
import { RunnerSupervisor } from "../supervisor.js";

/** What `tendril start` needs. */
export interface StartOptions {
  /** Port of the local control plane. */
  port: number;
  /** The command line, to find the `tendril` entry script the runner child is started with. */
  argv: string[];
}

/** `tendril start`: control plane + a supervised runner child for machine `local`, until Ctrl-C. */
export async function startAllInOne(options: StartOptions): Promise<number> {
  const shutdown = new Shutdown();
  const cwd = process.cwd();
  // Reusing the saved token keeps the persisted state usable by whoever already holds the token.
  const saved = await readLocalConfig(cwd).catch((error: unknown) => {
    process.stderr.write(`warning: ${describeError(error)}; a new server token will be generated\n`);
    return undefined;
  });
  const serverToken = saved?.serverToken ?? generateServerToken();

  // Loaded lazily (a chunk of its own in dist/) so that the other commands start without it.
  const { startLocalControlPlane } = await import("../../../control-plane/local/launcher.js");
  const controlPlane = await startLocalControlPlane({
    port: options.port,
    serverToken,
    stateDir: resolve(cwd, LOCAL_DIR, "state"),
  }).catch((error: unknown) => {
    throw new Error(`could not start the control plane: ${describeError(error)}`);
  });
  let runner: RunnerSupervisor | undefined;
  try {
    await writeLocalConfig(cwd, { url: controlPlane.url, serverToken });
    const client = new TendrilClient({ url: controlPlane.url, serverToken });
    if (!shutdown.requested) {
      const { runnerToken } = await client.registerMachine(DEFAULTS.localMachineId);
      runner = new RunnerSupervisor({
        entryScript: tendrilEntryScript(options.argv),
        url: controlPlane.url,
        machineId: DEFAULTS.localMachineId,
        runnerToken,
        workDir: resolve(cwd, LOCAL_DIR, "work"),
      });
      shutdown.onForce(() => runner?.kill());
      const connected = await waitForRunner(client, DEFAULTS.localMachineId, shutdown);
      if (!shutdown.requested) printStartBanner(controlPlane.url, serverToken, connected);
    }
    const signal = await shutdown.signal;
    process.stderr.write("stopping the runner and the control plane…\n");
    // Ctrl-C in a terminal signals the whole process group, so the runner child is already stopping:
    // a SIGTERM on top would be its second signal, which forces it out without its graceful stop.
    await runner?.stop(signal === "SIGINT" ? DEFAULTS.runnerSelfStopWaitMs : 0);
  } finally {
    runner?.kill();
    await controlPlane.stop();
  }
  return CLI_EXIT.ok;
}

function printStartBanner(url: string, serverToken: string, runnerConnected: boolean): void {
  const lines = [
    `listening on ${url}`,
    "",
    "Tendril is running on this computer.",
    `  control plane  ${url}`,
    `  server token   ${serverToken}`,
    `  console        ${url}/  (open it in a browser and sign in with the server token)`,
    `  machine        ${DEFAULTS.localMachineId} (${runnerConnected ? "runner connected" : "runner not connected yet"})`,
    `  settings       ${LOCAL_DIR}/local.json (used by the commands below when run in this folder)`,
    "",
    "Try it from another terminal in this folder:",
    `  npx tendril run --machine ${DEFAULTS.localMachineId} -- echo hello`,
    "  npx tendril operator add alice --role operator   (a console token of alice's own; --role viewer to watch only)",
    "",
    "Press Ctrl-C to stop.",
    "",
  ];
  process.stdout.write(lines.join("\n"));
}

/** Polls the machine view until its runner is connected; false when it is not within the wait. */
async function waitForRunner(client: TendrilClient, machineId: string, shutdown: Shutdown): Promise<boolean> {
  const deadline = Date.now() + DEFAULTS.runnerConnectWaitMs;
  while (Date.now() < deadline && !shutdown.requested) {
    const machine = await client.getMachine(machineId).catch(() => undefined);
    if (machine?.runner.connected) return true;
    await delay(100);
  }
  return false;
}

/** The `tendril` entry script to start a runner child with: the package's bin beside the bundle, else the one we were run as. */
function tendrilEntryScript(argv: string[]): string {
  // Bundled, this code is in dist/cli.js (or, should the bundler move it, in dist/chunks/); the package's
  // bin is then `../bin/tendril.js` (or `../../bin/tendril.js`). Run from the sources, neither exists.
  for (const relative of ["../bin/tendril.js", "../../bin/tendril.js"]) {
    const candidate = fileURLToPath(new URL(relative, import.meta.url));
    if (existsSync(candidate)) return candidate;
  }
  const invoked = argv[1];
  if (invoked === undefined) throw new Error("cannot tell which `tendril` script to start the runner with");
  return invoked;
}
