// Output in binary block frames, sent by hand to the real control plane on workerd: what is stored and read
// back, resends that overlap a block, the output cap, blocks too long for one row, and frames that lie.
import { describe, expect, it } from "vitest";
import { CloseCode, encodeOutputFrame, type ByteBlock } from "../../shared/protocol.js";
import { openRunnerSocket } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

/** An output cap one test crosses and another stays under. */
const MAX_OUTPUT = 2 * 1024 * 1024;
const f = useControlPlane({ args: ["--max-output", String(MAX_OUTPUT)] });
const OCCURRED = "2026-11-26T08:00:00.000Z";

/** A block of lines, as the runner holds it. */
function block(source: ByteBlock["source"], lines: string[] | string, count?: number): ByteBlock {
  const text = Array.isArray(lines) ? lines.join("\n") : lines;
  return { source, occurred: OCCURRED, count: count ?? (Array.isArray(lines) ? lines.length : 1), bytes: Buffer.from(text, "utf8") };
}

/** A hand-driven runner connection that has been welcomed. */
async function connectRunner(machineId: string) {
  const { ws, messages, closed, send } = await openRunnerSocket(f.cp, machineId, await f.register(machineId));
  send({ type: "hello", protocol: 1, runnerId: `r-${machineId}`, version: "0.1.0", capabilities: ["script.v1"], inventory: [] });
  await waitFor(() => messages.some((m) => m.type === "welcome"), { what: "welcome" });
  return {
    ws,
    messages,
    closed,
    next: (predicate: (m: any) => boolean, what: string) => waitFor(() => messages.find(predicate), { what }),
    json: send,
    /** Sends an output frame of blocks, as one binary message, split into fragments like the runner does. */
    output(ticket: string, fence: number, sequence: number, blocks: ByteBlock[]) {
      const parts = encodeOutputFrame({ ticket, fence, sequence, blocks });
      parts.forEach((part, i) => ws.send(part, { binary: true, fin: i === parts.length - 1 }));
    },
    /** Waits for the ack that says the control plane stored lines up to `nextSequence`. */
    acked: (ticket: string, nextSequence: number) =>
      waitFor(() => messages.some((m) => m.type === "ack" && m.ticket === ticket && m.nextSequence === nextSequence), { what: `ack ${nextSequence}` }),
  };
}

/** Starts a script on the machine and returns the dispatch the hand-driven runner received. */
async function dispatched(runner: Awaited<ReturnType<typeof connectRunner>>, machineId: string, ticket: string) {
  const started = await f.api("POST", `/api/v1/machines/${machineId}/scripts`, { ticket, scriptBody: "true" });
  expect(started.status).toBe(201);
  const dispatch = await runner.next((m) => m.type === "dispatch" && m.ticket === ticket, `dispatch of ${ticket}`);
  runner.json({ type: "started", ticket, fence: dispatch.fence, pid: 4242 });
  return dispatch.fence as number;
}

const logs = async (machineId: string, ticket: string, query = "") =>
  (await f.api("GET", `/api/v1/machines/${machineId}/scripts/${ticket}${query}`)).body as {
    logs: Array<{ sequence: number; source: string; text: string; occurred: string }>;
    nextLogSequence: number;
  };

describe("binary output frames", () => {
  it("stores every line of every block in order, with its source and time, and reads pages that start inside a block", async () => {
    const m = f.machine();
    const runner = await connectRunner(m);
    const fence = await dispatched(runner, m, "t1");
    runner.output("t1", fence, 0, [block("stdout", ["one", "", "thrée"]), block("stderr", ["oops"]), block("stdout", "x\ny", 2)]);
    await runner.acked("t1", 6);
    const all = await logs(m, "t1");
    expect(all.logs.map((l) => [l.sequence, l.source, l.text])).toEqual([
      [0, "stdout", "one"],
      [1, "stdout", ""],
      [2, "stdout", "thrée"],
      [3, "stderr", "oops"],
      [4, "stdout", "x"],
      [5, "stdout", "y"],
    ]);
    expect(new Set(all.logs.map((l) => l.occurred))).toEqual(new Set([OCCURRED]));
    const page = await logs(m, "t1", "?logSequence=1&limit=3");
    expect(page.logs.map((l) => l.sequence)).toEqual([1, 2, 3]);
    expect(page.nextLogSequence).toBe(4);
    runner.json({ type: "exit", ticket: "t1", fence, lineCount: 6, outcome: { kind: "exited", code: 0 } });
    const done = await f.completed(m, "t1");
    expect(done.exitCode).toBe(0);
    runner.ws.close();
  });

  it("stores a resend that starts inside a stored block once: only the lines it did not have", async () => {
    const m = f.machine();
    const runner = await connectRunner(m);
    const fence = await dispatched(runner, m, "t1");
    runner.output("t1", fence, 0, [block("stdout", ["l0", "l1", "l2", "l3", "l4"])]);
    await runner.acked("t1", 5);
    // Lines 3..6: 3 and 4 again, then two new ones.
    runner.output("t1", fence, 3, [block("stdout", ["l3", "l4", "l5"]), block("stderr", ["e6"])]);
    await runner.acked("t1", 7);
    expect((await logs(m, "t1")).logs.map((l) => `${l.sequence}:${l.text}`)).toEqual(["0:l0", "1:l1", "2:l2", "3:l3", "4:l4", "5:l5", "6:e6"]);
    runner.ws.close();
  });

  it("decodes bytes that are not UTF-8 to U+FFFD", async () => {
    const m = f.machine();
    const runner = await connectRunner(m);
    const fence = await dispatched(runner, m, "t1");
    runner.output("t1", fence, 0, [{ source: "stdout", occurred: OCCURRED, count: 2, bytes: new Uint8Array([0x61, 0xff, 0x0a, 0xe2, 0x82]) }]);
    await runner.acked("t1", 2);
    expect((await logs(m, "t1")).logs.map((l) => l.text)).toEqual(["a\ufffd", "\ufffd"]);
    runner.ws.close();
  });

  it("stores a block too long for one row line by line, every line whole", async () => {
    const m = f.machine();
    const runner = await connectRunner(m);
    const fence = await dispatched(runner, m, "t1");
    // 1.8 M characters: over the 512 Ki-character row limit of a block, under the output cap.
    const lines = Array.from({ length: 3 }, (_, i) => `${i}`.padEnd(600 * 1024, "z"));
    runner.output("t1", fence, 0, [block("stdout", lines)]);
    await runner.acked("t1", 3);
    const texts: string[] = [];
    for (let sequence = 0; sequence < 3; ) {
      const page = await logs(m, "t1", `?logSequence=${sequence}`);
      texts.push(...page.logs.map((l) => l.text));
      sequence = page.nextLogSequence;
    }
    expect(texts).toEqual(lines);
    runner.ws.close();
  });

  it("stops storing at the output cap inside a block, says so once, and still counts every line", async () => {
    const m = f.machine();
    const runner = await connectRunner(m);
    const fence = await dispatched(runner, m, "t1");
    const lines = Array.from({ length: 100 }, (_, i) => `line ${i} `.padEnd(30_000, "."));
    runner.output("t1", fence, 0, [block("stdout", lines.slice(0, 30))]);
    await runner.acked("t1", 30);
    runner.output("t1", fence, 30, [block("stdout", lines.slice(30))]);
    await runner.acked("t1", 100);
    runner.json({ type: "exit", ticket: "t1", fence, lineCount: 100, outcome: { kind: "exited", code: 0 } });
    await f.completed(m, "t1");
    const stored: Array<{ source: string; text: string }> = [];
    for (let sequence = 0; ; ) {
      const page = await logs(m, "t1", `?logSequence=${sequence}`);
      if (page.logs.length === 0) break;
      stored.push(...page.logs);
      sequence = page.nextLogSequence;
    }
    const kept = Math.floor(MAX_OUTPUT / 30_000);
    expect(stored.filter((l) => l.source === "stdout").map((l) => l.text)).toEqual(lines.slice(0, kept));
    expect(stored.filter((l) => l.source === "debug").map((l) => l.text)).toEqual([expect.stringMatching(/^Output truncated: this script wrote more than 2097152 bytes/)]);
    runner.ws.close();
  });

  it("counts the output cap in UTF-8 bytes: output outside ASCII stops at the cap's bytes, not at as many characters (bug 12)", async () => {
    const m = f.machine();
    const runner = await connectRunner(m);
    const fence = await dispatched(runner, m, "t1");
    // 30 lines of 50,000 "é": 1.5 M characters but 3 MB, past the 2 MiB cap.
    const line = "é".repeat(50_000);
    for (let frame = 0; frame < 3; frame += 1) runner.output("t1", fence, frame * 10, [block("stdout", Array.from({ length: 10 }, () => line))]);
    await runner.acked("t1", 30);
    runner.json({ type: "exit", ticket: "t1", fence, lineCount: 30, outcome: { kind: "exited", code: 0 } });
    await f.completed(m, "t1");
    const stored: Array<{ source: string; text: string }> = [];
    for (let sequence = 0; ; ) {
      const page = await logs(m, "t1", `?logSequence=${sequence}`);
      if (page.logs.length === 0) break;
      stored.push(...page.logs);
      sequence = page.nextLogSequence;
    }
    const kept = stored.filter((l) => l.source === "stdout");
    expect(kept.length).toBe(Math.floor(MAX_OUTPUT / Buffer.byteLength(line)));
    expect(kept.reduce((bytes, l) => bytes + Buffer.byteLength(l.text), 0)).toBeLessThanOrEqual(MAX_OUTPUT);
    expect(stored.filter((l) => l.source === "debug").map((l) => l.text)).toEqual([expect.stringMatching(/^Output truncated: this script wrote more than 2097152 bytes/)]);
    runner.ws.close();
  });

  it.each([
    ["a count that does not match the block's newlines", (fence: number) => encodeOutputFrame({ ticket: "t1", fence, sequence: 0, blocks: [block("stdout", "a\nb", 3)] })],
    ["a header that promises more bytes than the frame has", (fence: number) => encodeOutputFrame({ ticket: "t1", fence, sequence: 0, blocks: [block("stdout", ["a"])] }).slice(0, 2)],
  ])("closes the connection for %s (4400) and stores nothing", async (_name, frame) => {
    const m = f.machine();
    const runner = await connectRunner(m);
    const fence = await dispatched(runner, m, "t1");
    runner.ws.send(Buffer.concat(frame(fence)), { binary: true });
    expect(await runner.closed).toBe(CloseCode.BadFrame);
    expect((await logs(m, "t1")).logs).toEqual([]);
  });
});
