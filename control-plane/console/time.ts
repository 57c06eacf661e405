/**
 * Times as the console shows them: relative ("3 min ago", "held 3 min") with the exact time on hover. Pure, and
 * shared by the server's pages and the browser script, which refreshes the relative text every few seconds.
 */

/** How a `<time data-rel>` element reads: `ago` ("3 min ago"), or `for` ("3 min", how long something has lasted). */
export type RelativeStyle = "ago" | "for";

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** A duration in one or two units a person reads at a glance: "4 s", "3 min", "2 h 5 min", "3 d 4 h". */
export function formatDuration(ms: number): string {
  const value = Math.max(0, ms);
  if (value < MINUTE) return `${Math.floor(value / SECOND)} s`;
  if (value < HOUR) return `${Math.floor(value / MINUTE)} min`;
  if (value < DAY) {
    const minutes = Math.floor((value % HOUR) / MINUTE);
    return `${Math.floor(value / HOUR)} h${minutes > 0 ? ` ${minutes} min` : ""}`;
  }
  const hours = Math.floor((value % DAY) / HOUR);
  return `${Math.floor(value / DAY)} d${hours > 0 ? ` ${hours} h` : ""}`;
}

/** `iso` relative to `now` (epoch ms) in the given style; an unreadable time is shown as it is. */
export function formatRelative(iso: string, now: number, style: RelativeStyle): string {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return iso;
  if (style === "for") return formatDuration(now - at);
  const delta = now - at;
  // A few seconds of clock skew between the page and the control plane should not read as "in the future".
  if (delta < 5 * SECOND && delta > -5 * SECOND) return "just now";
  return delta > 0 ? `${formatDuration(delta)} ago` : `in ${formatDuration(-delta)}`;
}

/** The exact time for the hover text: `2026-12-02 10:15:30 UTC`. */
export function formatExact(iso: string): string {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return iso;
  return `${new Date(at).toISOString().slice(0, 19).replace("T", " ")} UTC`;
}
