/** Identifier rules shared by the HTTP API, the runner protocol and the runner's workspaces. */
import { z } from "zod";

// `.` and `..` fit the character rules but cannot stand in a URL path (clients resolve them as folders).
/** A machine id: 1–64 characters of `[A-Za-z0-9._-]`, not `.` or `..`. */
export const MACHINE_ID_PATTERN = /^(?!\.\.?$)[A-Za-z0-9._-]{1,64}$/;
/** A script ticket: 1–128 characters of `[A-Za-z0-9._-]`, not `.` or `..`. */
export const TICKET_PATTERN = /^(?!\.\.?$)[A-Za-z0-9._-]{1,128}$/;

/** Zod schema for a machine id. */
export const MachineId = z
  .string()
  .regex(MACHINE_ID_PATTERN, "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-' (and not '.' or '..')");
/** Zod schema for a ticket. */
export const Ticket = z
  .string()
  .regex(TICKET_PATTERN, "must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-' (and not '.' or '..')");

/** True when `value` is a valid machine id. */
export function isMachineId(value: string): boolean {
  return MACHINE_ID_PATTERN.test(value);
}

/** True when `value` is a valid ticket. */
export function isTicket(value: string): boolean {
  return TICKET_PATTERN.test(value);
}
