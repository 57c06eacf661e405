/** Parsers of command-line values; each throws commander's InvalidArgumentError with what is accepted. */
import { InvalidArgumentError } from "commander";
import { OperatorName } from "../../shared/api.js";
import { isMachineId, isTicket } from "../../shared/ids.js";
import { parseDuration } from "../durations.js";
import { describeError } from "./output.js";

/** What a machine id may contain, for error messages. */
export const MACHINE_ID_RULE = "use 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'";

/** A TCP port, 0–65535. */
export function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65_535) throw new InvalidArgumentError("expected a port number from 0 to 65535.");
  return port;
}

/** A duration such as `30s` or `2m`, in milliseconds. */
export function parseDurationArg(value: string): number {
  try {
    return parseDuration(value);
  } catch (error) {
    throw new InvalidArgumentError(describeError(error));
  }
}

/** A size in bytes: a plain number or one with a KiB/MiB/GiB suffix. */
export function parseBytesArg(value: string): number {
  const match = /^(\d+)\s*(b|kib|mib|gib)?$/i.exec(value.trim());
  const units: Record<string, number> = { b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };
  const bytes = match ? Number(match[1]) * units[(match[2] ?? "b").toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new InvalidArgumentError("expected a size such as 1048576, 512KiB, 100MiB or 1GiB.");
  return bytes;
}

/** A machine id (docs/api.md, "Machines"). */
export function parseMachineIdArg(value: string): string {
  if (!isMachineId(value)) throw new InvalidArgumentError(`invalid machine id: ${MACHINE_ID_RULE}.`);
  return value;
}

/** A script ticket. */
export function parseTicketArg(value: string): string {
  if (!isTicket(value)) throw new InvalidArgumentError("invalid ticket: use 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-'.");
  return value;
}

/** An operator's name (docs/api.md, "Operators"). */
export function parseOperatorNameArg(value: string): string {
  if (!OperatorName.safeParse(value).success) throw new InvalidArgumentError("invalid operator name: use 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'.");
  return value;
}

/** A parser of a whole number from 1 to `max` (a page size, a number of days). */
export function parseLimitArg(max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < 1 || n > max) throw new InvalidArgumentError(`expected a whole number from 1 to ${max}.`);
    return n;
  };
}

/** A cancel's or abandon's reason: 1–500 characters, as the API takes it. */
export function parseReasonArg(value: string): string {
  return textOfLength(value, 500, "a reason");
}

/** On whose behalf the server token acts: 1–200 characters, as the API takes it. */
export function parseRequestedByArg(value: string): string {
  return textOfLength(value, 200, "--requested-by");
}

function textOfLength(value: string, max: number, what: string): string {
  const text = value.trim();
  if (text === "") throw new InvalidArgumentError(`${what} must not be empty.`);
  if (text.length > max) throw new InvalidArgumentError(`${what} may be at most ${max} characters (this one has ${text.length}).`);
  return text;
}

/** One repeatable `--env NAME=VALUE`, collected into a record. */
export function collectEnvArg(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const equals = value.indexOf("=");
  if (equals <= 0) throw new InvalidArgumentError("expected NAME=VALUE.");
  return { ...previous, [value.slice(0, equals)]: value.slice(equals + 1) };
}

/** An environment value, trimmed; undefined when absent or blank. */
export function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}
