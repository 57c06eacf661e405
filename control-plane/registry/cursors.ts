/**
 * The opaque cursors of the paged lists: base64url of where the previous page ended (the fleet list's last machine
 * id; the feed's last event time and id). A cursor that does not decode to such a position is refused (400).
 */
import { isMachineId } from "../../shared/ids.js";

function toBase64Url(text: string): string {
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64Url(cursor: string): string | null {
  if (!/^[A-Za-z0-9_-]+$/.test(cursor)) return null;
  try {
    return atob(cursor.replace(/-/g, "+").replace(/_/g, "/"));
  } catch {
    return null;
  }
}

/** The fleet list's cursor after machine `machineId`. */
export function machineCursor(machineId: string): string {
  return toBase64Url(`m:${machineId}`);
}

/** The machine id a fleet list cursor names, or null when it is not one of ours. */
export function parseMachineCursor(cursor: string): string | null {
  const text = fromBase64Url(cursor);
  const id = text?.startsWith("m:") ? text.slice(2) : null;
  return id !== null && isMachineId(id) ? id : null;
}

/** The feed's cursor after the event at `at` (epoch ms) with id `id`. */
export function feedCursor(position: { at: number; id: number }): string {
  return toBase64Url(`a:${position.at}:${position.id}`);
}

/** Where a feed cursor says the previous page ended, or null when it is not one of ours. */
export function parseFeedCursor(cursor: string): { at: number; id: number } | null {
  const match = /^a:(\d{1,16}):(\d{1,16})$/.exec(fromBase64Url(cursor) ?? "");
  if (!match) return null;
  const at = Number(match[1]);
  const id = Number(match[2]);
  return Number.isSafeInteger(at) && Number.isSafeInteger(id) ? { at, id } : null;
}
