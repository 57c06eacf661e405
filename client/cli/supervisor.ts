/**
 * The runner child of the local all-in-one (`tendril start`): started with this Node binary, its output
 * prefixed `[runner]`, restarted after a short delay when it dies unexpectedly (a bounded number of
 * times), and stopped with SIGTERM then SIGKILL. Should this process end without stopping it (SIGKILL, a crash), the
 * runner child gets SIGTERM (orphan-guard.ts): it drains, leaving its scripts to the next runner to re-attach to.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { guardOrphan } from "../../control-plane/local/orphan-guard.js";
import { formatDuration } from "../durations.js";
import { DEFAULTS } from "./defaults.js";
import { CLI_EXIT } from "./exit-codes.js";
import { prefixLines } from "./output.js";

/** What the runner supervisor starts. */
export interface RunnerSupervisorOptions {
  /** The `tendril` entry script (bin/tendril.js), run with this Node binary. */
  entryScript: string;
  /** The control plane's base URL. */
  url: string;
  /** The machine the runner serves. */
  machineId: string;
  /** Passed through the environment, not argv, so it does not show up in `ps`. */
  runnerToken: string;
  /** The runner's work folder. */
  workDir: string;
}

/** Keeps one runner child process alive until stopped. */
export class RunnerSupervisor {
  private child: ChildProcess | undefined;
  private stopping = false;
  private restarts = 0;
  private restartTimer: NodeJS.Timeout | undefined;

  /** Starts the first runner child. */
  constructor(private readonly options: RunnerSupervisorOptions) {
    this.spawn();
  }

  /** Stops the runner child: lets it exit by itself for `selfStopWaitMs`, then SIGTERM, a bounded wait, SIGKILL. */
  async stop(selfStopWaitMs: number): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || hasExited(child)) return;
    if (selfStopWaitMs > 0 && (await waitForExit(child, selfStopWaitMs))) return;
    child.kill("SIGTERM");
    if (await waitForExit(child, DEFAULTS.runnerStopGraceMs)) return;
    process.stderr.write(`the runner did not stop within ${formatDuration(DEFAULTS.runnerStopGraceMs)}; killing it\n`);
    child.kill("SIGKILL");
    await waitForExit(child, 2_000);
  }

  /** Kills the runner child at once (forced exit); no restarts afterwards. */
  kill(): void {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    if (this.child && !hasExited(this.child)) this.child.kill("SIGKILL");
  }

  private spawn(): void {
    const { entryScript, url, machineId, runnerToken, workDir } = this.options;
    const startedAt = Date.now();
    const child = spawn(
      process.execPath,
      [entryScript, "runner", "--url", url, "--machine", machineId, "--work-dir", workDir],
      { env: { ...process.env, TENDRIL_RUNNER_TOKEN: runnerToken }, stdio: ["ignore", "pipe", "pipe"] },
    );
    this.child = child;
    const guard = child.pid === undefined ? undefined : guardOrphan(child.pid, { signal: "TERM" });
    child.once("exit", () => void guard?.stop());
    prefixLines(child.stdout, process.stdout, "[runner] ");
    prefixLines(child.stderr, process.stderr, "[runner] ");
    child.on("error", (error) => process.stderr.write(`[runner] could not start: ${error.message}\n`));
    child.on("exit", (code, signal) => {
      if (this.stopping) return;
      if (Date.now() - startedAt > DEFAULTS.runnerStableAfterMs) this.restarts = 0;
      // Ctrl-C in the terminal reaches the child too, and it may exit before our own SIGINT handler has
      // run; deciding after the delay keeps a normal shutdown from looking like a crash.
      this.restartTimer = setTimeout(() => this.restartAfterExit(code, signal), DEFAULTS.runnerRestartDelayMs);
    });
  }

  private restartAfterExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stopping) return;
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    if (code === CLI_EXIT.runnerFatal) {
      process.stderr.write(
        `[start] the runner ${how} and stopped for good (its token was revoked or replaced, e.g. by \`tendril register ${this.options.machineId}\`); ` +
          "the control plane keeps running; restart `npm start` to get a runner again\n",
      );
      return;
    }
    if (this.restarts >= DEFAULTS.runnerMaxRestarts) {
      process.stderr.write(
        `[start] the runner ${how}; it failed ${this.restarts + 1} times in a row, so it is not restarted again ` +
          "(the control plane keeps running; restart `npm start` to try again)\n",
      );
      return;
    }
    this.restarts++;
    process.stderr.write(
      `[start] the runner ${how} unexpectedly; restarting it (attempt ${this.restarts} of ${DEFAULTS.runnerMaxRestarts})\n`,
    );
    this.spawn();
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Waits for a child to exit; false when it has not within `ms`. */
function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (hasExited(child)) return Promise.resolve(true);
  return new Promise((resolveExit) => {
    const timer = setTimeout(() => resolveExit(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolveExit(true);
    });
  });
}
