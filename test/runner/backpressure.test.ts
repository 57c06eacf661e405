/**
 * Backpressure and resilience: a script that writes faster than the control plane stores its output never
 * grows the runner's memory without bound and never loses a line. The runner stops reading the script's pipes
 * while too much waits for acknowledgement, so the script blocks on its next write (the pipe's own
 * backpressure); after acknowledgements, reconnects and cuts every line arrives exactly once, in order, and
 * then the exit. The fake control plane stores strictly (a gap or a repeated line is a violation).
 */
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { OutputLine } from "../../shared/protocol.js";
import type { RunnerInput } from "../../runner/index.js";
import { buildCli, type BuiltCli } from "../helpers/built-cli.js";
import { isAlive, killGroup, pidsInGroupNamed } from "../helpers/processes.js";
import {
  runDir,
  setUpRunnerTest,
  startConnectedRunner,
  startTestRunner as startAgainst,
  tearDownRunnerTest,
  waitFor,
  workspaceOf,
  waitForBlockedWriter,
  type FakeConnection,
  type FakeControlPlane,
  type OutputLedger,
  type TestRunner,
} from "./fake-control-plane.js";
import { residentMemory, startRunnerProcess, type RunnerProcess } from "./runner-cli.js";

// ---------------------------------------------------------------------------------------------------
// the 200 MB writer: `yes LINE | head -c 200000000`

const LINE = "0123456789012345678901234567890123456789";
const TOTAL_BYTES = 200_000_000;
const FULL_LINES = Math.floor(TOTAL_BYTES / (LINE.length + 1));
/** `head -c` cuts the last line short, without its newline. */
const TAIL = LINE.slice(0, TOTAL_BYTES - FULL_LINES * (LINE.length + 1));
const LINE_COUNT = FULL_LINES + (TAIL.length > 0 ? 1 : 0);
const MiB = 1024 * 1024;
/**
 * What may land in the spool after it asked for reading to stop: the rest of the pipe read being split (libuv
 * reads at most 64 KiB: about 1,600 of these lines, each counted with its 64-byte overhead), on each of the two
 * pipes.
 */
const SLACK = 512 * 1024;

/**
 * What a wrapped script writes ahead of a runner that stopped reading: one spool generation on disk (4,096 reads of its
 * pipe, 32 MiB at most) and the pipe's buffer; then it blocks.
 */
const SPOOL_AHEAD = 32 * MiB + 64 * 1024;

function yesScript(totalBytes: number): string {
  return `yes ${LINE} | head -c ${totalBytes}`;
}

/** Checks a line of `yes LINE | head -c totalBytes`. */
function yesLines(totalBytes: number) {
  const full = Math.floor(totalBytes / (LINE.length + 1));
  const tail = LINE.slice(0, totalBytes - full * (LINE.length + 1));
  return {
    count: full + (tail.length > 0 ? 1 : 0),
    check: (ticket: string, sequence: number, line: OutputLine): string | undefined => {
      const expected = sequence < full ? LINE : tail;
      if (line.source === "stdout" && line.text === expected) return undefined;
      return `line ${sequence} of ${ticket} is ${line.source} ${JSON.stringify(line.text.slice(0, 80))}`;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// per-test setup

let plane: FakeControlPlane;
let workDir: string;
const runnerProcesses: RunnerProcess[] = [];
let cli: BuiltCli;

beforeAll(async () => {
  cli = await buildCli();
});

afterAll(async () => {
  await cli?.remove();
});

beforeEach(async () => {
  ({ plane, workDir } = await setUpRunnerTest("backpressure"));
});

afterEach(async () => {
  for (const runner of runnerProcesses.splice(0)) await stopRunnerProcess(runner);
  // Every test stops its own scripts; this is the safety net, by pid.
  await tearDownRunnerTest({ plane, workDir });
});

function startTestRunner(overrides: Partial<RunnerInput> = {}): Promise<TestRunner> {
  return startAgainst(plane, workDir, overrides);
}

/** SIGTERM to the runner process's group, SIGKILL if it is still there after a while. */
async function stopRunnerProcess(runner: RunnerProcess): Promise<void> {
  if (!isAlive(runner.pid)) return;
  try {
    process.kill(-runner.pid, "SIGTERM");
  } catch {
    return;
  }
  try {
    await waitFor(() => !isAlive(runner.pid), "the runner process to stop", 5_000);
  } catch {
    killGroup(runner.pid);
  }
}

/** Cuts the connection each time the stored lines pass the next threshold, in one of the ways given. */
function cutAt(thresholds: number[], ways: Array<(connection: FakeConnection) => void>): { done: () => number } {
  const pending = [...thresholds];
  const how = [...ways];
  let done = 0;
  plane.onStored = (connection: FakeConnection, ledger: OutputLedger) => {
    if (pending.length === 0 || ledger.next < pending[0]!) return;
    pending.shift();
    done += 1;
    how.shift()!(connection);
  };
  return { done: () => done };
}

// ---------------------------------------------------------------------------------------------------

describe("runner backpressure", () => {
  it(
    "holds at most maxUnackedBytes of a 200 MB writer's output and blocks the writer while nothing is acknowledged, then delivers every line once, in order, and the exit",
    async () => {
      const mark = 1 * MiB;
      const lines = yesLines(TOTAL_BYTES);
      plane.keepOutputFrames = false;
      plane.welcomeFromLedger = true;
      plane.checkLine = lines.check;
      const { handle } = await startTestRunner({ maxUnackedBytes: mark });
      let peakHeld = 0;
      const sampler = setInterval(() => {
        for (const script of handle.stats().scripts) peakHeld = Math.max(peakHeld, script.peakHeldBytes);
      }, 5);
      try {
        const connection = await plane.connection(1);
        await waitFor(() => handle.connected, "the welcome");
        connection.dispatch("t1", 1, yesScript(TOTAL_BYTES));
        const { pid } = await connection.frame("started");
        const head = await waitFor(() => pidsInGroupNamed(pid, "head")[0], "the script's head process");

        const written = await waitForBlockedWriter(head, "head to block on its full output");
        const [script] = handle.stats().scripts;
        expect(script).toMatchObject({ ticket: "t1", outputPaused: true });
        expect(script!.heldBytes).toBeGreaterThan(mark / 2);
        expect(script!.peakHeldBytes).toBeLessThanOrEqual(mark + SLACK);
        // Sent ahead of the acknowledgements: at most half the mark, plus one batch.
        expect(script!.inFlightBytes).toBeLessThanOrEqual(mark / 2 + MiB);
        expect(written).toBeLessThan(mark + SPOOL_AHEAD + MiB);
        expect(connection.all("exit")).toEqual([]);
        expect(isAlive(pid)).toBe(true);
        const ledger = plane.ledger("t1", 1);
        expect(ledger.next).toBeLessThan(LINE_COUNT / 20);

        // Acknowledgements resume: the first one covers what was stored meanwhile, then every frame gets one.
        plane.autoAck = true;
        connection.send({ type: "ack", ticket: "t1", fence: 1, nextSequence: ledger.next });
        await waitFor(() => ledger.exits[0], "the exit", 150_000);
        expect(ledger.violations).toEqual([]);
        expect(ledger.next).toBe(LINE_COUNT);
        expect(ledger.exits).toEqual([{ type: "exit", ticket: "t1", fence: 1, lineCount: LINE_COUNT, outcome: { kind: "exited", code: 0 } }]);
        expect(connection.invalid).toEqual([]);
        expect(peakHeld).toBeLessThanOrEqual(mark + SLACK);
        console.info(`in-process runner, maxUnackedBytes ${mark}: peak held ${peakHeld} bytes; ${ledger.frames} output frames`);
      } finally {
        clearInterval(sampler);
      }
    },
    200_000,
  );

  it(
    "keeps a real runner process's memory bounded while a 200 MB writer is not acknowledged, and delivers every line once, in order, across 3 connection cuts",
    async () => {
      const lines = yesLines(TOTAL_BYTES);
      plane.keepOutputFrames = false;
      plane.welcomeFromLedger = true;
      plane.checkLine = lines.check;
      const runner = startRunnerProcess(cli.bin, plane.url, "m1", "runner-token", workDir);
      runnerProcesses.push(runner);
      const first = await plane.connection(1, 20_000);
      await first.frame("hello", () => true, 20_000);
      const baseline = await residentMemory(runner.pid);
      first.dispatch("t1", 1, yesScript(TOTAL_BYTES));
      const { pid } = await first.frame("started", () => true, 10_000);
      const head = await waitFor(() => pidsInGroupNamed(pid, "head")[0], "the script's head process");

      const written = await waitForBlockedWriter(head, "head to block on its full output");
      const blocked = await residentMemory(runner.pid);
      const ledger = plane.ledger("t1", 1);
      expect(written).toBeLessThan(8 * MiB + SPOOL_AHEAD + MiB);
      expect(ledger.next).toBeLessThan(LINE_COUNT / 10);
      expect(first.all("exit")).toEqual([]);
      // Held back: the default 8 MiB of output (estimated with per-line overhead) and at most 4 MiB of socket buffer.
      expect(blocked.peak).toBeLessThan(baseline.rss + 100 * MiB);

      // Acknowledgements resume; the control plane cuts the connection three times in the middle of the stream.
      const cuts = cutAt(
        [0.25, 0.5, 0.75].map((fraction) => Math.floor(LINE_COUNT * fraction)),
        [(c) => c.cut("terminate"), (c) => c.cut(1011), (c) => c.cut(1001)],
      );
      plane.autoAck = true;
      first.send({ type: "ack", ticket: "t1", fence: 1, nextSequence: ledger.next });
      await waitFor(() => ledger.exits[0], "the exit", 180_000);
      const end = await residentMemory(runner.pid);

      expect(cuts.done()).toBe(3);
      expect(plane.connections).toHaveLength(4);
      expect(ledger.violations).toEqual([]);
      expect(ledger.next).toBe(LINE_COUNT);
      expect(ledger.exits).toEqual([{ type: "exit", ticket: "t1", fence: 1, lineCount: LINE_COUNT, outcome: { kind: "exited", code: 0 } }]);
      expect(plane.connections.every((connection) => connection.invalid.length === 0)).toBe(true);
      // While output flows at full speed, garbage the collector has not reclaimed yet (frames, buffers) swells the
      // resident set (the live heap after a collection stays near 15 MB), but it does not grow with the volume:
      // 200 MB of lines held as objects would take well over 500 MB.
      expect(end.peak).toBeLessThan(320 * MiB);
      console.info(
        `tendril runner process: RSS ${mb(baseline.rss)} before the script, ${mb(blocked.rss)} while blocked (peak ${mb(blocked.peak)}), peak ${mb(end.peak)} after 200 MB and 3 cuts`,
      );
    },
    240_000,
  );

  it("fills the spool only up to maxUnackedBytes while disconnected, blocks the writer, and sends the rest after the reconnect from the welcome's nextSequence", async () => {
    const mark = 256 * 1024;
    // More than the spool lets a writer get ahead.
    const total = 48_000_000;
    const lines = yesLines(total);
    plane.keepOutputFrames = false;
    plane.welcomeFromLedger = true;
    plane.autoAck = true;
    // Line 0 is "ready"; the writer's lines follow it.
    plane.checkLine = (ticket, sequence, line) =>
      sequence === 0 ? (line.text === "ready" ? undefined : `line 0 is ${JSON.stringify(line.text)}`) : lines.check(ticket, sequence - 1, line);
    const { handle, connection: first } = await startConnectedRunner(plane, workDir, { maxUnackedBytes: mark });
    first.dispatch("t1", 1, `echo ready; while [ ! -e go ]; do sleep 0.02; done; ${yesScript(total)}`);
    const { pid } = await first.frame("started");
    const ledger = plane.ledger("t1", 1);
    await waitFor(() => ledger.next === 1, "the first line");

    plane.acceptUpgrades = false;
    first.cut("terminate");
    await waitFor(() => !handle.connected, "the runner to notice the cut");
    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    const head = await waitFor(() => pidsInGroupNamed(pid, "head")[0], "the script's head process");
    await waitForBlockedWriter(head, "head to block while the runner is disconnected");
    const [script] = handle.stats().scripts;
    expect(script).toMatchObject({ outputPaused: true, firstUnacknowledged: 1 });
    expect(script!.peakHeldBytes).toBeLessThanOrEqual(mark + SLACK);
    expect(plane.connections).toHaveLength(1);
    expect(ledger.next).toBe(1);

    plane.acceptUpgrades = true;
    await waitFor(() => ledger.exits[0], "the exit", 60_000);
    expect(ledger.violations).toEqual([]);
    expect(ledger.next).toBe(lines.count + 1);
    expect(ledger.exits).toEqual([{ type: "exit", ticket: "t1", fence: 1, lineCount: lines.count + 1, outcome: { kind: "exited", code: 0 } }]);
  }, 90_000);

  it("reports the exit only after every line of a script that exited while its output was paused", async () => {
    // Whole lines in both parts: the first is read until the spool pauses reading (at least the 16 KiB mark of it), the
    // second is written only then, so the script exits with it unread: what is left of the first and the second fit
    // in the FIFO's 64 KiB together.
    const lineBytes = LINE.length + 1;
    const first = lineBytes * Math.floor(40_000 / lineBytes);
    const second = lineBytes * Math.floor(30_000 / lineBytes);
    const lines = yesLines(first + second);
    plane.keepOutputFrames = false;
    plane.welcomeFromLedger = true;
    plane.checkLine = lines.check;
    // With pipeDrainMs at 1 ms, an exit reported after that wait would come long before the unread output.
    const { handle, connection } = await startConnectedRunner(plane, workDir, { maxUnackedBytes: 16 * 1024, pipeDrainMs: 1 });
    connection.dispatch("t1", 1, `${yesScript(first)}; while [ ! -f go ]; do sleep 0.01; done; ${yesScript(second)}; exit 3`);
    const { pid } = await connection.frame("started");
    await waitFor(() => handle.stats().scripts[0]?.outputPaused === true, "the spool to pause reading");
    await writeFile(join(workspaceOf(workDir, "t1"), "go"), "");
    // Its wrapper writes the exit status once the script's shell has ended (and waits for the runner to read the rest).
    await waitFor(() => existsSync(join(runDir(workDir, "t1"), "exit")), "the script to exit with output still unread");
    expect(isAlive(pid)).toBe(true);
    const [script] = handle.stats().scripts;
    expect(script).toMatchObject({ outputPaused: true, phase: "running" });
    expect(script!.nextSequence).toBeLessThan(lines.count);
    expect(connection.all("exit")).toEqual([]);

    plane.autoAck = true;
    const ledger = plane.ledger("t1", 1);
    connection.send({ type: "ack", ticket: "t1", fence: 1, nextSequence: ledger.next });
    await waitFor(() => ledger.exits[0], "the exit");
    expect(ledger.violations).toEqual([]);
    expect(ledger.exits).toEqual([{ type: "exit", ticket: "t1", fence: 1, lineCount: lines.count, outcome: { kind: "exited", code: 3 } }]);
  });

  it("stops handing the socket output frames while its send buffer holds maxSocketBufferBytes, and goes on once it drains", async () => {
    const limit = 256 * 1024;
    const total = 40_000_000;
    const lines = yesLines(total);
    plane.keepOutputFrames = false;
    plane.welcomeFromLedger = true;
    plane.autoAck = true;
    plane.checkLine = lines.check;
    // A control plane that stops reading is silent too: keep the dead-connection limit out of the way.
    const { handle } = await startTestRunner({ maxUnackedBytes: 64 * MiB, maxSocketBufferBytes: limit, heartbeatMs: 10_000, deadAfterMs: 120_000 });
    let peakBuffered = 0;
    const sampler = setInterval(() => {
      peakBuffered = Math.max(peakBuffered, handle.stats().socketBufferedBytes);
    }, 2);
    try {
      const connection = await plane.connection(1);
      await waitFor(() => handle.connected, "the welcome");
      connection.tcp.pause();
      connection.dispatch("t1", 1, yesScript(total));
      await waitFor(() => handle.stats().socketBufferedBytes >= limit, "the socket's send buffer to reach the limit", 30_000);
      // The rest waits in the spool, not in the socket.
      await waitFor(() => (handle.stats().scripts[0]?.heldBytes ?? 0) > 4 * limit, "output to wait in the spool");
      // One frame (at most 960 KiB of output and its header) may go in below the limit.
      expect(handle.stats().socketBufferedBytes).toBeLessThan(limit + MiB);

      connection.tcp.resume();
      const ledger = plane.ledger("t1", 1);
      await waitFor(() => ledger.exits[0], "the exit", 60_000);
      expect(ledger.violations).toEqual([]);
      expect(ledger.next).toBe(lines.count);
      expect(peakBuffered).toBeLessThan(limit + MiB);
    } finally {
      clearInterval(sampler);
    }
  }, 90_000);
});

describe("runner delivery across connection cuts", () => {
  it("delivers 20,000 numbered lines exactly once and in order across 5 connection cuts of different kinds", async () => {
    const pad = "x".repeat(90);
    plane.keepOutputFrames = false;
    plane.welcomeFromLedger = true;
    plane.autoAck = true;
    plane.checkLine = (ticket, sequence, line) =>
      line.source === "stdout" && line.text === `line ${sequence} ${pad}` ? undefined : `line ${sequence} of ${ticket} is ${JSON.stringify(line.text)}`;
    const { handle, logs } = await startTestRunner({ heartbeatMs: 50, deadAfterMs: 400 });
    const cuts = cutAt(
      [3_000, 6_000, 9_000, 12_000, 15_000],
      [
        (c) => c.cut("terminate"),
        (c) => c.cut(1001),
        (c) => c.cut(1011),
        (c) => c.cut(4409),
        // Half-open: the control plane goes silent without closing; the runner must notice by itself.
        (c) => c.freeze(),
      ],
    );
    const connection = await plane.connection(1);
    await waitFor(() => handle.connected, "the welcome");
    connection.dispatch("t1", 1, `for ((i = 0; i < 20000; i++)); do echo "line $i ${pad}"; if (( i % 500 == 499 )); then sleep 0.01; fi; done`);
    const ledger = plane.ledger("t1", 1);
    await waitFor(() => ledger.exits[0], "the exit", 30_000);

    expect(cuts.done()).toBe(5);
    expect(plane.connections).toHaveLength(6);
    expect(ledger.violations).toEqual([]);
    expect(ledger.next).toBe(20_000);
    expect(ledger.exits).toEqual([{ type: "exit", ticket: "t1", fence: 1, lineCount: 20_000, outcome: { kind: "exited", code: 0 } }]);
    expect(logs.some((line) => line.includes("No frame from the control plane for 400 ms"))).toBe(true);
    expect(plane.connections.every((c) => c.invalid.length === 0)).toBe(true);
    // `started` arrived on the first connection and an ack proved it: never repeated.
    expect(plane.connections.flatMap((c) => c.all("started"))).toHaveLength(1);
  }, 60_000);
});

function mb(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}
