/**
 * The two ways a call to the control plane fails: the control plane answered with an error
 * (`TendrilApiError`, built from the contract's `{"error": {code, message}}` body), or it could not be
 * reached at all (`TendrilNetworkError`, naming the URL so an operator sees which address is wrong).
 */

/** The control plane answered a call with a 4xx/5xx status. */
export class TendrilApiError extends Error {
  /** The HTTP status, e.g. 404. */
  readonly status: number;
  /** The contract's snake_case error code, e.g. `unknown_machine`; `http_<status>` when the body had none. */
  readonly code: string;

  /** Builds an error from the parts of an error answer. */
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = "TendrilApiError";
    this.status = status;
    this.code = code;
  }

  /** Reads an error answer's body and turns it into an error (it consumes the body). */
  static async fromResponse(response: Response, what: string): Promise<TendrilApiError> {
    const text = await response.text().catch(() => "");
    const body = parseErrorBody(text);
    if (body) return new TendrilApiError(response.status, body.code, body.message);
    // Not the contract's shape: a proxy's page or a bug. Keep a short excerpt so the cause is visible.
    const excerpt = text.trim().replace(/\s+/g, " ").slice(0, 200);
    const statusText = response.statusText ? ` ${response.statusText}` : "";
    return new TendrilApiError(
      response.status,
      `http_${response.status}`,
      `${what} failed with HTTP ${response.status}${statusText}${excerpt ? `: ${excerpt}` : ""}`,
    );
  }
}

/** The control plane could not be reached (connection refused, DNS failure, reset). */
export class TendrilNetworkError extends Error {
  /** The URL of the request that failed. */
  readonly url: string;

  /** Wraps the low-level failure of a request to `url`. */
  constructor(url: string, cause: unknown) {
    super(`could not reach the control plane at ${url}: ${describeCause(cause)}`, { cause });
    this.name = "TendrilNetworkError";
    this.url = url;
  }
}

/** The control plane answered with something the SDK cannot read (bad JSON, wrong content type). */
export class TendrilProtocolError extends Error {
  /** Describes what was wrong with the answer. */
  constructor(message: string) {
    super(message);
    this.name = "TendrilProtocolError";
  }
}

/** Extracts `{code, message}` from a contract error body, or undefined when the text is not one. */
function parseErrorBody(text: string): { code: string; message: string } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null || !("error" in value)) return undefined;
  const error = value.error;
  if (typeof error !== "object" || error === null) return undefined;
  const code = "code" in error && typeof error.code === "string" ? error.code : undefined;
  const message = "message" in error && typeof error.message === "string" ? error.message : undefined;
  if (code === undefined || message === undefined) return undefined;
  return { code, message };
}

/**
 * Node's fetch reports every network failure as `TypeError: fetch failed` and puts the useful part
 * (`connect ECONNREFUSED 127.0.0.1:8787`) in `cause`, sometimes nested; dig it out.
 */
function describeCause(cause: unknown): string {
  let current: unknown = cause;
  let message = "unknown error";
  for (let depth = 0; depth < 5 && current instanceof Error; depth++) {
    if (current.message && current.message !== "fetch failed") message = current.message;
    else if (depth === 0) message = current.message || message;
    current = current.cause;
  }
  return message;
}
