// Scripts that print a lot, on the real control plane with its default output cap (100 MiB): output sent by hand
// in binary frames as a runner sends it. Every answer stays a bounded page, whatever the script printed.
import { describe, expect, it } from "vitest";
import { encodeOutputFrame, type ByteBlock } from "../../shared/protocol.js";
import { openRunnerSocket } from "../helpers/api.js";
import { useControlPlane } from "../helpers/fixture.js";
import { waitFor } from "../helpers/wait.js";

const f = useControlPlane();
const MiB = 1024 * 1024;
/** The default output cap, and the largest answer a page may be. */
const CAP = 100 * MiB;
const PAGE_BYTES = 4 * MiB;
const OCCURRED = "2026-12-02T08:00:00.000Z";

/** A hand-driven runner with one script dispatched to it; sends output frames and waits for their acks. */
async function scriptOnHandDrivenRunner(machineId: string, ticket: string) {
  const socket = await openRunnerSocket(f.cp, machineId, await f.register(machineId));
  socket.send({ type: "hello", protocol: 1, runnerId: `r-${machineId}`, version: "0.1.0", capabilities: ["script.v1"], inventory: [] });
  await waitFor(() => socket.messages.some((m) => m.type === "welcome"), { what: "welcome" });
  expect((await f.api("POST", `/api/v1/machines/${machineId}/scripts`, { ticket, scriptBody: "true" })).status).toBe(201);
  const dispatch = await waitFor(() => socket.messages.find((m) => m.type === "dispatch" && m.ticket === ticket), { what: "the dispatch" });
  let sequence = 0;
  return {
    socket,
    /** Sends blocks of lines (each block's lines of one text) as one frame, without waiting. */
    send(blocks: string[][]): number {
      const byteBlocks: ByteBlock[] = blocks.map((lines) => ({ source: "stdout", occurred: OCCURRED, count: lines.length, bytes: Buffer.from(lines.join("\n")) }));
      const parts = encodeOutputFrame({ ticket, fence: dispatch.fence, sequence, blocks: byteBlocks });
      socket.ws.send(Buffer.concat(parts), { binary: true });
      sequence += blocks.reduce((n, lines) => n + lines.length, 0);
      return sequence;
    },
    acked: (next: number) =>
      waitFor(() => socket.messages.some((m) => m.type === "ack" && m.ticket === ticket && m.nextSequence === next), { timeoutMs: 30_000, what: `ack ${next}` }),
    exit(code = 0) {
      socket.send({ type: "exit", ticket, fence: dispatch.fence, lineCount: sequence, outcome: { kind: "exited", code } });
    },
  };
}

/** An API call's status, raw size in bytes and JSON body. */
async function raw(method: string, path: string): Promise<{ status: number; bytes: number; body: any }> {
  const response = await fetch(`${f.cp.url}${path}`, { method, headers: { authorization: `Bearer ${f.cp.serverToken}` } });
  const bytes = Buffer.from(await response.arrayBuffer());
  return { status: response.status, bytes: bytes.length, body: JSON.parse(bytes.toString("utf8")) };
}

describe("a script with 100 MiB of stored output", () => {
  it("is deleted like any other: DELETE answers one page under 4 MiB, not a 500, and the script is gone (bug 3)", async () => {
    const m = f.machine();
    const runner = await scriptOnHandDrivenRunner(m, "big");
    // 110 MB in frames of about 1 MiB: two blocks of 128 lines of 4,000 bytes (a block stays one row).
    const line = "x".repeat(4_000);
    const block = Array.from({ length: 128 }, () => line);
    let next = 0;
    for (let frame = 1; next * 4_000 < 110_000_000; frame += 1) {
      next = runner.send([block, block]);
      if (frame % 8 === 0) await runner.acked(next);
    }
    await runner.acked(next);
    runner.exit(0);
    const status = await f.completed(m, "big", 60_000);
    expect(status.exitCode).toBe(0);

    // Capped at 100 MiB: the lines that fit, then one line saying so.
    const kept = Math.floor(CAP / 4_000);
    const tail = await raw("GET", `/api/v1/machines/${m}/scripts/big?logSequence=${kept - 1}`);
    expect(tail.body.logs.map((l: { text: string; source: string }) => [l.source, l.text.slice(0, 20)])).toEqual([
      ["stdout", "x".repeat(20)],
      ["debug", "Output truncated: th"],
    ]);
    expect(tail.body.hasMoreLogs).toBe(false);

    const deleted = await raw("DELETE", `/api/v1/machines/${m}/scripts/big?logSequence=0`);
    expect(deleted.status, JSON.stringify(deleted.body).slice(0, 300)).toBe(200);
    expect(deleted.bytes).toBeLessThanOrEqual(PAGE_BYTES);
    expect(deleted.body).toMatchObject({ ticket: "big", state: "complete", exitCode: 0, hasMoreLogs: true });
    expect(deleted.body.logs.length).toBeGreaterThan(500);
    expect(deleted.body.logs.map((l: { sequence: number }) => l.sequence)).toEqual(deleted.body.logs.map((_: unknown, i: number) => i));
    expect(deleted.body.nextLogSequence).toBe(deleted.body.logs.length);
    expect((await f.api("GET", `/api/v1/machines/${m}/scripts/big`)).status).toBe(404);
    expect((await f.api("GET", `/api/v1/machines/${m}`)).body.scripts).toEqual([]);
    runner.socket.ws.close(1000);
  }, 180_000);
});

describe("pages of output outside ASCII", () => {
  it("keep a GET page's JSON answer under 4 MiB, counted in UTF-8 bytes (bug 12)", async () => {
    const m = f.machine();
    const runner = await scriptOnHandDrivenRunner(m, "euro");
    // 3,000 lines of 1,000 "€": 3 M UTF-16 code units, 9 MB of UTF-8.
    const line = "€".repeat(1_000);
    let next = 0;
    for (let frame = 0; frame < 30; frame += 1) next = runner.send([Array.from({ length: 100 }, () => line)]);
    await runner.acked(next);
    runner.exit(0);
    await f.completed(m, "euro");
    let sequence = 0;
    let pages = 0;
    while (sequence < 3_000) {
      const page = await raw("GET", `/api/v1/machines/${m}/scripts/euro?logSequence=${sequence}`);
      expect(page.status).toBe(200);
      expect(page.bytes).toBeLessThanOrEqual(PAGE_BYTES);
      expect(page.body.logs.every((l: { text: string }) => l.text === line)).toBe(true);
      expect(page.body.logs[0].sequence).toBe(sequence);
      sequence = page.body.nextLogSequence;
      pages += 1;
    }
    expect(pages).toBeGreaterThanOrEqual(3);
    runner.socket.ws.close(1000);
  });
});
