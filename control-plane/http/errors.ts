/** The API's error shape and request-body reading with limits. */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";

/** An error the edge answers with `{"error": {code, message}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Sends the error shape. */
export function errorJson(c: Context, status: ContentfulStatusCode, code: string, message: string): Response {
  return c.json({ error: { code, message } }, status);
}

/**
 * Whether `error` is the platform's word that a Durable Object could not take a call: it was reset (its constructor
 * failed, e.g. workerd's SQLite refused memory to a new object while thousands were open) or is overloaded, or the
 * runtime itself failed (its own errors reach code only as "internal error; reference = <id>"). The caller may try
 * again; an error our own code throws is none of these.
 */
export function isObjectUnavailable(error: unknown): boolean {
  if (typeof error !== "object" || error === null) return false;
  const marks = error as { durableObjectReset?: unknown; overloaded?: unknown; retryable?: unknown; message?: unknown };
  if (marks.durableObjectReset === true || marks.overloaded === true || marks.retryable === true) return true;
  return typeof marks.message === "string" && marks.message.startsWith(RUNTIME_INTERNAL_ERROR);
}

/** How workerd words an error of its own, with the reference it logged. */
const RUNTIME_INTERNAL_ERROR = "internal error; reference = ";

/** Shorthand for a 400 `invalid_request`. */
export function invalid(message: string): ApiError {
  return new ApiError(400, "invalid_request", message);
}

/**
 * Reads a JSON body of at most `maxBytes`. `optional` bodies may be empty (then `undefined`).
 * Over the limit: 413 `too_large`; not declared as `application/json`: 415 `unsupported_media_type`;
 * not UTF-8 or not JSON: 400 `invalid_request`.
 */
export async function readJsonBody(c: Context, maxBytes: number, optional = false): Promise<unknown> {
  const bytes = await readBounded(c.req.raw, maxBytes);
  if (bytes === null) throw new ApiError(413, "too_large", `The request body is larger than ${maxBytes} bytes.`);
  if (bytes.byteLength === 0) {
    if (optional) return undefined;
    throw invalid("The request needs a JSON body.");
  }
  const mediaType = (c.req.header("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (mediaType !== "application/json") {
    throw new ApiError(415, "unsupported_media_type", "The request body must be JSON, sent with content-type: application/json.");
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw invalid("The request body is not valid UTF-8.");
  }
  if (optional && text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw invalid("The request body is not valid JSON.");
  }
}

/** Past this much, an oversized body is no longer drained and the connection may be reset. */
const DRAIN_LIMIT = 64 * 1024 * 1024;

/**
 * Reads the body, or returns null when it is larger than `maxBytes`. An oversized body is still read to
 * its end (up to DRAIN_LIMIT) and discarded, so that the client gets the 413 instead of a reset
 * connection while it is still sending.
 */
export async function readBounded(request: Request, maxBytes: number): Promise<Uint8Array | null> {
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > DRAIN_LIMIT) {
      await reader.cancel();
      return null;
    }
    if (total <= maxBytes) chunks.push(value);
  }
  if (total > maxBytes) return null;
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}
