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

/** Shorthand for a 400 `invalid_request`. */
export function invalid(message: string): ApiError {
  return new ApiError(400, "invalid_request", message);
}

/**
 * Reads a JSON body of at most `maxBytes`. `optional` bodies may be empty (then `undefined`).
 * Over the limit: 413 `too_large`; not UTF-8 or not JSON: 400 `invalid_request`.
 */
export async function readJsonBody(c: Context, maxBytes: number, optional = false): Promise<unknown> {
  const declared = c.req.header("content-length");
  if (declared !== undefined && /^\d+$/.test(declared) && Number(declared) > maxBytes) {
    throw new ApiError(413, "too_large", `The request body is larger than ${maxBytes} bytes.`);
  }
  const bytes = await c.req.arrayBuffer();
  if (bytes.byteLength > maxBytes) throw new ApiError(413, "too_large", `The request body is larger than ${maxBytes} bytes.`);
  if (bytes.byteLength === 0) {
    if (optional) return undefined;
    throw invalid("The request needs a JSON body.");
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
