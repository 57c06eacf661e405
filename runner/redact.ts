/**
 * Keeps secrets out of the runner's own log: the runner token, and the values of a script's `environment`
 * (a request may carry credentials there). Scripts' own output is theirs and is never touched.
 */
import type { Logger } from "./options.js";

/** What a secret is replaced with. */
export const REDACTED = "[redacted]";

/** Environment values shorter than this are not treated as secrets: redacting "1" or "on" would garble every message. */
export const MIN_SECRET_LENGTH = 4;

/** `text` with every occurrence of every secret replaced by `[redacted]` (longer secrets first). */
export function redact(text: string, secrets: Iterable<string>): string {
  const list = [...new Set(secrets)].filter((secret) => secret.length > 0).sort((a, b) => b.length - a.length);
  let result = text;
  for (const secret of list) if (result.includes(secret)) result = result.split(secret).join(REDACTED);
  return result;
}

/** The values of an environment that count as secrets in messages about its script. */
export function environmentSecrets(environment: Readonly<Record<string, string>>): string[] {
  return Object.values(environment).filter((value) => value.length >= MIN_SECRET_LENGTH);
}

/** A logger that writes through `logger` with every secret removed. */
export function redactingLogger(logger: Logger, secrets: readonly string[]): Logger {
  return {
    info: (message) => logger.info(redact(message, secrets)),
    warn: (message) => logger.warn(redact(message, secrets)),
    error: (message) => logger.error(redact(message, secrets)),
  };
}

/** A URL fit for a log line: without user name, password, query or fragment (any of which may carry a credential). */
export function displayUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = "";
    parsed.password = "";
    parsed.search = "";
    parsed.hash = "";
    return parsed.toString();
  } catch {
    return "(an invalid URL)";
  }
}
