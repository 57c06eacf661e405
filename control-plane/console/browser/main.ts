/**
 * The console's one browser script, for the live parts only: every page works without it (forms post, a reload
 * shows more). It keeps relative times current, re-reads the page every few seconds to refresh its live sections
 * (`[data-live][id]`, the same server-rendered HTML), and follows a script's log over the console's event stream,
 * resuming after a dropped connection at the line after the last one shown. Bundled by scripts/build.mjs.
 */
import type { LogLine } from "../../../shared/api.js";
import { formatRelative } from "../time.js";

/** How often relative times are rewritten. */
const TIMES_EVERY_MS = 5_000;

/** The control plane's clock minus this browser's, from the `data-now` of the last page read. */
let skewMs = 0;

function adoptServerClock(now: string | undefined): void {
  const server = Number(now);
  if (Number.isFinite(server) && server > 0) skewMs = server - Date.now();
}

function refreshTimes(): void {
  const now = Date.now() + skewMs;
  for (const element of document.querySelectorAll<HTMLTimeElement>("time[data-rel]")) {
    element.textContent = formatRelative(element.dateTime, now, element.dataset.rel === "for" ? "for" : "ago");
  }
}

let refreshing = false;

/**
 * Re-reads this page and swaps in each live section that changed (or removes one that is gone), except one that
 * holds the keyboard focus: a person in the middle of something is not disturbed. A session that ended sends the
 * browser to the sign-in page.
 */
async function refreshSections(): Promise<void> {
  if (refreshing || document.hidden) return;
  refreshing = true;
  try {
    const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store", headers: { accept: "text/html" } });
    if (response.redirected && new URL(response.url).pathname === "/session") {
      location.assign(response.url);
      return;
    }
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    adoptServerClock(fresh.body.dataset.now);
    for (const section of document.querySelectorAll<HTMLElement>("[data-live][id]")) {
      if (section.contains(document.activeElement)) continue;
      const replacement = fresh.getElementById(section.id);
      if (!replacement) section.remove();
      else if (replacement.innerHTML !== section.innerHTML) section.replaceWith(document.importNode(replacement, true));
    }
    refreshTimes();
  } catch {
    // Offline for a moment: the next round tries again.
  } finally {
    refreshing = false;
  }
}

/** A log line as the server renders it (pages/script.tsx). */
function lineItem(line: LogLine): HTMLLIElement {
  const item = document.createElement("li");
  item.className = line.source;
  item.dataset.seq = String(line.sequence);
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.setAttribute("aria-hidden", "true");
  seq.textContent = String(line.sequence + 1);
  item.append(seq);
  if (line.source !== "stdout") {
    const source = document.createElement("span");
    source.className = "src";
    source.textContent = line.source === "stderr" ? "err" : "tendril";
    item.append(source);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = line.text;
  item.append(text);
  return item;
}

/**
 * Follows the log from the line after the last one the page shows. The stream's event ids are log sequences, so the
 * browser's own reconnect after a drop (with Last-Event-ID) resumes at the next line: every line it is sent is new.
 */
function followLog(log: HTMLOListElement): void {
  const stream = log.dataset.stream;
  const next = Number(log.dataset.next);
  if (!stream || !Number.isSafeInteger(next) || log.dataset.complete === "true") return;
  const status = document.getElementById("log-status");
  const say = (text: string) => {
    if (status && status.textContent !== text) status.textContent = text;
  };
  const scroller = log.parentElement;
  const source = new EventSource(`${stream}?from=${next}`);
  source.addEventListener("open", () => say(""));
  source.addEventListener("log", (event) => {
    const line = JSON.parse((event as MessageEvent<string>).data) as LogLine;
    const following = scroller !== null && scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
    log.append(lineItem(line));
    if (following && scroller) scroller.scrollTop = scroller.scrollHeight;
  });
  source.addEventListener("status", () => {
    source.close();
    log.dataset.complete = "true";
    say("The script is complete: this is all of its output.");
    void refreshSections();
  });
  source.addEventListener("gone", () => {
    source.close();
    say("This script was deleted.");
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out, say): the page knows why.
      say("The live log stopped; reload the page to continue.");
      void refreshSections();
    } else {
      say("Connection lost: reconnecting…");
    }
  });
}

adoptServerClock(document.body.dataset.now);
setInterval(refreshTimes, TIMES_EVERY_MS);
const refreshEvery = Number(document.body.dataset.refresh);
if (Number.isFinite(refreshEvery) && refreshEvery > 0) setInterval(() => void refreshSections(), refreshEvery);
const log = document.getElementById("log");
if (log instanceof HTMLOListElement) followLog(log);
