/**
 * Young-generation collections, asked for by the output path.
 *
 * A client masks every WebSocket frame with a fresh random key (RFC 6455), and `ws` does it into a new copy of the
 * frame's bytes, so each byte of output the runner sends is allocated once more, outside V8's heap, and dead a moment
 * later. V8 frees such buffers when a collection finds them dead. Its young generation, where they start, fills with
 * the few small objects each frame makes only after many megabytes of frames; and a full collection comes once
 * 64 MiB more memory outside the heap was allocated since the last one. Until then the dead copies count in the
 * runner's resident memory: during 100 MB of output they added tens of megabytes to its peak. A young-generation
 * collection (a scavenge, a fraction of a millisecond when little survives) after every `YOUNG_COLLECTION_BYTES`
 * sent frees them while they are still young.
 *
 * Asking for one needs V8's `gc` function, which Node.js exposes only with `--expose-gc`. Setting that flag while
 * running makes V8 give the function to contexts created afterwards: the runner creates one to take it. Where that
 * fails, nothing is asked for and V8 collects as it would.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** Bytes sent between two young-generation collections. */
export const YOUNG_COLLECTION_BYTES = 1024 * 1024;

/** V8's `gc`, as `--expose-gc` gives it. */
type CollectGarbage = (options: { type: "minor" | "major"; execution?: "sync" | "async" }) => void;

let collectGarbage: CollectGarbage | null | undefined;

/** V8's `gc` function, taken once; null where it cannot be had. */
function garbageCollector(): CollectGarbage | null {
  if (collectGarbage !== undefined) return collectGarbage;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === "function") return (collectGarbage = exposed as CollectGarbage);
  try {
    setFlagsFromString("--expose-gc");
    const taken: unknown = runInNewContext("gc");
    collectGarbage = typeof taken === "function" ? (taken as CollectGarbage) : null;
  } catch {
    collectGarbage = null;
  }
  return collectGarbage;
}

/** Collects V8's young generation now; false when it cannot be asked for. */
export function collectYoungGarbage(): boolean {
  const collect = garbageCollector();
  if (collect === null) return false;
  collect({ type: "minor" });
  return true;
}

/** Counts bytes sent and calls `collect` once every `everyBytes` of them. */
export class YoungGarbagePacer {
  private sinceCollection = 0;

  constructor(
    private readonly everyBytes: number = YOUNG_COLLECTION_BYTES,
    private readonly collect: () => unknown = collectYoungGarbage,
  ) {}

  /** `bytes` more were sent. */
  sent(bytes: number): void {
    this.sinceCollection += bytes;
    if (this.sinceCollection < this.everyBytes) return;
    this.sinceCollection = 0;
    this.collect();
  }
}
