/**
 * Headless Chromium for the console's browser tests, with no browser download: the binary comes from the npm package
 * `@sparticuz/chromium` (unpacked to the system's temporary folder on first use), or from `TENDRIL_CHROMIUM` when set.
 * The browser runs as a Playwright browser server in its own process group, so that a test stops it by PID; each
 * context refuses (and records) every request that is not to the origins a test allows.
 */
import { mkdirSync, rmSync, statSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import chromium from "@sparticuz/chromium";
import { chromium as playwright, type Browser, type BrowserContext, type BrowserServer, type Page } from "playwright-core";
import { pidsInGroup, ROOT, signalGroup } from "./processes.js";
import { waitFor } from "./wait.js";

/** Flags of @sparticuz/chromium that would switch off what the console's tests check (same-origin rules). */
const UNSAFE_FLAGS = new Set(["--disable-web-security", "--allow-running-insecure-content", "--disable-site-isolation-trials"]);

/** Where screenshots go: `test-artifacts/screenshots/` (ignored by git), or `TENDRIL_SCREENSHOTS_DIR` (`npm run screenshots`: docs/screenshots). */
export const SCREENSHOTS_DIR = process.env.TENDRIL_SCREENSHOTS_DIR ?? join(ROOT, "test-artifacts", "screenshots");

/** A running headless Chromium. */
export interface TestBrowser {
  browser: Browser;
  /** The browser process, leader of its own process group. */
  pid: number;
  /** A new context (its own cookies) whose requests may only go to `origins`; every other one is refused and recorded. */
  context(origins: string[], options?: { width?: number; height?: number; javaScript?: boolean }): Promise<GuardedContext>;
  /** Closes the browser and makes sure no process of its group is left. */
  close(): Promise<void>;
}

/** A browser context that refuses requests to anywhere but its allowed origins. */
export interface GuardedContext {
  context: BrowserContext;
  page: Page;
  /** Every request the pages made, by URL. */
  requested: string[];
  /** Requests refused because they went elsewhere (a console that loads nothing from outside leaves this empty). */
  refused: string[];
  close(): Promise<void>;
}

/** The Chromium binary: `TENDRIL_CHROMIUM`, or the one @sparticuz/chromium ships, unpacked once (one test file at a time). */
async function chromiumBinary(): Promise<{ path: string; args: string[] }> {
  const own = process.env.TENDRIL_CHROMIUM;
  if (own) return { path: own, args: ["--no-sandbox"] };
  // Test files run in parallel processes; the package unpacks without a lock, and a half-written binary would be
  // taken for a whole one by the next caller.
  const lock = join(tmpdir(), "tendril-chromium-unpack.lock");
  await waitFor(
    () => {
      try {
        mkdirSync(lock);
        return true;
      } catch {
        // Left by a run that was killed while unpacking (it takes a few seconds): take it over.
        if (Date.now() - statSync(lock, { throwIfNoEntry: false })!.mtimeMs > 120_000) rmSync(lock, { recursive: true, force: true });
        return false;
      }
    },
    { timeoutMs: 120_000, intervalMs: 100, what: "the Chromium unpack lock" },
  );
  try {
    const path = await chromium.executablePath();
    return { path, args: chromium.args.filter((flag) => !UNSAFE_FLAGS.has(flag)) };
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** Starts headless Chromium. */
export async function launchBrowser(): Promise<TestBrowser> {
  const binary = await chromiumBinary();
  const server: BrowserServer = await playwright.launchServer({ executablePath: binary.path, args: binary.args, headless: true, timeout: 60_000 });
  const pid = server.process().pid;
  if (pid === undefined) throw new Error("Chromium started without a pid");
  let browser: Browser;
  try {
    browser = await playwright.connect(server.wsEndpoint(), { timeout: 60_000 });
  } catch (error) {
    await stopGroup(pid, server);
    throw error;
  }
  return {
    browser,
    pid,
    async context(origins, { width = 1200, height = 900, javaScript = true } = {}) {
      const allowed = new Set(origins.map((origin) => new URL(origin).origin));
      const context = await browser.newContext({ viewport: { width, height }, colorScheme: "light", reducedMotion: "reduce", javaScriptEnabled: javaScript });
      const requested: string[] = [];
      const refused: string[] = [];
      context.on("request", (request) => requested.push(request.url()));
      await context.route("**/*", async (route) => {
        const url = route.request().url();
        if (url.startsWith("data:") || allowed.has(new URL(url).origin)) return route.continue();
        refused.push(url);
        return route.abort("blockedbyclient");
      });
      const page = await context.newPage();
      page.setDefaultTimeout(20_000);
      return { context, page, requested, refused, close: () => context.close() };
    },
    async close() {
      await browser.close().catch(() => undefined);
      await stopGroup(pid, server);
    },
  };
}

async function stopGroup(pid: number, server: BrowserServer): Promise<void> {
  await server.close().catch(() => undefined);
  signalGroup(pid, "SIGKILL");
  await waitFor(() => pidsInGroup(pid).length === 0, { timeoutMs: 10_000, what: `Chromium's process group ${pid} to exit` });
}

/** Saves a full-page screenshot as `<SCREENSHOTS_DIR>/<name>.png`. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await mkdir(SCREENSHOTS_DIR, { recursive: true });
  const path = join(SCREENSHOTS_DIR, `${name}.png`);
  await page.screenshot({ path, fullPage: true, animations: "disabled" });
  return path;
}

/** Screenshots of a page at 1200 px (`<name>-wide.png`) and at 400 px (`<name>-narrow.png`); the viewport is restored. */
export async function screenshotBothWidths(page: Page, name: string): Promise<void> {
  const viewport = page.viewportSize() ?? { width: 1200, height: 900 };
  await page.setViewportSize({ width: 1200, height: 900 });
  await screenshot(page, `${name}-wide`);
  await page.setViewportSize({ width: 400, height: 860 });
  await screenshot(page, `${name}-narrow`);
  await page.setViewportSize(viewport);
}
