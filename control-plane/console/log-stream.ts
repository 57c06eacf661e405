/**
 * The console's live log: Server-Sent Events read by the browser's EventSource with the session cookie (an
 * EventSource cannot send a Bearer header), in the form log-events.ts gives them, from the machine object's stream
 * pages (each waits in the object for new lines, up to POLL_MS).
 */
import type { MachineObject, StreamPage } from "../machine/machine-object.js";
import type { RpcError } from "../machine/results.js";
import { logEvent, statusEvent } from "./log-events.js";

type MachineStub = DurableObjectStub<MachineObject>;

/** How long one page waits in the machine object for new lines before a keep-alive comment is sent. */
const POLL_MS = 15_000;
/** How long the browser waits before reconnecting a dropped stream. */
const RETRY_MS = 1_000;

/**
 * The stream of a script's log from line `from`, as a Response; or the error of its first page (unknown machine or
 * script), so that the caller answers it with a status instead of an empty stream.
 */
export async function logStream(stub: MachineStub, machineId: string, ticket: string, from: number): Promise<Response | RpcError> {
  const first = await stub.streamPage(machineId, ticket, from, 0);
  if (!first.ok) return first;
  const encoder = new TextEncoder();
  let page: StreamPage | null = first.value;
  let next = from;
  let done = false;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(encoder.encode(`retry: ${RETRY_MS}\n\n`));
    },
    async pull(controller) {
      if (done) return;
      let current = page;
      page = null;
      if (current === null) {
        const result = await stub.streamPage(machineId, ticket, next, POLL_MS);
        if (!result.ok) {
          // Deleted meanwhile: say so and end (the browser script stops on this event).
          controller.enqueue(encoder.encode(`event: gone\ndata: ${JSON.stringify({ code: result.code })}\n\n`));
          done = true;
          controller.close();
          return;
        }
        current = result.value;
      }
      let text = "";
      for (const line of current.logs) text += logEvent(line);
      next = current.nextLogSequence;
      if (current.final) {
        text += statusEvent(current.final);
        done = true;
      } else if (current.logs.length === 0) {
        text += ": keep-alive\n\n";
      }
      controller.enqueue(encoder.encode(text));
      if (done) controller.close();
    },
  });
  return new Response(body, {
    headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", "x-accel-buffering": "no" },
  });
}
